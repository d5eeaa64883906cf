//! `GET /debug/workers` lists a node's supervised workers: every background job of a node
//! runs under the supervisor, with its phase, whether it runs, and a status line. With
//! `--anti-entropy-interval 0`, only the exchange is off: data movement and tombstone GC
//! still run. A joiner also runs (and finishes) its join.

mod common;

use std::collections::BTreeMap;

use common::cluster::*;
use serde_json::Value;

/// Every node's workers, and the phase each stops in.
const ALWAYS: [(&str, &str); 15] = [
    ("writer", "writer"),
    ("rpc-server", "network"),
    ("gossip", "network"),
    ("handoff", "background"),
    ("anti-entropy", "background"),
    ("movement", "background"),
    ("tombstone-gc", "background"),
    ("scrub", "background"),
    ("membership-persistence", "background"),
    ("write-state", "background"),
    ("readiness", "background"),
    ("departures", "background"),
    ("seed-report", "background"),
    ("leave", "background"),
    ("http", "http"),
];

/// name → (phase, state, status), failing on a malformed entry.
fn by_name(list: &Value) -> Result<BTreeMap<String, (String, String, String)>, String> {
    let entries = list.as_array().ok_or(format!("not a JSON list: {list}"))?;
    let mut out = BTreeMap::new();
    for e in entries {
        let field = |f: &str| {
            e[f].as_str()
                .map(str::to_owned)
                .ok_or(format!("{f} missing in {e}"))
        };
        let name = field("name")?;
        let seen = (field("phase")?, field("state")?, field("status")?);
        if out.insert(name.clone(), seen).is_some() {
            return Err(format!("{name} listed twice: {list}"));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_list_names_every_supervised_job() {
    let cluster = Cluster::start(
        2,
        &["--gossip-interval", "100ms", "--anti-entropy-interval", "0"],
    )
    .await;
    let first = by_name(
        &try_json(&cluster.nodes[0], "/debug/workers")
            .await
            .expect("list"),
    )
    .expect("well-formed");
    let mut names: Vec<&str> = first.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = ALWAYS.iter().map(|(n, _)| *n).collect();
    want.sort_unstable();
    assert_eq!(names, want, "node 1 (it started the cluster: no join)");
    for (name, phase) in ALWAYS {
        assert_eq!(first[name].0, phase, "{name}'s phase");
    }
    for name in [
        "http",
        "writer",
        "rpc-server",
        "gossip",
        "movement",
        "tombstone-gc",
    ] {
        assert_eq!(first[name].1, "running", "{name}: {:?}", first[name]);
    }
    // Anti-entropy off means the exchange alone: it returned at once and says why.
    assert_eq!(first["anti-entropy"].1, "stopped");
    assert!(
        first["anti-entropy"].2.starts_with("off"),
        "{:?}",
        first["anti-entropy"]
    );
    assert_eq!(first["leave"].2, "not asked to leave");

    // The joiner's list has its join too, finished by the time it is ready; its readiness
    // worker is done as well.
    let node2 = &cluster.nodes[1];
    wait_until(
        CONVERGE_TIMEOUT,
        "node 2's join and readiness to finish",
        || async move {
            let second = by_name(&try_json(node2, "/debug/workers").await?)?;
            if second.len() != ALWAYS.len() + 1 {
                return Err(format!("{} workers: {second:?}", second.len()));
            }
            let join = second.get("join").ok_or("no join worker")?;
            let ready = &second["readiness"];
            if join.1 != "stopped" || join.2 != "joined: normal" || ready.1 != "stopped" {
                return Err(format!("join {join:?}, readiness {ready:?}"));
            }
            Ok(())
        },
    )
    .await;
}
