//! The chaos checks on the history and the settled cluster's sibling sets: no lost
//! acknowledged write (the rule of `docs/design.md` §1), no lost set element, nothing
//! stored that nobody wrote, no write stored twice.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::workload::{elements, OpKind, Write};

/// A key's sibling set as `/debug/local/{key}` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StoredSet {
    #[serde(default)]
    pub versions: Vec<StoredVersion>,
    #[serde(default)]
    pub context: Vec<DotJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StoredVersion {
    pub dot: DotJson,
    pub tombstone: bool,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub encoding: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct DotJson {
    pub actor: String,
    pub counter: u64,
}

impl StoredSet {
    /// The set in a canonical order, so two replicas compare equal whatever order they
    /// list it in.
    pub fn canonical(mut self) -> Self {
        self.versions.sort_by(|a, b| a.dot.cmp(&b.dot));
        self.context.sort();
        self
    }

    fn covers(&self, actor: &str, counter: u64) -> bool {
        self.context
            .iter()
            .any(|d| d.actor == actor && d.counter >= counter)
    }

    /// The live values, decoded.
    pub fn values(&self) -> impl Iterator<Item = String> + '_ {
        self.versions
            .iter()
            .filter(|v| !v.tombstone)
            .filter_map(|v| {
                let value = v.value.as_deref()?;
                match v.encoding.as_deref() {
                    Some("base64") => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(value)
                            .ok()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    }
                    _ => Some(value.to_owned()),
                }
            })
    }

    pub fn describe(&self) -> String {
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|x| {
                let what = x.value.as_deref().unwrap_or("<tombstone>");
                let what: String = what.chars().take(40).collect();
                format!("{}:{}={what}", x.dot.actor, x.dot.counter)
            })
            .collect();
        let ctx: Vec<String> = self
            .context
            .iter()
            .map(|d| format!("{}:{}", d.actor, d.counter))
            .collect();
        format!("[{}] ctx {{{}}}", versions.join(", "), ctx.join(", "))
    }
}

/// What the checks counted, and what they found.
#[derive(Debug, Default)]
pub struct Findings {
    pub acked_writes: BTreeMap<OpKind, u64>,
    pub acked_elements: u64,
    /// Acknowledged writes found as themselves in the settled set, and found covered by
    /// a later version: what the lost-write check saw (their sum, with the lost ones, is
    /// every acknowledged write).
    pub held: u64,
    pub superseded: u64,
    pub violations: Vec<String>,
}

/// `X-Ringkv-Dot`: `<actor>:<counter>`.
fn parse_dot(dot: &str) -> Option<(&str, u64)> {
    let (actor, counter) = dot.rsplit_once(':')?;
    Some((actor, counter.parse().ok()?))
}

/// `finals`: each key's settled sibling set (every replica holds the same one), `None`
/// when no replica stores the key. `read_sets`: each set key's elements as a quorum GET
/// returned them after the settle.
pub fn check(
    history: &[Write],
    finals: &BTreeMap<String, Option<StoredSet>>,
    read_sets: &BTreeMap<String, BTreeSet<String>>,
) -> Findings {
    let mut f = Findings::default();
    let empty = StoredSet::default();

    // Lost writes (docs/design.md §1): an acknowledged write W is lost if no surviving
    // version is W or descends from W: the final context covers W's dot, and the version
    // under that dot, if any, is W's own. Tombstones are never collected within a run
    // (`--tombstone-grace` is an hour), so an absent key has lost its writes.
    let mut dots: BTreeMap<(&str, &str), &Write> = BTreeMap::new();
    for w in history.iter().filter(|w| w.acked()) {
        *f.acked_writes.entry(w.kind).or_default() += 1;
        let Some(dot) = w.dot.as_deref() else {
            f.violations.push(format!(
                "lost-write on {}: acknowledged without a dot ({:?})",
                w.key, w.kind
            ));
            continue;
        };
        if let Some(prev) = dots.insert((w.key.as_str(), dot), w) {
            f.violations.push(format!(
                "dot-reissued on {}: {dot} acknowledged for {:?} and {:?}",
                w.key, prev.value, w.value
            ));
        }
        let Some((actor, counter)) = parse_dot(dot) else {
            f.violations
                .push(format!("lost-write on {}: unreadable dot {dot:?}", w.key));
            continue;
        };
        let fin = finals
            .get(&w.key)
            .and_then(Option::as_ref)
            .unwrap_or(&empty);
        let held = fin
            .versions
            .iter()
            .find(|x| x.dot.actor == actor && x.dot.counter == counter);
        let lost = match held {
            Some(x) if w.kind == OpKind::Delete => !x.tombstone,
            Some(x) => x.tombstone || x.value.as_deref() != w.value.as_deref(),
            None => !fin.covers(actor, counter),
        };
        match (lost, held.is_some()) {
            (false, true) => f.held += 1,
            (false, false) => f.superseded += 1,
            (true, _) => {}
        }
        if lost {
            f.violations.push(format!(
                "lost-write on {}: {:?} {dot} by client {} via node {} at {} ms (value {:?}); final set {}",
                w.key,
                w.kind,
                w.client,
                w.node,
                w.sent_ms,
                w.value.as_deref().map(|v| v.chars().take(40).collect::<String>()),
                fin.describe()
            ));
        }
    }

    // Set elements: every acknowledged add is in the settled set and in what a read sees.
    let written: BTreeSet<&str> = history.iter().filter_map(|w| w.value.as_deref()).collect();
    let mut stored_elements: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for w in history.iter().filter(|w| w.kind == OpKind::SetAdd) {
        let set = stored_elements.entry(w.key.as_str()).or_insert_with(|| {
            let fin = finals.get(&w.key).and_then(Option::as_ref);
            fin.into_iter()
                .flat_map(|s| s.values())
                .flat_map(|v| elements(&v).map(str::to_owned).collect::<Vec<_>>())
                .collect()
        });
        let (true, Some(e)) = (w.acked(), w.element.as_deref()) else {
            continue;
        };
        f.acked_elements += 1;
        if !set.contains(e) {
            f.violations.push(format!(
                "lost-element on {}: {e} was acknowledged (client {}, via node {}, at {} ms) but is not in the settled set",
                w.key, w.client, w.node, w.sent_ms
            ));
        }
        if !read_sets.get(&w.key).is_some_and(|s| s.contains(e)) {
            f.violations.push(format!(
                "lost-element on {}: {e} was acknowledged but a quorum read after the settle did not return it",
                w.key
            ));
        }
    }

    // Nothing invented, nothing applied twice.
    for (key, fin) in finals {
        let Some(fin) = fin else { continue };
        let mut seen = BTreeSet::new();
        for v in fin.values() {
            if !written.contains(v.as_str()) {
                f.violations.push(format!(
                    "invented-value on {key}: stores {:?}, which no client wrote",
                    v.chars().take(40).collect::<String>()
                ));
            }
            if !seen.insert(v.clone()) {
                f.violations.push(format!(
                    "applied-twice on {key}: {:?} is stored as two versions: {}",
                    v.chars().take(40).collect::<String>(),
                    fin.describe()
                ));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::super::workload::Outcome;
    use super::*;

    fn write(kind: OpKind, key: &str, value: Option<&str>, dot: &str, acked: bool) -> Write {
        Write {
            client: 0,
            kind,
            key: key.into(),
            value: value.map(str::to_owned),
            element: None,
            dot: Some(dot.into()),
            outcome: if acked {
                Outcome::Acked
            } else {
                Outcome::Failed("503 unavailable".into())
            },
            node: 1,
            via_full: false,
            sent_ms: 0,
            done_ms: 0,
        }
    }

    fn version(actor: &str, counter: u64, value: Option<&str>) -> StoredVersion {
        StoredVersion {
            dot: DotJson {
                actor: actor.into(),
                counter,
            },
            tombstone: value.is_none(),
            value: value.map(str::to_owned),
            encoding: value.map(|_| "utf8".into()),
        }
    }

    fn set(versions: Vec<StoredVersion>, context: &[(&str, u64)]) -> Option<StoredSet> {
        Some(StoredSet {
            versions,
            context: context
                .iter()
                .map(|(a, c)| DotJson {
                    actor: (*a).into(),
                    counter: *c,
                })
                .collect(),
        })
    }

    fn lost(history: &[Write], finals: &[(&str, Option<StoredSet>)]) -> usize {
        violations(history, finals)
            .iter()
            .filter(|v| v.starts_with("lost-write"))
            .count()
    }

    fn violations(history: &[Write], finals: &[(&str, Option<StoredSet>)]) -> Vec<String> {
        let finals = finals
            .iter()
            .map(|(k, s)| ((*k).to_owned(), s.clone()))
            .collect();
        check(history, &finals, &BTreeMap::new()).violations
    }

    #[test]
    fn a_write_survives_as_itself_or_under_a_descendant() {
        let put = write(OpKind::Put, "k", Some("v1"), "a.1:3", true);
        // Held as itself.
        let held = set(vec![version("a.1", 3, Some("v1"))], &[("a.1", 3)]);
        assert!(violations(std::slice::from_ref(&put), &[("k", held)]).is_empty());
        // Superseded by a delete whose context covers it.
        let del = write(OpKind::Delete, "k", None, "b.1:1", true);
        let deleted = set(vec![version("b.1", 1, None)], &[("a.1", 3), ("b.1", 1)]);
        assert!(violations(&[put.clone(), del.clone()], &[("k", deleted)]).is_empty());
    }

    #[test]
    fn a_write_is_lost_when_uncovered_replaced_or_gone() {
        let put = write(OpKind::Put, "k", Some("v1"), "a.1:3", true);
        let one = std::slice::from_ref(&put);
        // The context stops short of its dot.
        let short = set(vec![version("a.1", 2, Some("v0"))], &[("a.1", 2)]);
        assert_eq!(lost(one, &[("k", short)]), 1);
        // Its dot holds another value: the dot was issued twice.
        let other = set(vec![version("a.1", 3, Some("v9"))], &[("a.1", 3)]);
        assert_eq!(lost(one, &[("k", other.clone())]), 1);
        // No replica holds the key.
        assert_eq!(lost(one, &[("k", None)]), 1);
        // A delete whose dot holds a value is lost too.
        let del = write(OpKind::Delete, "k", None, "a.1:3", true);
        assert_eq!(lost(&[del], &[("k", other)]), 1);
        // An unacknowledged write may vanish.
        let failed = write(OpKind::Put, "k", Some("v1"), "a.1:3", false);
        assert!(violations(&[failed], &[("k", None)]).is_empty());
    }

    #[test]
    fn an_acknowledged_write_without_a_dot_or_a_reissued_dot_is_a_violation() {
        let mut put = write(OpKind::Put, "k", Some("v1"), "", true);
        put.dot = None;
        assert_eq!(violations(&[put], &[]).len(), 1);
        let a = write(OpKind::Put, "k", Some("v1"), "a.1:3", true);
        let b = write(OpKind::Put, "k", Some("v2"), "a.1:3", true);
        let held = set(vec![version("a.1", 3, Some("v2"))], &[("a.1", 3)]);
        let found = violations(&[a, b], &[("k", held)]);
        assert!(
            found.iter().any(|v| v.starts_with("dot-reissued")),
            "{found:?}"
        );
    }

    #[test]
    fn set_elements_must_be_in_the_settled_set_and_the_read() {
        let add = |e: &str, dot: &str, value: &str| {
            let mut w = write(OpKind::SetAdd, "s", Some(value), dot, true);
            w.element = Some(e.into());
            w
        };
        let history = vec![add("x", "a.1:1", "x"), add("y", "b.1:1", "y")];
        // Two concurrent adds, kept as siblings: both elements are there.
        let both = set(
            vec![version("a.1", 1, Some("x")), version("b.1", 1, Some("y"))],
            &[("a.1", 1), ("b.1", 1)],
        );
        let finals: BTreeMap<String, Option<StoredSet>> = [("s".to_owned(), both)].into();
        let read: BTreeMap<String, BTreeSet<String>> =
            [("s".to_owned(), ["x".to_owned(), "y".to_owned()].into())].into();
        let found = check(&history, &finals, &read);
        assert!(found.violations.is_empty());
        assert_eq!(
            (found.acked_elements, found.held, found.superseded),
            (2, 2, 0)
        );
        // A read that misses one is a violation, even when the replicas hold it.
        let partial: BTreeMap<String, BTreeSet<String>> =
            [("s".to_owned(), ["x".to_owned()].into())].into();
        let found = check(&history, &finals, &partial).violations;
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("lost-element"));
    }

    #[test]
    fn invented_and_doubled_values_are_violations() {
        let put = write(OpKind::Put, "k", Some("v1"), "a.1:1", true);
        let doubled = set(
            vec![version("a.1", 1, Some("v1")), version("b.1", 1, Some("v1"))],
            &[("a.1", 1), ("b.1", 1)],
        );
        let found = violations(std::slice::from_ref(&put), &[("k", doubled)]);
        assert!(
            found.iter().any(|v| v.starts_with("applied-twice")),
            "{found:?}"
        );
        let invented = set(
            vec![version("a.1", 1, Some("v1")), version("c.1", 1, Some("zz"))],
            &[("a.1", 1), ("c.1", 1)],
        );
        let found = violations(&[put], &[("k", invented)]);
        assert!(
            found.iter().any(|v| v.starts_with("invented-value")),
            "{found:?}"
        );
    }
}
