//! Test harness shared by the integration tests: spawns the real `ringkv` binary on
//! `127.0.0.1:0`, finds its address from the ready line, and offers small HTTP helpers.
//!
//! Every wait here is bounded; a node that never becomes ready fails the test with the tail of
//! its log. A `TestNode` kills its process when dropped, so a panicking test leaves nothing
//! behind.
#![allow(dead_code)]

pub mod cluster;
pub mod gossip_wire;
pub mod listing;
pub mod metrics;
pub mod removal;
pub mod rss;
pub mod seed;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Response, StatusCode};
use serde_json::Value;

/// How long a node may take from spawn to its ready line.
pub const READY_LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to exit after SIGTERM / SIGKILL.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout for the HTTP client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

pub const TOKEN_HEADER: &str = "x-causality-token";

/// Characters escaped in a key path segment: everything but ASCII alphanumerics and `-_~`.
/// `/` is escaped (as `%2F`), `.` too, so the URL parser never sees a dot segment.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
/// Same as `KEY_SET`, but leaves `/` raw (the README allows both forms).
const KEY_SET_RAW_SLASH: &AsciiSet = &KEY_SET.remove(b'/');

/// `/kv/{key}` with the key fully percent-encoded (`/` becomes `%2F`).
pub fn kv_path(key: &str) -> String {
    format!("/kv/{}", utf8_percent_encode(key, KEY_SET))
}

/// `/kv/{key}` with the key percent-encoded but its `/` left raw.
pub fn kv_path_raw_slash(key: &str) -> String {
    format!("/kv/{}", utf8_percent_encode(key, KEY_SET_RAW_SLASH))
}

/// `/debug/local/{key}`, key fully percent-encoded.
pub fn debug_local_path(key: &str) -> String {
    format!("/debug/local/{}", utf8_percent_encode(key, KEY_SET))
}

/// The `x-causality-token` header of a response, if any.
pub fn token(resp: &Response) -> Option<String> {
    resp.headers()
        .get(TOKEN_HEADER)
        .map(|v| v.to_str().expect("token header is ASCII").to_owned())
}

/// The `x-causality-token` header, failing the test if it is missing or empty.
pub fn require_token(resp: &Response) -> String {
    let t = token(resp).unwrap_or_else(|| {
        panic!(
            "{} {} {}: missing {TOKEN_HEADER} header; headers: {:?}",
            resp.status(),
            resp.url().path(),
            resp.url().query().unwrap_or(""),
            resp.headers()
        )
    });
    assert!(!t.is_empty(), "empty {TOKEN_HEADER} header");
    t
}

/// The `content-type` header of a response, if any.
pub fn content_type(resp: &Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("content-type is ASCII").to_owned())
}

/// Asserts `resp` has `status` and a JSON body `{"error": code, "message": <non-empty>}`.
/// Returns the parsed body. `what` names the request in the failure message.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str, what: &str) -> Value {
    let got_status = resp.status();
    let body = resp.bytes().await.expect("read error body");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        got_status, status,
        "{what}: expected status {status} ({code}), got {got_status} with body {text:?}"
    );
    let json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {text:?}"));
    assert_error_json(&json, code, what);
    json
}

/// Asserts a JSON value is `{"error": code, "message": <non-empty string>}`.
pub fn assert_error_json(json: &Value, code: &str, what: &str) {
    assert_eq!(
        json.get("error").and_then(Value::as_str),
        Some(code),
        "{what}: expected error code {code:?} in {json}"
    );
    let message = json.get("message").and_then(Value::as_str);
    assert!(
        message.is_some_and(|m| !m.trim().is_empty()),
        "{what}: expected a non-empty string `message` in {json}"
    );
}

/// Reads a response body as JSON, failing with the body text if it is not.
pub async fn json_body(resp: Response, what: &str) -> Value {
    let body = resp.bytes().await.expect("read body");
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{what}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// One sibling of a 300 / listing / batch answer, decoded to raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sibling {
    pub value: Vec<u8>,
    pub content_type: String,
}

/// Decodes a `siblings` JSON array, checking each `encoding` is the one the README prescribes
/// (`utf8` for valid UTF-8, `base64` standard padded otherwise). Returned sorted.
pub fn decode_siblings(siblings: &Value, what: &str) -> Vec<Sibling> {
    use base64::Engine as _;
    let arr = siblings
        .as_array()
        .unwrap_or_else(|| panic!("{what}: `siblings` is not an array: {siblings}"));
    let mut out: Vec<Sibling> = arr
        .iter()
        .map(|s| {
            let value = s["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: sibling without string `value`: {s}"));
            let encoding = s["encoding"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: sibling without `encoding`: {s}"));
            let content_type = s["content_type"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: sibling without `content_type`: {s}"))
                .to_owned();
            let bytes = match encoding {
                "utf8" => value.as_bytes().to_vec(),
                "base64" => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .unwrap_or_else(|e| {
                            panic!("{what}: sibling value is not standard base64 ({e}): {s}")
                        });
                    assert!(
                        std::str::from_utf8(&bytes).is_err(),
                        "{what}: value is valid UTF-8 but was sent as base64: {s}"
                    );
                    bytes
                }
                other => panic!("{what}: unknown sibling encoding {other:?}: {s}"),
            };
            Sibling {
                value: bytes,
                content_type,
            }
        })
        .collect();
    out.sort();
    out
}

/// A sibling with the default content type.
pub fn sib(value: impl AsRef<[u8]>) -> Sibling {
    Sibling {
        value: value.as_ref().to_vec(),
        content_type: "application/octet-stream".to_owned(),
    }
}

/// A sibling with a given content type.
pub fn sib_ct(value: impl AsRef<[u8]>, content_type: &str) -> Sibling {
    Sibling {
        value: value.as_ref().to_vec(),
        content_type: content_type.to_owned(),
    }
}

/// Sorts a list of expected siblings, to compare with `decode_siblings`.
pub fn sorted(mut v: Vec<Sibling>) -> Vec<Sibling> {
    v.sort();
    v
}

/// A fresh HTTP client: no proxy (the tests only talk to 127.0.0.1), no redirects (300 is an
/// answer, not a redirect), and a bounded timeout on every request.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build reqwest client")
}

/// A running (or stopped, between `sig*` and `restart`) `ringkv serve` process.
pub struct TestNode {
    child: Option<Child>,
    tmp: tempfile::TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    extra_args: Vec<String>,
    /// The HTTP address from the ready line.
    pub addr: SocketAddr,
    /// The RPC and gossip addresses from the ready line (port 0 until the first spawn).
    pub rpc_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    /// When set, `spawn` binds the addresses of the previous run instead of port 0 (see
    /// `restart_same_addrs`): peers know a node by the addresses it advertised.
    reuse_addrs: bool,
    /// The node id from the ready line.
    pub node_id: String,
    /// A client for this node (recreated on restart).
    pub client: reqwest::Client,
    /// How long `/ready` may take after the ready line (a joining node pulls its ranges
    /// first).
    ready_timeout: Duration,
}

impl TestNode {
    /// Starts a node with default flags on a fresh data dir.
    pub async fn start() -> TestNode {
        TestNode::start_with(&[]).await
    }

    /// Starts a node with extra `serve` flags (e.g. `["--max-value-bytes", "1024"]`).
    pub async fn start_with(extra_args: &[&str]) -> TestNode {
        TestNode::start_with_ready_timeout(extra_args, Duration::from_secs(10)).await
    }

    /// As [`TestNode::start_with`], allowing `ready_timeout` for `/ready` to turn 200.
    pub async fn start_with_ready_timeout(
        extra_args: &[&str],
        ready_timeout: Duration,
    ) -> TestNode {
        let tmp = tempfile::Builder::new()
            .prefix("ringkv-test-")
            .tempdir()
            .expect("create tempdir");
        let data_dir = tmp.path().join("data");
        let log_path = tmp.path().join("node.log");
        let mut node = TestNode {
            child: None,
            tmp,
            data_dir,
            log_path,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            reuse_addrs: false,
            node_id: String::new(),
            client: http_client(),
            ready_timeout,
        };
        node.spawn().await;
        node
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADDR`, as the CLI's `--node` wants it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL of `/kv/{key}` (key fully percent-encoded).
    pub fn kv_url(&self, key: &str) -> String {
        self.url(&kv_path(key))
    }

    /// The last `max_lines` lines of the node's log (stderr, plus stdout after the ready line).
    pub fn log_tail(&self, max_lines: usize) -> String {
        log_tail(&self.log_path, max_lines)
    }

    /// Starts the process on `self.data_dir` and waits for its ready line.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while a process is running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        writeln!(log, "===== spawn ringkv serve {:?} =====", self.extra_args).ok();
        let stderr = log.try_clone().expect("clone log handle");

        let (http, rpc, gossip) = if self.reuse_addrs {
            (
                self.addr.to_string(),
                self.rpc_addr.to_string(),
                self.gossip_addr.to_string(),
            )
        } else {
            let any = "127.0.0.1:0".to_owned();
            (any.clone(), any.clone(), any)
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringkv"));
        cmd.arg("serve")
            .args(["--http-addr", &http])
            .args(["--rpc-addr", &rpc, "--gossip-addr", &gossip])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // The environment must not configure the node behind the test's back.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn ringkv serve");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);

        // A thread reads the first stdout line, hands it over, then drains the rest into the
        // log so the node never blocks on a full pipe. EOF before a line drops the sender.
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let drain_log = log;
        std::thread::spawn(move || read_ready_line(stdout, tx, drain_log));

        let line = match tokio::time::timeout(READY_LINE_TIMEOUT, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = self.wait_exit(Duration::from_secs(5)).await;
                panic!(
                    "ringkv serve closed stdout without a ready line (exit: {status:?})\n--- log ---\n{}",
                    self.log_tail(200)
                );
            }
            Err(_) => {
                self.kill_now();
                panic!(
                    "ringkv serve printed no ready line within {READY_LINE_TIMEOUT:?}\n--- log ---\n{}",
                    self.log_tail(200)
                );
            }
        };
        let (addr, node_id) = parse_ready_line(&line).unwrap_or_else(|e| {
            self.kill_now();
            panic!(
                "bad ready line {line:?}: {e}\n--- log ---\n{}",
                self.log_tail(200)
            )
        });
        let (rpc_addr, gossip_addr) = parse_ready_line_peer_addrs(&line).unwrap_or_else(|e| {
            self.kill_now();
            panic!(
                "bad ready line {line:?}: {e}\n--- log ---\n{}",
                self.log_tail(200)
            )
        });
        if self.reuse_addrs {
            assert_eq!(
                (addr, rpc_addr, gossip_addr),
                (self.addr, self.rpc_addr, self.gossip_addr),
                "node restarted on other addresses than asked"
            );
            assert_eq!(node_id, self.node_id, "node id changed across a restart");
        }
        self.addr = addr;
        self.rpc_addr = rpc_addr;
        self.gossip_addr = gossip_addr;
        self.node_id = node_id;
        self.client = http_client();
        self.wait_ready().await;
    }

    /// Polls `/ready` until 200 (bounded by `ready_timeout`).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.ready_timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.client.get(self.url("/ready")).send().await {
                Ok(r) if r.status() == StatusCode::OK => return,
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = format!("error {e}"),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.kill_now();
        panic!(
            "node printed its ready line but /ready never answered 200 within 10 s (last: {last})\n--- log ---\n{}",
            self.log_tail(200)
        );
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its status.
    pub async fn sigterm_and_wait(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        match self.wait_exit(EXIT_TIMEOUT).await {
            Some(status) => status,
            None => {
                self.kill_now();
                panic!(
                    "node did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n--- log ---\n{}",
                    self.log_tail(200)
                );
            }
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn sigkill(&mut self) {
        self.signal(Signal::SIGKILL);
        if self.wait_exit(EXIT_TIMEOUT).await.is_none() {
            panic!("node did not die within {EXIT_TIMEOUT:?} of SIGKILL");
        }
    }

    /// Starts the node again on the same data dir (and the same flags), on fresh ports (see
    /// `restart_same_addrs` for a cluster member). The process must have been stopped first
    /// (`sigterm_and_wait` or `sigkill`).
    pub async fn restart(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let still_running = child.try_wait().expect("try_wait").is_none();
            assert!(!still_running, "restart() while the node is still running");
            self.child = None;
        }
        self.spawn().await;
    }

    /// Starts the node again on the same data dir, flags, and HTTP/RPC/gossip addresses as
    /// its previous run (a cluster member must come back where its peers know it). The
    /// process must have been stopped first.
    pub async fn restart_same_addrs(&mut self) {
        self.reuse_addrs = true;
        self.restart().await;
        self.reuse_addrs = false;
    }

    /// Whether the process is running (spawned and not yet exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// The whole log so far (stderr, plus stdout after the ready line).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn signal(&mut self, sig: Signal) {
        let child = self.child.as_ref().expect("no running process to signal");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        kill(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}) failed: {e}"));
    }

    /// Polls the child until it exits or `limit` passes. Leaves `self.child` in place (reaped),
    /// so `restart` can tell it stopped.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL and reap, synchronously; for failure paths and `Drop`.
    fn kill_now(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill_now();
        if std::thread::panicking() {
            eprintln!(
                "--- ringkv node log ({}), last lines ---\n{}",
                self.log_path.display(),
                self.log_tail(80)
            );
        }
        // `tmp` (the data dir and log) is removed by its own Drop, after this.
    }
}

fn read_ready_line(
    stdout: std::process::ChildStdout,
    tx: tokio::sync::oneshot::Sender<String>,
    mut log: File,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => {
            let _ = writeln!(log, "[stdout] {}", line.trim_end());
            let _ = tx.send(line.trim_end().to_owned());
        }
        _ => return, // EOF or error: dropping `tx` tells the waiter.
    }
    for l in reader.lines() {
        match l {
            Ok(l) => {
                let _ = writeln!(log, "[stdout] {l}");
            }
            Err(_) => break,
        }
    }
}

/// Parses `ringkv ready http=127.0.0.1:PORT rpc=… gossip=… node_id=HEX` (fields after
/// `ringkv ready` are `name=value`; `http` and `node_id` are required).
pub fn parse_ready_line(line: &str) -> Result<(SocketAddr, String), String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("ringkv") || words.next() != Some("ready") {
        return Err("does not start with `ringkv ready`".into());
    }
    let fields: std::collections::HashMap<&str, &str> = words
        .map(|w| w.split_once('=').ok_or(format!("{w:?} is not name=value")))
        .collect::<Result<_, _>>()?;
    let addr: SocketAddr = fields
        .get("http")
        .ok_or("no http=ADDR")?
        .parse()
        .map_err(|e| format!("http address: {e}"))?;
    if addr.ip().to_string() != "127.0.0.1" || addr.port() == 0 {
        return Err(format!("unexpected http address {addr}"));
    }
    let node_id = *fields.get("node_id").ok_or("no node_id=HEX")?;
    if node_id.is_empty() || !node_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("node_id {node_id:?} is not hex"));
    }
    Ok((addr, node_id.to_owned()))
}

/// The `rpc=` and `gossip=` addresses of a ready line.
pub fn parse_ready_line_peer_addrs(line: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let field = |name: &str| -> Result<SocketAddr, String> {
        let prefix = format!("{name}=");
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .ok_or(format!("no {name}=ADDR"))?;
        let addr: SocketAddr = value.parse().map_err(|e| format!("{name} address: {e}"))?;
        if addr.port() == 0 {
            return Err(format!("unexpected {name} address {addr}"));
        }
        Ok(addr)
    };
    Ok((field("rpc")?, field("gossip")?))
}

fn log_tail(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read log {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

/// Polls `f` until it returns `Some`, at most `attempts` times, `interval` apart.
pub async fn poll_until<T, F, Fut>(attempts: usize, interval: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..attempts {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(interval).await;
    }
    None
}

/// Convenience wrappers over the KV API, used by every test file.
impl TestNode {
    /// `PUT /kv/{key}` with an optional token and content type; returns the response.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        token: Option<&str>,
        content_type: Option<&str>,
    ) -> Response {
        let mut req = self.client.put(self.kv_url(key)).body(value.into());
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        req.send().await.expect("PUT request failed")
    }

    /// PUT that must answer 204 with a token; returns the token.
    pub async fn put_ok(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        token: Option<&str>,
    ) -> String {
        let resp = self.put(key, value, token, None).await;
        expect_204_token(resp, &format!("PUT {key:?}")).await
    }

    /// `GET /kv/{key}`.
    pub async fn get(&self, key: &str) -> Response {
        self.client
            .get(self.kv_url(key))
            .send()
            .await
            .expect("GET request failed")
    }

    /// `DELETE /kv/{key}` with an optional token.
    pub async fn delete(&self, key: &str, token: Option<&str>) -> Response {
        let mut req = self.client.delete(self.kv_url(key));
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        req.send().await.expect("DELETE request failed")
    }

    /// GET that must answer 200; returns (value, content type, token).
    pub async fn get_single(&self, key: &str) -> (Vec<u8>, String, String) {
        let resp = self.get(key).await;
        let status = resp.status();
        let ct = content_type(&resp).unwrap_or_default();
        let tok = token(&resp);
        let body = resp.bytes().await.expect("read GET body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {key:?}: expected 200, got {status} with body {:?}",
            String::from_utf8_lossy(&body)
        );
        let tok = tok.unwrap_or_else(|| panic!("GET {key:?}: 200 without {TOKEN_HEADER}"));
        (body, ct, tok)
    }

    /// GET that must answer 300; returns (sorted siblings, token), after checking that the
    /// header token equals the body token.
    pub async fn get_siblings(&self, key: &str) -> (Vec<Sibling>, String) {
        let resp = self.get(key).await;
        let status = resp.status();
        let header_tok = token(&resp);
        let body = json_body_any_status(resp).await;
        assert_eq!(
            status,
            StatusCode::MULTIPLE_CHOICES,
            "GET {key:?}: expected 300, got {status} with body {body}"
        );
        let body_tok = body["causality_token"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {key:?}: 300 body without causality_token: {body}"))
            .to_owned();
        assert_eq!(
            header_tok.as_deref(),
            Some(body_tok.as_str()),
            "GET {key:?}: 300 header token differs from body token"
        );
        (
            decode_siblings(&body["siblings"], &format!("GET {key:?}")),
            body_tok,
        )
    }

    /// `GET /debug/local/{key}` as JSON (must be 200).
    pub async fn debug_local(&self, key: &str) -> Value {
        let resp = self
            .client
            .get(self.url(&debug_local_path(key)))
            .send()
            .await
            .expect("GET /debug/local failed");
        let status = resp.status();
        let body = json_body_any_status(resp).await;
        assert_eq!(status, StatusCode::OK, "GET /debug/local/{key:?}: {body}");
        body
    }

    /// Lists every key (following `next_cursor`, bounded) with the given query params.
    /// Returns the items in the order the server returned them.
    pub async fn list_all(&self, params: &[(&str, &str)], limit: usize) -> Vec<Value> {
        let limit_s = limit.to_string();
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..10_000 {
            let mut q: Vec<(&str, &str)> = params.to_vec();
            q.push(("limit", &limit_s));
            if let Some(c) = cursor.as_deref() {
                q.push(("cursor", c));
            }
            let resp = self
                .client
                .get(self.url("/kv"))
                .query(&q)
                .send()
                .await
                .expect("GET /kv failed");
            let status = resp.status();
            let body = json_body_any_status(resp).await;
            assert_eq!(status, StatusCode::OK, "GET /kv {q:?}: {body}");
            let page = body["items"]
                .as_array()
                .unwrap_or_else(|| panic!("GET /kv: `items` is not an array: {body}"));
            assert!(
                page.len() <= limit,
                "GET /kv: page of {} items exceeds limit {limit}",
                page.len()
            );
            items.extend(page.iter().cloned());
            match &body["next_cursor"] {
                Value::Null => return items,
                Value::String(c) => {
                    assert!(!page.is_empty(), "GET /kv: empty page with a next_cursor");
                    cursor = Some(c.clone());
                }
                other => panic!("GET /kv: next_cursor is neither null nor a string: {other}"),
            }
        }
        panic!("GET /kv: more than 10000 pages; the cursor never ends")
    }

    /// `POST /batch` with a JSON body; returns (status, parsed body).
    pub async fn batch(&self, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url("/batch"))
            .json(body)
            .send()
            .await
            .expect("POST /batch failed");
        let status = resp.status();
        (status, json_body_any_status(resp).await)
    }
}

/// Asserts 204 + token header, returns the token.
pub async fn expect_204_token(resp: Response, what: &str) -> String {
    let status = resp.status();
    let tok = token(&resp);
    let body = resp.bytes().await.unwrap_or_default();
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{what}: expected 204, got {status} with body {:?}",
        String::from_utf8_lossy(&body)
    );
    let tok = tok.unwrap_or_else(|| panic!("{what}: 204 without {TOKEN_HEADER}"));
    assert!(!tok.is_empty(), "{what}: empty token");
    tok
}

async fn json_body_any_status(resp: Response) -> Value {
    let body = resp.bytes().await.expect("read body");
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// Keys of listing items, in order.
pub fn item_keys(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i["key"]
                .as_str()
                .unwrap_or_else(|| panic!("listing item without string key: {i}"))
                .to_owned()
        })
        .collect()
}

/// A cheap deterministic PRNG (xorshift64*) so tests need no extra crates; seed it with
/// [`XorShift::from_test_seed`] (`RINGKV_TEST_SEED`, else the clock) and print the seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}
