//! `/metrics` against a real node: a known workload moves the request counters and
//! histograms by exactly that much, by operation and status; both exposition formats are
//! served as the scraper's `Accept` asks; no label value ever holds a key; and the
//! Grafana dashboard in deploy/ queries only metric families the node exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// What a scraper that wants the text format sends (Prometheus with
/// `scrape_protocols: [PrometheusText0.0.4]`, `promtool`-style checks).
const TEXT_ACCEPT: &str = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Key names the workload uses: none may turn up in a label value.
const KEY_MARK: &str = "delta-secret";

/// One series: its sample name and labels, as written.
type Series = (String, BTreeMap<String, String>);

/// Scrapes `/metrics` with `accept` (None: no header); checks the content type and
/// `Vary`, and returns the text.
async fn scrape(node: &TestNode, accept: Option<&str>, want_type: &str) -> String {
    let mut req = node.client.get(node.url("/metrics"));
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let resp = req.send().await.expect("GET /metrics");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "GET /metrics, Accept {accept:?}"
    );
    assert_eq!(
        content_type(&resp).as_deref(),
        Some(want_type),
        "content type for Accept {accept:?}"
    );
    let vary = resp
        .headers()
        .get(reqwest::header::VARY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    assert_eq!(
        vary.as_deref(),
        Some("accept"),
        "Vary for Accept {accept:?}"
    );
    resp.text().await.expect("metrics body")
}

/// Parses the samples of an exposition (either format: their sample lines are alike).
fn samples(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("sample value is not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                (name.to_owned(), labels(body, line))
            }
        };
        assert!(
            out.insert((name, labels), value).is_none(),
            "duplicate series: {line:?}"
        );
    }
    out
}

/// `a="x",b="y"`: our label values hold no quotes, commas or escapes (they come from
/// fixed sets), so a split is exact; anything else fails the test.
fn labels(body: &str, line: &str) -> BTreeMap<String, String> {
    body.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unquoted label value {pair:?} in {line:?}"));
            assert!(!v.contains('\\'), "escaped label value in {line:?}");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn value(s: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    s.get(&key).copied().unwrap_or(0.0)
}

/// After minus before, for one series (absent counts as 0: a series appears once it moves).
fn delta(
    before: &BTreeMap<Series, f64>,
    after: &BTreeMap<Series, f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}

/// Every series of `name` that moved, with its delta, keyed by the labels given.
fn moved(
    before: &BTreeMap<Series, f64>,
    after: &BTreeMap<Series, f64>,
    name: &str,
    keys: &[&str],
) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for ((n, labels), v) in after {
        if n != name {
            continue;
        }
        let d = v - before
            .get(&(n.clone(), labels.clone()))
            .copied()
            .unwrap_or(0.0);
        if d != 0.0 {
            let key = keys.iter().map(|k| labels[*k].clone()).collect();
            out.insert(key, d);
        }
    }
    out
}

fn row(op: &str, second: &str, d: f64) -> (Vec<String>, f64) {
    (vec![op.to_owned(), second.to_owned()], d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_moves_the_counters_by_exactly_that_much() {
    let node = TestNode::start().await;
    // A first scrape, so that the one below already sees a `debug` request counted.
    scrape(&node, None, OPENMETRICS_TYPE).await;
    let before_text = scrape(&node, Some(TEXT_ACCEPT), TEXT_TYPE).await;
    let before = samples(&before_text);

    let key = |i: usize| format!("{KEY_MARK}/k{i}");
    for i in 0..7 {
        node.put_ok(&key(i), format!("v{i}"), None).await;
    }
    for i in 0..5 {
        let resp = node.get(&key(i)).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {}", key(i));
    }
    for i in 100..103 {
        let resp = node.get(&key(i)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "GET {}", key(i));
    }
    for i in 0..2 {
        let resp = node.delete(&key(i), None).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "DELETE {}", key(i));
    }

    let after_text = scrape(&node, Some(PROMETHEUS_ACCEPT), OPENMETRICS_TYPE).await;
    let after = samples(&after_text);

    // Requests, by operation and code: exactly the workload, nothing else under get, put
    // and delete.
    let kv_ops = ["get", "put", "delete"];
    let requests: BTreeMap<_, _> = moved(
        &before,
        &after,
        "ringkv_http_requests_total",
        &["op", "code"],
    )
    .into_iter()
    .filter(|(k, _)| kv_ops.contains(&k[0].as_str()))
    .collect();
    let want: BTreeMap<_, _> = [
        row("delete", "204", 2.0),
        row("get", "200", 5.0),
        row("get", "404", 3.0),
        row("put", "204", 7.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(requests, want, "request counters moved by the workload");
    // The scrape between the two counts as one `debug` request (it is recorded once
    // answered, so the scrape that reads it is not in it yet).
    assert_eq!(
        delta(
            &before,
            &after,
            "ringkv_http_requests_total",
            &[("op", "debug"), ("code", "200")]
        ),
        1.0,
        "the scrape in between"
    );

    // Latency histograms: their count moved by the same, by operation and status class,
    // and the +Inf bucket agrees with the count.
    let counts: BTreeMap<_, _> = moved(
        &before,
        &after,
        "ringkv_http_request_duration_seconds_count",
        &["op", "class"],
    )
    .into_iter()
    .filter(|(k, _)| kv_ops.contains(&k[0].as_str()))
    .collect();
    let want: BTreeMap<_, _> = [
        row("delete", "2xx", 2.0),
        row("get", "2xx", 5.0),
        row("get", "4xx", 3.0),
        row("put", "2xx", 7.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want, "histogram counts moved by the workload");
    for (k, n) in &want {
        let labels = [("op", k[0].as_str()), ("class", k[1].as_str())];
        let inf = [
            ("op", k[0].as_str()),
            ("class", k[1].as_str()),
            ("le", "+Inf"),
        ];
        assert_eq!(
            value(&after, "ringkv_http_request_duration_seconds_bucket", &inf),
            value(
                &after,
                "ringkv_http_request_duration_seconds_count",
                &labels
            ),
            "+Inf bucket of {k:?}"
        );
        assert!(
            delta(
                &before,
                &after,
                "ringkv_http_request_duration_seconds_sum",
                &labels
            ) > 0.0,
            "latency sum of {k:?} moved ({n} requests)"
        );
    }

    // Group commit: every committed batch is in the histograms, mutation for mutation.
    let mutations = delta(&before, &after, "ringkv_storage_mutations_total", &[]);
    assert!(
        mutations >= 9.0,
        "7 puts and 2 deletes committed: {mutations}"
    );
    assert_eq!(
        delta(&before, &after, "ringkv_storage_batch_mutations_sum", &[]),
        mutations,
        "batch sizes add up to the mutations"
    );
    assert_eq!(
        delta(&before, &after, "ringkv_storage_batch_mutations_count", &[]),
        delta(&before, &after, "ringkv_storage_commits_total", &[]),
        "one batch observed per commit"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "ringkv_storage_commit_duration_seconds_count",
            &[]
        ),
        delta(&before, &after, "ringkv_storage_commits_total", &[]),
        "one commit latency per commit"
    );
    // Seven keys stored, two of them now tombstones: still seven keys on the replica.
    assert_eq!(
        value(&after, "ringkv_storage_keys", &[]),
        7.0,
        "keys stored"
    );
    assert!(
        value(&after, "ringkv_storage_bytes", &[]) > 0.0,
        "data dir bytes"
    );

    // A cluster of one: live, nothing missed its quorum, and no RPC was made.
    assert_eq!(value(&after, "ringkv_members", &[("state", "live")]), 1.0);
    assert_eq!(value(&after, "ringkv_members", &[("state", "dead")]), 0.0);
    let missed: f64 = after
        .iter()
        .filter(|((n, _), _)| n == "ringkv_quorum_failures_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(missed, 0.0, "quorum failures on a healthy node");
    assert_eq!(
        value(
            &after,
            "ringkv_quorum_failures_total",
            &[("op", "put"), ("reason", "timeout")]
        ),
        0.0
    );
    assert!(
        after
            .keys()
            .any(|(n, l)| n == "ringkv_quorum_failures_total" && l["op"] == "list"),
        "quorum failure series are exported at zero"
    );

    // Process metrics, from /proc/self.
    if cfg!(target_os = "linux") {
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
        ] {
            assert!(value(&after, name, &[]) > 0.0, "{name}");
        }
        assert!(value(&after, "process_cpu_seconds_total", &[]) >= 0.0);
    }

    // No label value holds a key, in either scrape.
    for ((name, labels), _) in before.iter().chain(after.iter()) {
        for (k, v) in labels {
            assert!(
                !v.contains(KEY_MARK) && !v.contains("/kv"),
                "{name}{{{k}={v:?}}} holds a key or path"
            );
        }
    }

    // The formats themselves.
    assert!(
        after_text.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF"
    );
    check_text_format(&before_text);
}

/// What `promtool check metrics` would refuse in the 0.0.4 text, checked here too
/// (scripts/promtool-check.sh runs promtool itself).
fn check_text_format(text: &str) {
    assert!(!text.contains("# EOF"), "no # EOF in the text format");
    assert!(!text.contains("# UNIT"), "no # UNIT in the text format");
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE line");
            assert!(families.insert(name.to_owned()), "family {name} twice");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "type {ty} of {name}"
            );
            assert_eq!(
                ty == "counter",
                name.ends_with("_total"),
                "a counter and only a counter is named _total: {line}"
            );
        } else if !line.starts_with('#') {
            assert!(!line.contains(" # "), "no exemplars: {line}");
            assert!(!line.contains("_created"), "no _created series: {line}");
        }
    }
}

/// The families a 0.0.4 scrape declares, and the sample names each allows.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rest in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, ty) = rest.split_once(' ').expect("TYPE line");
        names.insert(name.to_owned());
        if ty == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The metric names a PromQL expression refers to: our two prefixes, as identifiers.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("ringkv_") || current.starts_with("process_") {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/ringkv.json");
    let text = std::fs::read_to_string(&path).expect("read deploy/grafana/ringkv.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        dash["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title"
    );
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "the dashboard has panels");

    let node = TestNode::start().await;
    let exported = exported_names(&scrape(&node, Some(TEXT_ACCEPT), TEXT_TYPE).await);
    let mut graphs = 0;
    let mut referenced = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel ids are unique"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no metric of ours");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{title}: {expr} refers to {name}, which the node does not export"
                );
                referenced.insert(name);
            }
        }
    }
    assert!(graphs >= 10, "{graphs} graphs");
    // The key metrics are all on it.
    for key in [
        "ringkv_http_requests_total",
        "ringkv_http_request_duration_seconds_bucket",
        "ringkv_rpc_call_duration_seconds_bucket",
        "ringkv_quorum_failures_total",
        "ringkv_hints_pending",
        "ringkv_ae_rounds_total",
        "ringkv_members",
        "process_resident_memory_bytes",
    ] {
        assert!(referenced.contains(key), "the dashboard shows {key}");
    }
}

/// Internode calls are timed by peer and message, and a write that misses W once its
/// replica is down is counted as a quorum failure, under its operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_latency_by_peer_and_quorum_failures_are_counted() {
    use common::cluster::{put_q, try_put, Cluster, FAST_GOSSIP};
    let mut cluster = Cluster::start(2, &FAST_GOSSIP).await;
    let peer = cluster.nodes[1].rpc_addr.to_string();
    let node = &cluster.nodes[0];
    let key = format!("{KEY_MARK}/replicated");
    try_put(node, &key, b"v", None, &[("w", "all")])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = samples(&scrape(node, None, OPENMETRICS_TYPE).await);
    let merges = before
        .iter()
        .filter(|((n, l), _)| {
            n == "ringkv_rpc_call_duration_seconds_count"
                && l.get("peer") == Some(&peer)
                && l.get("message").map(String::as_str) == Some("merge")
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!(
        merges >= 1.0,
        "a W=all write timed its merge to {peer}: {merges}"
    );
    for (name, labels) in before.keys() {
        for v in labels.values() {
            assert!(!v.contains(KEY_MARK), "{name} has a key in a label: {v}");
        }
    }

    cluster.nodes[1].sigkill().await;
    let node = &cluster.nodes[0];
    let resp = put_q(
        node,
        &key,
        b"w",
        None,
        &[("w", "all"), ("timeout_ms", "2000")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let status = resp.status();
    assert!(
        !status.is_success(),
        "a W=all write with its replica down: {status}"
    );
    let after = samples(&scrape(node, None, OPENMETRICS_TYPE).await);
    let missed = |s: &BTreeMap<Series, f64>| -> f64 {
        ["unavailable", "timeout"]
            .iter()
            .map(|r| {
                value(
                    s,
                    "ringkv_quorum_failures_total",
                    &[("op", "put"), ("reason", r)],
                )
            })
            .sum()
    };
    assert_eq!(missed(&after) - missed(&before), 1.0, "one put missed W");
    let code = status.as_u16().to_string();
    assert_eq!(
        delta(
            &before,
            &after,
            "ringkv_http_requests_total",
            &[("op", "put"), ("code", code.as_str())]
        ),
        1.0,
        "the failed put is counted under its status {code}"
    );
}
