//! Removal is safe (real processes on loopback): a live member is refused unless forced;
//! a forced-out node stops serving and never starts again on its data dir; a member
//! removed while down learns it on return, even from a node the operator never asked and
//! after the remover left; and a node whose seed answers nobody says so.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::cluster::{
    cluster_json, post_empty, try_json, try_local, wait_settled_members, wait_until, Cluster,
    CONVERGE_TIMEOUT, FAST_GOSSIP,
};
use common::removal::{ringkv_cli, ServeRun};
use common::TestNode;
use ringkv::net::TokioNetwork;
use ringkv::rpc::{connector_for, RemoteError, Request, Response, RpcClient, RpcConfig, RpcStats};

/// How long a node started on a removed member's data dir may take to refuse and exit
/// (it hears of the removal on its first gossip rounds).
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The status and JSON body of a request (the body `Null` when not JSON).
async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Asks `addr` for `key` over internode RPC, as a peer coordinating a read would.
async fn rpc_read(addr: std::net::SocketAddr, key: &str) -> Response {
    use std::sync::Arc;
    let rpc = RpcClient::new(
        connector_for(Arc::new(TokioNetwork)),
        RpcConfig::default(),
        Arc::new(RpcStats::default()),
    );
    let request = Request::Read {
        key: key.to_owned(),
    };
    let answer = rpc
        .call(addr, request, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("RPC read from {addr}: {e}"));
    rpc.close_all().await;
    answer
}

/// Whether `node` lists `id` among the departed ids it keeps, with this kind.
async fn keeps_departed(node: &TestNode, id: &str, kind: &str) -> Result<(), String> {
    let c = try_json(node, "/cluster").await?;
    let found = c["departed"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["id"] == id && d["kind"] == kind);
    if found {
        Ok(())
    } else {
        Err(format!("departed on {}: {}", node.node_id, c["departed"]))
    }
}

/// Starts `ringkv serve` on `data_dir` and expects it to refuse: a non-zero exit, within
/// `REFUSAL_LIMIT`, saying the node was removed. Returns its log.
async fn expect_refusal(data_dir: &std::path::Path, args: &[&str], what: &str) -> String {
    let mut run = ServeRun::spawn(Some(data_dir), args);
    let status = run.wait_exit(REFUSAL_LIMIT).await;
    let log = run.log();
    let status = status.unwrap_or_else(|| panic!("{what}: still running\n{log}"));
    assert!(!status.success(), "{what}: exited with success\n{log}");
    assert!(
        log.contains("was removed from its cluster"),
        "{what}: no message saying why\n{log}"
    );
    log
}

#[tokio::test]
async fn a_live_member_is_refused_and_a_forced_removal_fences_it() {
    let mut c = Cluster::start(3, &FAST_GOSSIP).await;
    let id1 = c.nodes[0].node_id.clone();
    let id2 = c.nodes[1].node_id.clone();
    let id3 = c.nodes[2].node_id.clone();
    let n1_url = c.nodes[0].base_url();

    // As an operator would: refused, with the reason and what to do instead.
    let out = ringkv_cli(&["remove", &id3, "--node", &n1_url]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "remove of a live member succeeded");
    assert!(
        stderr.contains("member_live") && stderr.contains("409") && stderr.contains("leave"),
        "{stderr}"
    );
    // The HTTP route says the same, in the JSON error shape.
    let (status, body) = post_empty(&c.nodes[0], &format!("/admin/remove/{id3}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "member_live", "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap_or("")
        .contains("stop it first"));
    // A bad flag is a 400, not a silent removal.
    let (status, body) = post_empty(&c.nodes[0], &format!("/admin/remove/{id3}?force=maybe")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Refused means nothing changed: node 3 is still a member everywhere.
    let members: BTreeSet<String> = cluster_json(&c.nodes[0]).await["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    assert!(members.contains(&id3), "{members:?}");
    // As a replica it serves too, so far.
    let before = rpc_read(c.nodes[2].rpc_addr, "k").await;
    assert!(matches!(before, Response::Read(None)), "{before:?}");

    let out = ringkv_cli(&["remove", &id3, "--force", "--node", &n1_url]).await;
    assert!(out.status.success(), "forced remove: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("removed {id3}"));

    // Node 3 hears of it within a few gossip rounds and stops serving.
    let n3 = &c.nodes[2];
    wait_until(
        CONVERGE_TIMEOUT,
        "node 3 to refuse writes as removed",
        || async {
            let resp = n3
                .client
                .put(n3.kv_url("after-removal"))
                .body("v")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match answer(resp).await {
                (StatusCode::SERVICE_UNAVAILABLE, b) if b["error"] == "removed" => Ok(()),
                (s, b) => Err(format!("{s} {b}")),
            }
        },
    )
    .await;
    let (status, body) = answer(
        n3.client
            .get(n3.kv_url("after-removal"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("removed"))
    );
    let batch = json!({"ops": [{"op": "get", "key": "k"}]});
    let (status, body) = answer(
        n3.client
            .post(n3.url("/batch"))
            .json(&batch)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("removed"))
    );
    let (status, body) = answer(n3.client.get(n3.url("/ready")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "removed", "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert!(
        body["reason"].as_str().unwrap_or("").contains("removed"),
        "{body}"
    );
    // As a replica over RPC, it refuses too (a peer that has not heard yet must not count
    // it toward a quorum).
    match rpc_read(n3.rpc_addr, "k").await {
        Response::Error(RemoteError::Unavailable(m)) if m.contains("removed") => {}
        other => panic!("RPC read from the removed node: {other:?}"),
    }
    // Nor does it change the membership of a cluster it is no longer in.
    let (status, body) = post_empty(n3, &format!("/admin/remove/{id1}?force=true")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "removed", "{body}");

    // The other two agree on one ring, without node 3.
    let want = BTreeSet::from([id1.clone(), id2.clone()]);
    wait_settled_members(
        &[(0, &c.nodes[0]), (1, &c.nodes[1])],
        &want,
        CONVERGE_TIMEOUT,
    )
    .await;
    // New writes go to them, and not to the removed node.
    let (status, body) = answer(
        c.nodes[0]
            .client
            .put(c.nodes[0].url("/kv/written-after?w=all"))
            .body("v")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(try_local(&c.nodes[0], "written-after")
        .await
        .unwrap()
        .is_some());
    assert!(try_local(&c.nodes[1], "written-after")
        .await
        .unwrap()
        .is_some());
    assert!(try_local(&c.nodes[2], "written-after")
        .await
        .unwrap()
        .is_none());

    // It said why, once, at error level.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = c.nodes[2].log_text();
    let said = log
        .lines()
        .filter(|l| l.contains("the cluster removed this node"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("ERROR"), "{}", said[0]);

    // Stopped, it never starts again on its data dir.
    c.nodes[2].sigterm_and_wait().await;
    let seed = c.nodes[0].gossip_addr.to_string();
    expect_refusal(
        c.nodes[2].data_dir(),
        &["--seed", &seed],
        "restart of a removed node",
    )
    .await;
}

#[tokio::test]
async fn a_dead_member_removed_refuses_to_start_again() {
    let mut c = Cluster::start(3, &FAST_GOSSIP).await;
    let (id1, id2, id3) = (
        c.nodes[0].node_id.clone(),
        c.nodes[1].node_id.clone(),
        c.nodes[2].node_id.clone(),
    );
    c.nodes[2].sigterm_and_wait().await;
    c.wait_health(&[0, 1], CONVERGE_TIMEOUT).await;

    // Dead by the failure detector: no --force needed.
    let (status, body) = post_empty(&c.nodes[0], &format!("/admin/remove/{id3}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "removed", "{body}");
    let want = BTreeSet::from([id1, id2]);
    wait_settled_members(
        &[(0, &c.nodes[0]), (1, &c.nodes[1])],
        &want,
        CONVERGE_TIMEOUT,
    )
    .await;

    // Its data dir does not know yet; its first gossip rounds tell it, and it exits.
    let seed = c.nodes[0].gossip_addr.to_string();
    let log = expect_refusal(
        c.nodes[2].data_dir(),
        &["--seed", &seed],
        "return of a removed node",
    )
    .await;
    assert!(log.contains("removed this node while it was down"), "{log}");
    // It marked its data dir: the next start refuses at once, before any gossip.
    let log = expect_refusal(c.nodes[2].data_dir(), &[], "second start of a removed node").await;
    assert!(
        !log.contains("ringkv ready"),
        "it bound its listeners: {log}"
    );
}

#[tokio::test]
async fn a_member_down_during_its_removal_learns_of_it_after_the_remover_left() {
    let mut c = Cluster::start(3, &FAST_GOSSIP).await;
    let id3 = c.nodes[2].node_id.clone();
    c.nodes[2].sigterm_and_wait().await;
    c.wait_health(&[0, 1], CONVERGE_TIMEOUT).await;

    // Node 2 is asked (through the CLI); node 1, never asked, keeps the removal too.
    let out = ringkv_cli(&["remove", &id3, "--node", &c.nodes[1].base_url()]).await;
    assert!(out.status.success(), "remove: {}", text(&out.stderr));
    let n1 = &c.nodes[0];
    wait_until(CONVERGE_TIMEOUT, "node 1 to keep node 3's removal", || {
        keeps_departed(n1, &id3, "removed")
    })
    .await;

    // The remover leaves the cluster and exits.
    let (status, body) = post_empty(&c.nodes[1], "/admin/leave").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        c.nodes[1]
            .wait_exited(Duration::from_secs(60))
            .await
            .is_some(),
        "node 2 did not finish leaving"
    );
    // Node 1 records the leave on its next round after hearing it (node 2 may exit first).
    let id2 = c.nodes[1].node_id.clone();
    let n1 = &c.nodes[0];
    wait_until(CONVERGE_TIMEOUT, "node 1 to keep node 2's leave", || {
        keeps_departed(n1, &id2, "left")
    })
    .await;
    // Node 1 restarts: all it knows of the removal now is what it stored.
    c.nodes[0].sigterm_and_wait().await;
    c.nodes[0].restart_same_addrs().await;
    let n1 = &c.nodes[0];
    keeps_departed(n1, &id3, "removed").await.unwrap();
    keeps_departed(n1, &id2, "left").await.unwrap();

    // Node 3 returns on its old data dir, seeded by node 1 only: it learns, and refuses.
    let seed = n1.gossip_addr.to_string();
    expect_refusal(
        c.nodes[2].data_dir(),
        &["--seed", &seed, "--gossip-interval", "100ms"],
        "return of node 3",
    )
    .await;
    // Node 1 serves on, alone.
    let (status, body) = answer(
        n1.client
            .put(n1.kv_url("still-here"))
            .body("v")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn a_seed_that_answers_nobody_is_reported() {
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port");
    let seed = nowhere.to_string();
    let run = ServeRun::spawn(None, &["--seed", &seed, "--gossip-interval", "100ms"]);
    let addr = run
        .http_addr(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no ready line\n{}", run.log()));
    let client = common::http_client();

    let resp = client
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["error"], "not_ready", "{body}");
    assert_eq!(
        body["reason"],
        format!("no seed answered: {seed}"),
        "{body}"
    );

    // Warned every few seconds, naming the seed.
    wait_until(
        Duration::from_secs(20),
        "two warnings naming the seed",
        || async {
            let log = run.log();
            let warnings = log
                .lines()
                .filter(|l| {
                    l.contains("WARN") && l.contains("no seed answered") && l.contains(&seed)
                })
                .count();
            if warnings >= 2 {
                Ok(())
            } else {
                Err(format!("{warnings} warnings\n{log}"))
            }
        },
    )
    .await;
}
