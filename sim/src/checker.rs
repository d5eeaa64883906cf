//! The checker: the invariants a healed, settled cluster must hold, judged against the
//! recorded history and the nodes' final state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::collect::{Collected, StoredSet};
use crate::history::{Event, OpKind, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// An acknowledged write that no surviving version is, or descends from.
    LostWrite,
    /// Two acknowledged writes of one key that claim the same dot.
    DotReissued,
    /// One write stored as two versions (two dots, one value): a retried write applied
    /// twice. Every value the workload writes is unique, so equal siblings are a bug.
    AppliedTwice,
    /// Replicas of a key hold different sibling sets.
    Diverged,
    /// Nodes disagree on the ring, or data is still moving.
    RingSplit,
    /// Hints still queued after the settle.
    HintsPending,
    /// A read returned a value nobody wrote.
    InventedRead,
    /// A quorum write was not seen by a quorum read with nothing in flight, or by one
    /// through a node restarted after the write.
    ReadYourWrites,
    /// A node that should be up did not answer the checker.
    NodeSilent,
    /// A node the operator removed still answered a KV request with data.
    RemovedServing,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::LostWrite => "lost-write",
            Invariant::DotReissued => "dot-reissued",
            Invariant::AppliedTwice => "applied-twice",
            Invariant::Diverged => "replicas-diverged",
            Invariant::RingSplit => "ring-split",
            Invariant::HintsPending => "hints-pending",
            Invariant::InventedRead => "invented-read",
            Invariant::ReadYourWrites => "read-your-writes",
            Invariant::NodeSilent => "node-silent",
            Invariant::RemovedServing => "removed-serving",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: Invariant,
    pub key: Option<String>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{} on {}: {}", self.invariant, k, self.detail),
            None => write!(f, "{}: {}", self.invariant, self.detail),
        }
    }
}

/// Splits `X-Ringkv-Dot` (`<actor>:<counter>`).
fn parse_dot(dot: &str) -> Option<(&str, u64)> {
    let (actor, counter) = dot.rsplit_once(':')?;
    Some((actor, counter.parse().ok()?))
}

/// `expect_up`: nodes that must answer (every node that was started and did not leave).
/// `strict_quorums`: R + W > N, so a read must see the write before it.
pub fn check(
    history: &[Event],
    collected: &Collected,
    expect_up: &[usize],
    strict_quorums: bool,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let v = |invariant, key: Option<&str>, detail: String| Violation {
        invariant,
        key: key.map(str::to_owned),
        detail,
    };

    for n in expect_up {
        if !collected.nodes.contains_key(n) {
            out.push(v(
                Invariant::NodeSilent,
                None,
                format!("node{n} did not answer after the heal"),
            ));
        }
    }

    // A removed node serves nothing: silence (it refused to restart) or 503.
    for (n, status) in &collected.removed_answers {
        if let Some(status) = status.filter(|s| *s != 503) {
            out.push(v(
                Invariant::RemovedServing,
                None,
                format!("node{n} was removed but answered a KV read with {status}"),
            ));
        }
    }

    // One ring, nothing moving, no hints left.
    let rings: BTreeSet<(&str, &str)> = collected
        .nodes
        .values()
        .map(|s| (s.ring_hash.as_str(), s.write_ring_hash.as_str()))
        .collect();
    if rings.len() > 1 || rings.iter().any(|(r, w)| r != w) {
        let seen: Vec<String> = collected
            .nodes
            .iter()
            .map(|(n, s)| format!("node{n}={}/{}", s.ring_hash, s.write_ring_hash))
            .collect();
        out.push(v(Invariant::RingSplit, None, seen.join(" ")));
    }
    for (n, s) in &collected.nodes {
        if s.hints_pending > 0 {
            out.push(v(
                Invariant::HintsPending,
                None,
                format!("node{n} still holds {} hints", s.hints_pending),
            ));
        }
    }

    // The final set of each key: every replica in the preference list must hold the same.
    let by_id: BTreeMap<&str, usize> = collected
        .nodes
        .iter()
        .map(|(n, s)| (s.node_id.as_str(), *n))
        .collect();
    let keys: BTreeSet<&String> = collected
        .nodes
        .values()
        .flat_map(|s| s.local.keys())
        .collect();
    let mut finals: BTreeMap<String, StoredSet> = BTreeMap::new();
    for key in keys {
        let Some(list) = collected.nodes.values().find_map(|s| s.preflist.get(key)) else {
            continue;
        };
        let mut sets: Vec<(usize, &StoredSet)> = Vec::new();
        for id in list {
            match by_id.get(id.as_str()) {
                Some(n) => sets.push((*n, &collected.nodes[n].local[key])),
                None => out.push(v(
                    Invariant::Diverged,
                    Some(key),
                    format!("replica {id} did not answer"),
                )),
            }
        }
        if let Some((_, first)) = sets.first() {
            if let Some((n, other)) = sets.iter().find(|(_, s)| s != first) {
                out.push(v(
                    Invariant::Diverged,
                    Some(key),
                    format!(
                        "node{} holds {} but node{n} holds {}",
                        sets[0].0,
                        describe(first),
                        describe(other)
                    ),
                ));
            }
            finals.insert(key.clone(), (*first).clone());
        }
    }

    // No lost writes (docs/design.md §1): an acknowledged write W survives if some surviving
    // version is W or descends from W. A version leaves a sibling set only when a write
    // whose context covers its dot replaces it, so W survives exactly when the final
    // context covers W's dot and the version under that dot, if any, is W's own.
    let mut dots: BTreeMap<(&str, &str), &Event> = BTreeMap::new();
    for e in history.iter().filter(|e| e.is_acked_write()) {
        let Some(dot) = e.dot.as_deref() else {
            out.push(v(
                Invariant::LostWrite,
                Some(&e.key),
                format!("acknowledged without a dot: {e}"),
            ));
            continue;
        };
        if let Some(prev) = dots.insert((e.key.as_str(), dot), e) {
            out.push(v(
                Invariant::DotReissued,
                Some(&e.key),
                format!("{dot} was acknowledged twice:\n    {prev}\n    {e}"),
            ));
        }
        let Some((actor, counter)) = parse_dot(dot) else {
            out.push(v(
                Invariant::LostWrite,
                Some(&e.key),
                format!("unreadable dot {dot:?}"),
            ));
            continue;
        };
        let empty = StoredSet::default();
        let fin = finals.get(&e.key).unwrap_or(&empty);
        let held = fin
            .versions
            .iter()
            .find(|x| x.dot.actor == actor && x.dot.counter == counter);
        let own = |x: &crate::collect::StoredVersion| match e.kind {
            OpKind::Delete => x.tombstone,
            _ => x.value.as_deref() == e.value.as_deref(),
        };
        let lost = match held {
            Some(x) => !own(x),
            None => !fin.covers(actor, counter),
        };
        if lost {
            out.push(v(
                Invariant::LostWrite,
                Some(&e.key),
                format!("{e}\n    final set: {}", describe(fin)),
            ));
        }
    }

    // Reads never invent data.
    let written: BTreeSet<&str> = history.iter().filter_map(|e| e.value.as_deref()).collect();
    for e in history.iter().filter(|e| e.kind == OpKind::Read) {
        for value in &e.read {
            if !written.contains(value.as_str()) {
                out.push(v(
                    Invariant::InventedRead,
                    Some(&e.key),
                    format!("read {value:?}, which no one wrote: {e}"),
                ));
            }
        }
    }
    for (key, set) in &finals {
        for x in &set.versions {
            if let Some(value) = &x.value {
                if !written.contains(value.as_str()) {
                    out.push(v(
                        Invariant::InventedRead,
                        Some(key),
                        format!("stored {value:?}, which no one wrote"),
                    ));
                }
            }
        }
    }

    // One write, one version: in what a read saw and in what is stored at the end.
    for e in history.iter().filter(|e| e.kind == OpKind::Read) {
        if let Some(twice) = repeated(e.read.iter().map(String::as_str)) {
            out.push(v(
                Invariant::AppliedTwice,
                Some(&e.key),
                format!("read {twice:?} as two siblings: {e}"),
            ));
        }
    }
    for (key, set) in &finals {
        if let Some(twice) = repeated(set.versions.iter().filter_map(|x| x.value.as_deref())) {
            out.push(v(
                Invariant::AppliedTwice,
                Some(key),
                format!("{twice:?} is stored twice: {}", describe(set)),
            ));
        }
    }

    // Read-your-writes at R+W>N, with no faults in flight.
    for p in collected.probes.iter().filter(|_| strict_quorums) {
        let read_ok = matches!(p.read, Outcome::Status(200 | 300));
        if p.write != Outcome::Status(204) || !read_ok || !p.read_values.contains(&p.value) {
            out.push(v(
                Invariant::ReadYourWrites,
                Some(&p.key),
                format!(
                    "wrote {:?} -> {:?}, then read -> {:?} {:?}",
                    p.value, p.write, p.read, p.read_values
                ),
            ));
        }
    }
    // Read-your-writes across a restart: the probe's write was acknowledged before the
    // nodes crashed, and the read went through a restarted node once it answered at all.
    // A restarted node that serves before it knows its ring answers 404 here.
    for p in collected.restart_reads.iter().filter(|_| strict_quorums) {
        let read_ok = matches!(p.read, Outcome::Status(200 | 300));
        if !read_ok || !p.read_values.contains(&p.value) {
            out.push(v(
                Invariant::ReadYourWrites,
                Some(&p.key),
                format!(
                    "wrote {:?}, restarted {:?}, then read via node{} -> {:?} {:?} (after {} unavailable)",
                    p.value, p.restarted, p.node, p.read, p.read_values, p.unavailable
                ),
            ));
        }
    }
    out
}

/// The first value that occurs twice.
fn repeated<'a>(values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    values.into_iter().find(|v| !seen.insert(*v))
}

pub fn describe(set: &StoredSet) -> String {
    let versions: Vec<String> = set
        .versions
        .iter()
        .map(|x| {
            let what = x.value.as_deref().unwrap_or("<tombstone>");
            format!("{}:{}={what}", x.dot.actor, x.dot.counter)
        })
        .collect();
    let ctx: Vec<String> = set
        .context
        .iter()
        .map(|d| format!("{}:{}", d.actor, d.counter))
        .collect();
    format!("[{}] ctx {{{}}}", versions.join(", "), ctx.join(", "))
}
