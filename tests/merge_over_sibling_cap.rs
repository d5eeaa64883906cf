//! A replica whose `--max-siblings` is lower than its coordinator's still stores a merge
//! that leaves a key over its cap (the write was acknowledged elsewhere; refusing it would
//! lose it), and says so: counted in `/debug/replication` and `/metrics`, logged with the
//! key.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::TestNode;
use reqwest::StatusCode;

const K: &str = "cap/k";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_over_the_cap_is_stored_counted_and_logged() {
    let first = TestNode::start_with(&FAST_GOSSIP).await;
    let low_cap = start_joiner(
        &first,
        &["--gossip-interval", "100ms", "--max-siblings", "2"],
        Duration::from_secs(30),
    )
    .await;
    let cluster = Cluster {
        nodes: vec![first, low_cap],
    };
    cluster.wait_health(&cluster.all(), CONVERGE_TIMEOUT).await;
    let (coordinator, replica) = (&cluster.nodes[0], &cluster.nodes[1]);

    // Three writes over the same (empty) token through node 1: three siblings, within
    // node 1's cap of 64, over node 2's cap of 2. W=all: node 2 must store each.
    let resp = coordinator.get(K).await;
    let empty = common::token(&resp).expect("the 404 carries a token");
    for v in ["a", "b", "c"] {
        try_put(coordinator, K, v.as_bytes(), Some(&empty), &[("w", "all")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    local_has_exactly(replica, K, &[b"a", b"b", b"c"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let stats = replication_json(replica).await;
    assert!(
        counter(&stats, "merges_over_sibling_cap") >= 1,
        "/debug/replication: {stats}"
    );
    assert_eq!(
        counter(
            &replication_json(coordinator).await,
            "merges_over_sibling_cap"
        ),
        0,
        "node 1 is within its cap"
    );
    let counted = common::metrics::metric(replica, "ringkv_merges_over_sibling_cap_total").await;
    assert!(
        counted >= 1,
        "ringkv_merges_over_sibling_cap_total is {counted}"
    );
    wait_until(
        Duration::from_secs(5),
        "the warning in node 2's log",
        || async {
            let log = replica.log_text();
            if log.contains("over the sibling cap") && log.contains(K) {
                Ok(())
            } else {
                Err(replica.log_tail(5))
            }
        },
    )
    .await;

    // A client write through node 2 that would keep the siblings is refused by its cap.
    let resp = replica
        .client
        .put(replica.kv_url(K))
        .header(common::TOKEN_HEADER, &empty)
        .body("d")
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "PUT through the low-cap node"
    );
}
