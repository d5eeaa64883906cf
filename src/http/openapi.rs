//! The OpenAPI 3.1 document of the HTTP API, assembled from the handlers' `#[utoipa::path]`
//! attributes: served at `GET /openapi.json` and committed as docs/openapi.json
//! (`tests/openapi.rs` fails when that copy is stale).
//!
//! The handlers describe what they answer themselves; what every route shares (bearer
//! auth and its 401, load shedding's 503 with `Retry-After`, a slow body's 408) is added
//! here, in one pass over the assembled paths, so that no handler repeats it.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response as ApiResponse, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::error::ErrorBody;

/// The name of the security scheme every route but `/health` and `/ready` requires.
pub const BEARER_AUTH: &str = "bearerAuth";

/// Routes that take no credentials: probes must work without them, and the dashboard page
/// holds no data (its script sends the token to the routes that do).
const OPEN_PATHS: &[&str] = &["/health", "/ready", "/"];

/// Routes that never shed load: a liveness probe answers while the process runs.
const UNSHED_PATHS: &[&str] = &["/health"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ringkv",
        description = "The HTTP API of a ringkv node: a leaderless, Dynamo-style key-value \
                       store. Every peer serves the whole API. Every error has the JSON shape \
                       `{\"error\": code, \"message\": text}`. Unknown query parameters are a \
                       400, never ignored."
    ),
    paths(
        super::kv::get_key,
        super::kv::head_key,
        super::kv::put_key,
        super::kv::delete_key,
        super::list::list,
        super::batch::batch,
        super::health,
        super::ready,
        super::debug_local,
        super::debug_keys::keys,
        super::cluster::preflist,
        super::cluster::replication,
        super::workers::workers,
        super::cluster::cluster,
        super::metrics::metrics,
        super::admin_leave,
        super::admin_remove,
        serve,
        super::dashboard::page,
        super::dashboard::data,
    ),
    // Schemas only parameters name are not collected from the paths.
    components(schemas(ErrorBody, QuorumParam, AnyEtag)),
    modifiers(&Shared),
    tags(
        (name = "kv", description = "Keys and values: reads, writes, listings, batches"),
        (name = "probes", description = "Liveness and readiness"),
        (name = "cluster", description = "Membership and the ring"),
        (name = "debug", description = "What this node stores and does; not a client API"),
        (name = "admin", description = "Membership changes"),
        (name = "dashboard", description = "The operator's page in a browser"),
    )
)]
struct ApiDoc;

/// The document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    // A document of our own types always serializes; an empty one would be caught by the
    // test that compares it with docs/openapi.json.
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    camel_case_links(&mut doc);
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
});

/// utoipa 5 writes a Link Object's `operationId` and `operationRef` in snake case, which
/// no client reads (the OpenAPI names are camel case); renamed here, where the links are.
fn camel_case_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// The document as JSON text, as committed in docs/openapi.json.
pub fn document_json() -> &'static str {
    &DOCUMENT
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub(super) async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}

/// `{key}` in `/kv/{key}`, `/debug/local/{key}`, `/debug/preflist/{key}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only describes the path: the handlers parse the raw URI themselves
pub struct KeyPath {
    /// The key: UTF-8, 1 to 1024 bytes once decoded, percent-encoded in the path (`/` may
    /// stay raw or be sent as `%2F`). A bad escape, bad UTF-8 or a key over 1024 bytes is
    /// `400 bad_key`.
    #[param(min_length = 1, max_length = 1024)]
    key: String,
}

/// `r` and `timeout_ms`: the query of a read.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: handlers parse it with `params::Query`
pub struct ReadQuery {
    /// Replicas that must answer: `1`..`N`, `one`, `quorum` or `all` (clamped to the
    /// member count). Anything else is `400 bad_param`.
    #[param(value_type = Option<QuorumParam>)]
    r: Option<String>,
    /// How long the coordinator waits for replicas, in ms (default `--request-timeout`).
    #[param(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
}

/// `w` and `timeout_ms`: the query of a delete.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: handlers parse it with `params::Query`
pub struct WriteQuery {
    /// Replicas that must acknowledge: `1`..`N`, `one`, `quorum` or `all` (clamped to the
    /// member count). Anything else is `400 bad_param`.
    #[param(value_type = Option<QuorumParam>)]
    w: Option<String>,
    /// How long the coordinator waits for replicas, in ms (default `--request-timeout`).
    #[param(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
}

/// `w`, `timeout_ms` and `returnbody`: the query of a PUT.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: handlers parse it with `params::Query`
pub struct PutQuery {
    /// Replicas that must acknowledge: `1`..`N`, `one`, `quorum` or `all` (clamped to the
    /// member count). Anything else is `400 bad_param`.
    #[param(value_type = Option<QuorumParam>)]
    w: Option<String>,
    /// How long the coordinator waits for replicas, in ms (default `--request-timeout`).
    #[param(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
    /// Answer with the stored result as `GET` answers it (200 or 300) instead of 204.
    returnbody: Option<bool>,
}

/// `r`, `w` and `timeout_ms`: the query of a batch (each op uses the one it needs).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: handlers parse it with `params::Query`
pub struct BatchQuery {
    /// Replicas that must answer a `get` op: `1`..`N`, `one`, `quorum` or `all`.
    #[param(value_type = Option<QuorumParam>)]
    r: Option<String>,
    /// Replicas that must acknowledge a `put` or `delete` op: `1`..`N`, `one`, `quorum`
    /// or `all`.
    #[param(value_type = Option<QuorumParam>)]
    w: Option<String>,
    /// How long the coordinator waits for replicas, per op, in ms.
    #[param(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
}

/// `GET /kv`'s query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: the handler parses it with `params::Query`
pub struct ListQuery {
    /// Only keys that start with this.
    prefix: Option<String>,
    /// The first key listed, inclusive.
    start: Option<String>,
    /// Keys before this one, exclusive.
    end: Option<String>,
    /// Items per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// The `next_cursor` of the page before; anything else is `400 bad_param`.
    cursor: Option<String>,
    /// Accepted as on every KV call; a listing merges every healthy member's scan.
    #[param(value_type = Option<QuorumParam>)]
    r: Option<String>,
    /// How long the coordinator waits for the members' scans, in ms.
    #[param(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
}

/// `GET /debug/keys`'s query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: the handler parses it with `params::Query`
pub struct DebugKeysQuery {
    /// List keys after this one (the `next_after` of the page before).
    after: Option<String>,
    /// Keys per page (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u64>,
}

/// `POST /admin/remove/{id}`'s query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only describes the query: the handler parses it with `params::Query`
pub struct RemoveQuery {
    /// Remove the member even while the failure detector holds it live; it then stops
    /// serving.
    force: Option<bool>,
}

/// `r` and `w`: a count of replicas, or a name for one.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^([1-9][0-9]*|one|quorum|all)$")]
#[allow(dead_code)] // only describes the parameter: `Quorum::parse` reads it
pub struct QuorumParam(String);

/// `If-None-Match`: only `*` is taken.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // only describes the header: `kv::create_only` reads it
pub enum AnyEtag {
    #[serde(rename = "*")]
    Any,
}

/// A value as it is stored: any bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // only describes the body: the handler takes it as `Bytes`
pub struct RawValue(Vec<u8>);

/// `GET /health`'s body.
#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /ready`'s 200 body. `writable` and what follows are there only when the storage
/// refuses writes (the node still serves reads).
#[derive(Serialize, ToSchema)]
pub struct ReadyBody {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: String,
    pub writable: Option<bool>,
    pub write_state: Option<String>,
    pub reason: Option<String>,
}

/// `GET /ready`'s 503 body: the error shape, plus `status` and `reason`.
#[derive(Serialize, ToSchema)]
pub struct NotReadyBody {
    /// `not_ready` (starting, no seed answered, rejoining), or `removed`.
    pub error: String,
    pub message: String,
    /// Always `not_ready`.
    pub status: String,
    pub reason: String,
}

/// `POST /admin/leave`'s body.
#[derive(Serialize, ToSchema)]
pub struct LeaveBody {
    /// `leaving`, or `already leaving`.
    pub status: String,
}

/// `POST /admin/remove/{id}`'s body.
#[derive(Serialize, ToSchema)]
pub struct RemoveBody {
    /// Always `removed`.
    pub status: String,
    pub id: String,
    pub forced: bool,
}

/// A `put` op's `encoding`, and a sibling's: how `value` is written in JSON.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only describes the field: the handlers carry it as a `&str`
pub enum Encoding {
    Utf8,
    Base64,
}

/// What a batch op does.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only describes the field: the handler matches it as a `&str`
pub enum BatchOpKind {
    Put,
    Get,
    Delete,
}

/// What every route shares, added to the assembled paths.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_AUTH,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`, when the node is started with a \
                         client token; without one, requests are not authenticated.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = OPEN_PATHS.contains(&path.as_str());
            let shed = !UNSHED_PATHS.contains(&path.as_str());
            let admin = path.starts_with("/admin/");
            let ops = [
                (&mut item.get, false),
                (&mut item.head, true),
                (&mut item.put, false),
                (&mut item.delete, false),
                (&mut item.post, false),
            ];
            for (op, head) in ops {
                if let Some(op) = op.as_mut() {
                    let takes_body = op.request_body.is_some();
                    shared_responses(op, open, admin, shed, head, takes_body);
                }
            }
        }
    }
}

fn error_response(description: &str) -> ApiResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                .build(),
        )
        .build()
}

/// Adds auth, load shedding and body deadlines to one operation. A HEAD answer has no body,
/// so its responses describe none. `admin` routes also answer 403 to a client token when
/// the node has admin tokens of its own.
fn shared_responses(
    op: &mut Operation,
    open: bool,
    admin: bool,
    shed: bool,
    head: bool,
    takes_body: bool,
) {
    let strip = |mut r: ApiResponse| {
        if head {
            r.content.clear();
        }
        r
    };
    let responses = &mut op.responses.responses;
    // The serve loop checks every request's head before routing (`http::serve`).
    responses.entry("414".to_owned()).or_insert_with(|| {
        RefOr::T(strip(error_response(
            "`uri_too_long`: the request's URI is over 8 KiB",
        )))
    });
    responses.entry("431".to_owned()).or_insert_with(|| {
        RefOr::T(strip(error_response(
            "`headers_too_large`: over 100 headers, or a head over 16 KiB",
        )))
    });
    if open {
        // An empty requirement list: this route takes no credentials.
        op.security = Some(Vec::new());
    } else {
        op.security = Some(vec![SecurityRequirement::new(
            BEARER_AUTH,
            Vec::<String>::new(),
        )]);
        let mut unauthorized = error_response(
            "`unauthorized`: the node requires `Authorization: Bearer <token>` and the request \
             had none, or a wrong one",
        );
        unauthorized.headers.insert(
            "WWW-Authenticate".to_owned(),
            HeaderBuilder::new()
                .schema(<String as PartialSchema>::schema())
                .description(Some("`Bearer`"))
                .build(),
        );
        responses.insert("401".to_owned(), RefOr::T(strip(unauthorized)));
        if admin {
            responses.insert(
                "403".to_owned(),
                RefOr::T(strip(error_response(
                    "`forbidden`: the node has admin tokens (`--admin-token-file`) and the \
                     request carried a client token",
                ))),
            );
        }
    }
    if takes_body {
        responses.entry("408".to_owned()).or_insert_with(|| {
            RefOr::T(strip(error_response(
                "`timeout`: the request body did not arrive in time",
            )))
        });
    }
    if !shed {
        return;
    }
    let retry_after = HeaderBuilder::new()
        .schema(<u64 as PartialSchema>::schema())
        .description(Some("Seconds to wait before retrying (with `overloaded`)"))
        .build();
    let overloaded = "`overloaded`: the node sheds load; retry after `Retry-After` seconds";
    match responses.get_mut("503") {
        Some(RefOr::T(existing)) => {
            existing.description = format!("{}; or {overloaded}", existing.description);
            existing
                .headers
                .insert("Retry-After".to_owned(), retry_after);
        }
        _ => {
            let mut r = error_response(overloaded);
            r.headers.insert("Retry-After".to_owned(), retry_after);
            responses.insert("503".to_owned(), RefOr::T(strip(r)));
        }
    }
}
