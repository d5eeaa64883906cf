//! The dashboard: `GET /` serves one self-contained page (`dashboard.html`: inline CSS and
//! JS, no external asset, no build step), and `GET /debug/dashboard` the JSON it needs
//! beyond `/cluster` and `/debug/replication`: the ring's arcs and this node's requests.
//!
//! Auth: `/` is open even with `--auth-token-file`, because the page holds no data: it is
//! the same constant text on every node, and everything it shows comes from the JSON
//! routes, which need the token like any other. A browser cannot attach a bearer token to
//! a page it navigates to, so the alternative would be a token in the URL (kept in
//! history, logs and `Referer`s) or a cookie (a CSRF surface the API does not have
//! today). Instead, when a JSON route answers 401 the page asks for the token, keeps it in
//! `sessionStorage` (this tab only, gone when it closes) and sends
//! `Authorization: Bearer` itself. A strict Content-Security-Policy pins the one inline
//! script by its hash and allows fetches to this origin only.

use std::sync::{Arc, LazyLock};

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cluster::ring::Ring;
use crate::cluster::NodeId;
use crate::stats::requests::RequestWindow;

use super::error::ApiError;
use super::params::Query;
use super::AppState;

/// The page, compiled in.
const PAGE: &str = include_str!("dashboard.html");

/// The most arcs one ring is drawn with. A ring with more tokens (1024 members of 4096
/// vnodes is 4M) is sampled at this many equal slices instead, each coloured by the
/// owner of its midpoint: the picture stays right at the scale a screen shows, and the
/// answer stays small (about 60 KiB at most).
pub const MAX_ARCS: usize = 2048;

/// The page's Content-Security-Policy: its one inline script by hash, fetches to this
/// origin only, no frames, forms or other sources.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&content_security_policy(PAGE))
        // Base64 and ASCII text only: cannot fail. Were it to, nothing would be allowed.
        .unwrap_or(HeaderValue::from_static("default-src 'none'"))
});

fn content_security_policy(page: &str) -> String {
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses(
        (status = 200, description = "The dashboard: one HTML page with its CSS and script inline, the same on every node; it reads `/cluster`, `/debug/replication` and `/debug/dashboard`, sending a bearer token when the node needs one", content_type = "text/html", body = String),
        (status = 400, description = "`bad_param`: the page takes no query parameter (never a token in the URL)", body = super::error::ErrorBody),
    ),
)]
/// `GET /`: the dashboard page.
pub async fn page(RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    Query::parse(query.as_deref(), &[])?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidated on every load: a node upgraded under an open tab serves its own page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok((headers, PAGE).into_response())
}

/// A ring as the dashboard draws it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RingArcs {
    /// The ring's hash, as `/cluster` shows it.
    pub hash: String,
    /// The ring's members, sorted: `arcs` name them by index.
    pub members: Vec<String>,
    /// `[start, end, member]`: a share of the circle from `start` to `end` (fractions of
    /// the token space, 0 at the top, clockwise) whose keys `members[member]` is first in
    /// the preference list for. Adjacent arcs of one member are merged; together they
    /// cover the circle once.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub arcs: Vec<(f64, f64, usize)>,
    /// Sampled at [`MAX_ARCS`] slices: the ring has more tokens than that.
    pub approximate: bool,
}

/// The `/debug/dashboard` document.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DashboardJson {
    pub node_id: String,
    /// The ring reads use.
    pub ring: RingArcs,
    /// The ring writes also go to, while data moves (a member joining or leaving);
    /// `null` when it is the read ring.
    pub write_ring: Option<RingArcs>,
    /// This node's KV requests: the rolling window and the per-second history.
    pub requests: RequestWindow,
}

#[utoipa::path(
    get,
    path = "/debug/dashboard",
    tag = "debug",
    responses(
        (status = 200, description = "What the dashboard draws beyond `/cluster` and `/debug/replication`: the rings' arcs and this node's request rates and latencies", body = DashboardJson),
        (status = 400, description = "`bad_param`: this route takes no query parameter", body = super::error::ErrorBody),
    ),
)]
/// `GET /debug/dashboard`.
pub async fn data(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<DashboardJson>, ApiError> {
    Query::parse(query.as_deref(), &[])?;
    let view = state.coord.view();
    let moving = view.write_ring.hash() != view.ring.hash();
    Ok(Json(DashboardJson {
        node_id: view.self_id.to_string(),
        ring: ring_arcs(&view.ring, MAX_ARCS),
        write_ring: moving.then(|| ring_arcs(&view.write_ring, MAX_ARCS)),
        requests: state.requests.window(),
    }))
}

/// The arcs of `ring`, exact when it has at most `max_arcs` tokens, sampled at `max_arcs`
/// equal slices otherwise.
pub fn ring_arcs(ring: &Ring, max_arcs: usize) -> RingArcs {
    let max_arcs = max_arcs.max(1);
    let members = ring.members();
    let index = |id: NodeId| members.binary_search(&id).unwrap_or(0);
    let mut arcs: Vec<(f64, f64, usize)> = Vec::new();
    let tokens = ring.tokens();
    let approximate = tokens.len() > max_arcs;
    if let Some(&(_, first_owner)) = tokens.first() {
        let mut start = 0.0;
        if approximate {
            // Slice i is [i, i + 1) / max_arcs of the circle; its keys mostly go where
            // its midpoint's key goes.
            let width = (1u128 << 64) / max_arcs as u128;
            for i in 0..max_arcs as u128 {
                let mid = u64::try_from(i * width + width / 2).unwrap_or(u64::MAX);
                let owner = ring.preference_list_at(mid, 1).first().copied();
                let end = (i + 1) as f64 / max_arcs as f64;
                push_arc(&mut arcs, start, end, owner.map_or(0, index));
                start = end;
            }
        } else {
            // The arc ending at a token belongs to the token's node; at a position two
            // nodes share, the first (the lowest id) comes first on every walk.
            let mut last = None;
            for &(position, owner) in tokens {
                if last == Some(position) {
                    continue;
                }
                last = Some(position);
                let end = fraction(position);
                push_arc(&mut arcs, start, end, index(owner));
                start = end;
            }
            // Past the last token, keys wrap round to the first one.
            push_arc(&mut arcs, start, 1.0, index(first_owner));
        }
    }
    RingArcs {
        hash: ring.hash_hex(),
        members: members.iter().map(|id| id.to_string()).collect(),
        arcs,
        approximate,
    }
}

/// Extends the last arc when it is the same member's, so adjacent vnodes draw as one.
fn push_arc(arcs: &mut Vec<(f64, f64, usize)>, start: f64, end: f64, member: usize) {
    match arcs.last_mut() {
        Some(last) if last.2 == member => last.1 = end,
        _ => arcs.push((start, end, member)),
    }
}

/// A token's place on the circle, rounded to 1e-7 (a hundredth of a pixel on any screen)
/// to keep the JSON short.
fn fraction(position: u64) -> f64 {
    let f = position as f64 / 18_446_744_073_709_551_616.0;
    (f * 1e7).round() / 1e7
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers_the_circle_once(r: &RingArcs) {
        assert!(!r.arcs.is_empty());
        assert_eq!(r.arcs[0].0, 0.0);
        assert_eq!(r.arcs[r.arcs.len() - 1].1, 1.0);
        for pair in r.arcs.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "arcs are contiguous");
            assert_ne!(
                pair[0].2, pair[1].2,
                "adjacent arcs of one member are merged"
            );
        }
        for &(start, end, member) in &r.arcs {
            assert!(start <= end, "{start} > {end}");
            assert!(member < r.members.len());
        }
    }

    /// The share each member's arcs add up to.
    fn shares(r: &RingArcs) -> Vec<f64> {
        let mut shares = vec![0.0; r.members.len()];
        for &(start, end, member) in &r.arcs {
            shares[member] += end - start;
        }
        shares
    }

    #[test]
    fn exact_arcs_match_the_rings_ownership() {
        let ids = [NodeId(3), NodeId(1), NodeId(2)];
        let ring = Ring::new(ids, 64);
        let r = ring_arcs(&ring, MAX_ARCS);
        assert!(!r.approximate);
        assert_eq!(r.hash, ring.hash_hex());
        assert_eq!(
            r.members,
            [NodeId(1), NodeId(2), NodeId(3)].map(|id| id.to_string())
        );
        covers_the_circle_once(&r);
        let ownership = ring.ownership();
        for (i, share) in shares(&r).into_iter().enumerate() {
            let want = ownership[&ring.members()[i]];
            assert!((share - want).abs() < 1e-5, "member {i}: {share} vs {want}");
        }
        // Each arc's owner is who a key inside it goes to.
        for &(start, end, member) in &r.arcs {
            let mid = ((start + end) / 2.0 * 18_446_744_073_709_551_616.0) as u64;
            assert_eq!(
                ring.preference_list_at(mid, 1)[0],
                ring.members()[member],
                "arc {start}..{end}"
            );
        }
    }

    #[test]
    fn a_large_ring_is_sampled_within_the_bound() {
        let ring = Ring::new((1..=40).map(NodeId), 256);
        let r = ring_arcs(&ring, 512);
        assert!(r.approximate);
        assert!(r.arcs.len() <= 512, "{} arcs", r.arcs.len());
        covers_the_circle_once(&r);
        // Sampling keeps every member's share roughly (40 members, 512 slices).
        let ownership = ring.ownership();
        for (i, share) in shares(&r).into_iter().enumerate() {
            let want = ownership[&ring.members()[i]];
            assert!((share - want).abs() < 0.02, "member {i}: {share} vs {want}");
        }
    }

    #[test]
    fn one_member_is_one_arc_and_no_member_none() {
        let r = ring_arcs(&Ring::new([NodeId(7)], 128), MAX_ARCS);
        assert_eq!(r.arcs, vec![(0.0, 1.0, 0)]);
        let empty = ring_arcs(&Ring::default(), MAX_ARCS);
        assert!(empty.arcs.is_empty() && empty.members.is_empty());
    }

    #[test]
    fn the_policy_pins_the_pages_script() {
        let csp = content_security_policy(PAGE);
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(s, _)| s)
            .expect("the page has one inline script");
        assert!(script.len() > 1000, "the script is the page's code");
        assert_eq!(PAGE.matches("<script").count(), 1, "one script only");
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        assert!(
            csp.contains(&format!("script-src 'sha256-{hash}'")),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        for external in ["http://", "https://", "//cdn", "src=\"//"] {
            assert!(!PAGE.contains(external), "the page names {external}");
        }
    }
}
