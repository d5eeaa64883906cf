//! `X-Request-Id` on every request and response, the request's span, and its log line.
//!
//! The outermost layer: whatever answers (a handler, the auth check, the overload bounds)
//! answers inside the request's span, and its response carries the id. The client's own
//! id is kept when it is sane (`telemetry::RequestId`: bounded, visible ASCII); anything
//! else is replaced by a fresh one, never echoed. The id then travels with every RPC the
//! request makes (see `telemetry`).
//!
//! One line per request: at info with `--access-log`, at debug otherwise. It names the
//! route, not the path: keys can be sensitive, so a key shows as `{key}` and its length.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::telemetry::{self, RequestId};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Routes that end in a parameter: its prefix, and the template logged in its place.
const PARAM_ROUTES: [(&str, &str); 4] = [
    ("/kv/", "/kv/{key}"),
    ("/debug/local/", "/debug/local/{key}"),
    ("/debug/preflist/", "/debug/preflist/{key}"),
    ("/admin/remove/", "/admin/remove/{id}"),
];

/// Routes logged as they are.
const FIXED_ROUTES: [&str; 14] = [
    "/",
    "/debug/dashboard",
    "/kv",
    "/batch",
    "/health",
    "/ready",
    "/debug/keys",
    "/debug/replication",
    "/debug/workers",
    "/cluster",
    "/metrics",
    "/admin/leave",
    "/openapi.json",
    "/kv/",
];

/// What the log line names for `path`: the route's template, and the bytes of the
/// parameter as sent (percent-encoded). A path no route serves is `(no route)`: it is the
/// client's text, and the log is no place for it.
pub fn route(path: &str) -> (&'static str, Option<usize>) {
    if let Some(fixed) = FIXED_ROUTES.iter().find(|r| **r == path) {
        return (fixed, None);
    }
    for (prefix, template) in PARAM_ROUTES {
        if let Some(param) = path.strip_prefix(prefix) {
            return (template, Some(param.len()));
        }
    }
    ("(no route)", None)
}

/// Where a node's fresh ids come from. Seeded from the node's `rng_seed` when it has one:
/// ids travel in RPC frames, and the simulation replays a seed bit for bit only if every
/// byte on its network is a function of the seed. From entropy otherwise.
#[derive(Debug)]
pub struct RequestIds(Mutex<StdRng>);

impl RequestIds {
    pub fn new(seed: Option<u64>) -> RequestIds {
        RequestIds(Mutex::new(match seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ 0x7265_7175_6573_7469),
            None => StdRng::from_entropy(),
        }))
    }

    pub fn fresh(&self) -> RequestId {
        // A poisoned lock still holds a usable generator.
        let bits = self.0.lock().unwrap_or_else(|p| p.into_inner()).next_u64();
        RequestId::from_bits(bits)
    }
}

/// The layer: takes or makes the id, serves the request in its span, echoes the id, logs.
pub async fn tag(State(ids): State<Arc<RequestIds>>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| RequestId::parse(v.as_bytes()))
        .unwrap_or_else(|| ids.fresh());
    let method = req.method().clone();
    let (route, key_bytes) = route(req.uri().path());
    let started = Instant::now();
    let span = telemetry::request_span(&id);
    let mut resp = telemetry::in_request(id.clone(), next.run(req)).await;
    // Visible ASCII: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let status = resp.status().as_u16();
    // Known for every buffered body; a streamed one (a listing) has no length yet.
    let bytes = resp.body().size_hint().exact();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.in_scope(|| {
        if telemetry::access_log() {
            tracing::info!(%method, route, key_bytes, status, bytes, micros, "request");
        } else {
            tracing::debug!(%method, route, key_bytes, status, bytes, micros, "request");
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::{route, RequestIds};

    #[test]
    fn seeded_ids_repeat_with_their_seed() {
        let draw = |seed| {
            let ids = RequestIds::new(Some(seed));
            [ids.fresh(), ids.fresh()]
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        let [a, b] = draw(5);
        assert_ne!(a, b);
    }

    /// The route list is kept by hand: every path the OpenAPI document (generated from the
    /// handlers) describes must have a template here, or a new route logs as `(no route)`.
    #[test]
    fn every_documented_route_has_a_template() {
        let doc: serde_json::Value =
            serde_json::from_str(crate::http::openapi::document_json()).expect("the document");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() > 10, "{} paths", paths.len());
        for path in paths.keys() {
            // A concrete path for a template: `{key}` and `{id}` become one segment.
            let concrete = path.replace("{key}", "k").replace("{id}", "00ff");
            let (template, _) = route(&concrete);
            assert_eq!(
                template,
                path.as_str(),
                "{path} has no template in request_id.rs"
            );
        }
    }

    #[test]
    fn the_log_names_routes_and_never_keys() {
        assert_eq!(route("/kv/secret%2Fname"), ("/kv/{key}", Some(13)));
        assert_eq!(route("/kv"), ("/kv", None));
        assert_eq!(route("/kv/"), ("/kv/", None));
        assert_eq!(route("/debug/local/a"), ("/debug/local/{key}", Some(1)));
        assert_eq!(route("/admin/remove/00ff"), ("/admin/remove/{id}", Some(4)));
        assert_eq!(route("/metrics"), ("/metrics", None));
        assert_eq!(route("/nope/secret"), ("(no route)", None));
    }
}
