//! The nemesis: a schedule of faults, drawn from the run's seed before the run starts.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::{Scenario, SimConfig};

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Cut every link between the groups (nodes, 1-based).
    Partition(Vec<Vec<usize>>),
    /// Hold every message to and from the node (turmoil's clog).
    Clog(usize),
    Unclog(usize),
    /// Power loss: the nodes stop at once and lose whatever was not synced.
    Crash(Vec<usize>),
    /// Start crashed nodes again on the disk they had.
    Restart(Vec<usize>),
    /// Links drop what is in flight with this chance per step.
    Loss(f64),
    /// Start a new node that joins through node 1.
    Join(usize),
    /// Ask a node to hand its data off and leave.
    Leave(usize),
    /// Release every link (partitions and clogs) and stop the loss.
    HealNetwork,
    /// An operator forces the removal of a member that is still live (through node 1).
    ForceRemove(usize),
    /// Power off a node and start it again on its disk: for a removed node, a restart it
    /// must refuse.
    Bounce(usize),
}

/// A fault window: actions at the start, and what undoes them at the end.
struct Fault {
    start: Vec<Action>,
    end: Vec<Action>,
}

/// The actions of a run, in time order, from `from` to `until`.
pub fn schedule(
    config: &SimConfig,
    rng: &mut SmallRng,
    from: Duration,
    until: Duration,
) -> Vec<(Duration, Action)> {
    let nodes: Vec<usize> = (1..=config.nodes).collect();
    let mut out = Vec::new();
    let mut t = from;
    let mut churned = false;
    if config.scenario == Scenario::Operator {
        return operator(rng, config.nodes, from, until);
    }
    loop {
        t += jitter(rng, config.fault_interval);
        let length = jitter(rng, config.fault_length);
        if t + length >= until {
            break;
        }
        let scenario = match config.scenario {
            Scenario::All | Scenario::LargeValues | Scenario::Hostile => {
                *Scenario::FAULTS.choose(rng).expect("scenarios")
            }
            s => s,
        };
        let fault = match scenario {
            Scenario::None
            | Scenario::All
            | Scenario::Operator
            | Scenario::LargeValues
            | Scenario::Hostile => None,
            Scenario::Partition => partition(rng, &nodes),
            Scenario::Isolate => isolate(rng, &nodes),
            Scenario::Bridge => bridge(rng, &nodes),
            Scenario::Clog => Some(clog(rng, &nodes)),
            Scenario::Crash => Some(crash(rng, &nodes)),
            Scenario::Loss => Some(Fault {
                start: vec![Action::Loss(config.loss_rate)],
                end: vec![Action::HealNetwork],
            }),
            Scenario::Churn if !churned => {
                churned = true;
                Some(churn(rng, config.nodes))
            }
            Scenario::Churn => None,
        };
        if let Some(fault) = fault {
            // Clogs come and go one node at a time within the window.
            let step = length / (fault.start.len().max(fault.end.len()).max(1) as u32 * 2);
            for (i, a) in fault.start.into_iter().enumerate() {
                out.push((t + step * i as u32, a));
            }
            for (i, a) in fault.end.into_iter().enumerate() {
                out.push((t + length / 2 + step * i as u32, a));
            }
        }
        t += length;
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// A duration around `mean`: uniform in [mean/2, 3·mean/2].
fn jitter(rng: &mut SmallRng, mean: Duration) -> Duration {
    let ms = mean.as_millis() as u64;
    Duration::from_millis(rng.gen_range(ms / 2..=ms + ms / 2))
}

fn partition(rng: &mut SmallRng, nodes: &[usize]) -> Option<Fault> {
    if nodes.len() < 2 {
        return None;
    }
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    let cut = rng.gen_range(1..nodes.len());
    let (a, b) = shuffled.split_at(cut);
    Some(Fault {
        start: vec![Action::Partition(vec![a.to_vec(), b.to_vec()])],
        end: vec![Action::HealNetwork],
    })
}

fn isolate(rng: &mut SmallRng, nodes: &[usize]) -> Option<Fault> {
    let one = *nodes.choose(rng)?;
    let rest: Vec<usize> = nodes.iter().copied().filter(|n| *n != one).collect();
    if rest.is_empty() {
        return None;
    }
    Some(Fault {
        start: vec![Action::Partition(vec![vec![one], rest])],
        end: vec![Action::HealNetwork],
    })
}

/// Two sides cut from each other, and one node that both still reach.
fn bridge(rng: &mut SmallRng, nodes: &[usize]) -> Option<Fault> {
    if nodes.len() < 3 {
        return partition(rng, nodes);
    }
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    let rest = &shuffled[1..];
    let cut = rng.gen_range(1..rest.len());
    let (a, b) = rest.split_at(cut);
    Some(Fault {
        start: vec![Action::Partition(vec![a.to_vec(), b.to_vec()])],
        end: vec![Action::HealNetwork],
    })
}

fn clog(rng: &mut SmallRng, nodes: &[usize]) -> Fault {
    let mut order = nodes.to_vec();
    order.shuffle(rng);
    // Never clog everything: one node stays reachable so the load goes on somewhere.
    order.truncate(nodes.len().saturating_sub(1).max(1));
    let start = order.iter().map(|n| Action::Clog(*n)).collect();
    order.shuffle(rng);
    let end = order.iter().map(|n| Action::Unclog(*n)).collect();
    Fault { start, end }
}

fn crash(rng: &mut SmallRng, nodes: &[usize]) -> Fault {
    // A power loss of several replicas at once is what tests fsync: replication masks a
    // missing fsync whenever only one replica crashes at a time.
    let victims: Vec<usize> = match rng.gen_range(0..3) {
        0 => nodes.to_vec(),
        1 => {
            let mut s = nodes.to_vec();
            s.shuffle(rng);
            s.truncate(nodes.len() / 2 + 1);
            s
        }
        _ => vec![*nodes.choose(rng).expect("nodes")],
    };
    Fault {
        start: vec![Action::Crash(victims.clone())],
        end: vec![Action::Restart(victims)],
    }
}

/// One node joins; later, another (never node 1, the seed) leaves.
fn churn(rng: &mut SmallRng, initial: usize) -> Fault {
    let joiner = initial + 1;
    let leaver = if initial >= 2 {
        rng.gen_range(2..=initial)
    } else {
        joiner
    };
    Fault {
        start: vec![Action::Join(joiner)],
        end: vec![Action::Leave(leaver)],
    }
}

/// Operator mistakes, in the order an operator makes them: a live member is removed with
/// `--force` a third of the way in; a new node joins to make up for it; the removed node
/// is restarted on its old data dir two thirds of the way in (it must refuse). Node 1, the
/// seed, is never the victim.
fn operator(
    rng: &mut SmallRng,
    nodes: usize,
    from: Duration,
    until: Duration,
) -> Vec<(Duration, Action)> {
    if nodes < 2 {
        return Vec::new();
    }
    let victim = rng.gen_range(2..=nodes);
    let span = until.saturating_sub(from);
    let mut at = |part: u32| from + span * part / 6 + jitter(rng, Duration::from_millis(400));
    let mut out = vec![(at(2), Action::ForceRemove(victim))];
    out.push((at(3), Action::Join(nodes + 1)));
    out.push((at(4), Action::Bounce(victim)));
    out.sort_by_key(|(t, _)| *t);
    out
}
