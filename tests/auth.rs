//! Bearer-token authentication of the HTTP API (`--auth-token-file`,
//! `--admin-token-file`), against the real binary on loopback: refusals and their shape,
//! open probes, admin separation, several tokens, rotation on SIGHUP, the CLI's
//! `--auth-token` / `RINGKV_TOKEN`, and a cluster that still replicates (auth is on the
//! client API only).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{try_local, wait_until, Cluster};
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;

const CLIENT_A: &str = "client-token-aaaaaaaaaaaa";
const CLIENT_B: &str = "client-token-bbbbbbbbbbbb";
const CLIENT_C: &str = "client-token-cccccccccccc";
const ADMIN: &str = "admin-token-rrrrrrrrrrrrr";
const WRONG: &str = "client-token-zzzzzzzzzzzz";
const BOUND: Duration = Duration::from_secs(20);

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write token file");
    path
}

/// A client that sends `token` as the bearer on every request.
fn authed(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .default_headers(headers)
        .build()
        .expect("build client")
}

async fn get_status(client: &reqwest::Client, url: &str) -> StatusCode {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
}

/// Asserts a 401 with `WWW-Authenticate: Bearer` and the JSON error shape; the body.
async fn assert_unauthorized(resp: reqwest::Response, what: &str) -> Value {
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer"),
        "{what}: WWW-Authenticate"
    );
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", what).await
}

#[tokio::test]
async fn refusals_are_401_json_alike_and_probes_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(dir.path(), "tokens", &format!("{CLIENT_A}\n"));
    let node = TestNode::start_with(&["--auth-token-file", tokens.to_str().unwrap()]).await;
    let plain = http_client();

    let missing = assert_unauthorized(
        plain.get(node.kv_url("k")).send().await.unwrap(),
        "no token",
    )
    .await;
    let wrong = assert_unauthorized(
        authed(WRONG).get(node.kv_url("k")).send().await.unwrap(),
        "wrong token",
    )
    .await;
    let basic = assert_unauthorized(
        plain
            .get(node.kv_url("k"))
            .header("authorization", format!("Basic {CLIENT_A}"))
            .send()
            .await
            .unwrap(),
        "another scheme",
    )
    .await;
    // Nothing tells a missing token from a wrong or malformed one.
    assert_eq!(missing, wrong);
    assert_eq!(missing, basic);
    // Unknown routes and every other API route are closed too (no route map leaks).
    for path in [
        "/no/such/route",
        "/cluster",
        "/metrics",
        "/debug/replication",
    ] {
        assert_unauthorized(plain.get(node.url(path)).send().await.unwrap(), path).await;
    }
    let leave = plain.post(node.url("/admin/leave")).send().await.unwrap();
    assert_unauthorized(leave, "POST /admin/leave without a token").await;

    for probe in ["/health", "/ready"] {
        assert_eq!(get_status(&plain, &node.url(probe)).await, StatusCode::OK);
    }

    let good = authed(CLIENT_A);
    let put = good.put(node.kv_url("k")).body("v").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    let got = good.get(node.kv_url("k")).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), "v");
    assert_eq!(
        get_status(&good, &node.url("/cluster")).await,
        StatusCode::OK
    );
    // The scheme is case-insensitive.
    let lower = plain
        .get(node.kv_url("k"))
        .header("authorization", format!("bearer {CLIENT_A}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_token_file_the_node_warns_that_the_api_is_open() {
    let node = TestNode::start().await;
    assert_eq!(
        get_status(&http_client(), &node.url("/cluster")).await,
        StatusCode::OK
    );
    assert!(
        node.log_text().contains("the HTTP API is open"),
        "no warning about the open API in the log:\n{}",
        node.log_tail(40)
    );
}

#[tokio::test]
async fn every_token_in_the_file_works_and_comments_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(
        dir.path(),
        "tokens",
        &format!("# rotation: B replaces A\n\n  {CLIENT_A}\n{CLIENT_B}  \n\n# {CLIENT_C}\n"),
    );
    let node = TestNode::start_with(&["--auth-token-file", tokens.to_str().unwrap()]).await;
    for token in [CLIENT_A, CLIENT_B] {
        assert_eq!(
            get_status(&authed(token), &node.url("/cluster")).await,
            StatusCode::OK,
            "token {token}"
        );
    }
    // A commented-out line is no token.
    let resp = authed(CLIENT_C)
        .get(node.url("/cluster"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(resp, "a commented-out token").await;
}

#[tokio::test]
async fn admin_routes_take_the_admin_token_only_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let client = write_file(dir.path(), "client", &format!("{CLIENT_A}\n"));
    let admin = write_file(dir.path(), "admin", &format!("{ADMIN}\n"));
    // A member id nobody has: an authorised remove gets 404, which proves it got past auth
    // without changing the cluster.
    let remove = "/admin/remove/00000000000000ff";

    let split = TestNode::start_with(&[
        "--auth-token-file",
        client.to_str().unwrap(),
        "--admin-token-file",
        admin.to_str().unwrap(),
    ])
    .await;
    let resp = authed(CLIENT_A)
        .post(split.url(remove))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        StatusCode::FORBIDDEN,
        "forbidden",
        "client token on admin",
    )
    .await;
    let resp = authed(ADMIN).post(split.url(remove)).send().await.unwrap();
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "admin token on admin",
    )
    .await;
    let resp = authed(WRONG).post(split.url(remove)).send().await.unwrap();
    assert_unauthorized(resp, "wrong token on admin").await;
    // The admin token is good for the client API as well; the client token still is.
    for token in [ADMIN, CLIENT_A] {
        assert_eq!(
            get_status(&authed(token), &split.url("/cluster")).await,
            StatusCode::OK
        );
    }

    // Without an admin file, the client token allows admin.
    let shared = TestNode::start_with(&["--auth-token-file", client.to_str().unwrap()]).await;
    let resp = authed(CLIENT_A)
        .post(shared.url(remove))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "client token, no admin file",
    )
    .await;
}

#[tokio::test]
async fn sighup_rotates_the_tokens_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(dir.path(), "tokens", &format!("{CLIENT_A}\n"));
    let node = TestNode::start_with(&["--auth-token-file", tokens.to_str().unwrap()]).await;
    let pid = Pid::from_raw(node.pid().expect("running") as i32);
    let url = node.url("/cluster");
    assert_eq!(get_status(&authed(CLIENT_A), &url).await, StatusCode::OK);

    std::fs::write(&tokens, format!("{CLIENT_B}\n")).unwrap();
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    wait_until(BOUND, "the new token to replace the old", || async {
        let old = get_status(&authed(CLIENT_A), &url).await;
        let new = get_status(&authed(CLIENT_B), &url).await;
        if old == StatusCode::UNAUTHORIZED && new == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("old token {old}, new token {new}"))
        }
    })
    .await;

    // An emptied file is refused on reload: the node keeps B and says why.
    std::fs::write(&tokens, "# nothing\n").unwrap();
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    wait_until(BOUND, "the failed reload to be logged", || async {
        let log = node.log_text();
        if log.contains("token files not reread") && log.contains("holds no token") {
            Ok(())
        } else {
            Err("no warning yet".to_owned())
        }
    })
    .await;
    assert_eq!(get_status(&authed(CLIENT_B), &url).await, StatusCode::OK);
    assert_eq!(
        get_status(&authed(CLIENT_A), &url).await,
        StatusCode::UNAUTHORIZED
    );
}

/// Runs `ringkv serve` that must refuse to start; its output.
async fn serve_must_fail(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args([
        "serve",
        "--http-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
    ])
    .args(["--gossip-addr", "127.0.0.1:0", "--data-dir"])
    .arg(dir.path().join("data"))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(BOUND, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("serve {args:?} did not exit within {BOUND:?}"))
        .expect("run serve");
    assert!(
        !out.status.success(),
        "serve {args:?} started: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

#[tokio::test]
async fn an_empty_or_unreadable_token_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(dir.path(), "empty", "\n# no tokens here\n\n");
    let out = serve_must_fail(&["--auth-token-file", empty.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no token"), "stderr: {stderr}");

    let absent = dir.path().join("absent");
    let out = serve_must_fail(&["--auth-token-file", absent.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the token file"),
        "stderr: {stderr}"
    );

    let admin = write_file(dir.path(), "admin", &format!("{ADMIN}\n"));
    let out = serve_must_fail(&["--admin-token-file", admin.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs --auth-token-file"),
        "stderr: {stderr}"
    );

    let short = write_file(dir.path(), "short", "tooshort\n");
    let out = serve_must_fail(&["--auth-token-file", short.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1"), "stderr: {stderr}");
}

/// Runs a client command of the CLI, with `env` set and `RINGKV_TOKEN` otherwise unset.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args(args)
        .env_remove("RINGKV_TOKEN")
        .env_remove("RINGKV_NODE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(BOUND, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`ringkv {}` did not finish", args.join(" ")))
        .expect("run CLI")
}

#[tokio::test]
async fn the_cli_sends_its_token_and_says_clearly_when_it_lacks_one() {
    let dir = tempfile::tempdir().unwrap();
    let client = write_file(dir.path(), "client", &format!("{CLIENT_A}\n"));
    let admin = write_file(dir.path(), "admin", &format!("{ADMIN}\n"));
    let node = TestNode::start_with(&[
        "--auth-token-file",
        client.to_str().unwrap(),
        "--admin-token-file",
        admin.to_str().unwrap(),
    ])
    .await;
    let url = node.base_url();

    let put = cli(
        &[
            "put",
            "cli-key",
            "cli-value",
            "--node",
            &url,
            "--auth-token",
            CLIENT_A,
        ],
        &[],
    )
    .await;
    assert!(put.status.success(), "put: {:?}", put);
    let get = cli(
        &["get", "cli-key", "--node", &url],
        &[("RINGKV_TOKEN", CLIENT_A)],
    )
    .await;
    assert!(get.status.success(), "get with RINGKV_TOKEN: {:?}", get);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "cli-value");

    for (what, env) in [
        ("no token", vec![]),
        ("a wrong token", vec![("RINGKV_TOKEN", WRONG)]),
    ] {
        let out = cli(&["get", "cli-key", "--node", &url], &env).await;
        assert!(!out.status.success(), "get with {what} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("needs a valid token") && stderr.contains("RINGKV_TOKEN"),
            "get with {what}: {stderr}"
        );
    }
    // `health` reads `/ready` (open) and `/cluster` (not): a missing token is named as
    // such, not as a node that is not ready.
    let out = cli(&["health", "--node", &url], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs a valid token"),
        "health: {stderr}"
    );

    // A client token on an admin command: refused, saying an admin token is needed.
    let out = cli(
        &["remove", "00000000000000ff", "--node", &url],
        &[("RINGKV_TOKEN", CLIENT_A)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("admin token"),
        "remove: {stderr}"
    );
    let out = cli(
        &["remove", "00000000000000ff", "--node", &url],
        &[("RINGKV_TOKEN", ADMIN)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a member"),
        "remove with the admin token gets past auth: {stderr}"
    );
}

#[tokio::test]
async fn a_cluster_with_auth_forms_and_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(dir.path(), "tokens", &format!("{CLIENT_A}\n"));
    let auth = ["--auth-token-file", tokens.to_str().unwrap()];
    let first = TestNode::start_with(&auth).await;
    let seed = first.gossip_addr.to_string();
    let mut args = auth.to_vec();
    args.extend(["--seed", seed.as_str()]);
    let others = futures::future::join_all((0..2).map(|_| TestNode::start_with(&args))).await;
    let mut nodes = vec![first];
    nodes.extend(others);
    for node in &mut nodes {
        node.client = authed(CLIENT_A);
    }
    let cluster = Cluster { nodes };
    cluster
        .wait_health(&cluster.all(), Duration::from_secs(60))
        .await;

    // Every replica acknowledges: internode RPC needs no client token.
    let started = Instant::now();
    let put = cluster.nodes[0]
        .client
        .put(format!("{}?w=all", cluster.nodes[0].kv_url("replicated")))
        .body("everywhere")
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        StatusCode::NO_CONTENT,
        "{}",
        put.text().await.unwrap()
    );
    for node in &cluster.nodes {
        let held = try_local(node, "replicated").await.expect("debug/local");
        assert!(
            held.is_some(),
            "node {} lacks the key after w=all",
            node.node_id
        );
    }
    let got = cluster.nodes[2]
        .client
        .get(cluster.nodes[2].kv_url("replicated"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), "everywhere");
    eprintln!("replicated in {:?}", started.elapsed());
}

#[tokio::test]
async fn the_bench_sends_its_token_and_a_refused_one_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(dir.path(), "tokens", &format!("{CLIENT_A}\n"));
    let node = TestNode::start_with(&["--auth-token-file", tokens.to_str().unwrap()]).await;
    let url = node.base_url();
    let run = [
        "bench",
        "--url",
        &url,
        "--duration",
        "1s",
        "--ops",
        "200",
        "--concurrency",
        "4",
        "--keys",
        "50",
        "--json",
    ];
    let out = cli(&run, &[("RINGKV_TOKEN", CLIENT_A)]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench with the token: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["errors_total"], 0, "{report:#}");
    assert!(report["ops"].as_u64().is_some_and(|n| n > 0), "{report:#}");
    // `/metrics` was read with the token too: the node's counters made it into the report.
    assert!(
        report["efficiency"]["writes_acknowledged"]
            .as_u64()
            .is_some(),
        "no /metrics figures: {report:#}"
    );

    let out = cli(&run, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("refused the token"),
        "bench without the token: {stderr}"
    );
}
