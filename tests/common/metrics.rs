//! Reading one sample of a node's Prometheus text (`GET /metrics`), the scrape several
//! scenarios share.

use reqwest::StatusCode;

use super::TestNode;

/// `GET /metrics` on `node`: the Prometheus text (must be 200).
pub async fn metrics_text(node: &TestNode) -> String {
    let resp = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics on {}: {e}", node.addr));
    let status = resp.status();
    let text = resp.text().await.expect("metrics body");
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /metrics on {}: {text}",
        node.addr
    );
    text
}

/// The value of the unlabelled sample `name` in Prometheus `text`, if present. Counters are
/// integers; a gauge written as a float (`3.0`) is accepted when it is a whole number, so a
/// fractional or negative value is `None` rather than silently rounded.
pub fn sample(text: &str, name: &str) -> Option<u64> {
    let raw = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim();
    raw.parse::<u64>().ok().or_else(|| {
        let f = raw.parse::<f64>().ok()?;
        (f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
    })
}

/// The unlabelled sample `name` of `node`'s `/metrics`, failing the test (with the whole
/// text) when it is missing or not a count.
pub async fn metric(node: &TestNode, name: &str) -> u64 {
    let text = metrics_text(node).await;
    sample(&text, name).unwrap_or_else(|| panic!("no count {name} in /metrics:\n{text}"))
}
