//! Listings are bounded in bytes, not only in keys (`--max-list-bytes`). With 1 MB values
//! and a 4 MiB bound, a page of `limit=1000` keys would hold every value at once; each
//! page must instead stay under the bound, and a full pass must still return every key
//! exactly once, on one node and merged across three. Writes are not what is tested:
//! periodic fsync and a long request timeout keep 1 MB writes from timing out on a loaded
//! machine.

mod common;

use std::collections::BTreeMap;

use common::cluster::*;
use common::{decode_siblings, json_body, TestNode};

const VALUE_BYTES: usize = 1_000_000;
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

fn key(i: usize) -> String {
    format!("big/{i:03}")
}

/// A value that says which key it belongs to, UTF-8 so that pages carry it as text.
fn value(i: usize) -> Vec<u8> {
    format!("{i:08}").repeat(VALUE_BYTES / 8).into_bytes()
}

async fn write_values(nodes: &[TestNode], count: usize) {
    let errors = for_each_bounded(0..count, 2, |i| {
        let node = &nodes[i % nodes.len()];
        async move {
            try_put(node, &key(i), &value(i), None, &[])
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_no_errors(&errors, "writes");
}

/// Pages through `GET /kv?prefix=big/&limit=1000` on `node`, checking each page's value
/// bytes against the bound and each value's content; returns how often each key came and
/// how many pages it took.
async fn list_pass(node: &TestNode, count: usize) -> (BTreeMap<String, usize>, usize) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    // Bounded: a page holds at least one key, so `count + 1` pages end any correct pass.
    for page in 1..=count + 1 {
        let mut query = vec![("prefix", "big/".to_owned()), ("limit", "1000".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let resp = node
            .client
            .get(node.url("/kv"))
            .query(&query)
            .send()
            .await
            .expect("GET /kv");
        let body = json_body(resp, "listing page").await;
        let items = body["items"].as_array().expect("items");
        let mut bytes = 0usize;
        for item in items {
            let k = item["key"].as_str().expect("key").to_owned();
            let i: usize = k["big/".len()..].parse().expect("key index");
            let siblings = decode_siblings(&item["siblings"], &k);
            assert_eq!(siblings.len(), 1, "{k}: one value");
            assert!(siblings[0].value == value(i), "{k}: value differs");
            bytes += k.len() + siblings[0].value.len() + siblings[0].content_type.len();
            *seen.entry(k).or_default() += 1;
        }
        assert!(
            bytes <= MAX_LIST_BYTES,
            "page {page}: {} items, {bytes} bytes of values > {MAX_LIST_BYTES}",
            items.len()
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (seen, page),
        }
    }
    panic!("listing did not end within {} pages", count + 1);
}

fn assert_every_key_once(seen: &BTreeMap<String, usize>, count: usize) {
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "keys listed more than once: {repeated:?}"
    );
    let missing: Vec<String> = (0..count)
        .map(key)
        .filter(|k| !seen.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "keys never listed: {missing:?}");
    assert_eq!(seen.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_large_values_pages_within_the_byte_bound() {
    const COUNT: usize = 40;
    let bound = MAX_LIST_BYTES.to_string();
    let node = TestNode::start_with(&[
        "--max-list-bytes",
        &bound,
        "--fsync",
        "periodic",
        "--request-timeout",
        "30s",
    ])
    .await;
    write_values(std::slice::from_ref(&node), COUNT).await;

    let (seen, pages) = list_pass(&node, COUNT).await;
    assert_every_key_once(&seen, COUNT);
    // Four values of 1 MB (and their keys and types) fit in 4 MiB, five do not; a page
    // bounded only in keys would have held all forty.
    assert!(
        pages >= COUNT / 4,
        "{pages} pages: the byte bound did not cut"
    );

    // /debug/keys shows no values, but reads whole sets: it pages within the bound too.
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..=COUNT {
        let mut query = vec![("limit", "10000".to_owned())];
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let resp = node
            .client
            .get(node.url("/debug/keys"))
            .query(&query)
            .send()
            .await
            .expect("GET /debug/keys");
        let body = json_body(resp, "debug keys page").await;
        let page = body["keys"].as_array().expect("keys");
        assert!(
            page.len() <= MAX_LIST_BYTES / VALUE_BYTES + 1,
            "{} keys on one /debug/keys page",
            page.len()
        );
        keys.extend(
            page.iter()
                .map(|k| k["key"].as_str().expect("key").to_owned()),
        );
        match body["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!(keys, (0..COUNT).map(key).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_listing_of_large_values_pages_within_the_byte_bound() {
    const COUNT: usize = 24;
    let bound = MAX_LIST_BYTES.to_string();
    let cluster = Cluster::start(
        3,
        &[
            "--gossip-interval",
            "100ms",
            "--max-list-bytes",
            &bound,
            "--fsync",
            "periodic",
            "--request-timeout",
            "30s",
            "--rpc-timeout",
            "30s",
        ],
    )
    .await;
    write_values(&cluster.nodes, COUNT).await;
    for node in &cluster.nodes {
        let (seen, _) = list_pass(node, COUNT).await;
        assert_every_key_once(&seen, COUNT);
    }
}
