//! Helpers for the removal tests: a `ringkv serve` run that is expected to stop by itself
//! or never turn ready (a removed node's old data dir, a node whose seed answers nobody),
//! and the `ringkv` CLI as an operator runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::parse_ready_line;

/// How long one CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A `ringkv serve` process, its stdout and stderr in one log file. Killed on drop.
pub struct ServeRun {
    child: tokio::process::Child,
    log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl ServeRun {
    /// Starts `ringkv serve` on loopback port 0 with `args`, on `data_dir` (or a fresh
    /// one when `None`).
    pub fn spawn(data_dir: Option<&Path>, args: &[&str]) -> ServeRun {
        let tmp = tempfile::Builder::new()
            .prefix("ringkv-serve-")
            .tempdir()
            .expect("create tempdir");
        let log_path = tmp.path().join("serve.log");
        let fresh = tmp.path().join("data");
        let log = std::fs::File::create(&log_path).expect("create log");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
        cmd.arg("serve")
            .args(["--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0"])
            .args(["--gossip-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.unwrap_or(&fresh))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("spawn ringkv serve");
        ServeRun {
            child,
            log_path,
            _tmp: tmp,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The HTTP address of its ready line, once printed (bounded by `limit`).
    pub async fn http_addr(&self, limit: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let found = self
                .log()
                .lines()
                .find(|l| l.starts_with("ringkv ready"))
                .and_then(|l| parse_ready_line(l).ok());
            if let Some((addr, _)) = found {
                return Some(addr);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    /// Waits for the process to exit by itself, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait for ringkv serve"))
    }
}

/// Runs `ringkv <args>` (bounded by a timeout) and returns its output.
pub async fn ringkv_cli(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    cmd.args(args)
        .env_remove("RINGKV_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn ringkv CLI");
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ringkv {args:?} did not finish within {CLI_TIMEOUT:?}"))
        .expect("wait for ringkv CLI")
}
