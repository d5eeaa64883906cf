//! The checks behind `scripts/scale-out.sh` and `scripts/docker-faults.sh`:
//! - `load` writes keys and records every write it made;
//! - `churn` keeps a light read/write load going until a deadline, an op count or a stop
//!   file, recording its writes in the same file;
//! - `verify` reads every acknowledged key back at the default quorum, and compares where
//!   each key is stored (`/debug/keys` on every node) with its preference list, built
//!   from `/cluster` exactly as the nodes build it; with `--replicas`, it also compares
//!   every acknowledged key's `/debug/local` across its preference list. It prints one
//!   JSON line. The ring comes from the typed `/cluster` document
//!   ([`ringkv::http::ClusterJson`]) through the function the node builds its own rings
//!   with, so the check cannot drift from the node.
//!
//! The record file has one line per event, `KIND\tKEY\tVALUE`: `U` before a write is sent
//! (a write may be applied even when it is never acknowledged: Dynamo semantics), `A`
//! once it was acknowledged. A key counts as acknowledged once it has an `A` line; the
//! values it may read back as are its last acknowledged one and every one attempted after
//! it. Only one task ever writes a given key, so the lines of a key are in write order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::stream::{self, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use ringkv::client::{Client, ReadResult};
use ringkv::cluster::ring::Ring;
use ringkv::cluster::NodeId;
use ringkv::http::ClusterJson;

#[derive(Subcommand, Debug)]
pub enum ScaleCommand {
    /// Write keys through the nodes and record each write (scale-out check).
    Load(LoadArgs),
    /// A light, bounded read/write load that records its writes (scale-out check).
    Churn(ChurnArgs),
    /// Check recorded keys read back and sit on their preference lists (scale-out check).
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The nodes to write through, round-robin (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    pub node: Vec<String>,
    #[arg(long, default_value_t = 20_000)]
    pub keys: usize,
    /// The record file (appended to).
    #[arg(long)]
    pub record: PathBuf,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value = "key-")]
    pub prefix: String,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Attempts per key before giving up on it.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
}

#[derive(Args, Debug)]
pub struct ChurnArgs {
    /// The nodes to send requests to (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    pub node: Vec<String>,
    /// A file of node URLs, one a line, read again every second: the orchestration adds a
    /// node here once it has joined. Used instead of `--node` once it has lines.
    #[arg(long)]
    pub nodes_file: Option<PathBuf>,
    /// The record file: its acknowledged keys are read and updated; new writes appended.
    #[arg(long)]
    pub record: PathBuf,
    /// Stop after this long.
    #[arg(long, default_value_t = 600.0)]
    pub seconds: f64,
    /// Stop after this many operations.
    #[arg(long, default_value_t = 100_000)]
    pub max_ops: u64,
    /// Operations per second, over all workers.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Workers; each owns a disjoint set of keys, so no key has two writes in flight.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Stop as soon as this file exists.
    #[arg(long)]
    pub stop_file: Option<PathBuf>,
    /// Where to write the summary (JSON) when done; it is printed on stdout too.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    #[arg(long, default_value = "churn-")]
    pub prefix: String,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Every member's URL (comma-separated). Reads go round-robin; each is listed.
    #[arg(long, value_delimiter = ',', required = true)]
    pub node: Vec<String>,
    #[arg(long)]
    pub record: PathBuf,
    /// Reads in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Check placement again, for up to this long, until no key is misplaced.
    #[arg(long, default_value_t = 0.0)]
    pub settle_secs: f64,
    /// Also require every acknowledged key's replicas (its preference list) to hold the
    /// same `/debug/local` sibling set, polled until `--settle-secs` (fault checks).
    #[arg(long)]
    pub replicas: bool,
    /// Carried into the summary and the row: how long the join took.
    #[arg(long)]
    pub join_secs: Option<f64>,
    /// Carried into the summary and the row: keys moved by the join.
    #[arg(long)]
    pub moved: Option<u64>,
    /// Append the summary (one JSON line) to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Append a Markdown table row to this file.
    #[arg(long)]
    pub row_out: Option<PathBuf>,
}

/// Runs a scale-out helper. `Ok(false)` means the check ran and failed.
pub async fn run_scale(command: ScaleCommand) -> Result<bool, String> {
    match command {
        ScaleCommand::Load(a) => load(a).await,
        ScaleCommand::Churn(a) => churn(a).await,
        ScaleCommand::Verify(a) => verify(a).await,
    }
}

// ----- the record -----

struct Recorder {
    file: Mutex<std::fs::File>,
}

impl Recorder {
    fn open(path: &Path) -> Result<Self, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        Ok(Recorder {
            file: Mutex::new(file),
        })
    }

    /// One line, in one `write` (the file is opened for appending).
    fn line(&self, kind: char, key: &str, value: &str) -> Result<(), String> {
        debug_assert!(!key.contains(['\t', '\n']) && !value.contains(['\t', '\n']));
        let line = format!("{kind}\t{key}\t{value}\n");
        self.file
            .lock()
            .map_err(|_| "record lock poisoned".to_owned())?
            .write_all(line.as_bytes())
            .map_err(|e| format!("writing the record: {e}"))
    }
}

/// What a key may read back as.
#[derive(Debug, Default, Clone)]
struct Expected {
    acked: bool,
    /// The last acknowledged value, then every value attempted after it.
    values: Vec<String>,
}

/// The record's lines, skipping the first `skip`, and a last line still being written.
fn record_lines(path: &Path, skip: usize) -> Result<Vec<(char, String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the record {}: {e}", path.display()))?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out = Vec::new();
    for (i, line) in complete.lines().enumerate().skip(skip) {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind @ ("A" | "U")), Some(key), Some(value)) => out.push((
                kind.chars().next().unwrap_or('U'),
                key.to_owned(),
                value.to_owned(),
            )),
            _ => return Err(format!("record line {} is malformed: {line:?}", i + 1)),
        }
    }
    Ok(out)
}

/// The record as expectations per key, and how many lines it had.
fn read_record(path: &Path) -> Result<(BTreeMap<String, Expected>, usize), String> {
    let lines = record_lines(path, 0)?;
    let n = lines.len();
    let mut map: BTreeMap<String, Expected> = BTreeMap::new();
    for (kind, key, value) in lines {
        let e = map.entry(key).or_default();
        if kind == 'A' {
            e.acked = true;
            e.values.clear();
        }
        if !e.values.contains(&value) {
            e.values.push(value);
        }
    }
    Ok((map, n))
}

fn value_for(key: &str, tag: &str, len: usize) -> String {
    let mut v = format!("{key}|{tag}|");
    while v.len() < len {
        v.push('.');
    }
    v
}

fn clients(urls: &[String]) -> Result<Vec<Client>, String> {
    if urls.is_empty() {
        return Err("no --node given".into());
    }
    urls.iter()
        .map(|u| Client::new(u).map_err(|e| format!("{u}: {e}")))
        .collect()
}

fn nonce() -> String {
    format!("{:08x}", rand::random::<u32>())
}

// ----- load -----

async fn load(a: LoadArgs) -> Result<bool, String> {
    let clients = clients(&a.node)?;
    let rec = Arc::new(Recorder::open(&a.record)?);
    let run = nonce();
    let started = Instant::now();
    let attempts = a.attempts.max(1);
    let results: Vec<Result<bool, String>> = stream::iter(0..a.keys)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let rec = rec.clone();
            let key = format!("{}{i:07}", a.prefix);
            let value = value_for(&key, &format!("load.{run}"), a.value_bytes);
            async move {
                for attempt in 0..attempts {
                    if attempt == 0 {
                        rec.line('U', &key, &value)?;
                    }
                    let body = Bytes::from(value.clone().into_bytes());
                    match client.put(&key, body, Some("text/plain"), None).await {
                        Ok(_) => {
                            rec.line('A', &key, &value)?;
                            return Ok(true);
                        }
                        Err(e) => {
                            eprintln!("load: {key}: attempt {}: {e}", attempt + 1);
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                    }
                }
                Ok(false)
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let mut acked = 0u64;
    let mut failed = 0u64;
    for r in results {
        if r? {
            acked += 1;
        } else {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "acked": acked,
            "failed": failed,
            "secs": round2(secs),
            "writes_per_sec": round2(acked as f64 / secs.max(1e-9)),
        })
    );
    Ok(failed == 0)
}

// ----- churn -----

#[derive(Default)]
struct ChurnStats {
    ops: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    /// Reads that returned neither the last acknowledged value nor a later attempt.
    stale_reads: AtomicU64,
    sibling_reads: AtomicU64,
    updates: AtomicU64,
    inserts: AtomicU64,
    writes_acked: AtomicU64,
    write_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The nodes churn sends to, refreshed from `--nodes-file`.
struct Targets {
    urls: Vec<String>,
    clients: Vec<Client>,
}

async fn churn(a: ChurnArgs) -> Result<bool, String> {
    let (record, _) = read_record(&a.record)?;
    let rec = Arc::new(Recorder::open(&a.record)?);
    let workers = a.workers.max(1);
    // Each worker owns the keys with its index modulo the worker count.
    let mut owned: Vec<HashMap<String, Expected>> = vec![HashMap::new(); workers];
    for (i, (key, e)) in record.into_iter().filter(|(_, e)| e.acked).enumerate() {
        owned[i % workers].insert(key, e);
    }
    let targets = Arc::new(RwLock::new(Targets {
        urls: a.node.clone(),
        clients: clients(&a.node).unwrap_or_default(),
    }));
    refresh_targets(&targets, a.nodes_file.as_deref());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ChurnStats::default());
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds.max(0.0));
    let started = Instant::now();

    // The watcher: the deadline, the stop file, and the node list.
    let watcher = {
        let (stop, targets) = (stop.clone(), targets.clone());
        let (stop_file, nodes_file) = (a.stop_file.clone(), a.nodes_file.clone());
        tokio::spawn(async move {
            let mut last_refresh = Instant::now();
            while !stop.load(Ordering::Acquire) {
                if Instant::now() >= deadline || stop_file.as_ref().is_some_and(|f| f.exists()) {
                    stop.store(true, Ordering::Release);
                    break;
                }
                if last_refresh.elapsed() >= Duration::from_secs(1) {
                    refresh_targets(&targets, nodes_file.as_deref());
                    last_refresh = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let period = Duration::from_secs_f64(workers as f64 / a.rate.max(0.01));
    let run = nonce();
    let mut tasks = Vec::new();
    for (w, keys) in owned.into_iter().enumerate() {
        let ctx = Worker {
            id: w,
            keys,
            targets: targets.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            rec: rec.clone(),
            max_ops: a.max_ops,
            prefix: a.prefix.clone(),
            run: run.clone(),
        };
        tasks.push(tokio::spawn(ctx.run(period)));
    }
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    stop.store(true, Ordering::Release);
    let _ = watcher.await;
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let summary = json!({
        "secs": round2(started.elapsed().as_secs_f64()),
        "ops": g(&stats.ops),
        "reads": g(&stats.reads),
        "read_errors": g(&stats.read_errors),
        "stale_reads": g(&stats.stale_reads),
        "sibling_reads": g(&stats.sibling_reads),
        "updates": g(&stats.updates),
        "inserts": g(&stats.inserts),
        "writes_acked": g(&stats.writes_acked),
        "write_errors": g(&stats.write_errors),
        "failures": failures,
    });
    println!("{summary}");
    if let Some(path) = &a.summary {
        std::fs::write(path, format!("{summary}\n"))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(failures.is_empty())
}

fn refresh_targets(targets: &RwLock<Targets>, file: Option<&Path>) {
    let Some(file) = file else { return };
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let urls: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let Ok(mut t) = targets.write() else { return };
    if urls.is_empty() || urls == t.urls {
        return;
    }
    if let Ok(clients) = clients(&urls) {
        t.urls = urls;
        t.clients = clients;
    }
}

struct Worker {
    id: usize,
    /// This worker's keys and what each may read back as.
    keys: HashMap<String, Expected>,
    targets: Arc<RwLock<Targets>>,
    stop: Arc<AtomicBool>,
    stats: Arc<ChurnStats>,
    rec: Arc<Recorder>,
    max_ops: u64,
    prefix: String,
    run: String,
}

/// The longest one churn operation may take (a read, or a read and a write).
const OP_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    async fn run(mut self, period: Duration) -> Result<(), String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let mut names: Vec<String> = self.keys.keys().cloned().collect();
        names.sort();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            ticker.tick().await;
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let op = self.stats.ops.fetch_add(1, Ordering::Relaxed);
            if op >= self.max_ops {
                self.stop.store(true, Ordering::Release);
                return Ok(());
            }
            let client = {
                let t = self.targets.read().map_err(|_| "targets lock poisoned")?;
                if t.clients.is_empty() {
                    continue;
                }
                t.clients[op as usize % t.clients.len()].clone()
            };
            let roll = rng.gen_range(0..100);
            if names.is_empty() || roll >= 80 {
                // Insert a new key.
                seq += 1;
                let key = format!("{}{}-{}-{seq}", self.prefix, self.run, self.id);
                bump(&self.stats.inserts);
                self.write(&client, &key, None, seq).await?;
                names.push(key);
                continue;
            }
            let key = names[rng.gen_range(0..names.len())].clone();
            if roll < 50 {
                self.read(&client, &key).await;
            } else {
                bump(&self.stats.updates);
                seq += 1;
                // Read for the token, then write over exactly what was read.
                match tokio::time::timeout(OP_TIMEOUT, client.get(&key)).await {
                    Ok(Ok(found)) => {
                        let token = match found {
                            ReadResult::Value { token, .. }
                            | ReadResult::Siblings { token, .. } => Some(token),
                            ReadResult::NotFound { .. } => None,
                        };
                        self.write(&client, &key, token, seq).await?;
                    }
                    _ => bump(&self.stats.read_errors),
                }
            }
        }
    }

    async fn write(
        &mut self,
        client: &Client,
        key: &str,
        token: Option<String>,
        seq: u64,
    ) -> Result<(), String> {
        let value = value_for(key, &format!("churn.{}.{seq}", self.run), 60);
        self.rec.line('U', key, &value)?;
        let expected = self.keys.entry(key.to_owned()).or_default();
        let put = client.put(
            key,
            Bytes::from(value.clone().into_bytes()),
            Some("text/plain"),
            token.as_deref().filter(|t| !t.is_empty()),
        );
        match tokio::time::timeout(OP_TIMEOUT, put).await {
            Ok(Ok(_)) => {
                self.rec.line('A', key, &value)?;
                expected.acked = true;
                expected.values.clear();
                expected.values.push(value);
                bump(&self.stats.writes_acked);
            }
            _ => {
                expected.values.push(value);
                bump(&self.stats.write_errors);
            }
        }
        Ok(())
    }

    async fn read(&self, client: &Client, key: &str) {
        bump(&self.stats.reads);
        let Some(expected) = self.keys.get(key) else {
            return;
        };
        let ok = match tokio::time::timeout(OP_TIMEOUT, client.get(key)).await {
            Ok(Ok(ReadResult::Value { data, .. })) => expected
                .values
                .iter()
                .any(|v| v.as_bytes() == data.as_ref()),
            Ok(Ok(ReadResult::Siblings { siblings, .. })) => {
                bump(&self.stats.sibling_reads);
                siblings
                    .iter()
                    .any(|s| expected.values.iter().any(|v| v.as_bytes() == s.value))
            }
            // A key none of whose writes was acknowledged may well not exist.
            Ok(Ok(ReadResult::NotFound { .. })) => !expected.acked,
            _ => {
                bump(&self.stats.read_errors);
                return;
            }
        };
        if !ok {
            let n = self.stats.stale_reads.fetch_add(1, Ordering::Relaxed);
            if n < 10 {
                eprintln!("churn: stale read of {key:?}");
            }
        }
    }
}

// ----- verify -----

/// One node as the check sees it.
struct NodeInfo {
    id: NodeId,
    cluster: ClusterJson,
}

/// Where keys are stored, against where the ring says they belong.
#[derive(Debug, Default)]
struct Placement {
    members: usize,
    n: usize,
    ring_hash: String,
    /// Every node agrees on the ring, and the ring built here has the same hash.
    ring_ok: bool,
    /// Problems that make the placement check inconclusive.
    problems: Vec<String>,
    /// Keys stored per node (in `--node` order), tombstoned ones included.
    per_node: Vec<u64>,
    node_ids: Vec<String>,
    distinct_keys: u64,
    /// Keys whose holders differ from their preference list.
    misplaced: BTreeSet<String>,
    /// Of those: a preference-list node lacks the key / a node outside it holds it.
    missing_replica: u64,
    extra_copy: u64,
    /// Keys whose copies differ between holders.
    diverged: u64,
}

async fn node_infos(clients: &[Client]) -> Result<Vec<NodeInfo>, String> {
    let answers = futures::future::join_all(clients.iter().map(|c| c.cluster())).await;
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let cluster = a.map_err(|e| format!("GET /cluster on node {}: {e}", i + 1))?;
            let cluster: ClusterJson = serde_json::from_value(cluster)
                .map_err(|e| format!("node {}: /cluster: {e}", i + 1))?;
            let id = cluster
                .self_id()
                .map_err(|e| format!("node {}: {e}", i + 1))?;
            Ok(NodeInfo { id, cluster })
        })
        .collect()
}

/// The read ring of a `/cluster` document, built as the node builds it
/// ([`ClusterJson::rings`]), and the N in force.
fn ring_of(cluster: &ClusterJson) -> Result<(Ring, usize), String> {
    let (read, _write) = cluster.rings().map_err(|e| e.to_string())?;
    if read.is_empty() {
        return Err("the ring is empty".into());
    }
    Ok((read, cluster.effective.n))
}

/// One stored key on one node: (digest, live).
type Held = (String, bool);

async fn stored_keys(client: &Client) -> Result<BTreeMap<String, Held>, String> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    // Bounded: each page moves `after` forward; a node holds far fewer than 10^9 keys.
    for _ in 0..100_000 {
        let mut path = "/debug/keys?limit=10000".to_owned();
        if let Some(a) = &after {
            path.push_str("&after=");
            path.extend(form_urlencoded::byte_serialize(a.as_bytes()));
        }
        let page = client
            .get_json(&path)
            .await
            .map_err(|e| format!("GET /debug/keys: {e}"))?;
        for k in page["keys"].as_array().into_iter().flatten() {
            let key = k["key"].as_str().unwrap_or_default().to_owned();
            let digest = k["digest"].as_str().unwrap_or_default().to_owned();
            out.insert(key, (digest, k["live"].as_bool().unwrap_or(false)));
        }
        match page["next_after"].as_str() {
            Some(next) if after.as_deref() != Some(next) => after = Some(next.to_owned()),
            _ => return Ok(out),
        }
    }
    Err("GET /debug/keys: too many pages".into())
}

/// Lists every node's keys and checks each against its preference list. `also` are keys
/// that must be stored somewhere (the acknowledged ones): one stored nowhere is
/// misplaced too.
async fn placement(clients: &[Client], also: &BTreeSet<String>) -> Result<Placement, String> {
    let infos = node_infos(clients).await?;
    let mut p = Placement {
        node_ids: infos.iter().map(|i| i.id.to_string()).collect(),
        ..Placement::default()
    };
    let first = &infos[0].cluster;
    let (ring, n) = ring_of(first)?;
    p.members = ring.len();
    p.n = n;
    p.ring_hash = first.ring_hash.clone();
    p.ring_ok = ring.hash_hex() == p.ring_hash;
    if !p.ring_ok {
        p.problems.push(format!(
            "the ring built from /cluster hashes to {}, the nodes report {}",
            ring.hash_hex(),
            p.ring_hash
        ));
    }
    for (i, info) in infos.iter().enumerate() {
        let hash = &info.cluster.ring_hash;
        if *hash != p.ring_hash {
            p.ring_ok = false;
            p.problems.push(format!(
                "node {} has ring {hash}, node 1 {}",
                i + 1,
                p.ring_hash
            ));
        }
    }
    let index: HashMap<NodeId, usize> = infos.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    for id in ring.members() {
        if !index.contains_key(id) {
            p.problems
                .push(format!("ring member {id} is not among the --node URLs"));
        }
    }

    let listings = futures::future::join_all(clients.iter().map(stored_keys)).await;
    let mut holders: BTreeMap<String, Vec<(usize, Held)>> = BTreeMap::new();
    for (i, listing) in listings.into_iter().enumerate() {
        let listing = listing.map_err(|e| format!("node {}: {e}", i + 1))?;
        p.per_node.push(listing.len() as u64);
        for (key, held) in listing {
            holders.entry(key).or_default().push((i, held));
        }
    }
    for key in also {
        holders.entry(key.clone()).or_default();
    }
    p.distinct_keys = holders.values().filter(|h| !h.is_empty()).count() as u64;
    for (key, held) in &holders {
        let want: BTreeSet<usize> = ring
            .preference_list(key.as_bytes(), n)
            .iter()
            .map(|id| index.get(id).copied().unwrap_or(usize::MAX))
            .collect();
        let have: BTreeSet<usize> = held.iter().map(|(i, _)| *i).collect();
        if want != have {
            if want.difference(&have).next().is_some() {
                p.missing_replica += 1;
            }
            if have.difference(&want).next().is_some() {
                p.extra_copy += 1;
            }
            p.misplaced.insert(key.clone());
        }
        if held.windows(2).any(|w| w[0].1 .0 != w[1].1 .0) {
            p.diverged += 1;
        }
    }
    Ok(p)
}

/// Keys still misplaced when looked at one by one on every node, at nearly one moment:
/// a listing of five nodes takes a while, and a write in flight meanwhile can look
/// misplaced in it.
async fn recheck(
    clients: &[Client],
    ring: &Ring,
    n: usize,
    index: &HashMap<NodeId, usize>,
    keys: &BTreeSet<String>,
) -> Result<BTreeSet<String>, String> {
    let checks = stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let stored = futures::future::join_all(clients.iter().map(|c| c.stores(&key))).await;
            let mut have = BTreeSet::new();
            for (i, s) in stored.into_iter().enumerate() {
                if s.map_err(|e| format!("node {}: {e}", i + 1))? {
                    have.insert(i);
                }
            }
            let want: BTreeSet<usize> = ring
                .preference_list(key.as_bytes(), n)
                .iter()
                .map(|id| index.get(id).copied().unwrap_or(usize::MAX))
                .collect();
            Ok::<_, String>((want != have).then_some(key))
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut out = BTreeSet::new();
    for c in checks {
        if let Some(k) = c? {
            out.insert(k);
        }
    }
    Ok(out)
}

/// The keys of `keys` whose replicas, the members of their preference list, do not all
/// hold the same sibling set (`/debug/local`, dots and context included), or do not all
/// hold the key.
async fn unequal_replicas(
    clients: &[Client],
    keys: &BTreeSet<String>,
) -> Result<Vec<(String, Value)>, String> {
    let infos = node_infos(clients).await?;
    let (ring, n) = ring_of(&infos[0].cluster)?;
    let index: HashMap<NodeId, usize> = infos.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let (ring, index) = (&ring, &index);
    let checks = stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let mut sets = Vec::with_capacity(n);
            let mut nodes = Vec::with_capacity(n);
            for id in ring.preference_list(key.as_bytes(), n) {
                let i = *index
                    .get(&id)
                    .ok_or_else(|| format!("replica {id} is not among the --node URLs"))?;
                let set = clients[i]
                    .local(&key)
                    .await
                    .map_err(|e| format!("node {}: {e}", i + 1))?;
                sets.push(set);
                nodes.push(i + 1);
            }
            let equal = sets.iter().all(Option::is_some) && sets.windows(2).all(|w| w[0] == w[1]);
            // What each replica holds, for the report (node numbers in --node order).
            let held: Vec<Value> = nodes
                .iter()
                .zip(&sets)
                .map(|(node, set)| json!({"node": node, "local": set}))
                .collect();
            Ok::<_, String>((!equal).then_some((key, Value::Array(held))))
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::new();
    for c in checks {
        out.extend(c?);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Misplaced keys looked at one by one rather than listed again.
const RECHECK_AT_MOST: usize = 100;

/// How one recorded key read back.
#[derive(Debug, Clone)]
enum ReadBack {
    Value(String),
    Siblings(Vec<String>),
    NotFound,
    Error(String),
}

impl ReadBack {
    fn describe(&self) -> Value {
        match self {
            ReadBack::Value(v) => json!({"value": v}),
            ReadBack::Siblings(vs) => json!({"siblings": vs}),
            ReadBack::NotFound => json!("not found"),
            ReadBack::Error(e) => json!({"error": e}),
        }
    }

    fn matches(&self, expected: &[String]) -> bool {
        match self {
            ReadBack::Value(v) => expected.contains(v),
            ReadBack::Siblings(vs) => vs.iter().any(|v| expected.contains(v)),
            ReadBack::NotFound | ReadBack::Error(_) => false,
        }
    }
}

async fn read_back(client: &Client, key: &str) -> ReadBack {
    let mut last = String::new();
    for attempt in 0..3u32 {
        match client.get(key).await {
            Ok(ReadResult::Value { data, .. }) => {
                return ReadBack::Value(String::from_utf8_lossy(&data).into_owned())
            }
            Ok(ReadResult::Siblings { siblings, .. }) => {
                return ReadBack::Siblings(
                    siblings
                        .iter()
                        .map(|s| String::from_utf8_lossy(&s.value).into_owned())
                        .collect(),
                )
            }
            Ok(ReadResult::NotFound { .. }) => return ReadBack::NotFound,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    ReadBack::Error(last)
}

async fn verify(a: VerifyArgs) -> Result<bool, String> {
    let clients = clients(&a.node)?;
    let started = Instant::now();
    let (mut record, seen_lines) = read_record(&a.record)?;
    let acked: BTreeSet<String> = record
        .iter()
        .filter(|(_, e)| e.acked)
        .map(|(k, _)| k.clone())
        .collect();

    // Placement, polled until it settles or the time is up.
    let settle_deadline = started + Duration::from_secs_f64(a.settle_secs.max(0.0));
    let mut polls = 0u32;
    let mut place = loop {
        polls += 1;
        let mut p = placement(&clients, &acked).await?;
        // A few misplaced keys may be writes in flight during the listing: look at them
        // again. Many mean the join has not settled: list again.
        if !p.misplaced.is_empty() && p.misplaced.len() <= RECHECK_AT_MOST && p.problems.is_empty()
        {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let infos = node_infos(&clients).await?;
            let (ring, n) = ring_of(&infos[0].cluster)?;
            if ring.hash_hex() == p.ring_hash {
                let index = infos.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
                p.misplaced = recheck(&clients, &ring, n, &index, &p.misplaced).await?;
            }
        }
        let settled = p.misplaced.is_empty() && p.problems.is_empty();
        if settled || Instant::now() >= settle_deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settle_secs = started.elapsed().as_secs_f64();

    // Before the reads below, whose read repair would hide a replica left behind.
    let unequal = if a.replicas {
        Some(loop {
            let unequal = unequal_replicas(&clients, &acked).await?;
            if unequal.is_empty() || Instant::now() >= settle_deadline {
                break unequal;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        })
    } else {
        None
    };

    // Every acknowledged key, read back at the default quorum, round-robin.
    let read_started = Instant::now();
    let reads: Vec<(String, ReadBack)> = stream::iter(acked.iter().cloned().enumerate())
        .map(|(i, key)| {
            let client = clients[i % clients.len()].clone();
            async move {
                let got = read_back(&client, &key).await;
                (key, got)
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let read_secs = read_started.elapsed().as_secs_f64();
    // Writes made while reading (by churn) may be what a read saw: add their values.
    for (_, key, value) in record_lines(&a.record, seen_lines)? {
        if let Some(e) = record.get_mut(&key) {
            e.values.push(value);
        }
    }
    let (mut readable, mut wrong, mut not_found, mut errors, mut siblings) = (0, 0, 0, 0, 0);
    let mut examples = Vec::new();
    for (key, got) in &reads {
        let expected = record.get(key).map(|e| e.values.as_slice()).unwrap_or(&[]);
        if matches!(got, ReadBack::Siblings(_)) {
            siblings += 1;
        }
        if got.matches(expected) {
            readable += 1;
            continue;
        }
        match got {
            ReadBack::NotFound => not_found += 1,
            ReadBack::Error(_) => errors += 1,
            _ => wrong += 1,
        }
        if examples.len() < 10 {
            examples.push(json!({"key": key, "expected": expected, "got": got.describe()}));
        }
    }
    let total = reads.len() as u64;
    // Floor, so that anything short of every key never prints as 100.
    let pct = if total == 0 {
        100.0
    } else {
        (readable as f64 * 10_000.0 / total as f64).floor() / 100.0
    };
    let copies: u64 = place.per_node.iter().sum();
    let shares: Vec<f64> = place
        .per_node
        .iter()
        .map(|k| round2(*k as f64 * 100.0 / copies.max(1) as f64))
        .collect();
    let misplaced = place.misplaced.len() as u64;
    let replicas_unequal = unequal.as_ref().map(Vec::len);
    let holds = readable == total
        && misplaced == 0
        && place.problems.is_empty()
        && replicas_unequal.unwrap_or(0) == 0;
    let unequal_examples: Vec<Value> = unequal
        .iter()
        .flatten()
        .take(3)
        .map(|(key, held)| json!({"key": key, "replicas": held}))
        .collect();
    let misplaced_examples: Vec<&String> = place.misplaced.iter().take(10).collect();
    let summary = json!({
        "ok": holds,
        "nodes": place.members,
        "n": place.n,
        "ring_hash": place.ring_hash,
        "ring_ok": place.ring_ok,
        "problems": std::mem::take(&mut place.problems),
        "join_secs": a.join_secs.map(round2),
        "moved": a.moved,
        "acked_keys": total,
        "readable": readable,
        "readable_pct": pct,
        "wrong_value": wrong,
        "not_found": not_found,
        "read_errors": errors,
        "sibling_keys": siblings,
        "stored_keys": place.distinct_keys,
        "keys_per_node": place.per_node,
        "node_ids": place.node_ids,
        "share_pct": shares,
        "misplaced": misplaced,
        "missing_replica": place.missing_replica,
        "extra_copy": place.extra_copy,
        "diverged": place.diverged,
        "replicas_unequal": replicas_unequal,
        "unequal_examples": unequal_examples,
        "placement_polls": polls,
        "settle_secs": round2(settle_secs),
        "read_secs": round2(read_secs),
        "unreadable_examples": examples,
        "misplaced_examples": misplaced_examples,
    });
    println!("{summary}");
    if let Some(path) = &a.json_out {
        append(path, &format!("{summary}\n"))?;
    }
    if let Some(path) = &a.row_out {
        let shares: Vec<String> = shares.iter().map(|s| format!("{s:.1}")).collect();
        let row = format!(
            "| {} | {} | {} | {pct:.2} | {} | {misplaced} | {:.1} |\n",
            place.members,
            a.join_secs.map_or("–".into(), |s| format!("{s:.1}")),
            a.moved.map_or("–".into(), |m| m.to_string()),
            shares.join(" / "),
            settle_secs,
        );
        append(path, &row)?;
    }
    Ok(holds)
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_the_last_ack_and_later_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        std::fs::write(
            &path,
            "U\ta\t1\nA\ta\t1\nU\ta\t2\nU\tb\t1\nU\ta\t3\nA\ta\t3\nU\ta\t4\nA\tc\t",
        )
        .unwrap();
        let (map, lines) = read_record(&path).unwrap();
        // The last line has no newline yet: it is still being written.
        assert_eq!(lines, 7);
        assert!(map["a"].acked);
        assert_eq!(map["a"].values, vec!["3", "4"]);
        assert!(!map["b"].acked);
        assert!(!map.contains_key("c"));
        assert_eq!(record_lines(&path, 6).unwrap().len(), 1);
    }

    /// A `/cluster` document with these (id, state) members, 8 vnodes each, N = 3.
    fn document(members: &[(&str, &str)]) -> ClusterJson {
        let members: Vec<Value> = members
            .iter()
            .map(|(id, state)| {
                json!({
                    "id": id, "http_addr": "127.0.0.1:1", "rpc_addr": "127.0.0.1:2",
                    "gossip_addr": "127.0.0.1:3", "live": true, "state": state, "vnodes": 8,
                    "ownership": 0.0, "replica_share": 0.0, "writable": true,
                })
            })
            .collect();
        serde_json::from_value(json!({
            "node_id": "0000000000000001", "cluster_id": "c",
            "ring_hash": "0", "write_ring_hash": "0", "members": members,
            "replication": {"n": 3, "r": 2, "w": 2}, "effective": {"n": 3, "r": 2, "w": 2},
            "hints_pending": {"0000000000000002": {"count": 1, "bytes": 10}},
            "departed": [{"id": "0000000000000009", "kind": "left", "at_ms": 5}],
            "ring_agreement": true, "ring_disagreements": [], "rejoining": false,
        }))
        .unwrap()
    }

    #[test]
    fn the_ring_is_built_from_normal_and_leaving_members() {
        let cluster = document(&[
            ("0000000000000001", "normal"),
            ("0000000000000002", "joining"),
            ("0000000000000003", "leaving"),
        ]);
        let (ring, n) = ring_of(&cluster).unwrap();
        assert_eq!(n, 3);
        assert_eq!(ring.members(), &[NodeId(1), NodeId(3)]);
        assert_eq!(ring.hash(), Ring::new([NodeId(1), NodeId(3)], 8).hash());
    }

    #[test]
    fn joiners_alone_are_the_ring() {
        let cluster = document(&[
            ("0000000000000001", "joining"),
            ("0000000000000002", "joining"),
        ]);
        let (ring, _) = ring_of(&cluster).unwrap();
        assert_eq!(ring.members(), &[NodeId(1), NodeId(2)]);
    }

    #[test]
    fn a_document_without_ring_members_or_with_a_bad_id_is_refused() {
        assert!(ring_of(&document(&[("0000000000000001", "left")])).is_err());
        assert!(ring_of(&document(&[("not-hex", "normal")])).is_err());
        // An unknown state is not read as some other state.
        let mut doc = serde_json::to_value(document(&[("0000000000000001", "normal")])).unwrap();
        doc["members"][0]["state"] = json!("gone");
        assert!(serde_json::from_value::<ClusterJson>(doc).is_err());
    }
}
