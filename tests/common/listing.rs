//! Paging through `GET /kv?prefix=` until the cursor ends (bounded), as several scenarios
//! do.

use reqwest::StatusCode;
use serde_json::Value;

use super::TestNode;

/// Every key under `prefix` listed through `node`, `page` keys per request, in the order
/// the pages gave them; at most `max_pages` requests (a cursor that never ends fails the
/// test). `Err` carries the first non-200 answer.
pub async fn list_prefix(
    node: &TestNode,
    prefix: &str,
    page: usize,
    max_pages: usize,
) -> Result<Vec<String>, (StatusCode, Value)> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..max_pages {
        let mut query = vec![("prefix", prefix.to_owned()), ("limit", page.to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let resp = node
            .client
            .get(node.url("/kv"))
            .query(&query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /kv on {}: {e}", node.addr));
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON listing");
        if status != StatusCode::OK {
            return Err((status, body));
        }
        for item in body["items"].as_array().expect("items") {
            keys.push(item["key"].as_str().expect("key").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(keys),
        }
    }
    panic!("listing {prefix:?} did not end within {max_pages} pages");
}
