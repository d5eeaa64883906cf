//! The fault schedule, drawn from the seed before the run starts (so `--seed` replays
//! it), and the faults themselves, done to real processes as an operator would see them:
//! SIGKILL and restart, SIGSTOP and SIGCONT, disk loss (a wiped data dir, with the
//! operator's part: remove the dead id, start the node empty so it joins anew) and a full
//! disk (a ballast file in the node's tmpfs).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;

use ringkv::client::{Client, ClientError};

use super::procs::Cluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Kill1,
    Kill2,
    Pause,
    Wipe,
    Fill,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Kill1,
        Kind::Kill2,
        Kind::Pause,
        Kind::Wipe,
        Kind::Fill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kill1 => "kill-1",
            Kind::Kill2 => "kill-2",
            Kind::Pause => "pause",
            Kind::Wipe => "wipe",
            Kind::Fill => "disk-full",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL these nodes, wait, start them again on their data dirs.
    Kill { nodes: Vec<usize>, down: Duration },
    /// SIGSTOP, wait, SIGCONT.
    Pause { node: usize, paused: Duration },
    /// SIGKILL, wipe the data dir, remove the old id, start it empty.
    Wipe { node: usize },
    /// Fill the disk node's tmpfs; the ballast goes `steps` steps later.
    Fill { node: usize, steps: usize },
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill { nodes, .. } if nodes.len() == 1 => Kind::Kill1,
            Fault::Kill { .. } => Kind::Kill2,
            Fault::Pause { .. } => Kind::Pause,
            Fault::Wipe { .. } => Kind::Wipe,
            Fault::Fill { .. } => Kind::Fill,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { nodes, down } => write!(f, "SIGKILL node {nodes:?}, down {down:.1?}"),
            Fault::Pause { node, paused } => write!(f, "SIGSTOP node {node} for {paused:.1?}"),
            Fault::Wipe { node } => write!(f, "disk loss on node {node}"),
            Fault::Fill { node, steps } => write!(f, "fill node {node}'s disk for {steps} steps"),
        }
    }
}

/// One step: wait, then the fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub wait: Duration,
    pub fault: Fault,
}

/// `count` steps for `nodes` nodes, a fault about every `every`. The first steps are
/// every kind once, in a seeded order, so a short run still sees each; `disk` is the
/// tmpfs node (none: no fill faults). While the disk node is full it is not killed (a
/// node killed on a full disk may not start again, which proves nothing about the
/// cluster) and, unless `wipe_while_full`, no node is wiped.
pub fn schedule(
    rng: &mut StdRng,
    nodes: usize,
    disk: Option<usize>,
    every: Duration,
    count: usize,
    wipe_while_full: bool,
) -> Vec<Step> {
    let mut first: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| *k != Kind::Fill || disk.is_some())
        .collect();
    first.shuffle(rng);
    // Disk loss before the first fill, which would turn it into a kill (below).
    if let (false, Some(f), Some(w)) = (
        wipe_while_full,
        first.iter().position(|k| *k == Kind::Fill),
        first.iter().position(|k| *k == Kind::Wipe),
    ) {
        if f < w {
            first.swap(f, w);
        }
    }
    let mut out = Vec::with_capacity(count);
    // The step at which the disk node's ballast goes.
    let mut full_until = 0usize;
    for step in 0..count {
        let wait = every.mul_f64(rng.gen_range(0.5..1.5));
        let mut kind = match first.get(step) {
            Some(k) => *k,
            None => {
                let roll = rng.gen_range(0..100);
                match roll {
                    0..=29 => Kind::Kill1,
                    30..=44 => Kind::Kill2,
                    45..=69 => Kind::Pause,
                    70..=79 => Kind::Wipe,
                    _ => Kind::Fill,
                }
            }
        };
        let full = step < full_until;
        if kind == Kind::Fill && (disk.is_none() || full) {
            kind = Kind::Pause;
        }
        // A node that joins while a fellow owner's disk is full cannot finish its join
        // until space returns (the pull is a two-way exchange, whose half on the full
        // node fails): no disk loss meanwhile, so the run checks what it means to.
        if kind == Kind::Wipe && full && !wipe_while_full {
            kind = Kind::Kill1;
        }
        let candidates: Vec<usize> = (1..=nodes)
            .filter(|n| !(full && Some(*n) == disk) || kind == Kind::Pause)
            .collect();
        let fault = match kind {
            Kind::Kill1 | Kind::Kill2 => {
                let k = if kind == Kind::Kill1 { 1 } else { 2 };
                let mut picked: Vec<usize> = candidates.choose_multiple(rng, k).copied().collect();
                picked.sort_unstable();
                Fault::Kill {
                    nodes: picked,
                    down: Duration::from_millis(rng.gen_range(500..3000)),
                }
            }
            Kind::Pause => Fault::Pause {
                node: *candidates.choose(rng).unwrap_or(&1),
                paused: Duration::from_millis(rng.gen_range(2000..6000)),
            },
            Kind::Wipe => Fault::Wipe {
                node: *candidates.choose(rng).unwrap_or(&1),
            },
            Kind::Fill => {
                let steps = rng.gen_range(2..=4);
                full_until = step + 1 + steps;
                Fault::Fill {
                    node: disk.unwrap_or(1),
                    steps,
                }
            }
        };
        out.push(Step { wait, fault });
    }
    out
}

/// What the nemesis did, for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub injected: BTreeMap<Kind, u64>,
    pub skipped: BTreeMap<Kind, u64>,
    /// Problems the faults themselves showed (a wiped node that did not rejoin, a node
    /// that died by itself): violations.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    /// Old ids removed after disk loss.
    pub removed: Vec<String>,
}

/// Bounds on what an operator waits for during a fault.
pub struct Bounds {
    /// A dead member seen as down by its peers, and its removal accepted.
    pub remove: Duration,
    /// A wiped node joined and normal on every node.
    pub rejoin: Duration,
    /// The other nodes ready before a wipe (a wipe waits for the cluster to be whole).
    pub ready: Duration,
}

pub fn control(url: &str) -> Result<Client, String> {
    Client::with_timeout(url, Duration::from_secs(3)).map_err(|e| format!("{url}: {e}"))
}

/// Every node's gossip address but `i`'s: where a (re)started node finds the cluster.
pub fn seeds(cluster: &Cluster, i: usize) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .filter(|n| n.index != i)
        .map(|n| n.gossip_addr.clone())
        .collect()
}

pub async fn ready(url: &str) -> bool {
    match control(url) {
        Ok(c) => c.ready().await.is_ok(),
        Err(_) => false,
    }
}

/// The node's own id from `/cluster`.
pub async fn node_id(url: &str) -> Option<String> {
    let c = control(url).ok()?;
    let v = c.cluster().await.ok()?;
    v["node_id"].as_str().map(str::to_owned)
}

/// Polls `f` every 200 ms until it holds or `bound` passes.
pub async fn wait_until<F, Fut>(bound: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Member `id`'s entry in the `/cluster` of `url`.
async fn member(url: &str, id: &str) -> Option<Value> {
    let c = control(url).ok()?;
    let v = c.cluster().await.ok()?;
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id))
        .cloned()
}

/// Whether every running node shows member `id` as live and normal.
async fn normal_everywhere(cluster: &Cluster, id: &str) -> bool {
    for n in &cluster.nodes {
        if !cluster.running(n.index) {
            continue;
        }
        match member(&n.url, id).await {
            Some(m) if m["state"] == "normal" && m["live"] == true => {}
            _ => return false,
        }
    }
    true
}

/// Disk loss, as an operator handles it: the node is gone with its disk; once its peers
/// see it down, remove its id (`POST /admin/remove/{id}`: a live member is refused), then
/// start the replacement empty, under the same addresses, seeded with the others. It gets
/// a new id and joins as a new member, pulling its ranges.
pub async fn wipe(
    cluster: &mut Cluster,
    i: usize,
    bounds: &Bounds,
    tally: &mut Tally,
    log: &dyn Fn(String),
) -> Result<bool, String> {
    let others: Vec<usize> = (1..=cluster.nodes.len()).filter(|n| *n != i).collect();
    let urls: Vec<String> = others
        .iter()
        .map(|n| cluster.node(*n).url.clone())
        .collect();
    let whole = wait_until(bounds.ready, || {
        let urls = urls.clone();
        async move {
            for u in &urls {
                if !ready(u).await {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let old = match &cluster.node(i).id {
        Some(id) => id.clone(),
        None => match node_id(&cluster.node(i).url).await {
            Some(id) => id,
            None => {
                log(format!("  skipped: node {i} does not say its id"));
                return Ok(false);
            }
        },
    };
    if !whole {
        log(format!(
            "  skipped: the other nodes were not all ready within {:?}",
            bounds.ready
        ));
        return Ok(false);
    }
    let started = Instant::now();
    cluster.kill(i).await?;
    cluster.wipe(i)?;
    // Peers must see it down before they accept its removal.
    let via = urls[0].clone();
    let down = wait_until(bounds.remove, || {
        let (via, old) = (via.clone(), old.clone());
        async move { member(&via, &old).await.is_some_and(|m| m["live"] == false) }
    })
    .await;
    if !down {
        tally.problems.push(format!(
            "wipe of node {i}: its old id {old} still showed live on {via} {:?} after SIGKILL",
            bounds.remove
        ));
    }
    let mut removed = false;
    let deadline = Instant::now() + bounds.remove;
    let mut last = String::new();
    while Instant::now() < deadline {
        match control(&via)?.remove(&old, false).await {
            Ok(_) => {
                removed = true;
                break;
            }
            Err(ClientError::Api { status, code, .. }) => last = format!("{status} {code}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if removed {
        tally.removed.push(old.clone());
        log(format!("  removed the old id {old} through {via}"));
    } else {
        tally.problems.push(format!(
            "wipe of node {i}: POST /admin/remove/{old} not accepted within {:?} (last: {last})",
            bounds.remove
        ));
    }
    let seeds = seeds(cluster, i);
    cluster.start(i, &seeds)?;
    let url = cluster.node(i).url.clone();
    let up = wait_until(bounds.rejoin, || ready(&url)).await;
    let new = node_id(&url).await;
    let rejoined = match (&new, up) {
        (Some(new), true) => {
            let c = &*cluster;
            wait_until(bounds.rejoin, || normal_everywhere(c, new)).await
        }
        _ => false,
    };
    match (&new, rejoined) {
        (Some(new), true) => {
            log(format!(
                "  node {i} rejoined empty as {new}, normal everywhere after {:.1?}",
                started.elapsed()
            ));
            cluster.nodes[i - 1].id = Some(new.clone());
        }
        _ => tally.problems.push(format!(
            "wipe of node {i}: the empty node did not join and turn normal everywhere within {:?} (ready: {up}, id: {new:?})",
            bounds.rejoin
        )),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn drawn(seed: u64, disk: Option<usize>) -> Vec<Step> {
        let mut rng = StdRng::seed_from_u64(seed);
        schedule(&mut rng, 5, disk, Duration::from_secs(4), 60, false)
    }

    #[test]
    fn a_seed_replays_its_schedule_and_another_seed_does_not() {
        assert_eq!(drawn(7, Some(2)), drawn(7, Some(2)));
        assert_ne!(drawn(7, Some(2)), drawn(8, Some(2)));
    }

    #[test]
    fn every_kind_comes_first_and_faults_stay_in_bounds() {
        for seed in 0..64 {
            every_kind_first(seed);
        }
    }

    fn every_kind_first(seed: u64) {
        let steps = drawn(seed, Some(3));
        let mut first: Vec<Kind> = steps[..5].iter().map(|s| s.fault.kind()).collect();
        first.sort();
        assert_eq!(first, Kind::ALL.to_vec(), "seed {seed}");
        let mut full_until = 0;
        for (i, s) in steps.iter().enumerate() {
            assert!(s.wait >= Duration::from_secs(2) && s.wait < Duration::from_secs(6));
            match &s.fault {
                Fault::Kill { nodes, down } => {
                    assert!(nodes.len() <= 2 && nodes.windows(2).all(|w| w[0] < w[1]));
                    assert!(nodes.iter().all(|n| (1..=5).contains(n)));
                    assert!(*down < Duration::from_secs(3));
                    // The full node is never killed.
                    assert!(i >= full_until || !nodes.contains(&3), "step {i}");
                }
                Fault::Wipe { .. } => assert!(i >= full_until, "wipe while full at step {i}"),
                Fault::Fill { node, steps } => {
                    assert!(i >= full_until, "filled twice at step {i}");
                    assert_eq!(*node, 3);
                    full_until = i + 1 + steps;
                }
                Fault::Pause { node, paused } => {
                    assert!((1..=5).contains(node) && *paused < Duration::from_secs(6));
                }
            }
        }
    }

    /// Whether some step wipes a node while the disk node is full.
    fn wipes_while_full(steps: &[Step]) -> bool {
        let mut full_until = 0;
        for (i, s) in steps.iter().enumerate() {
            match &s.fault {
                Fault::Fill { steps, .. } => full_until = i + 1 + steps,
                Fault::Wipe { .. } if i < full_until => return true,
                _ => {}
            }
        }
        false
    }

    #[test]
    fn wipe_while_full_lets_disk_loss_meet_a_full_disk() {
        let with = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            schedule(&mut rng, 5, Some(4), Duration::from_secs(4), 60, true)
        };
        assert!((0..64).any(|seed| wipes_while_full(&with(seed))));
        assert!((0..64).all(|seed| !wipes_while_full(&drawn(seed, Some(4)))));
    }

    #[test]
    fn without_a_tmpfs_there_is_no_fill() {
        assert!(drawn(5, None).iter().all(|s| s.fault.kind() != Kind::Fill));
    }
}
