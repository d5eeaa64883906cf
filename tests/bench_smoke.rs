//! `ringkv bench` against one real node for 2 seconds: its JSON report is complete and
//! consistent, and the node's `/metrics` agree with what the bench did.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

const BENCH_TIMEOUT: Duration = Duration::from_secs(60);

async fn bench(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ringkv bench");
    tokio::time::timeout(BENCH_TIMEOUT, child.wait_with_output())
        .await
        .expect("ringkv bench finished within its bound")
        .expect("ringkv bench ran")
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not a count in {v:#}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[tokio::test]
async fn a_two_second_run_reports_every_figure() {
    let node = TestNode::start().await;
    let pid = node.pid().expect("node running").to_string();
    let out = bench(&[
        "--url",
        &node.base_url(),
        "--duration",
        "2s",
        "--concurrency",
        "8",
        "--keys",
        "200",
        "--preload",
        "--pids",
        &pid,
        "--label",
        "smoke",
        "--json",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        !stderr.contains('\r'),
        "no progress bar when stderr is not a terminal: {stderr:?}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON report");

    assert_eq!(report["label"], "smoke");
    assert_eq!(u(&report, "/preloaded"), 200);
    assert_eq!(u(&report, "/errors_total"), 0, "{report:#}");
    assert_eq!(
        u(&report, "/misses"),
        0,
        "every key was preloaded: {report:#}"
    );
    let elapsed = f(&report, "/elapsed_secs");
    assert!((1.9..10.0).contains(&elapsed), "ran for {elapsed} s");
    let (gets, puts) = (u(&report, "/get/ops"), u(&report, "/put/ops"));
    assert!(gets > 0 && puts > 0, "{report:#}");
    assert_eq!(gets + puts, u(&report, "/ops"));
    let rate = f(&report, "/ops_per_sec");
    assert!(
        (rate - (gets + puts) as f64 / elapsed).abs() < 1.0,
        "{report:#}"
    );
    for op in ["get", "put"] {
        let p = |q: &str| u(&report, &format!("/{op}/{q}"));
        assert!(p("p50_us") > 0, "{op}: {report:#}");
        assert!(
            p("p50_us") <= p("p90_us")
                && p("p90_us") <= p("p99_us")
                && p("p99_us") <= p("p999_us")
                && p("p999_us") <= p("max_us"),
            "{op} percentiles out of order: {report:#}"
        );
    }
    // One node: no internode traffic; group commit acknowledges writes; CPU was measured.
    assert!(f(&report, "/efficiency/cpu_us_per_op") > 0.0, "{report:#}");
    assert_eq!(f(&report, "/efficiency/internode_bytes_per_op"), 0.0);
    let fsyncs = f(&report, "/efficiency/fsyncs_per_write");
    assert!(fsyncs > 0.0 && fsyncs <= 1.0, "{report:#}");
    assert_eq!(u(&report, "/efficiency/writes_acknowledged"), puts);

    // The node's own counters saw the preload and the measured writes.
    let acked = common::metrics::metric(&node, "ringkv_writes_acknowledged_total").await;
    assert_eq!(acked, puts + 200, "writes acknowledged by the node");
}

#[tokio::test]
async fn bad_settings_are_refused_before_any_load() {
    for (args, says) in [
        (vec!["--read-ratio", "1.5"], "--read-ratio"),
        (vec!["--concurrency", "0"], "--concurrency"),
        (vec!["--duration", "2h"], "--duration"),
        (vec!["--target", "reference", "--w", "2"], "--w"),
    ] {
        let out = bench(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Nothing listens on the discard port: the bench must say it cannot reach that target
    // (not fail for some other reason, such as a flag it refused) and print no report.
    let out = bench(&["--url", "http://127.0.0.1:9", "--duration", "1s"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "unreachable target: {stderr}");
    assert!(
        stderr.contains("cannot reach the target") && stderr.contains("127.0.0.1:9"),
        "the error must name the unreachable target: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no report for a run that never reached its target: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
