//! Forged causality tokens against a 3-node cluster (N=3): counters at u64::MAX and
//! u64::MAX−1 for every member's actor (read from `/debug/local/{key}`), a token of 1,000
//! invented actors, and a token of another key. After each, the write is refused (400
//! `bad_token`) or readable at `r=all`; no replica stores the forged claims; and a
//! bystander's later write to another key, through each node, is readable at `r=all`.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::{assert_error, decode_siblings, json_body, TestNode, TOKEN_HEADER};
use reqwest::StatusCode;
use ringkv::version::{key_hash, Actor, CausalityToken, VersionVector};

const KEY: &str = "forged/victim";

/// An actor as `/debug/local` prints it: `{node:016x}.{epoch}`.
fn parse_actor(text: &str) -> Actor {
    let (node, epoch) = text
        .split_once('.')
        .unwrap_or_else(|| panic!("actor {text:?} is not node.epoch"));
    Actor {
        node: u64::from_str_radix(node, 16).unwrap_or_else(|e| panic!("{text:?}: {e}")),
        epoch: epoch.parse().unwrap_or_else(|e| panic!("{text:?}: {e}")),
    }
}

/// A token for `key` claiming `context`, encoded as the product encodes tokens.
fn forge(key: &str, context: VersionVector) -> String {
    CausalityToken {
        key_hash: key_hash(key.as_bytes()),
        context,
    }
    .encode()
}

/// The live values of `key` read at `r=all` through `node` (200 or 300; 404 is none).
async fn live_at_all(node: &TestNode, key: &str) -> Vec<Vec<u8>> {
    let resp = node
        .client
        .get(node.kv_url(key))
        .query(&[("r", "all")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key:?}: {e}"));
    match resp.status() {
        StatusCode::OK => vec![resp.bytes().await.expect("body").to_vec()],
        StatusCode::MULTIPLE_CHOICES => {
            let body = json_body(resp, key).await;
            decode_siblings(&body["siblings"], key)
                .into_iter()
                .map(|s| s.value)
                .collect()
        }
        StatusCode::NOT_FOUND => Vec::new(),
        other => panic!(
            "GET {key:?} r=all: {other}: {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

async fn put(node: &TestNode, key: &str, value: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = node
        .client
        .put(node.kv_url(key))
        .query(&[("w", "all")])
        .body(value.to_owned());
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    req.send().await.expect("PUT request failed")
}

/// Every node's stored context of `key`: no counter the cluster did not issue itself.
async fn assert_no_forged_claims(cluster: &Cluster, key: &str, what: &str) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        let Some(set) = local(node, key).await else {
            continue;
        };
        for entry in set["context"].as_array().expect("context array") {
            let counter = entry["counter"].as_u64().expect("counter");
            assert!(
                counter < 1_000_000,
                "{what}: node {} stores a forged claim {entry} for {key:?}: {set}",
                i + 1
            );
        }
    }
}

/// A bystander writes a fresh key through every node; each write must read back at r=all.
async fn bystander_writes(cluster: &Cluster, round: &str) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        let key = format!("forged/bystander-{round}-{i}");
        let value = format!("bystander {round} via node {}", i + 1);
        let resp = put(node, &key, &value, None).await;
        assert_eq!(
            resp.status(),
            StatusCode::NO_CONTENT,
            "{round}: bystander PUT {key:?}: {}",
            resp.text().await.unwrap_or_default()
        );
        let other = &cluster.nodes[(i + 1) % cluster.nodes.len()];
        assert_eq!(
            live_at_all(other, &key).await,
            vec![value.into_bytes()],
            "{round}: bystander's {key:?} at r=all"
        );
    }
}

/// The outcome every forged write must have: refused as `bad_token`, or stored and readable.
async fn refused_or_readable(
    cluster: &Cluster,
    via: usize,
    key: &str,
    token: &str,
    what: &str,
) -> bool {
    let value = format!("written with {what}");
    let resp = put(&cluster.nodes[via], key, &value, Some(token)).await;
    match resp.status() {
        StatusCode::BAD_REQUEST => {
            assert_error(resp, StatusCode::BAD_REQUEST, "bad_token", what).await;
            false
        }
        StatusCode::NO_CONTENT => {
            for node in &cluster.nodes {
                let live = live_at_all(node, key).await;
                assert!(
                    live.contains(&value.clone().into_bytes()),
                    "{what}: answered 204 but r=all reads {:?}",
                    common::cluster::lossy(&live)
                );
            }
            // A later ordinary write to the same key reads back too: the key is not dead.
            let after = format!("after {what}");
            let resp = put(&cluster.nodes[(via + 1) % 3], key, &after, None).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{what}: next PUT");
            let live = live_at_all(&cluster.nodes[via], key).await;
            assert!(
                live.contains(&after.into_bytes()),
                "{what}: the next write to {key:?} is lost: {:?}",
                common::cluster::lossy(&live)
            );
            true
        }
        other => panic!(
            "{what}: PUT answered {other}: {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_destroy_nothing() {
    let cluster = Cluster::start(3, &FAST_GOSSIP).await;

    // Every node coordinates one write of the key, so that its context names every
    // member's actor.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let resp = put(node, KEY, &format!("seed via node {}", i + 1), None).await;
        assert_eq!(
            resp.status(),
            StatusCode::NO_CONTENT,
            "seed PUT via node {}",
            i + 1
        );
    }
    let set = wait_until(
        Duration::from_secs(10),
        "the key's context names 3 actors",
        || async {
            match try_local(&cluster.nodes[0], KEY).await? {
                Some(set) if set["context"].as_array().map_or(0, Vec::len) == 3 => Ok(set),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let actors: Vec<Actor> = set["context"]
        .as_array()
        .expect("context")
        .iter()
        .map(|e| parse_actor(e["actor"].as_str().expect("actor")))
        .collect();
    let every = |counter: u64| -> VersionVector { actors.iter().map(|a| (*a, counter)).collect() };

    // 1. Every member's actor at u64::MAX: a claim no node ever issues.
    let token = forge(KEY, every(u64::MAX));
    assert!(
        !refused_or_readable(&cluster, 0, KEY, &token, "every actor at u64::MAX").await,
        "a token at u64::MAX must be refused"
    );
    let resp = cluster.nodes[1]
        .client
        .delete(cluster.nodes[1].kv_url(KEY))
        .header(TOKEN_HEADER, &token)
        .send()
        .await
        .expect("DELETE");
    assert_error(
        resp,
        StatusCode::BAD_REQUEST,
        "bad_token",
        "DELETE at u64::MAX",
    )
    .await;
    assert_no_forged_claims(&cluster, KEY, "after u64::MAX").await;
    bystander_writes(&cluster, "max").await;

    // 2. Every member's actor at u64::MAX−1, through each node: clamped to what the
    // replica has seen, so it is a blind write, and nothing wraps.
    for via in 0..3 {
        let token = forge(KEY, every(u64::MAX - 1));
        let what = format!("every actor at u64::MAX-1 via node {}", via + 1);
        refused_or_readable(&cluster, via, KEY, &token, &what).await;
        assert_no_forged_claims(&cluster, KEY, &what).await;
    }
    bystander_writes(&cluster, "max-1").await;

    // 3. Each node's own actor at u64::MAX−1 on the client's own key: the node-wide dot
    // floor must not move, so a bystander's write through that node still reads back.
    for (via, actor) in actors.iter().enumerate() {
        let own = format!("forged/own-{via}");
        let token = forge(&own, [(*actor, u64::MAX - 1)].into_iter().collect());
        // The token names one actor; send it through every node, including its own.
        for node in 0..3 {
            let what = format!("actor {actor} at u64::MAX-1 via node {}", node + 1);
            refused_or_readable(&cluster, node, &own, &token, &what).await;
        }
        assert_no_forged_claims(&cluster, &own, "own key at u64::MAX-1").await;
    }
    bystander_writes(&cluster, "own").await;

    // 4. A token of 1,000 invented actors.
    let invented: VersionVector = (0..1000u64)
        .map(|n| {
            (
                Actor {
                    node: 0xdead_0000 + n,
                    epoch: 3,
                },
                n + 1,
            )
        })
        .collect();
    let token = forge(KEY, invented);
    assert!(
        !refused_or_readable(&cluster, 2, KEY, &token, "1,000 invented actors").await,
        "1,000 actors must be refused"
    );
    assert_no_forged_claims(&cluster, KEY, "after 1,000 actors").await;
    bystander_writes(&cluster, "invented").await;

    // 5. A real token of another key.
    let resp = put(&cluster.nodes[0], "forged/elsewhere", "x", None).await;
    let foreign = common::token(&resp).expect("PUT returns a token");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let before = live_at_all(&cluster.nodes[0], KEY).await;
    let resp = put(
        &cluster.nodes[1],
        KEY,
        "with another key's token",
        Some(&foreign),
    )
    .await;
    let body = assert_error(
        resp,
        StatusCode::BAD_REQUEST,
        "bad_token",
        "another key's token",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("another key")),
        "{body}"
    );
    assert_eq!(
        live_at_all(&cluster.nodes[2], KEY).await,
        before,
        "nothing written"
    );
    bystander_writes(&cluster, "foreign").await;

    // The key's own token, read now, is accepted and resolves it to one value.
    let resp = cluster.nodes[0]
        .client
        .get(cluster.nodes[0].kv_url(KEY))
        .query(&[("r", "all")])
        .send()
        .await
        .expect("GET");
    let own = common::token(&resp).expect("GET returns a token");
    let resp = put(&cluster.nodes[2], KEY, "resolved", Some(&own)).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "PUT with the key's own token"
    );
    assert_eq!(
        live_at_all(&cluster.nodes[1], KEY).await,
        vec![b"resolved".to_vec()]
    );
}
