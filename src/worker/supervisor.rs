//! The supervisor: starts named workers, each in its own task, and stops them phase by
//! phase. A phase gets a deadline; a worker still running past it is logged and cut off,
//! so one stuck job cannot hold the node's shutdown forever. A worker that panicked is
//! logged with its name when it does, not only at shutdown.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Phase, Worker};

const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const PANICKED: u8 = 2;
const CUT_OFF: u8 = 3;

fn state_name(state: u8) -> &'static str {
    match state {
        RUNNING => "running",
        STOPPED => "stopped",
        PANICKED => "panicked",
        _ => "cut_off",
    }
}

/// One worker as `/debug/workers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    pub name: &'static str,
    pub phase: Phase,
    /// `running`, `stopped` (returned), `panicked`, or `cut_off` (overran its phase's
    /// stop deadline).
    pub state: &'static str,
    pub status: String,
}

struct Listed {
    phase: Phase,
    worker: Arc<dyn Worker>,
    state: Arc<AtomicU8>,
}

/// Every worker a supervisor started, for `/debug/workers`; cheap to clone. Made before
/// the supervisor, because the HTTP state that reads it is built before the workers are.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Listed>>>);

impl Registry {
    /// The workers in the order they started.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let Ok(listed) = self.0.lock() else {
            return Vec::new();
        };
        listed
            .iter()
            .map(|l| WorkerInfo {
                name: l.worker.name(),
                phase: l.phase,
                state: state_name(l.state.load(Ordering::Acquire)),
                status: l.worker.status(),
            })
            .collect()
    }

    fn push(&self, listed: Listed) {
        if let Ok(mut all) = self.0.lock() {
            all.push(listed);
        }
    }
}

/// Marks a worker stopped when its task ends, however it ends: returned, or dropped when
/// it was cut off. A panic is marked before, and stays.
struct MarkStopped(Arc<AtomicU8>);

impl Drop for MarkStopped {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, STOPPED, Ordering::AcqRel, Ordering::Acquire);
    }
}

struct Running {
    phase: Phase,
    name: &'static str,
    task: JoinHandle<()>,
    state: Arc<AtomicU8>,
}

/// What stopping a phase found wrong; empty when every worker stopped in time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Still running at the deadline, and cut off.
    pub overran: Vec<&'static str>,
    /// Ended by a panic.
    pub panicked: Vec<&'static str>,
}

impl Stopped {
    pub fn clean(&self) -> bool {
        self.overran.is_empty() && self.panicked.is_empty()
    }
}

/// Starts workers and stops them phase by phase.
pub struct Supervisor {
    registry: Registry,
    /// One token per phase: cancelling it asks every worker of the phase to stop.
    tokens: BTreeMap<Phase, CancellationToken>,
    running: Vec<Running>,
}

impl Supervisor {
    pub fn new(registry: Registry) -> Self {
        Supervisor {
            registry,
            tokens: BTreeMap::new(),
            running: Vec::new(),
        }
    }

    /// Starts every worker, phase by phase in [`Phase::START_ORDER`], each phase's in the
    /// order given.
    pub fn start_all(&mut self, workers: Vec<(Phase, Arc<dyn Worker>)>) {
        for phase in Phase::START_ORDER {
            for (_, worker) in workers.iter().filter(|(p, _)| *p == phase) {
                self.start(phase, worker.clone());
            }
        }
    }

    /// Starts `worker` in its own task now; it stops with `phase`.
    pub fn start(&mut self, phase: Phase, worker: Arc<dyn Worker>) {
        let token = self.tokens.entry(phase).or_default().clone();
        let state = Arc::new(AtomicU8::new(RUNNING));
        let name = worker.name();
        self.registry.push(Listed {
            phase,
            worker: worker.clone(),
            state: state.clone(),
        });
        let marker = MarkStopped(state.clone());
        let task = tokio::spawn(async move {
            let _stopped = marker;
            // Caught here rather than found in the `JoinError` at shutdown: a worker that
            // dies early is logged when it dies, by name.
            if let Err(panic) = AssertUnwindSafe(worker.run(token)).catch_unwind().await {
                _stopped.0.store(PANICKED, Ordering::Release);
                tracing::error!(
                    worker = name,
                    panic = panic_message(panic.as_ref()),
                    "worker panicked"
                );
            }
        });
        self.running.push(Running {
            phase,
            name,
            task,
            state,
        });
    }

    /// Stops every worker of `phase`: cancels its token, waits for them until `deadline`
    /// has passed, and cuts off (aborts) any still running then, logging each.
    pub async fn stop_phase(&mut self, phase: Phase, deadline: Duration) -> Stopped {
        if let Some(token) = self.tokens.get(&phase) {
            token.cancel();
        }
        let until = tokio::time::Instant::now() + deadline;
        let (stopping, others): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.phase == phase);
        self.running = others;
        let mut stopped = Stopped::default();
        for mut r in stopping {
            // One deadline for the whole phase: its workers stop together.
            match tokio::time::timeout_at(until, &mut r.task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(worker = r.name, error = %e, "worker task failed"),
                Err(_) => {
                    tracing::warn!(
                        worker = r.name,
                        phase = phase.as_str(),
                        deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                        "worker still running at its phase's stop deadline; cutting it off"
                    );
                    r.state.store(CUT_OFF, Ordering::Release);
                    r.task.abort();
                    stopped.overran.push(r.name);
                }
            }
            if r.state.load(Ordering::Acquire) == PANICKED {
                stopped.panicked.push(r.name);
            }
        }
        stopped
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// A worker that logs when it stops, and either stops on its token, ignores it, or
    /// panics at once.
    struct Probe {
        name: &'static str,
        behaviour: Behaviour,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    #[derive(Clone, Copy)]
    enum Behaviour {
        Obeys,
        Ignores,
        Panics,
    }

    #[async_trait]
    impl Worker for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn status(&self) -> String {
            format!("probe {}", self.name)
        }
        async fn run(&self, shutdown: CancellationToken) {
            match self.behaviour {
                Behaviour::Obeys => shutdown.cancelled().await,
                Behaviour::Ignores => std::future::pending::<()>().await,
                Behaviour::Panics => panic!("probe {} broke", self.name),
            }
            self.log.lock().expect("test lock").push(self.name);
        }
    }

    fn probe(
        name: &'static str,
        behaviour: Behaviour,
        log: &Arc<Mutex<Vec<&'static str>>>,
    ) -> Arc<dyn Worker> {
        Arc::new(Probe {
            name,
            behaviour,
            log: log.clone(),
        })
    }

    fn states(registry: &Registry) -> Vec<(&'static str, &'static str)> {
        registry.list().iter().map(|w| (w.name, w.state)).collect()
    }

    #[tokio::test]
    async fn phases_stop_in_reverse_start_order_and_a_stuck_worker_is_cut_off() {
        let log = Arc::default();
        let registry = Registry::default();
        let mut supervisor = Supervisor::new(registry.clone());
        supervisor.start_all(vec![
            (Phase::Http, probe("http", Behaviour::Obeys, &log)),
            (Phase::Background, probe("stuck", Behaviour::Ignores, &log)),
            (Phase::Writer, probe("writer", Behaviour::Obeys, &log)),
            (Phase::Background, probe("bg", Behaviour::Obeys, &log)),
            (Phase::Background, probe("broken", Behaviour::Panics, &log)),
        ]);
        let listed = registry.list();
        let order: Vec<_> = listed.iter().map(|w| (w.name, w.phase)).collect();
        assert_eq!(
            order,
            [
                ("writer", Phase::Writer),
                ("stuck", Phase::Background),
                ("bg", Phase::Background),
                ("broken", Phase::Background),
                ("http", Phase::Http),
            ]
        );
        assert_eq!(listed[0].status, "probe writer");
        tokio::task::yield_now().await;

        let deadline = Duration::from_millis(200);
        assert!(supervisor.stop_phase(Phase::Http, deadline).await.clean());
        assert_eq!(*log.lock().expect("lock"), ["http"]);
        let started = tokio::time::Instant::now();
        let bg = supervisor.stop_phase(Phase::Background, deadline).await;
        assert!(started.elapsed() >= deadline, "waited the deadline out");
        assert!(started.elapsed() < deadline * 10, "and no longer");
        assert_eq!(
            bg,
            Stopped {
                overran: vec!["stuck"],
                panicked: vec!["broken"],
            }
        );
        assert!(supervisor.stop_phase(Phase::Writer, deadline).await.clean());
        assert_eq!(*log.lock().expect("lock"), ["http", "bg", "writer"]);
        assert_eq!(
            states(&registry),
            [
                ("writer", "stopped"),
                ("stuck", "cut_off"),
                ("bg", "stopped"),
                ("broken", "panicked"),
                ("http", "stopped"),
            ]
        );
    }

    #[tokio::test]
    async fn a_worker_that_returns_on_its_own_shows_stopped_while_others_run() {
        let log = Arc::default();
        let registry = Registry::default();
        let mut supervisor = Supervisor::new(registry.clone());
        struct Done;
        #[async_trait]
        impl Worker for Done {
            fn name(&self) -> &'static str {
                "done"
            }
            fn status(&self) -> String {
                "nothing to do".into()
            }
            async fn run(&self, _shutdown: CancellationToken) {}
        }
        supervisor.start(Phase::Background, Arc::new(Done));
        supervisor.start(Phase::Background, probe("waits", Behaviour::Obeys, &log));
        for _ in 0..100 {
            if states(&registry)[0].1 == "stopped" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            states(&registry),
            [("done", "stopped"), ("waits", "running")]
        );
        let stopped = supervisor
            .stop_phase(Phase::Background, Duration::from_secs(5))
            .await;
        assert!(stopped.clean());
        assert_eq!(
            states(&registry),
            [("done", "stopped"), ("waits", "stopped")]
        );
    }
}
