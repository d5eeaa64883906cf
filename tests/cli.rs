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

// ---- Issue 15: a CLI that feels like etcdctl and redis-cli. ----

/// Runs `ringkv <args...>` with no node and no stdin (completions, help, `serve
/// --check-config`), with `env` set and every other `RINGKV_*` variable of this process
/// removed, bounded by `CLI_TIMEOUT`.
async fn run_plain(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    for (name, _) in std::env::vars() {
        if name.starts_with("RINGKV_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(CLI_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("run ringkv"),
        Err(_) => panic!(
            "`ringkv {}` did not finish within {CLI_TIMEOUT:?}",
            args.join(" ")
        ),
    }
}

/// Runs `ringkv get KEY --node URL` with stdout on a pseudo-terminal: what it printed
/// there (the terminal turns `\n` into `\r\n`), and its stderr.
fn get_on_a_terminal(node: &str, key: &str) -> (Vec<u8>, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )
    .expect("openpty");
    let mut master = std::fs::File::from(pty.master);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["get", key, "--node", node])
        .env_remove("RINGKV_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringkv get");
    // The child holds the terminal's only other end: once it exits, reading the master
    // ends (EIO on Linux). Read on a thread, bounded by CLI_TIMEOUT.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = tx.send(buf);
    });
    let out = child.wait_with_output().expect("wait for ringkv get");
    assert!(out.status.success(), "get on a terminal: {:?}", out);
    let shown = rx
        .recv_timeout(CLI_TIMEOUT)
        .expect("the terminal's output in time");
    (shown, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `get` ends with a newline on a terminal only: a pipe gets the value's bytes exactly.
#[tokio::test]
async fn get_adds_a_newline_on_a_terminal_only() {
    let node = TestNode::start().await;
    node.put_ok("plain", "red", None).await;
    node.put_ok("lined", "one line\n", None).await;

    let out = cli_ok(&node, &["get", "plain"]).await;
    assert_eq!(out.stdout, b"red", "a pipe gets no newline");
    let out = cli_ok(&node, &["get", "lined"]).await;
    assert_eq!(out.stdout, b"one line\n");

    let url = node.base_url();
    let (shown, stderr) = tokio::task::spawn_blocking(move || get_on_a_terminal(&url, "plain"))
        .await
        .expect("terminal thread");
    assert_eq!(
        shown, b"red\r\n",
        "a terminal gets a newline after the value"
    );
    assert!(!stderr.trim().is_empty(), "the token still goes to stderr");
    let url = node.base_url();
    let (shown, _) = tokio::task::spawn_blocking(move || get_on_a_terminal(&url, "lined"))
        .await
        .expect("terminal thread");
    assert_eq!(
        shown, b"one line\r\n",
        "a value ending in a newline gets no second one"
    );
}

/// `--quiet` (`-q`) hides the token; without it, put, get and delete print it on stderr.
#[tokio::test]
async fn quiet_hides_the_token() {
    let node = TestNode::start().await;
    let out = cli_ok(&node, &["put", "q", "v1", "--quiet"]).await;
    assert!(
        out.stderr.is_empty(),
        "{}",
        describe(&["put", "--quiet"], &out)
    );
    let out = cli_ok(&node, &["get", "q", "-q"]).await;
    assert_eq!(out.stdout, b"v1");
    assert!(out.stderr.is_empty(), "{}", describe(&["get", "-q"], &out));
    let out = cli_ok(&node, &["get", "q"]).await;
    let token = stderr_token(&out);
    let out = cli_ok(&node, &["delete", "q", "--token", &token, "-q"]).await;
    assert!(
        out.stderr.is_empty(),
        "{}",
        describe(&["delete", "-q"], &out)
    );

    // Not quiet: the tombstone's token, which a GET's 404 reports too.
    node.put_ok("q2", "v", None).await;
    let out = cli_ok(&node, &["delete", "q2"]).await;
    let deleted = stderr_token(&out);
    let resp = node.get("q2").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(token_of(&resp).as_deref(), Some(deleted.as_str()));
}

fn token_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn list_takes_keys_only_a_range_json_and_says_where_it_stopped() {
    let node = TestNode::start().await;
    for k in ["a1", "a2", "a3", "a4", "a5", "b1"] {
        node.put_ok(k, format!("v-{k}"), None).await;
    }
    let out = cli_ok(&node, &["list", "--keys-only"]).await;
    assert_eq!(lines(&out), ["a1", "a2", "a3", "a4", "a5", "b1"]);
    assert!(out.stderr.is_empty(), "nothing cut: no message");

    // --start is inclusive, --end exclusive; with --prefix, the narrower bound wins.
    let out = cli_ok(
        &node,
        &["list", "--keys-only", "--start", "a2", "--end", "a4"],
    )
    .await;
    assert_eq!(lines(&out), ["a2", "a3"]);
    let out = cli_ok(
        &node,
        &["list", "--keys-only", "--prefix", "a", "--start", "a4"],
    )
    .await;
    assert_eq!(lines(&out), ["a4", "a5"]);
    let out = cli_ok(&node, &["list", "--start", "a5", "--end", "b"]).await;
    assert_eq!(lines(&out), ["a5\tv-a5"]);

    // JSON lines: one object per key.
    let out = cli_ok(&node, &["list", "--json", "--prefix", "a", "--end", "a3"]).await;
    let docs: Vec<serde_json::Value> = lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect();
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(docs[0]["key"], "a1");
    assert_eq!(docs[0]["siblings"][0]["value"], "v-a1");
    assert_eq!(docs[0]["siblings"][0]["encoding"], "utf8");
    assert_eq!(
        docs[0]["siblings"][0]["content_type"],
        "application/octet-stream"
    );
    assert!(docs[1]["causality_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let out = cli_ok(&node, &["list", "--json", "--keys-only", "--start", "b"]).await;
    assert_eq!(lines(&out), [r#"{"key":"b1"}"#]);

    // --limit: stops, and says how to go on; following it lists the rest.
    let out = cli_ok(&node, &["list", "--keys-only", "--limit", "2"]).await;
    assert_eq!(lines(&out), ["a1", "a2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stopped at --limit 2") && stderr.contains("--start a3"),
        "{stderr:?}"
    );
    let out = cli_ok(&node, &["list", "--keys-only", "--start", "a3"]).await;
    assert_eq!(lines(&out), ["a3", "a4", "a5", "b1"]);
    // A limit that is exactly what there is: nothing was cut, nothing is said.
    let out = cli_ok(&node, &["list", "--keys-only", "--limit", "6"]).await;
    assert_eq!(lines(&out).len(), 6);
    assert!(
        out.stderr.is_empty(),
        "{}",
        describe(&["list", "--limit", "6"], &out)
    );
    assert_eq!(code(&cli(&node, &["list", "--limit", "0"]).await), 2);
}

#[tokio::test]
async fn every_subcommand_has_examples_and_completions_are_printed() {
    for sub in [
        "serve",
        "put",
        "get",
        "delete",
        "status",
        "health",
        "leave",
        "remove",
        "list",
        "bench",
        "completions",
    ] {
        let out = run_plain(&[sub, "--help"], &[]).await;
        assert!(out.status.success(), "{sub} --help: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:\n  ringkv "),
            "{sub} --help: {help}"
        );
    }
    let out = run_plain(&["completions", "bash"], &[]).await;
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("complete -F"),
        "a bash completion script: {script:.200}"
    );
    for word in [
        "serve",
        "get",
        "list",
        "--keys-only",
        "--max-hint-bytes",
        "completions",
    ] {
        assert!(script.contains(word), "completions name {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run_plain(&["completions", shell], &[]).await;
        assert!(
            out.status.success() && out.stdout.len() > 1000,
            "{shell}: {out:?}"
        );
    }
    assert_eq!(code(&run_plain(&["completions", "tcsh"], &[]).await), 2);
}

/// `serve --check-config` with `args`: the effective settings it printed.
async fn check_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["serve", "--check-config"];
    all.extend_from_slice(args);
    let out = run_plain(&all, env).await;
    assert!(out.status.success(), "{}", describe(&all, &out));
    String::from_utf8(out.stdout).expect("TOML is UTF-8")
}

/// The value line `key = …` of `--check-config`'s output.
fn setting<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[tokio::test]
async fn byte_flags_take_human_sizes_and_refuse_overflow() {
    let text = check_config(
        &[
            "--max-hint-bytes",
            "256MiB",
            "--max-value-bytes",
            "1MiB",
            "--cache-size",
            "64MiB",
            "--max-list-bytes",
            "10MB",
            "--wal-max-bytes",
            "4KiB",
        ],
        &[],
    )
    .await;
    assert!(setting(&text, "max-hint-bytes").starts_with("max-hint-bytes = \"256MiB\""));
    assert!(setting(&text, "max-list-bytes").starts_with("max-list-bytes = \"10MB\""));
    // Plain numbers still work.
    check_config(&["--max-value-bytes", "1048576"], &[]).await;
    for (flag, value) in [
        ("--max-hint-bytes", "17179869184GiB"),
        ("--max-hint-bytes", "99999999999999999999"),
        ("--max-value-bytes", "1.5MiB"),
        ("--max-list-bytes", "2GiB"),
        ("--wal-max-bytes", "4095"),
        ("--cache-size", "12 apples"),
    ] {
        let out = run_plain(&["serve", "--check-config", flag, value], &[]).await;
        assert_eq!(
            code(&out),
            2,
            "{flag} {value}: {}",
            describe(&[flag, value], &out)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag));
    }
    let out = run_plain(&["bench", "--value-size", "17179869184GiB"], &[]).await;
    assert_eq!(code(&out), 2, "{out:?}");
}

#[tokio::test]
async fn config_file_is_overridden_by_env_and_env_by_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ringkv.toml");
    std::fs::write(
        &path,
        "# a node's flags\nmax-hint-bytes = \"128MiB\"\nseed = [\"127.0.0.1:7946\", \"127.0.0.1:7947\"]\n\
         vnodes = 64\nwal = true\ncluster-id = \"from-file\"\n",
    )
    .expect("write config");
    let file = path.to_str().expect("UTF-8 path");

    let text = check_config(&["--config", file], &[]).await;
    assert_eq!(
        setting(&text, "max-hint-bytes"),
        format!("max-hint-bytes = \"128MiB\"  # from {file}")
    );
    assert!(setting(&text, "seed").starts_with(r#"seed = ["127.0.0.1:7946", "127.0.0.1:7947"]"#));
    assert!(setting(&text, "vnodes").starts_with("vnodes = 64"));
    assert!(setting(&text, "wal").starts_with("wal = true"));
    assert!(setting(&text, "n").ends_with("# default"));

    // The environment over the file, RINGKV_CONFIG as --config.
    let env = [("RINGKV_CONFIG", file), ("RINGKV_MAX_HINT_BYTES", "64MiB")];
    let text = check_config(&[], &env).await;
    assert_eq!(
        setting(&text, "max-hint-bytes"),
        "max-hint-bytes = \"64MiB\"  # from RINGKV_MAX_HINT_BYTES"
    );
    assert!(
        setting(&text, "vnodes").starts_with("vnodes = 64"),
        "the rest of the file holds"
    );
    // A flag over both.
    let text = check_config(
        &["--max-hint-bytes", "32MiB", "--seed", "10.0.0.1:7946"],
        &env,
    )
    .await;
    assert_eq!(
        setting(&text, "max-hint-bytes"),
        "max-hint-bytes = \"32MiB\"  # from the command line"
    );
    assert!(setting(&text, "seed").starts_with(r#"seed = ["10.0.0.1:7946"]"#));

    // What --check-config prints is a config file that gives the same settings.
    let again = dir.path().join("effective.toml");
    std::fs::write(&again, &text).expect("write effective config");
    let round = check_config(&["--config", again.to_str().expect("UTF-8")], &[]).await;
    assert!(setting(&round, "max-hint-bytes").starts_with("max-hint-bytes = \"32MiB\""));

    // A real node started from the file runs with it.
    std::fs::write(
        &path,
        format!(
            "cluster-id = \"from-file\"\nhttp-addr = \"127.0.0.1:0\"\nrpc-addr = \"127.0.0.1:0\"\n\
             gossip-addr = \"127.0.0.1:0\"\ndata-dir = {:?}\n",
            dir.path().join("data").to_str().expect("UTF-8")
        ),
    )
    .expect("write config");
    let node = ConfigNode::start(&path).await;
    let cluster: serde_json::Value = http_client()
        .get(format!("{}/cluster", node.url))
        .send()
        .await
        .expect("GET /cluster")
        .json()
        .await
        .expect("/cluster JSON");
    assert_eq!(cluster["cluster_id"], "from-file");
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ringkv.toml");
    let file = path.to_str().expect("UTF-8 path").to_owned();
    for (text, says) in [
        (
            "max-hint-byte = \"1MiB\"\n",
            "unknown key \"max-hint-byte\"",
        ),
        ("max-hint-byte = \"1MiB\"\n", "did you mean max-hint-bytes?"),
        ("max-hint-bytes = \"17179869184GiB\"\n", "--max-hint-bytes"),
        ("vnodes = [1, 2]\n", "\"vnodes\""),
        ("max-hint-bytes = \n", "not TOML"),
    ] {
        std::fs::write(&path, text).expect("write config");
        for args in [
            vec!["serve", "--config", &file],
            vec!["serve", "--check-config", "--config", &file],
        ] {
            let out = run_plain(&args, &[]).await;
            assert_eq!(code(&out), 2, "{text:?}: {}", describe(&args, &out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(says) && stderr.contains(&file),
                "{text:?}: {stderr:?}"
            );
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        }
    }
    let out = run_plain(&["serve", "--config", "/nonexistent/ringkv.toml"], &[]).await;
    assert_eq!(code(&out), 2, "{out:?}");
}

/// `ringkv serve --config FILE`, until its ready line. Killed on drop.
struct ConfigNode {
    _child: tokio::process::Child,
    url: String,
}

impl ConfigNode {
    async fn start(config: &std::path::Path) -> ConfigNode {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ringkv serve --config");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_LINE_TIMEOUT, lines.next_line())
            .await
            .expect("a ready line in time")
            .expect("read stdout")
            .expect("a ready line before EOF");
        let (addr, _) = parse_ready_line(&line).expect("a well-formed ready line");
        ConfigNode {
            _child: child,
            url: format!("http://{addr}"),
        }
    }
}

/// `leave --wait` follows the hand-off to the end, in plain lines when stderr is no
/// terminal, and returns once the node has exited.
#[tokio::test]
async fn leave_waits_with_progress_lines_until_the_node_is_gone() {
    use common::cluster::{Cluster, FAST_GOSSIP};
    let mut cluster = Cluster::start(2, &FAST_GOSSIP).await;
    for i in 0..20 {
        cluster.nodes[0].put_ok(&format!("lw{i}"), "v", None).await;
    }
    let leaving = cluster.nodes[1].base_url();
    let both = format!("{},{leaving}", cluster.nodes[0].base_url());
    let out = run_cli(Some(&both), &["leave", "--wait"], None, &[]).await;
    assert_eq!(
        code(&out),
        2,
        "one node to leave: {}",
        describe(&["leave"], &out)
    );

    let args = ["leave", "--wait", "--wait-timeout", "60s"];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args(args)
        .args(["--node", &leaving])
        .env_remove("RINGKV_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("leave --wait within its own timeout")
        .expect("run leave --wait");
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "left");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\r'), "no bar off a terminal: {stderr:?}");
    assert!(
        stderr.lines().count() >= 1 && stderr.lines().all(|l| l.starts_with("leave: ")),
        "one plain line per step: {stderr:?}"
    );
    assert!(
        cluster.nodes[1]
            .wait_exited(Duration::from_secs(10))
            .await
            .is_some(),
        "the node exited by the time leave --wait returned"
    );
    for i in 0..20 {
        assert_eq!(cluster.nodes[0].get_single(&format!("lw{i}")).await.0, b"v");
    }
}

/// `bench` off a terminal: one plain line per interval on stderr, no redrawn bar.
#[tokio::test]
async fn bench_prints_plain_progress_lines_off_a_terminal() {
    let node = TestNode::start().await;
    let url = node.base_url();
    let args = [
        "bench",
        "--url",
        &url,
        "--duration",
        "3s",
        "--concurrency",
        "2",
        "--value-size",
        "1KiB",
        "--keys",
        "100",
    ];
    let out = run_plain(&args, &[]).await;
    assert!(out.status.success(), "{}", describe(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\r'), "{stderr:?}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bench: "))
        .collect();
    assert!(
        (2..=4).contains(&lines.len()) && lines[0].contains("of 3s") && lines[0].contains("ops/s"),
        "a line a second: {stderr:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1024 B values"));
}
