//! The client CLI (`ringkv put/get/delete/list --node URL`), driven as subprocesses against a
//! real node.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `ringkv <sub> --node <node> <rest...>`, feeding `stdin`, bounded by `CLI_TIMEOUT`.
/// `node = None` leaves `--node` out (and `env` may set `RINGKV_NODE`).
async fn run_cli(
    node: Option<&str>,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Output {
    let (sub, rest) = args.split_first().expect("a subcommand");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.arg(sub);
    if let Some(url) = node {
        cmd.arg("--node").arg(url);
    }
    cmd.args(rest)
        .env_remove("RINGKV_NODE")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn ringkv CLI");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe); // EOF
    }
    match tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for CLI"),
        Err(_) => panic!(
            "`ringkv {}` did not finish within {CLI_TIMEOUT:?}",
            args.join(" ")
        ),
    }
}

async fn cli(node: &TestNode, args: &[&str]) -> Output {
    run_cli(Some(&node.base_url()), args, None, &[]).await
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "`ringkv {}`: {} stdout={:?} stderr={:?}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn cli_ok(node: &TestNode, args: &[&str]) -> Output {
    let out = cli(node, args).await;
    assert!(
        out.status.success(),
        "expected success: {}",
        describe(args, &out)
    );
    out
}

/// The value on stdout: exactly the bytes, or the bytes plus one `\n`.
fn assert_stdout_value(out: &Output, value: &[u8], what: &str) {
    let s = out.stdout.as_slice();
    let ok = s == value || s.strip_suffix(b"\n") == Some(value);
    assert!(
        ok,
        "{what}: stdout {:?}, want {:?}",
        String::from_utf8_lossy(s),
        String::from_utf8_lossy(value)
    );
}

/// The token printed on stderr: the last word of the last non-empty line, stripped of quotes.
fn stderr_token(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let word = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no token on stderr: {stderr:?}"));
    word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '='))
        .to_owned()
}

fn assert_one_line_error(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what}: expected failure, got {}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got {stderr:?}"
    );
    assert!(!lines[0].trim().is_empty(), "{what}: empty error line");
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout not empty: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn put_then_get_prints_value_and_token() {
    let node = TestNode::start().await;
    cli_ok(&node, &["put", "fruit/apple", "red"]).await;
    let (body, ct, _) = node.get_single("fruit/apple").await;
    assert_eq!(body, b"red", "CLI put stored the value");
    assert_eq!(ct, "application/octet-stream");

    let out = cli_ok(&node, &["get", "fruit/apple"]).await;
    assert_stdout_value(&out, b"red", "get fruit/apple");
    let tok = stderr_token(&out);
    assert!(
        !tok.is_empty(),
        "token on stderr: {}",
        describe(&["get"], &out)
    );
    // The printed token is a real token: writing with it replaces the value, no siblings.
    node.put_ok("fruit/apple", "green", Some(&tok)).await;
    assert_eq!(node.get_single("fruit/apple").await.0, b"green");
}

#[tokio::test]
async fn put_with_content_type() {
    let node = TestNode::start().await;
    cli_ok(
        &node,
        &[
            "put",
            "doc",
            "{\"a\":1}",
            "--content-type",
            "application/json",
        ],
    )
    .await;
    let (body, ct, _) = node.get_single("doc").await;
    assert_eq!(body, b"{\"a\":1}");
    assert_eq!(ct, "application/json");
}

#[tokio::test]
async fn put_dash_reads_stdin() {
    let node = TestNode::start().await;
    let value: Vec<u8> = b"line one\nline two\n\x00\xff\xfe binary tail".to_vec();
    let args = ["put", "from-stdin", "-"];
    let out = run_cli(Some(&node.base_url()), &args, Some(&value), &[]).await;
    assert!(out.status.success(), "{}", describe(&args, &out));
    let (body, _, _) = node.get_single("from-stdin").await;
    assert_eq!(body, value, "stdin stored byte for byte");

    let out = cli_ok(&node, &["get", "from-stdin"]).await;
    assert_stdout_value(&out, &value, "get from-stdin");
}

#[tokio::test]
async fn delete_removes_the_key() {
    let node = TestNode::start().await;
    node.put_ok("doomed", "x", None).await;
    cli_ok(&node, &["delete", "doomed"]).await;
    let resp = node.get("doomed").await;
    assert_error(
        resp,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET after CLI delete",
    )
    .await;
    let out = cli(&node, &["get", "doomed"]).await;
    assert_one_line_error(&out, "get deleted key");
    let out = cli(&node, &["delete", "doomed"]).await;
    assert_one_line_error(&out, "delete deleted key");
}

#[tokio::test]
async fn delete_with_token() {
    let node = TestNode::start().await;
    let t0 = node.put_ok("dt", "v0", None).await;
    let t1 = node.put_ok("dt", "v1", Some(&t0)).await;
    node.put_ok("dt", "v2", Some(&t0)).await;
    assert_eq!(
        node.get_siblings("dt").await.0,
        sorted(vec![sib("v1"), sib("v2")])
    );
    // A delete with v1's token removes v1 only: v2 was not seen and stays.
    cli_ok(&node, &["delete", "dt", "--token", &t1]).await;
    let (body, _, _) = node.get_single("dt").await;
    assert_eq!(
        body, b"v2",
        "delete --token removed exactly what the token covers"
    );
}

#[tokio::test]
async fn list_with_prefix() {
    let node = TestNode::start().await;
    for k in ["fruit/apple", "fruit/banana", "veg/carrot"] {
        node.put_ok(k, format!("value-{k}"), None).await;
    }
    let out = cli_ok(&node, &["list", "--prefix", "fruit/"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fruit/apple"), "list --prefix: {stdout}");
    assert!(stdout.contains("fruit/banana"), "list --prefix: {stdout}");
    assert!(!stdout.contains("veg/carrot"), "prefix filter: {stdout}");
    let apple = stdout.find("fruit/apple").expect("apple");
    let banana = stdout.find("fruit/banana").expect("banana");
    assert!(apple < banana, "sorted: {stdout}");

    let out = cli_ok(&node, &["list"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for k in ["fruit/apple", "fruit/banana", "veg/carrot"] {
        assert!(stdout.contains(k), "list: missing {k} in {stdout}");
    }
}

#[tokio::test]
async fn errors_print_one_line_and_exit_nonzero() {
    let node = TestNode::start().await;
    let out = cli(&node, &["get", "missing"]).await;
    assert_one_line_error(&out, "get missing key");
    let out = cli(&node, &["delete", "missing"]).await;
    assert_one_line_error(&out, "delete missing key");
    let long_key = "k".repeat(1025);
    let out = cli(&node, &["put", &long_key, "v"]).await;
    assert_one_line_error(&out, "put with a 1025-byte key");

    // Nobody listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_cli(Some(&url), &["get", "anything"], None, &[]).await;
    assert_one_line_error(&out, "get from an unreachable node");
}

#[tokio::test]
async fn put_with_token_and_siblings_as_json() {
    let node = TestNode::start().await;
    cli_ok(&node, &["put", "cart", "apples"]).await;
    let out = cli_ok(&node, &["get", "cart"]).await;
    let t = stderr_token(&out);

    // Two writers with the same token: siblings.
    cli_ok(&node, &["put", "cart", "apples,pears", "--token", &t]).await;
    cli_ok(&node, &["put", "cart", "apples,plums", "--token", &t]).await;
    let (siblings, _) = node.get_siblings("cart").await;
    assert_eq!(
        siblings,
        sorted(vec![sib("apples,pears"), sib("apples,plums")])
    );

    // `get` prints siblings as JSON.
    let out = cli_ok(&node, &["get", "cart"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "siblings are not JSON ({e}): {}",
            describe(&["get", "cart"], &out)
        )
    });
    assert_eq!(
        decode_siblings(&json["siblings"], "CLI get siblings"),
        sorted(vec![sib("apples,pears"), sib("apples,plums")])
    );

    // Resolve with the token the CLI printed for the siblings.
    let t2 = stderr_token(&out);
    cli_ok(
        &node,
        &["put", "cart", "apples,pears,plums", "--token", &t2],
    )
    .await;
    assert_eq!(node.get_single("cart").await.0, b"apples,pears,plums");
}

#[tokio::test]
async fn node_from_environment() {
    let node = TestNode::start().await;
    node.put_ok("env-key", "via env", None).await;
    let url = node.base_url();
    let out = run_cli(None, &["get", "env-key"], None, &[("RINGKV_NODE", &url)]).await;
    assert!(
        out.status.success(),
        "{}",
        describe(&["get", "env-key"], &out)
    );
    assert_stdout_value(&out, b"via env", "get with RINGKV_NODE");
}

#[tokio::test]
async fn health_is_zero_when_ready_and_one_line_otherwise() {
    let node = TestNode::start().await;
    let out = cli_ok(&node, &["health"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ready");
    // The node from the environment, as the container health check runs it.
    let url = node.base_url();
    let out = run_cli(None, &["health"], None, &[("RINGKV_NODE", &url)]).await;
    assert!(out.status.success(), "{}", describe(&["health"], &out));

    // Nobody listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_cli(Some(&url), &["health"], None, &[]).await;
    assert_one_line_error(&out, "health of an unreachable node");
}

/// A node given a seed that never answers serves HTTP but is not ready (503): `health`
/// fails, and says why.
#[tokio::test]
async fn health_fails_on_a_node_that_has_not_joined() {
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port");
    let node = NotReadyNode::start(&nowhere.to_string()).await;
    let out = run_cli(Some(&node.url), &["health", "--timeout", "1s"], None, &[]).await;
    assert_one_line_error(&out, "health of a node that has not joined");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not_ready"),
        "the reason names the 503's code: {stderr:?}"
    );
}

/// `ringkv serve` with a seed: it prints its ready line (listeners bound) and then waits
/// for a peer that never comes. Killed on drop (`kill_on_drop`).
struct NotReadyNode {
    _child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NotReadyNode {
    async fn start(seed: &str) -> NotReadyNode {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--rpc-addr",
                "127.0.0.1:0",
            ])
            .args(["--gossip-addr", "127.0.0.1:0", "--seed", seed])
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ringkv serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_LINE_TIMEOUT, lines.next_line())
            .await
            .expect("a ready line in time")
            .expect("read stdout")
            .expect("a ready line before EOF");
        let (addr, _) = parse_ready_line(&line).expect("a well-formed ready line");
        let url = format!("http://{addr}");
        // It really is not ready: /ready answers 503.
        let status = http_client()
            .get(format!("{url}/ready"))
            .send()
            .await
            .expect("GET /ready")
            .status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        NotReadyNode {
            _child: child,
            url,
            _dir: dir,
        }
    }
}

/// The exit code of a finished CLI run (it was not killed by a signal).
fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

/// Exit codes tell the cases apart (README, "Exit codes"): 0 ok, 1 error, 2 usage,
/// 3 not found, 4 siblings with `--fail-on-siblings`, 5 unavailable.
#[tokio::test]
async fn exit_codes_tell_the_cases_apart() {
    let node = TestNode::start().await;
    let out = cli_ok(&node, &["put", "ec", "v0"]).await;
    let t0 = stderr_token(&out);
    assert_eq!(code(&cli(&node, &["get", "ec"]).await), 0);

    let out = cli(&node, &["get", "ec-missing"]).await;
    assert_one_line_error(&out, "get missing");
    assert_eq!(code(&out), 3, "{}", describe(&["get"], &out));
    assert_eq!(code(&cli(&node, &["delete", "ec-missing"]).await), 3);

    // Siblings: printed, exit 0; exit 4 only when asked.
    cli_ok(&node, &["put", "ec", "a", "--token", &t0]).await;
    cli_ok(&node, &["put", "ec", "b", "--token", &t0]).await;
    assert_eq!(code(&cli(&node, &["get", "ec"]).await), 0);
    let out = cli(&node, &["get", "ec", "--fail-on-siblings"]).await;
    assert_eq!(
        code(&out),
        4,
        "{}",
        describe(&["get", "--fail-on-siblings"], &out)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the siblings are printed all the same");
    assert_eq!(json["siblings"].as_array().map(Vec::len), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-on-siblings"));

    // A usage error is clap's 2; a request the node refuses is 1.
    assert_eq!(code(&cli(&node, &["get", "ec", "--no-such-flag"]).await), 2);
    let out = cli(&node, &["put", &"k".repeat(1025), "v"]).await;
    assert_one_line_error(&out, "a 1025-byte key");
    assert_eq!(code(&out), 1);
    // `--r` reaches the node: a bad one is its 400, named.
    let out = cli(&node, &["get", "ec", "--r", "seventeen"]).await;
    assert_one_line_error(&out, "--r seventeen");
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_param"));

    // Nobody listens: 5, with the address and what to check, on one line.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let out = run_cli(Some(&dead), &["get", "ec"], None, &[]).await;
    assert_one_line_error(&out, "an unreachable node");
    assert_eq!(code(&out), 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: connection refused to 127.0.0.1:{port} (is a node running? --node / RINGKV_NODE)"
        )),
        "{stderr:?}"
    );
    // The cause chain follows on the same line, down to the OS error.
    assert!(stderr.contains("os error"), "{stderr:?}");
    assert_eq!(code(&run_cli(Some(&dead), &["health"], None, &[]).await), 5);

    // Several nodes: the dead one is passed over.
    let both = format!("{dead},{}", node.base_url());
    let out = run_cli(Some(&both), &["put", "ec2", "v"], None, &[]).await;
    assert_eq!(
        code(&out),
        0,
        "{}",
        describe(&["put", "--node", &both], &out)
    );
}
