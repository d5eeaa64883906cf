//! TLS on the HTTP API (`--tls-cert`, `--tls-key`) and internode mutual TLS
//! (`--rpc-tls`, `--tls-ca`), against the real binary on loopback, with a CA and
//! certificates made by rcgen at test time.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::cluster::wait_until;
use common::{parse_ready_line, parse_ready_line_peer_addrs};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use ringkv::net::tls::{NodeTls, TlsFlags};
use serde_json::Value;
use tokio::io::AsyncReadExt;

const BOUND: Duration = Duration::from_secs(30);

/// A CA that signs node certificates naming 127.0.0.1 and localhost.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes the CA and a fresh leaf it signed into `dir`: (ca, cert, key) paths.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let write = |file: String, text: String| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        (
            write(format!("{name}-ca.pem"), self.cert.pem()),
            write(format!("{name}.pem"), cert.pem()),
            write(format!("{name}.key"), key.serialize_pem()),
        )
    }
}

/// A `ringkv serve` process whose HTTP API speaks TLS (so `TestNode`, which polls plain
/// `/ready`, does not fit). Killed when dropped.
struct TlsNode {
    child: Child,
    _data: tempfile::TempDir,
    log: PathBuf,
    http: SocketAddr,
    rpc: SocketAddr,
    gossip: SocketAddr,
}

impl TlsNode {
    async fn start(args: &[String], client: &reqwest::Client) -> TlsNode {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("node.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--rpc-addr",
                "127.0.0.1:0",
            ])
            .args(["--gossip-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join("data"))
            .args(args)
            .env_remove("RINGKV_NODE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ringkv serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Hands over the ready line, then drains stdout so the node never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match tokio::time::timeout(BOUND, rx).await {
            Ok(Ok(line)) => line,
            _ => {
                let _ = child.kill();
                panic!(
                    "no ready line; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let (http, _) = parse_ready_line(&line).unwrap();
        let (rpc, gossip) = parse_ready_line_peer_addrs(&line).unwrap();
        let node = TlsNode {
            child,
            _data: data,
            log,
            http,
            rpc,
            gossip,
        };
        let url = node.url("/ready");
        wait_until(BOUND, "/ready over https", || async {
            match client.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(format!("{e:?}")),
            }
        })
        .await;
        node
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.http)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that trusts `ca` alone.
fn trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// The whole error chain on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

async fn cli(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args(args)
        .env_remove("RINGKV_NODE")
        .env_remove("RINGKV_CA_CERT")
        .env_remove("RINGKV_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(BOUND, cmd.output())
        .await
        .expect("the CLI finishes")
        .expect("run the CLI")
}

#[tokio::test]
async fn https_needs_the_ca_and_plain_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (ca_pem, cert, key) = ca.issue(dir.path(), "node");
    let client = trusting(&ca_pem);
    let node = TlsNode::start(
        &["--tls-cert".into(), s(&cert), "--tls-key".into(), s(&key)],
        &client,
    )
    .await;

    let put = client
        .put(node.url("/kv/secure"))
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    let got = client.get(node.url("/kv/secure")).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), "over tls");

    // The node counts a failed handshake in the connection's task, which may end after the
    // client has seen its error: wait (bounded) for the count, then check it is exact.
    let failures = |want: u64| tls_failures_reaching(&client, &node, want);
    assert_eq!(failures(0).await, 0, "no handshake has failed yet");
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let answer = plain
        .get(format!("http://{}/ready", node.http))
        .send()
        .await;
    assert!(answer.is_err(), "plain HTTP got an answer: {answer:?}");
    assert_eq!(failures(1).await, 1, "plain HTTP is one failed handshake");

    // A client that does not trust the node's CA fails verification.
    let public_roots = plain.get(node.url("/ready")).send().await;
    let e = public_roots.expect_err("a client without the CA got through");
    assert!(
        chain(&e).to_lowercase().contains("certificate"),
        "not a certificate error: {}",
        chain(&e)
    );
    assert_eq!(
        failures(2).await,
        2,
        "a client refusing the certificate is one more"
    );
    let other_ca = Ca::new("someone else");
    let (other_pem, _, _) = other_ca.issue(dir.path(), "other");
    let e = trusting(&other_pem)
        .get(node.url("/ready"))
        .send()
        .await
        .expect_err("a client trusting another CA got through");
    assert!(
        chain(&e).to_lowercase().contains("certificate"),
        "{}",
        chain(&e)
    );

    assert_eq!(failures(3).await, 3, "a client of another CA is one more");

    // Failed handshakes cost the node nothing: it still serves.
    let again = client.get(node.url("/kv/secure")).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);

    // The CLI: https with --ca-cert works; without it, verification fails.
    let base = node.url("");
    let out = cli(&["get", "secure", "--node", &base, "--ca-cert", &s(&ca_pem)]).await;
    assert!(out.status.success(), "CLI with --ca-cert: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls");
    let out = cli(&["get", "secure", "--node", &base]).await;
    assert!(!out.status.success(), "CLI without the CA succeeded");
}

/// `ringkv_tls_handshake_failures_total`, read until it reaches `want` or 5 s pass.
async fn tls_failures_reaching(client: &reqwest::Client, node: &TlsNode, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = tls_failures(client, node).await;
        if n >= want || std::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `ringkv_tls_handshake_failures_total` from the node's `/metrics`.
async fn tls_failures(client: &reqwest::Client, node: &TlsNode) -> u64 {
    let text = client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ringkv_tls_handshake_failures_total "))
        .unwrap_or_else(|| panic!("no TLS failure counter in {text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn cluster_state(client: &reqwest::Client, node: &TlsNode) -> Result<Value, String> {
    let resp = client
        .get(node.url("/cluster"))
        .send()
        .await
        .map_err(|e| chain(&e))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("/cluster: {}", resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

/// Reads from `stream` until it ends, fails or `limit` passes: `Some` ended (how), `None`
/// still open.
async fn ends_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<String> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(0)) => Some("closed".into()),
        Ok(Ok(n)) => Some(format!("{n} bytes")),
        Ok(Err(e)) => Some(format!("error: {e}")),
    }
}

#[tokio::test]
async fn an_rpc_tls_cluster_replicates_and_refuses_a_peer_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let mut certs: Vec<(PathBuf, PathBuf, PathBuf)> = (1..=3)
        .map(|i| ca.issue(dir.path(), &format!("node{i}")))
        .collect();
    let client = trusting(&certs[0].0);
    let args = |(ca, cert, key): &(PathBuf, PathBuf, PathBuf)| -> Vec<String> {
        vec![
            "--tls-cert".into(),
            s(cert),
            "--tls-key".into(),
            s(key),
            "--tls-ca".into(),
            s(ca),
            "--rpc-tls".into(),
        ]
    };
    let first = TlsNode::start(&args(&certs[0]), &client).await;
    let mut nodes = vec![first];
    for c in certs.drain(1..) {
        let mut a = args(&c);
        a.extend(["--seed".into(), nodes[0].gossip.to_string()]);
        nodes.push(TlsNode::start(&a, &client).await);
    }
    let nodes_ref = &nodes;
    let client_ref = &client;
    wait_until(
        Duration::from_secs(60),
        "3 live members and one ring",
        || async move {
            let mut rings = BTreeSet::new();
            for node in nodes_ref {
                let c = cluster_state(client_ref, node).await?;
                let live = c["members"]
                    .as_array()
                    .map(|m| m.iter().filter(|m| m["live"] == true).count())
                    .unwrap_or(0);
                if live != 3 {
                    return Err(format!("{} sees {live} live", node.http));
                }
                rings.insert(c["ring_hash"].as_str().unwrap_or("?").to_owned());
            }
            (rings.len() == 1)
                .then_some(())
                .ok_or(format!("rings {rings:?}"))
        },
    )
    .await;

    // Every replica acknowledges over mutual TLS.
    let put = client
        .put(nodes[0].url("/kv/mtls?w=all"))
        .body("replicated")
        .send()
        .await
        .unwrap();
    let status = put.status();
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}\n{}",
        put.text().await.unwrap(),
        nodes[0].log_text()
    );
    for node in &nodes {
        let held = client
            .get(node.url("/debug/local/mtls"))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), StatusCode::OK, "{} lacks the key", node.http);
    }
    let got = client.get(nodes[2].url("/kv/mtls")).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "replicated");

    // A peer whose certificate another CA signed: node 1's RPC port ends its connection,
    // while one of the cluster's own is kept open (the control).
    let rpc = nodes[0].rpc;
    let dialer = |files: &(PathBuf, PathBuf, PathBuf), trust: &Path| {
        NodeTls::load(TlsFlags {
            cert: Some(&files.1),
            key: Some(&files.2),
            ca: Some(trust),
            rpc: true,
        })
        .unwrap()
        .rpc_dialer()
        .unwrap()
    };
    let cluster_ca = dir.path().join("node1-ca.pem");
    let member = ca.issue(dir.path(), "member");
    let mut ok = ringkv::net::tls::dial(
        &dialer(&member, &cluster_ca),
        rpc,
        tokio::net::TcpStream::connect(rpc).await.unwrap(),
    )
    .await
    .expect("a certificate of the cluster's CA is accepted");
    assert_eq!(ends_within(&mut ok, Duration::from_millis(500)).await, None);

    let foreign_ca = Ca::new("foreign CA");
    let foreign = foreign_ca.issue(dir.path(), "foreign");
    // It trusts the cluster's CA, so its side of the handshake completes; the node then
    // refuses its certificate and the connection ends.
    let mut refused = ringkv::net::tls::dial(
        &dialer(&foreign, &cluster_ca),
        rpc,
        tokio::net::TcpStream::connect(rpc).await.unwrap(),
    )
    .await;
    if let Ok(stream) = &mut refused {
        let ended = ends_within(stream, Duration::from_secs(10)).await;
        assert!(
            ended.is_some(),
            "node 1 kept a foreign peer's connection open"
        );
    }
    // Trusting only its own CA, the foreign peer refuses node 1's certificate.
    let dialed = ringkv::net::tls::dial(
        &dialer(&foreign, &foreign.0),
        rpc,
        tokio::net::TcpStream::connect(rpc).await.unwrap(),
    )
    .await;
    let Err(e) = dialed else {
        panic!("node 1's certificate verified against a foreign CA");
    };
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // Node 1 still serves.
    let again = client.get(nodes[0].url("/kv/mtls")).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}
