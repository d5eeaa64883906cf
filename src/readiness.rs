//! Why a node is not ready: the one list of reasons `/ready` reports ([`NotReady`]), the
//! flags behind them ([`Readiness`]), and the task that reports seeds nobody answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::ClusterView;
use crate::cluster::supervise::{GossipHealth, GossipPhase};
use crate::cluster::wait::wait_for;

/// How often a node that has reached no seed says so.
pub const SEED_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// One reason a node is not ready. Each has its own code for the JSON error, so a script
/// (or `ringkv health`) can tell them apart without parsing the text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReady {
    /// Not joined yet: not in its own ring, or no peer seen live yet.
    Starting,
    /// It was given seeds, and none of them has answered.
    NoSeedAnswered { seeds: Vec<String> },
    /// The cluster removed this node: it serves nothing, for good.
    Removed,
    /// Restarted on its persisted membership, and its peers have not confirmed that ring
    /// yet (see `cluster::agreement`): it takes no KV request.
    Rejoining,
    /// Gossip's task ended and is being started again, or was started again and has not
    /// yet heard of every member (see `cluster::supervise`): this node's view of who is up
    /// is stale, and its peers may hold it down.
    GossipDown { phase: GossipPhase, restarts: u64 },
}

impl NotReady {
    /// The `error` code of the 503.
    pub fn code(&self) -> &'static str {
        match self {
            NotReady::Starting
            | NotReady::NoSeedAnswered { .. }
            | NotReady::Rejoining
            | NotReady::GossipDown { .. } => "not_ready",
            NotReady::Removed => "removed",
        }
    }

    /// The `reason` (and `message`) of the 503.
    pub fn reason(&self) -> String {
        match self {
            NotReady::Starting => "the node is starting".to_owned(),
            NotReady::NoSeedAnswered { seeds } => {
                format!("no seed answered: {}", seeds.join(", "))
            }
            NotReady::Removed => REMOVED_MESSAGE.to_owned(),
            NotReady::Rejoining => crate::http::gate::REJOINING_MESSAGE.to_owned(),
            NotReady::GossipDown { phase, restarts } => match phase {
                GossipPhase::CatchingUp => format!(
                    "gossip was started again (restart {restarts}) and is catching up with its peers"
                ),
                _ => format!("gossip is not running; starting it again (restart {restarts})"),
            },
        }
    }
}

/// What a removed node answers, to clients and in its log.
pub const REMOVED_MESSAGE: &str = "this node was removed from its cluster by an operator and \
serves no data; its data dir cannot be used again: start a node with a fresh --data-dir";

/// The state behind `/ready`, beside the `joined` flag the node keeps in `AppState`.
#[derive(Debug, Default)]
pub struct Readiness {
    removed: AtomicBool,
    /// Set once the node has compared its id with the departures its peers gossip (or
    /// has no peers to ask): until then it cannot know it was not removed while down.
    departures_checked: AtomicBool,
    /// The node heard it was removed before it was ever ready: it refuses to start.
    refused_start: AtomicBool,
    /// The seeds tried, while none has answered.
    unreached_seeds: Mutex<Option<Vec<String>>>,
    /// Whether gossip runs: set once, when the node is wired.
    gossip: OnceLock<Arc<GossipHealth>>,
}

impl Readiness {
    /// Whether the node serves, given whether it has joined; the reason if not. Removal
    /// comes first: a removed node must not look merely "starting".
    pub fn check(&self, joined: bool) -> Result<(), NotReady> {
        if self.is_removed() {
            return Err(NotReady::Removed);
        }
        if let Some(gossip) = self.gossip.get() {
            if !gossip.is_running() {
                return Err(NotReady::GossipDown {
                    phase: gossip.phase(),
                    restarts: gossip.restarts.get(),
                });
            }
        }
        if joined && self.departures_checked() {
            return Ok(());
        }
        match self.unreached_seeds.lock().ok().and_then(|s| s.clone()) {
            Some(seeds) => Err(NotReady::NoSeedAnswered { seeds }),
            None => Err(NotReady::Starting),
        }
    }

    /// Makes `/ready` follow `health` (see [`NotReady::GossipDown`]); the first call wins.
    pub fn watch_gossip(&self, health: Arc<GossipHealth>) {
        let _ = self.gossip.set(health);
    }

    /// Whether gossip runs, and its restarts (none before the node is wired).
    pub fn gossip(&self) -> Option<&GossipHealth> {
        self.gossip.get().map(Arc::as_ref)
    }

    pub fn departures_checked(&self) -> bool {
        self.departures_checked.load(Ordering::Acquire)
    }

    pub fn set_departures_checked(&self) {
        self.departures_checked.store(true, Ordering::Release);
    }

    /// Whether the node learned it was removed before it was ever ready (see
    /// [`Readiness::set_refused_start`]).
    pub fn refused_start(&self) -> bool {
        self.refused_start.load(Ordering::Acquire)
    }

    /// A node removed while it was down hears of it on its first gossip rounds: it then
    /// stops and exits as a node that left does, rather than stay up fenced.
    pub fn set_refused_start(&self) {
        self.refused_start.store(true, Ordering::Release);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Fences the node for good; true the first time.
    pub fn set_removed(&self) -> bool {
        !self.removed.swap(true, Ordering::AcqRel)
    }

    /// The seeds tried, while none has answered.
    pub fn unreached_seeds(&self) -> Option<Vec<String>> {
        self.unreached_seeds.lock().ok().and_then(|s| s.clone())
    }

    fn set_unreached_seeds(&self, seeds: Option<Vec<String>>) {
        if let Ok(mut s) = self.unreached_seeds.lock() {
            *s = seeds;
        }
    }
}

/// Whether this node has heard of any other node: then some seed answered (gossip knows
/// nobody else before one does).
fn heard_of_others(view: &ClusterView) -> bool {
    view.members.keys().any(|id| *id != view.self_id) || !view.departed.is_empty()
}

/// Until some seed answers, keeps `/ready`'s reason on the seeds and warns every
/// [`SEED_WARN_INTERVAL`] naming them: a typo in `--seed`, or a firewall, otherwise looks
/// like a node that is slow to start. `seeds` excludes this node's own address.
pub async fn report_unreached_seeds(
    readiness: Arc<Readiness>,
    mut view: watch::Receiver<Arc<ClusterView>>,
    seeds: Vec<String>,
    shutdown: CancellationToken,
) {
    if seeds.is_empty() {
        return;
    }
    readiness.set_unreached_seeds(Some(seeds.clone()));
    let mut warn = tokio::time::interval_at(
        tokio::time::Instant::now() + SEED_WARN_INTERVAL,
        SEED_WARN_INTERVAL,
    );
    warn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let warn_until_heard = async {
        loop {
            warn.tick().await;
            tracing::warn!(seeds = %seeds.join(", "), "no seed answered yet; still trying");
        }
    };
    tokio::select! {
        heard = wait_for(&mut view, |v| heard_of_others(v), &shutdown) => {
            if heard.is_some() {
                readiness.set_unreached_seeds(None);
                tracing::info!("a seed answered");
            }
        }
        () = warn_until_heard => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_outranks_every_other_reason() {
        let r = Readiness::default();
        assert_eq!(r.check(false), Err(NotReady::Starting));
        // Joined, but not yet compared with the departures the peers gossip.
        assert_eq!(r.check(true), Err(NotReady::Starting));
        r.set_departures_checked();
        assert_eq!(r.check(true), Ok(()));
        r.set_unreached_seeds(Some(vec!["127.0.0.1:7946".into()]));
        let why = r.check(false).unwrap_err();
        assert_eq!(why.code(), "not_ready");
        assert_eq!(why.reason(), "no seed answered: 127.0.0.1:7946");
        assert!(r.set_removed());
        assert!(!r.set_removed());
        assert_eq!(r.check(true), Err(NotReady::Removed));
        assert_eq!(r.check(false).unwrap_err().code(), "removed");
    }

    #[test]
    fn gossip_down_makes_a_joined_node_not_ready() {
        let r = Readiness::default();
        r.set_departures_checked();
        let health = Arc::new(GossipHealth::default());
        r.watch_gossip(health.clone());
        assert_eq!(r.check(true), Ok(()));
        health.restarts.inc();
        health.set(GossipPhase::Down);
        let why = r.check(true).unwrap_err();
        assert_eq!(why.code(), "not_ready");
        assert!(why.reason().contains("not running"), "{}", why.reason());
        health.set(GossipPhase::CatchingUp);
        assert!(r.check(true).unwrap_err().reason().contains("catching up"));
        health.set(GossipPhase::Running);
        assert_eq!(r.check(true), Ok(()));
        assert!(r.set_removed());
        health.set(GossipPhase::Down);
        assert_eq!(r.check(true), Err(NotReady::Removed));
    }
}
