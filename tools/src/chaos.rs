//! `chaos`: a local cluster of real `ringkv serve` processes on loopback under a seeded
//! fault schedule (SIGKILL and restart, SIGSTOP/SIGCONT, disk loss, a full disk) while
//! bounded clients write and record every acknowledged write; then a heal, a bounded
//! settle, and the checks: no acknowledged write or set element lost, replicas
//! converged, hints drained. `scripts/chaos.sh` runs it.
//!
//! - [`procs`]: the node processes, the tmpfs and the ballast.
//! - [`workload`]: the clients and their history.
//! - [`nemesis`]: the fault schedule and the faults.
//! - [`check`]: the checks on the history and the settled sets.

mod check;
mod nemesis;
mod procs;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use ringkv::cluster::NodeId;
use ringkv::http::ClusterJson;

use check::StoredSet;
use nemesis::{control, Bounds, Fault, Kind, Tally};
use procs::Cluster;
use workload::{OpKind, Outcome, Write};

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Nodes to run (3..=9).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Minutes of faults and load (then the heal, the settle and the checks).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// Replays a run's fault schedule (printed at the start of every run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Concurrent clients (1..=64).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Operations per second per client.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Shared set keys the clients add elements to.
    #[arg(long, default_value_t = 4)]
    pub set_keys: usize,
    /// About this long between two faults (each draw is 0.5..1.5 times it).
    #[arg(long, default_value_t = 4.0)]
    pub fault_every_secs: f64,
    /// The ringkv binary.
    #[arg(long, default_value = "target/release/ringkv")]
    pub bin: PathBuf,
    /// Where data dirs, logs, the history and the summary go (created; must be empty).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Node I uses HTTP BASE+10*I, RPC +1, gossip +2.
    #[arg(long, default_value_t = 25_000)]
    pub base_port: u16,
    /// The longest the cluster may take to settle after the heal.
    #[arg(long, default_value_t = 300.0)]
    pub settle_secs: f64,
    /// Size of the disk node's tmpfs, MiB.
    #[arg(long, default_value_t = 64)]
    pub tmpfs_mib: u64,
    /// Passed to every node: short, so replicas a fault left behind are repaired within
    /// the settle.
    #[arg(long, default_value = "5s")]
    pub anti_entropy_interval: String,
    /// Allow disk loss while another node's disk is full. A join then cannot finish until
    /// space returns (its pull is a two-way exchange, whose half on the full node fails),
    /// so this reproduces that bug rather than checking the rest.
    #[arg(long)]
    pub wipe_while_full: bool,
}

/// The longest one client request may take: above the nodes' 5 s request timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Keys whose `/debug/preflist` is compared with the ring the check builds.
const PREFLIST_SAMPLE: usize = 32;

pub async fn run(a: ChaosArgs) -> Result<bool, String> {
    if !(3..=9).contains(&a.nodes) {
        return Err("--nodes must be 3..=9".into());
    }
    if !(1..=64).contains(&a.clients) || !(1..=64).contains(&a.set_keys) {
        return Err("--clients and --set-keys must be 1..=64".into());
    }
    if a.minutes <= 0.0 || a.minutes > 24.0 * 60.0 || a.minutes.is_nan() {
        return Err("--minutes must be above 0 and at most a day".into());
    }
    if !(f64::EPSILON..=1000.0).contains(&a.rate) || !(0.5..=600.0).contains(&a.fault_every_secs) {
        return Err("--rate must be in (0, 1000], --fault-every-secs in [0.5, 600]".into());
    }
    if !(1.0..=3600.0).contains(&a.settle_secs) || !(8..=4096).contains(&a.tmpfs_mib) {
        return Err("--settle-secs must be in [1, 3600], --tmpfs-mib in 8..=4096".into());
    }
    let bin = std::fs::canonicalize(&a.bin)
        .map_err(|e| format!("the ringkv binary {}: {e}", a.bin.display()))?;
    std::fs::create_dir_all(&a.work_dir)
        .map_err(|e| format!("creating {}: {e}", a.work_dir.display()))?;
    let seed = a.seed.unwrap_or_else(rand::random);
    println!("chaos: seed {seed} (replay the fault schedule with --seed {seed})");

    let secs = a.minutes * 60.0;
    let every = Duration::from_secs_f64(a.fault_every_secs);
    let mut rng = StdRng::seed_from_u64(seed);
    // Drawn whether or not it is used, so the schedule is the seed's either way.
    let disk_draw = rng.gen_range(1..=a.nodes);
    let root = nix::unistd::geteuid().is_root();
    let steps = (secs / a.fault_every_secs * 2.0).ceil() as usize + 5;
    let schedule = nemesis::schedule(
        &mut rng,
        a.nodes,
        Some(disk_draw),
        every,
        steps,
        a.wipe_while_full,
    );
    let plan: Vec<String> = schedule
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i:4} after {:5.1?}: {}", s.wait, s.fault))
        .collect();
    write_file(&a.work_dir.join("schedule.txt"), &(plan.join("\n") + "\n"))?;

    let flags = vec![
        "--anti-entropy-interval".to_owned(),
        a.anti_entropy_interval.clone(),
    ];
    let mut cluster = Cluster::new(&bin, &a.work_dir, a.base_port, a.nodes, flags)?;
    let mut notes = Vec::new();
    let disk = if !root {
        notes.push("not root: the disk-full fault is skipped (it needs a tmpfs mount)".to_owned());
        None
    } else {
        match cluster.mount_tmpfs(disk_draw, a.tmpfs_mib) {
            Ok(()) => Some(disk_draw),
            Err(e) => {
                notes.push(format!("the disk-full fault is skipped: {e}"));
                None
            }
        }
    };
    for n in &notes {
        println!("chaos: {n}");
    }
    if let Some(d) = disk {
        println!("chaos: node {d}'s data dir is a {} MiB tmpfs", a.tmpfs_mib);
    }

    let started = Instant::now();
    let log = move |s: String| println!("[{:7.1}s] {s}", started.elapsed().as_secs_f64());
    let run = Run {
        a: &a,
        seed,
        started,
        log: &log,
    };
    start_all(&mut cluster, &log).await?;
    log(format!(
        "{} nodes up: {}",
        a.nodes,
        cluster
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.index, n.id.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // The load.
    let full_node = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let http = Arc::new(workload::Http::new(CLIENT_TIMEOUT)?);
    let config = Arc::new(workload::ClientConfig {
        urls: cluster.nodes.iter().map(|n| n.url.clone()).collect(),
        seed,
        deadline,
        max_ops: (a.rate * secs).ceil() as u64 + 10,
        period: Duration::from_secs_f64(1.0 / a.rate),
        set_keys: a.set_keys,
        full_node: full_node.clone(),
        started,
    });
    let clients: Vec<_> = (0..a.clients)
        .map(|id| tokio::spawn(workload::client(id, http.clone(), config.clone())))
        .collect();

    // The faults, until the deadline.
    let mut tally = Tally {
        notes,
        ..Tally::default()
    };
    run.nemesis(
        &mut cluster,
        &schedule,
        disk,
        deadline,
        &full_node,
        &mut tally,
    )
    .await?;
    log("faults over; waiting for the clients".into());
    let mut history: Vec<Write> = Vec::new();
    for c in clients {
        history.extend(c.await.map_err(|e| format!("a client panicked: {e}"))?);
    }
    history.sort_by_key(|w| w.sent_ms);
    let lines: Vec<String> = history
        .iter()
        .map(|w| serde_json::to_string(w).unwrap_or_default())
        .collect();
    write_file(
        &a.work_dir.join("history.jsonl"),
        &(lines.join("\n") + "\n"),
    )?;

    // Heal: continue, remove the ballast, start whatever is down.
    log("heal: every node up and continued, ballast removed".into());
    heal(&mut cluster, &full_node, &mut tally, &log).await?;

    let settle = run
        .settle_and_check(&mut cluster, &history, &mut tally)
        .await?;
    let unclean = cluster.shutdown(Duration::from_secs(15)).await;
    for (i, why) in &unclean {
        tally
            .notes
            .push(format!("node {i} did not stop cleanly on SIGTERM: {why}"));
    }
    Ok(report(&run, &history, &tally, &settle))
}

struct Run<'a> {
    a: &'a ChaosArgs,
    seed: u64,
    started: Instant,
    log: &'a dyn Fn(String),
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Node 1 first, the others through it, then until every node shows every other normal.
async fn start_all(cluster: &mut Cluster, log: &dyn Fn(String)) -> Result<(), String> {
    let bound = Duration::from_secs(120);
    let first_seed = vec![cluster.node(1).gossip_addr.clone()];
    for i in 1..=cluster.nodes.len() {
        let seeds = if i == 1 {
            Vec::new()
        } else {
            first_seed.clone()
        };
        cluster.start(i, &seeds)?;
        let url = cluster.node(i).url.clone();
        if !nemesis::wait_until(bound, || nemesis::ready(&url)).await {
            return Err(format!(
                "node {i} not ready within {bound:?}; its log ends:\n{}",
                cluster.log_tail(i, 10)
            ));
        }
        cluster.nodes[i - 1].id = nemesis::node_id(&url).await;
    }
    let ok = nemesis::wait_until(bound, || ring_settled(cluster)).await;
    if !ok {
        return Err(format!(
            "the nodes did not agree on one ring of normal members within {bound:?}"
        ));
    }
    log("the ring is agreed".into());
    Ok(())
}

/// Every running node: the same read and write ring, every member normal and live,
/// exactly the current ids, no disagreement, not rejoining.
async fn ring_settled(cluster: &Cluster) -> bool {
    ring_problem(cluster).await.is_none()
}

async fn ring_problem(cluster: &Cluster) -> Option<String> {
    let want: BTreeSet<String> = cluster.nodes.iter().filter_map(|n| n.id.clone()).collect();
    if want.len() != cluster.nodes.len() {
        return Some("a node's id is not known".into());
    }
    let mut hashes = BTreeSet::new();
    for n in &cluster.nodes {
        let doc = match cluster_doc(&n.url).await {
            Ok(d) => d,
            Err(e) => return Some(e),
        };
        if doc.rejoining {
            return Some(format!("node {} is rejoining", n.index));
        }
        if !doc.ring_agreement {
            return Some(format!("node {} reports ring disagreements", n.index));
        }
        if doc.ring_hash != doc.write_ring_hash {
            return Some(format!(
                "node {}: data still moves (read ≠ write ring)",
                n.index
            ));
        }
        hashes.insert(doc.ring_hash.clone());
        let members: BTreeSet<String> = doc
            .members
            .iter()
            .filter(|m| m.state != ringkv::cluster::membership::MemberState::Left)
            .map(|m| m.id.clone())
            .collect();
        if members != want {
            return Some(format!(
                "node {} has members {members:?}, the running nodes are {want:?}",
                n.index
            ));
        }
        if let Some(m) = doc
            .members
            .iter()
            .find(|m| m.state != ringkv::cluster::membership::MemberState::Normal || !m.live)
        {
            return Some(format!(
                "node {} sees {} {} (live {})",
                n.index,
                m.id,
                m.state.as_str(),
                m.live
            ));
        }
    }
    (hashes.len() != 1).then(|| format!("the nodes report rings {hashes:?}"))
}

async fn cluster_doc(url: &str) -> Result<ClusterJson, String> {
    let v = control(url)?
        .cluster()
        .await
        .map_err(|e| format!("GET {url}/cluster: {e}"))?;
    serde_json::from_value(v).map_err(|e| format!("{url}/cluster: {e}"))
}

/// Restarts nodes that exited by themselves: each is a problem (with its log's tail).
async fn reap(
    cluster: &mut Cluster,
    tally: &mut Tally,
    log: &dyn Fn(String),
) -> Result<(), String> {
    for i in 1..=cluster.nodes.len() {
        if let Some(status) = cluster.exited(i) {
            let tail = cluster.log_tail(i, 8);
            log(format!(
                "node {i} exited by itself ({status}); starting it again"
            ));
            tally.problems.push(format!(
                "node {i} exited by itself ({status}); its log ends:\n{tail}"
            ));
            let seeds = nemesis::seeds(cluster, i);
            cluster.start(i, &seeds)?;
        }
    }
    Ok(())
}

async fn heal(
    cluster: &mut Cluster,
    full_node: &AtomicUsize,
    tally: &mut Tally,
    log: &dyn Fn(String),
) -> Result<(), String> {
    for i in 1..=cluster.nodes.len() {
        if cluster.node(i).stopped {
            cluster.pause(i, false)?;
        }
        if cluster.unfill(i)? {
            full_node.store(0, Ordering::Release);
            log(format!("  removed node {i}'s ballast"));
        }
    }
    reap(cluster, tally, log).await?;
    for i in 1..=cluster.nodes.len() {
        if !cluster.running(i) {
            let seeds = nemesis::seeds(cluster, i);
            cluster.start(i, &seeds)?;
        }
    }
    Ok(())
}

impl Run<'_> {
    async fn nemesis(
        &self,
        cluster: &mut Cluster,
        schedule: &[nemesis::Step],
        disk: Option<usize>,
        deadline: Instant,
        full_node: &AtomicUsize,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let log = self.log;
        let bounds = Bounds {
            remove: Duration::from_secs(60),
            rejoin: Duration::from_secs(180),
            ready: Duration::from_secs(60),
        };
        // The step at which the ballast goes.
        let mut unfill_at: Option<usize> = None;
        for (step, s) in schedule.iter().enumerate() {
            if unfill_at == Some(step) {
                unfill_at = None;
                self.unfill(cluster, full_node, tally).await?;
            }
            let wake = Instant::now() + s.wait;
            if wake >= deadline {
                break;
            }
            tokio::time::sleep_until(wake.into()).await;
            reap(cluster, tally, log).await?;
            let kind = s.fault.kind();
            log(format!("step {step}: {}", s.fault));
            let done = match &s.fault {
                Fault::Kill { nodes, down } => {
                    for n in nodes {
                        cluster.kill(*n).await?;
                    }
                    tokio::time::sleep(*down).await;
                    for n in nodes {
                        let seeds = nemesis::seeds(cluster, *n);
                        cluster.start(*n, &seeds)?;
                    }
                    true
                }
                Fault::Pause { node, paused } => {
                    cluster.pause(*node, true)?;
                    tokio::time::sleep(*paused).await;
                    cluster.pause(*node, false)?;
                    true
                }
                Fault::Wipe { node } => nemesis::wipe(cluster, *node, &bounds, tally, log).await?,
                Fault::Fill { node, steps } => match disk {
                    None => {
                        log("  skipped: no tmpfs".into());
                        false
                    }
                    Some(_) => {
                        let bytes = cluster.fill(*node, self.a.tmpfs_mib << 20)?;
                        full_node.store(*node, Ordering::Release);
                        unfill_at = Some(step + 1 + steps);
                        log(format!(
                            "  ballast of {} MiB: the tmpfs is full",
                            bytes >> 20
                        ));
                        true
                    }
                },
            };
            let counts = if done {
                &mut tally.injected
            } else {
                &mut tally.skipped
            };
            *counts.entry(kind).or_default() += 1;
        }
        if unfill_at.is_some() {
            self.unfill(cluster, full_node, tally).await?;
        }
        Ok(())
    }

    /// Removes the ballast; the node must take writes again by itself (it probes every
    /// 2 s), within a bound.
    async fn unfill(
        &self,
        cluster: &mut Cluster,
        full_node: &AtomicUsize,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let i = full_node.swap(0, Ordering::AcqRel);
        if i == 0 || !cluster.unfill(i)? {
            return Ok(());
        }
        let url = cluster.node(i).url.clone();
        let was_full = !writable(&url).await.unwrap_or(true);
        let bound = Duration::from_secs(30);
        let t = Instant::now();
        let back =
            nemesis::wait_until(bound, || async { writable(&url).await.unwrap_or(false) }).await;
        (self.log)(format!(
            "  removed node {i}'s ballast (it {} refusing writes){}",
            if was_full { "was" } else { "was not" },
            if back {
                format!("; writable after {:.1?}", t.elapsed())
            } else {
                String::new()
            }
        ));
        if !back {
            tally.problems.push(format!(
                "node {i} did not take writes again within {bound:?} of its ballast's removal"
            ));
        }
        Ok(())
    }

    async fn settle_and_check(
        &self,
        cluster: &mut Cluster,
        history: &[Write],
        tally: &mut Tally,
    ) -> Result<Settle, String> {
        let log = self.log;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(self.a.settle_secs);
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut settle = Settle::default();

        let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
        let ready_all = nemesis::wait_until(left(), || {
            let urls = urls.clone();
            async move {
                for u in &urls {
                    if !nemesis::ready(u).await {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        reap(cluster, tally, log).await?;
        settle.mark("ready", ready_all, t0);
        for i in 1..=cluster.nodes.len() {
            cluster.nodes[i - 1].id = nemesis::node_id(&cluster.node(i).url).await;
        }
        let c = &*cluster;
        let ring = nemesis::wait_until(left(), || ring_settled(c)).await;
        if !ring {
            settle.unsettled.push(format!(
                "ring: {}",
                ring_problem(c).await.unwrap_or_default()
            ));
        }
        settle.mark("ring", ring, t0);
        let drained = nemesis::wait_until(left(), || hints_drained(&urls)).await;
        if !drained {
            settle
                .unsettled
                .push(format!("hints: {}", hint_counts(&urls).await));
        }
        settle.mark("hints", drained, t0);
        let writable_all = nemesis::wait_until(left(), || async {
            for u in &urls {
                if !writable(u).await.unwrap_or(false) {
                    return false;
                }
            }
            true
        })
        .await;
        if !writable_all {
            settle.unsettled.push("a node still refuses writes".into());
        }
        settle.mark("writable", writable_all, t0);

        // Replicas: every key written, on every member of its preference list.
        let keys: BTreeSet<String> = history.iter().map(|w| w.key.clone()).collect();
        let (finals, unequal) = converge(cluster, &keys, deadline).await?;
        settle.keys = keys.len();
        settle.mark("replicas", unequal.is_empty(), t0);
        for (key, why) in unequal.iter().take(10) {
            settle.unsettled.push(format!("replicas of {key}: {why}"));
        }
        settle.unequal = unequal.len();
        if unequal.len() > 10 {
            settle.unsettled.push(format!(
                "… and {} more keys whose replicas differ",
                unequal.len() - 10
            ));
        }
        settle.preflist_mismatches = preflist_sample(cluster, &keys).await?;

        // The set keys, read back at the default quorum.
        let http = workload::Http::new(CLIENT_TIMEOUT)?;
        let mut read_sets = BTreeMap::new();
        for (k, key) in history
            .iter()
            .filter(|w| w.kind == OpKind::SetAdd)
            .map(|w| w.key.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .enumerate()
        {
            let url = &urls[k % urls.len()];
            match http.read_values(url, &key).await {
                Ok(values) => {
                    let set: BTreeSet<String> = values
                        .iter()
                        .flat_map(|v| workload::elements(v).map(str::to_owned).collect::<Vec<_>>())
                        .collect();
                    read_sets.insert(key, set);
                }
                Err(e) => settle.unsettled.push(format!("GET {key} via {url}: {e}")),
            }
        }
        settle.findings = check::check(history, &finals, &read_sets);
        settle.secs = t0.elapsed().as_secs_f64();
        log(format!("settled and checked in {:.1} s", settle.secs));
        Ok(settle)
    }
}

#[derive(Default)]
struct Settle {
    /// Each stage and when it held (seconds after the heal), or `None` if it did not.
    stages: Vec<(&'static str, Option<f64>)>,
    unsettled: Vec<String>,
    keys: usize,
    unequal: usize,
    preflist_mismatches: Vec<String>,
    findings: check::Findings,
    secs: f64,
}

impl Settle {
    fn mark(&mut self, stage: &'static str, ok: bool, t0: Instant) {
        self.stages
            .push((stage, ok.then(|| t0.elapsed().as_secs_f64())));
    }

    fn settled(&self) -> bool {
        self.unsettled.is_empty() && self.stages.iter().all(|(_, t)| t.is_some())
    }
}

/// `/ready`'s `writable` (absent means it takes writes); `None` when it does not answer.
async fn writable(url: &str) -> Option<bool> {
    let v = control(url).ok()?.get_json("/ready").await.ok()?;
    Some(v["writable"].as_bool().unwrap_or(true))
}

async fn hint_total(url: &str) -> Option<u64> {
    let v = control(url)
        .ok()?
        .get_json("/debug/replication")
        .await
        .ok()?;
    v["hints_pending_total"].as_u64()
}

async fn hints_drained(urls: &[String]) -> bool {
    for u in urls {
        if hint_total(u).await != Some(0) {
            return false;
        }
    }
    true
}

async fn hint_counts(urls: &[String]) -> String {
    let mut out = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        out.push(format!("node {}: {:?}", i + 1, hint_total(u).await));
    }
    out.join(", ")
}

type Finals = BTreeMap<String, Option<StoredSet>>;

/// Every key's replicas (its preference list, from the ring the nodes agree on, built
/// as they build it), polled until they hold the same sibling set or the deadline.
/// Returns each key's settled set (the first replica's) and the keys still unequal.
async fn converge(
    cluster: &Cluster,
    keys: &BTreeSet<String>,
    deadline: Instant,
) -> Result<(Finals, Vec<(String, String)>), String> {
    let doc = cluster_doc(&cluster.node(1).url).await?;
    let (ring, _) = doc.rings().map_err(|e| e.to_string())?;
    let n = doc.effective.n;
    let mut by_id: BTreeMap<NodeId, String> = BTreeMap::new();
    for node in &cluster.nodes {
        if let Some(id) = node.id.as_deref().and_then(|id| id.parse::<NodeId>().ok()) {
            by_id.insert(id, node.url.clone());
        }
    }
    let clients: BTreeMap<NodeId, ringkv::client::Client> = by_id
        .iter()
        .map(|(id, url)| Ok((*id, control(url)?)))
        .collect::<Result<_, String>>()?;
    let (ring, clients) = (&ring, &clients);
    let mut finals = Finals::new();
    let mut pending: Vec<String> = keys.iter().cloned().collect();
    let mut unequal;
    loop {
        let results: Vec<(String, Result<Option<StoredSet>, String>)> =
            stream::iter(pending.iter().cloned())
                .map(|key| async move {
                    let r = replica_set(ring, n, clients, &key).await;
                    (key, r)
                })
                .buffer_unordered(16)
                .collect()
                .await;
        unequal = Vec::new();
        for (key, r) in results {
            match r {
                Ok(set) => {
                    finals.insert(key, set);
                }
                Err(why) => unequal.push((key, why)),
            }
        }
        if unequal.is_empty() || Instant::now() >= deadline {
            break;
        }
        pending = unequal.iter().map(|(k, _)| k.clone()).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    unequal.sort();
    Ok((finals, unequal))
}

/// The set every replica of `key` holds, or why they differ.
async fn replica_set(
    ring: &ringkv::cluster::ring::Ring,
    n: usize,
    clients: &BTreeMap<NodeId, ringkv::client::Client>,
    key: &str,
) -> Result<Option<StoredSet>, String> {
    let mut first: Option<(NodeId, Option<StoredSet>)> = None;
    for id in ring.preference_list(key.as_bytes(), n) {
        let client = clients
            .get(&id)
            .ok_or_else(|| format!("replica {id} is none of the running nodes"))?;
        let set = client
            .local(key)
            .await
            .map_err(|e| format!("GET /debug/local on {id}: {e}"))?
            .map(|v| serde_json::from_value::<StoredSet>(v).map(StoredSet::canonical))
            .transpose()
            .map_err(|e| format!("/debug/local on {id}: {e}"))?;
        match &first {
            None => first = Some((id, set)),
            Some((fid, fset)) if *fset != set => {
                let show = |s: &Option<StoredSet>| {
                    s.as_ref().map_or("nothing".to_owned(), StoredSet::describe)
                };
                return Err(format!(
                    "{fid} holds {} but {id} holds {}",
                    show(fset),
                    show(&set)
                ));
            }
            Some(_) => {}
        }
    }
    Ok(first.and_then(|(_, s)| s))
}

/// `/debug/preflist` of a sample of keys on every node, against the ring built here.
async fn preflist_sample(
    cluster: &Cluster,
    keys: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let doc = cluster_doc(&cluster.node(1).url).await?;
    let (ring, _) = doc.rings().map_err(|e| e.to_string())?;
    let n = doc.effective.n;
    let step = (keys.len() / PREFLIST_SAMPLE).max(1);
    let mut out = Vec::new();
    for key in keys.iter().step_by(step).take(PREFLIST_SAMPLE) {
        let want: Vec<String> = ring
            .preference_list(key.as_bytes(), n)
            .iter()
            .map(|id| id.to_string())
            .collect();
        let escaped: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
        for node in &cluster.nodes {
            let v = control(&node.url)?
                .get_json(&format!("/debug/preflist/{escaped}"))
                .await
                .map_err(|e| format!("GET /debug/preflist on node {}: {e}", node.index))?;
            let got: Vec<String> = v["preference_list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect();
            if got != want {
                out.push(format!(
                    "preflist of {key} on node {}: {got:?}, the ring says {want:?}",
                    node.index
                ));
            }
        }
    }
    Ok(out)
}

/// Prints the report (and writes `summary.json`); whether the run holds.
fn report(run: &Run, history: &[Write], tally: &Tally, settle: &Settle) -> bool {
    let a = run.a;
    let mut ops: BTreeMap<OpKind, (u64, u64, u64, BTreeMap<String, u64>)> = BTreeMap::new();
    let mut via_full: BTreeMap<String, u64> = BTreeMap::new();
    let mut internal = 0u64;
    for w in history {
        let e = ops.entry(w.kind).or_default();
        e.0 += 1;
        let what = match &w.outcome {
            Outcome::Acked => {
                e.1 += 1;
                "204".to_owned()
            }
            Outcome::NothingToDelete => {
                e.2 += 1;
                "404 nothing to delete".to_owned()
            }
            Outcome::Failed(why) => {
                *e.3.entry(why.clone()).or_default() += 1;
                let status = why.trim_start_matches("read: ");
                if status.starts_with("500") || status.contains("without the JSON error shape") {
                    internal += 1;
                }
                why.clone()
            }
        };
        if w.via_full {
            *via_full.entry(what).or_default() += 1;
        }
    }
    let mut violations: Vec<String> = Vec::new();
    violations.extend(tally.problems.iter().cloned());
    violations.extend(settle.findings.violations.iter().cloned());
    violations.extend(settle.preflist_mismatches.iter().cloned());
    if internal > 0 {
        violations.push(format!(
            "{internal} writes answered 500 or without the JSON error shape (see history.jsonl)"
        ));
    }
    let settled = settle.settled();

    let kinds = |m: &BTreeMap<Kind, u64>| -> String {
        let parts: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{} {}", k.as_str(), m.get(k).copied().unwrap_or(0)))
            .collect();
        parts.join(", ")
    };
    println!();
    println!("== chaos report ==");
    println!(
        "seed              {} (replay: --seed {})",
        run.seed, run.seed
    );
    println!(
        "run               {} nodes, {:.1} min of faults and load, {} clients at {} ops/s each; {:.1} s in all",
        a.nodes,
        a.minutes,
        a.clients,
        a.rate,
        run.started.elapsed().as_secs_f64()
    );
    println!("faults injected   {}", kinds(&tally.injected));
    if !tally.skipped.is_empty() {
        println!("faults skipped    {}", kinds(&tally.skipped));
    }
    if !tally.removed.is_empty() {
        println!(
            "ids removed       {} (after disk loss)",
            tally.removed.join(", ")
        );
    }
    for kind in OpKind::ALL {
        let (att, acked, nothing, failed) = ops.get(&kind).cloned().unwrap_or_default();
        let nfail: u64 = failed.values().sum();
        let mut reasons: Vec<(String, u64)> = failed.into_iter().collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        let reasons: Vec<String> = reasons
            .iter()
            .take(5)
            .map(|(r, c)| format!("{r} {c}"))
            .collect();
        println!(
            "{:<17} {att} attempted, {acked} acknowledged, {nfail} failed{}{}",
            format!("ops {}", kind.as_str()),
            if nothing > 0 {
                format!(", {nothing} found nothing to delete")
            } else {
                String::new()
            },
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            }
        );
    }
    if !via_full.is_empty() {
        let parts: Vec<String> = via_full.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("via the full node {}", parts.join(", "));
    }
    let acked = &settle.findings.acked_writes;
    let g = |k: OpKind| acked.get(&k).copied().unwrap_or(0);
    println!(
        "checked           {} acknowledged writes ({} puts, {} deletes, {} set adds: {} held as themselves, {} superseded by a descendant), {} set elements; replicas of {} keys",
        g(OpKind::Put) + g(OpKind::Delete) + g(OpKind::SetAdd),
        g(OpKind::Put),
        g(OpKind::Delete),
        g(OpKind::SetAdd),
        settle.findings.held,
        settle.findings.superseded,
        settle.findings.acked_elements,
        settle.keys
    );
    let stages: Vec<String> = settle
        .stages
        .iter()
        .map(|(s, t)| match t {
            Some(t) => format!("{s} {t:.1}s"),
            None => format!("{s} NOT"),
        })
        .collect();
    println!(
        "settle            {} ({})",
        if settled { "settled" } else { "DID NOT SETTLE" },
        stages.join(", ")
    );
    for u in &settle.unsettled {
        println!("  unsettled: {u}");
    }
    for n in &tally.notes {
        println!("note              {n}");
    }
    println!("violations        {}", violations.len());
    for v in violations.iter().take(20) {
        println!("  {v}");
    }
    let summary = json!({
        "seed": run.seed,
        "nodes": a.nodes,
        "minutes": a.minutes,
        "clients": a.clients,
        "faults_injected": tally.injected.iter().map(|(k, v)| (k.as_str(), *v)).collect::<BTreeMap<_, _>>(),
        "faults_skipped": tally.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect::<BTreeMap<_, _>>(),
        "ops": ops.iter().map(|(k, (att, acked, nothing, failed))| (k.as_str(), json!({
            "attempted": att, "acked": acked, "nothing_to_delete": nothing, "failed": failed,
        }))).collect::<BTreeMap<_, _>>(),
        "via_full_node": via_full,
        "acked_elements": settle.findings.acked_elements,
        "acked_held": settle.findings.held,
        "acked_superseded": settle.findings.superseded,
        "keys_checked": settle.keys,
        "settled": settled,
        "settle_stages": settle.stages.iter().map(|(s, t)| (*s, *t)).collect::<BTreeMap<_, _>>(),
        "unsettled": settle.unsettled,
        "violations": violations,
        "notes": tally.notes,
    });
    let path = a.work_dir.join("summary.json");
    if let Err(e) = write_file(&path, &format!("{summary}\n")) {
        eprintln!("chaos: {e}");
    }
    let ok = violations.is_empty() && settled;
    if !ok {
        println!(
            "FAILED: {} violations{}; logs, history.jsonl, schedule.txt and summary.json are in {}",
            violations.len(),
            if settled { "" } else { ", did not settle" },
            a.work_dir.display()
        );
    }
    ok
}
