//! Request tracing against the real binary on loopback: `X-Request-Id` taken or made and
//! echoed on every answer (errors too), carried over RPC into the replicas' logs, every
//! log line naming its node, the access log naming routes and not keys, and the JSON
//! ready line under `--log-format json`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{wait_until, Cluster, FAST_GOSSIP};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const ID_HEADER: &str = "x-request-id";
/// How long a log line may take to show in the node's log file.
const LOG_WAIT: Duration = Duration::from_secs(10);

fn echoed(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(ID_HEADER)
        .unwrap_or_else(|| {
            panic!(
                "{} {}: no {ID_HEADER}; headers {:?}",
                resp.status(),
                resp.url().path(),
                resp.headers()
            )
        })
        .to_str()
        .expect("the id is ASCII")
        .to_owned()
}

fn is_fresh_id(id: &str) -> bool {
    id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// A unique id for this run, so that a stale log can never satisfy the test.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}-{nanos:x}-{}", std::process::id())
}

/// The node's log lines that contain `needle`, once there are at least `min` of them.
async fn lines_with(node: &TestNode, needle: &str, min: usize) -> Vec<String> {
    let what = format!("{min}+ log lines of {} with {needle:?}", node.node_id);
    wait_until(LOG_WAIT, &what, || async {
        let lines: Vec<String> = node
            .log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= min {
            Ok(lines)
        } else {
            Err(format!("{} lines so far", lines.len()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_shows_the_path_over_every_replica() {
    let mut args = FAST_GOSSIP.to_vec();
    args.extend(["--log", "info,ringkv=debug", "--access-log"]);
    let cluster = Cluster::start(3, &args).await;
    let coordinator = &cluster.nodes[0];
    // With N=3 on 3 nodes every node is a replica; W=all waits for each of them.
    let key = unique("secret-key-name");
    let put_id = unique("put-trace");
    let resp = coordinator
        .client
        .put(format!("{}?w=all", coordinator.kv_url(&key)))
        .header(ID_HEADER, &put_id)
        .body("v")
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PUT w=all");
    assert_eq!(echoed(&resp), put_id, "the client's id comes back");

    let get_id = unique("get-trace");
    let resp = coordinator
        .client
        .get(format!("{}?r=all", coordinator.kv_url(&key)))
        .header(ID_HEADER, &get_id)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK, "GET r=all");
    assert_eq!(echoed(&resp), get_id);

    for (id, call) in [(&put_id, "merge"), (&get_id, "read")] {
        // The coordinator: its access line, in the request's span, naming the route.
        let access: Vec<String> = lines_with(coordinator, id, 1)
            .await
            .into_iter()
            .filter(|l| l.contains("request") && l.contains("status="))
            .collect();
        assert_eq!(access.len(), 1, "one access line for {id}: {access:#?}");
        let line = &access[0];
        assert!(line.contains(" INFO "), "access lines are info: {line}");
        assert!(line.contains("route=\"/kv/{key}\""), "{line}");
        assert!(
            line.contains(&format!("key_bytes={}", key.len())),
            "the key's length, not the key: {line}"
        );
        // Each replica: its part of the call, under the same id.
        for replica in &cluster.nodes[1..] {
            let lines = lines_with(replica, id, 1).await;
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("peer call") && l.contains(&format!("call=\"{call}\""))),
                "replica {} logged no {call} call under {id}: {lines:#?}",
                replica.node_id
            );
        }
        // Wherever the id shows, the line names its node, and never the key.
        for node in &cluster.nodes {
            for line in lines_with(node, id, 1).await {
                assert!(
                    line.starts_with(&format!("node={} ", node.node_id)),
                    "line without its node id: {line}"
                );
                assert!(!line.contains(&key), "a log line shows the key: {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_echoed_on_errors_and_bad_ones_are_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "request-id-test-token-0001\n").expect("token file");
    let node = TestNode::start_with(&[
        "--max-value-bytes",
        "1024",
        "--auth-token-file",
        tokens.to_str().expect("utf-8 path"),
    ])
    .await;
    let auth = "Bearer request-id-test-token-0001";

    // No id: a fresh one, on a probe that needs no token.
    let resp = node
        .client
        .get(node.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), StatusCode::OK);
    let first = echoed(&resp);
    assert!(is_fresh_id(&first), "{first:?}");
    let resp = node
        .client
        .get(node.url("/health"))
        .send()
        .await
        .expect("health");
    assert_ne!(echoed(&resp), first, "each request gets its own id");

    // 401 from the auth layer.
    let resp = node
        .client
        .get(node.kv_url("k"))
        .header(ID_HEADER, "no-token-here")
        .send()
        .await
        .expect("GET without a token");
    assert_eq!(echoed(&resp), "no-token-here");
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", "no token").await;

    // 413 from the body bound.
    let resp = node
        .client
        .put(node.kv_url("big"))
        .header("authorization", auth)
        .header(ID_HEADER, "too-big")
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("PUT too large");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(echoed(&resp), "too-big");

    // 404 from a handler, and from no route at all.
    for path in ["/kv/missing", "/no/such/route"] {
        let resp = node
            .client
            .get(node.url(path))
            .header("authorization", auth)
            .header(ID_HEADER, "not-found")
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(echoed(&resp), "not-found", "{path}");
    }

    // The longest id is kept; anything past the bound, or not visible ASCII, is replaced.
    let longest = "a".repeat(128);
    let resp = node
        .client
        .get(node.url("/health"))
        .header(ID_HEADER, &longest)
        .send()
        .await
        .expect("health");
    assert_eq!(echoed(&resp), longest);
    let too_long = "a".repeat(129);
    for bad in [too_long.as_str(), "two words", "tab\there", ""] {
        let resp = node
            .client
            .get(node.url("/health"))
            .header(ID_HEADER, bad)
            .send()
            .await
            .expect("health");
        let got = echoed(&resp);
        assert!(is_fresh_id(&got), "{bad:?} gave {got:?}, not a fresh id");
    }
    let resp = node
        .client
        .get(node.url("/health"))
        .header(
            ID_HEADER,
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").expect("obs-text"),
        )
        .send()
        .await
        .expect("health");
    assert!(is_fresh_id(&echoed(&resp)));
}

/// A `ringkv serve` under `--log-format json`, whose ready line the text harness cannot
/// read: spawned here, killed on drop.
struct JsonNode {
    child: Child,
    ready: Value,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Drop for JsonNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JsonNode {
    fn start(extra: &[&str]) -> JsonNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("node.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringkv"));
        cmd.arg("serve")
            .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
            .args(["--gossip-addr", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn ringkv serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining, so the node never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(READY_LINE_TIMEOUT);
        let mut node = JsonNode {
            child,
            ready: Value::Null,
            _dir: dir,
            log,
        };
        let line = line.unwrap_or_else(|_| panic!("no ready line; log:\n{}", node.log_text()));
        node.ready = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("the ready line is not JSON ({e}): {line:?}"));
        node
    }

    fn http(&self) -> SocketAddr {
        self.ready["http"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no http address in {}", self.ready))
    }

    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_a_json_ready_line_node_ids_and_request_spans() {
    let node = JsonNode::start(&["--log", "info,ringkv=debug", "--access-log"]);
    let ready = &node.ready;
    assert_eq!(ready["event"], "ready", "{ready}");
    for field in ["rpc", "gossip"] {
        let addr = ready[field].as_str().unwrap_or_default();
        assert!(addr.parse::<SocketAddr>().is_ok(), "{field} in {ready}");
    }
    let node_id = ready["node_id"].as_str().expect("node_id").to_owned();
    assert!(is_fresh_id(&node_id), "{ready}");

    let client = http_client();
    let base = format!("http://{}", node.http());
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(format!("{base}/ready"))
        .send()
        .await
        .map(|r| r.status())
        .ok()
        != Some(StatusCode::OK)
    {
        assert!(
            Instant::now() < deadline,
            "not ready; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = unique("json-trace");
    let key = unique("json-secret-key");
    let resp = client
        .put(format!("{base}{}", kv_path(&key)))
        .header(ID_HEADER, &id)
        .body("v")
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(echoed(&resp), id);

    let access = wait_until(LOG_WAIT, "the access line", || async {
        node.log_text()
            .lines()
            .find(|l| l.contains(&id) && l.contains("\"status\""))
            .map(str::to_owned)
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let access: Value = serde_json::from_str(&access).expect("a JSON log line");
    assert_eq!(access["node"], node_id.as_str(), "{access}");
    assert_eq!(access["level"], "INFO", "{access}");
    assert_eq!(access["span"]["name"], "request", "{access}");
    assert_eq!(access["span"]["id"], id.as_str(), "{access}");
    let fields = &access["fields"];
    assert_eq!(fields["method"], "PUT", "{access}");
    assert_eq!(fields["route"], "/kv/{key}", "{access}");
    assert_eq!(fields["status"], 204, "{access}");
    assert_eq!(
        fields["key_bytes"],
        kv_path(&key).len() - "/kv/".len(),
        "{access}"
    );
    assert!(fields["micros"].is_u64(), "{access}");

    // Every line is JSON, and every line from the data dir's opening on names the node.
    let text = node.log_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let first_named = lines
        .iter()
        .position(|l| l.get("node").is_some())
        .expect("some line names the node");
    for line in &lines[first_named..] {
        assert_eq!(line["node"], node_id.as_str(), "{line}");
    }
    assert!(!text.contains(&key), "the log shows the key");
}
