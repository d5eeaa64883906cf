//! One simulated run: form the cluster, load it under the nemesis, heal, settle, probe,
//! restart nodes and read the probes through them, gather and check.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::checker::{self, Violation};
use crate::cluster::{self, NodeSlot};
use crate::collect::{self, Collected};
use crate::config::SimConfig;
use crate::gossip::Envelopes;
use crate::history::Event;
use crate::nemesis::{self, Action};
use crate::workload::{addr, node_name, Actors, Client, History, Targets};
use crate::{entropy, http, net, trace};

/// Time for the cluster to form before the load starts.
const FORMATION: Duration = Duration::from_secs(6);
/// After the probes, before gathering: their replication finishes in the background.
const PROBE_SETTLE: Duration = Duration::from_secs(3);
/// The checker's own phase may take this long at most.
const CHECK_BUDGET: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Report {
    pub config: SimConfig,
    pub violations: Vec<Violation>,
    pub history: Vec<Event>,
    pub trace_hash: u64,
    /// The run stopped early: the simulation itself failed (a panic in a host, say).
    pub aborted: Option<String>,
    pub simulated: Duration,
    pub wall: Duration,
    pub faults: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.aborted.is_none()
    }

    pub fn acked_writes(&self) -> usize {
        self.history.iter().filter(|e| e.is_acked_write()).count()
    }
}

struct Run<'a> {
    config: SimConfig,
    sim: turmoil::Sim<'a>,
    slots: Vec<Rc<NodeSlot>>,
    envelopes: Envelopes,
    started: Vec<usize>,
    down: BTreeSet<usize>,
    left: BTreeSet<usize>,
    /// Nodes an operator removed: like `left`, they must not serve, and nothing of theirs
    /// is checked but that.
    removed: BTreeSet<usize>,
    targets: Targets,
    history: History,
    helpers: usize,
    faults: usize,
}

/// How many lists a current-thread tokio runtime keeps its tasks in (`OwnedTasks::new(1)`:
/// `1.next_power_of_two() * 4`), each task in list `id % TASK_LISTS`.
const TASK_LISTS: u64 = 4;

/// tokio numbers tasks from one counter per process. A host that crashes drops its
/// runtime, which drops its tasks list by list, and with them their sockets: the order in
/// which a crashed node's connections close then depends on the ids its tasks got. Two runs
/// of one seed in one process (`--repeat`, a sweep) get ids from different starting points,
/// so they closed those sockets in different orders and parted ways (seed 11, once node
/// start-up spawned a different number of tasks). Each run therefore spends ids until the
/// next one is a multiple of [`TASK_LISTS`]: every run sees the same ids modulo the lists.
fn align_task_ids() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    for _ in 0..TASK_LISTS {
        let task = rt.spawn(async {});
        let id: u64 = task.id().to_string().parse().unwrap_or(0);
        let _ = rt.block_on(task);
        if (id + 1).is_multiple_of(TASK_LISTS) {
            return;
        }
    }
}

/// Runs one simulation on the current thread. Use [`run_on_fresh_thread`] from outside:
/// determinism needs a thread of its own.
pub fn run(config: &SimConfig) -> Report {
    let wall = Instant::now();
    entropy::seed_thread(config.seed);
    // After the seed: building a runtime draws entropy (std's hash keys among it).
    align_task_ids();
    trace::start();
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(net::EPOCH_MS))
        .tick_duration(config.tick)
        .min_message_latency(config.min_latency)
        .max_message_latency(config.max_latency)
        .simulation_duration(Duration::from_secs(365 * 24 * 3600));
    let mut run = Run {
        config: config.clone(),
        sim: builder.build(),
        slots: (0..=config.nodes + 1)
            .map(|_| Rc::new(NodeSlot::default()))
            .collect(),
        envelopes: Envelopes::default(),
        started: Vec::new(),
        down: BTreeSet::new(),
        left: BTreeSet::new(),
        removed: BTreeSet::new(),
        targets: Rc::new(RefCell::new((1..=config.nodes).collect())),
        history: Rc::new(RefCell::new(Vec::new())),
        helpers: 0,
        faults: 0,
    };
    let outcome = run.drive();
    run.teardown();
    let history = run.history.borrow().clone();
    let (violations, aborted) = match outcome {
        Ok(collected) => {
            let expect: Vec<usize> = run
                .started
                .iter()
                .copied()
                .filter(|n| !run.left.contains(n) && !run.removed.contains(n))
                .collect();
            let strict = config.r + config.w > config.n;
            (checker::check(&history, &collected, &expect, strict), None)
        }
        Err(e) => (Vec::new(), Some(e)),
    };
    let simulated = run.sim.elapsed();
    let faults = run.faults;
    drop(run);
    let trace_hash = trace::finish();
    entropy::clear();
    Report {
        config: config.clone(),
        violations,
        history,
        trace_hash,
        aborted,
        simulated,
        wall: wall.elapsed(),
        faults,
    }
}

/// Runs one simulation on a new thread (fresh thread-locals, its own entropy).
pub fn run_on_fresh_thread(config: &SimConfig) -> Report {
    let config = config.clone();
    std::thread::Builder::new()
        .name(format!("sim-{}", config.seed))
        .stack_size(64 * 1024 * 1024)
        .spawn(move || run(&config))
        .expect("spawn a simulation thread")
        .join()
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Report {
                config: SimConfig::default(),
                violations: Vec::new(),
                history: Vec::new(),
                trace_hash: 0,
                aborted: Some(format!("panic: {what}")),
                simulated: Duration::ZERO,
                wall: Duration::ZERO,
                faults: 0,
            }
        })
}

impl Run<'_> {
    fn drive(&mut self) -> Result<Collected, String> {
        for i in 1..=self.config.nodes {
            self.start_node(i);
        }
        let load_end = FORMATION + self.config.duration;
        let actors = Actors::default();
        for c in 1..=self.config.clients {
            let client = Client {
                id: c,
                seed: self.config.seed.wrapping_mul(1000).wrapping_add(c as u64),
                keys: self.config.keys,
                start_at: FORMATION,
                stop_at: load_end,
                timeout: self.config.client_timeout,
                think: self.config.think,
                value_bytes: self.config.scenario.value_bytes(),
                // One client of the hostile scenario forges tokens; the others are honest
                // bystanders whose writes must survive it.
                hostile: self.config.scenario.hostile() && c == 1,
                actors: actors.clone(),
                targets: self.targets.clone(),
                history: self.history.clone(),
            };
            self.sim.client(format!("client{c}"), client.run());
        }
        let mut rng = SmallRng::seed_from_u64(self.config.seed ^ 0xfa17);
        let schedule = nemesis::schedule(&self.config, &mut rng, FORMATION, load_end);
        let mut next = schedule.into_iter().peekable();
        while self.sim.elapsed() < load_end {
            while let Some((_, action)) = next.next_if(|(at, _)| *at <= self.sim.elapsed()) {
                tracing::debug!(at = ?self.sim.elapsed(), ?action, "nemesis");
                self.faults += 1;
                self.apply(action);
            }
            self.step()?;
        }

        // The final heal: every link back, every crashed node restarted.
        self.apply(Action::HealNetwork);
        let down: Vec<usize> = self.down.iter().copied().collect();
        self.apply(Action::Restart(down));
        self.run_for(self.config.settle)?;

        let collected: Rc<RefCell<Option<Collected>>> = Rc::new(RefCell::new(None));
        let up: Vec<usize> = self
            .started
            .iter()
            .copied()
            .filter(|n| !self.left.contains(n) && !self.removed.contains(n))
            .collect();
        // A removed node is not gathered: it keeps its own stale view by design, and what
        // the checker asks of it is only that it serves nothing.
        let candidates: Vec<usize> = self
            .started
            .iter()
            .copied()
            .filter(|n| !self.removed.contains(n))
            .collect();
        let removed: Vec<usize> = self.removed.iter().copied().collect();
        let (keys, seed, history, out) = (
            self.config.keys,
            self.config.seed,
            self.history.clone(),
            collected.clone(),
        );
        let probed: Rc<RefCell<Option<Vec<collect::Probe>>>> = Rc::new(RefCell::new(None));
        let probes_out = probed.clone();
        let probe_nodes = up.clone();
        self.sim.client("prober", async move {
            let probes = collect::probe(&probe_nodes, keys, seed, &history).await;
            *probes_out.borrow_mut() = Some(probes);
            Ok(())
        });
        let deadline = self.sim.elapsed() + CHECK_BUDGET;
        while probed.borrow().is_none() {
            if self.sim.elapsed() > deadline {
                return Err("the probes did not finish within the checker's budget".into());
            }
            self.step()?;
        }
        let probes = probed.borrow_mut().take().expect("probes");

        // Read-your-writes across a restart: crash nodes after the probes' writes, start
        // them again at once, and read every probe through them as soon as they answer.
        let restarted = self.restart_victims(&up);
        self.apply(Action::Crash(restarted.clone()));
        self.step()?;
        self.apply(Action::Restart(restarted.clone()));
        self.sim.client("checker", async move {
            let restart_reads = collect::read_after_restart(&restarted, &probes).await;
            tokio::time::sleep(PROBE_SETTLE).await;
            let mut c = collect::gather(&candidates, keys).await;
            c.probes = probes;
            c.restart_reads = restart_reads;
            c.removed_answers = collect::removed_answers(&removed).await;
            *out.borrow_mut() = Some(c);
            Ok(())
        });
        while collected.borrow().is_none() {
            if self.sim.elapsed() > deadline {
                return Err("the checker did not finish within its budget".into());
            }
            self.step()?;
        }
        let c = collected.borrow_mut().take().expect("collected");
        Ok(c)
    }

    /// Who restarts after the probes: one node for two seeds in three, every node for the
    /// third (a whole cluster's power loss: each node comes back knowing only its disk).
    fn restart_victims(&self, up: &[usize]) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(self.config.seed ^ 0x4e57);
        if up.is_empty() || rng.gen_range(0..3) == 0 {
            return up.to_vec();
        }
        vec![up[rng.gen_range(0..up.len())]]
    }

    fn step(&mut self) -> Result<(), String> {
        self.sim.step().map(|_| ()).map_err(|e| e.to_string())
    }

    fn run_for(&mut self, d: Duration) -> Result<(), String> {
        let until = self.sim.elapsed() + d;
        while self.sim.elapsed() < until {
            self.step()?;
        }
        Ok(())
    }

    fn start_node(&mut self, i: usize) {
        let (config, slot, envelopes) = (
            self.config.clone(),
            self.slots[i].clone(),
            self.envelopes.clone(),
        );
        self.sim.host(node_name(i), move || {
            cluster::run_node(config.clone(), i, slot.clone(), envelopes.clone())
        });
        self.started.push(i);
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Partition(groups) => {
                for (gi, a) in groups.iter().enumerate() {
                    for b in &groups[gi + 1..] {
                        for x in a {
                            for y in b {
                                self.sim.partition(node_name(*x), node_name(*y));
                            }
                        }
                    }
                }
            }
            Action::Clog(n) => {
                for other in self.hosts() {
                    if other != node_name(n) {
                        self.sim.hold(node_name(n), other);
                    }
                }
            }
            Action::Unclog(n) => {
                for other in self.hosts() {
                    if other != node_name(n) {
                        self.sim.release(node_name(n), other);
                    }
                }
            }
            Action::Crash(nodes) => {
                for n in nodes {
                    if self.started.contains(&n) && self.down.insert(n) {
                        // Fence the disk first: the crash runs destructors, and redb's
                        // would otherwise commit on a machine that has lost power.
                        if let Some(fence) = self.slots[n].fence.borrow().as_ref() {
                            fence.trip();
                        }
                        self.sim.crash(node_name(n));
                    }
                }
            }
            Action::Restart(nodes) => {
                for n in nodes {
                    if self.down.remove(&n) {
                        self.sim.bounce(node_name(n));
                    }
                }
            }
            Action::Loss(rate) => self.sim.set_fail_rate(rate),
            Action::HealNetwork => {
                self.sim.set_fail_rate(0.0);
                let hosts = self.hosts();
                for (i, a) in hosts.iter().enumerate() {
                    for b in &hosts[i + 1..] {
                        self.sim.release(a.as_str(), b.as_str());
                    }
                }
            }
            Action::Join(n) => {
                if n < self.slots.len() && !self.started.contains(&n) {
                    self.start_node(n);
                    self.targets.borrow_mut().push(n);
                }
            }
            Action::ForceRemove(n) => {
                if !self.started.contains(&n) || self.left.contains(&n) || n == 1 {
                    return;
                }
                self.removed.insert(n);
                self.helpers += 1;
                self.sim
                    .client(format!("remove{}", self.helpers), async move {
                        // The operator names the member by id, as `ringkv remove` does.
                        let id = http::request(
                            addr(n),
                            Method::GET,
                            "/cluster",
                            &[],
                            Bytes::new(),
                            Duration::from_secs(10),
                        )
                        .await
                        .ok()
                        .and_then(|r| r.json())
                        .and_then(|j| j.get("node_id")?.as_str().map(str::to_owned));
                        let Some(id) = id else {
                            tracing::debug!(node = n, "remove: the victim did not say its id");
                            return Ok(());
                        };
                        let r = http::request(
                            addr(1),
                            Method::POST,
                            &format!("/admin/remove/{id}?force=true"),
                            &[],
                            Bytes::new(),
                            Duration::from_secs(10),
                        )
                        .await;
                        tracing::debug!(node = n, ?r, "forced remove requested");
                        Ok(())
                    });
            }
            Action::Bounce(n) => {
                if self.started.contains(&n) && !self.down.contains(&n) {
                    if let Some(fence) = self.slots[n].fence.borrow().as_ref() {
                        fence.trip();
                    }
                    self.sim.crash(node_name(n));
                    self.sim.bounce(node_name(n));
                }
            }
            Action::Leave(n) => {
                if !self.started.contains(&n) || self.left.contains(&n) {
                    return;
                }
                self.left.insert(n);
                self.targets.borrow_mut().retain(|t| *t != n);
                self.helpers += 1;
                self.sim
                    .client(format!("leave{}", self.helpers), async move {
                        let r = http::request(
                            addr(n),
                            Method::POST,
                            "/admin/leave",
                            &[],
                            Bytes::new(),
                            Duration::from_secs(10),
                        )
                        .await;
                        tracing::debug!(node = n, ?r, "leave requested");
                        Ok(())
                    });
            }
        }
    }

    /// Every node host and client host, by name.
    fn hosts(&self) -> Vec<String> {
        let mut names: Vec<String> = self.started.iter().map(|n| node_name(*n)).collect();
        names.extend((1..=self.config.clients).map(|c| format!("client{c}")));
        names
    }

    /// Power off every host before the simulation is dropped, fences first.
    fn teardown(&mut self) {
        for n in self.started.clone() {
            if let Some(fence) = self.slots[n].fence.borrow().as_ref() {
                fence.trip();
            }
            if !self.down.contains(&n) {
                self.sim.crash(node_name(n));
            }
        }
    }
}
