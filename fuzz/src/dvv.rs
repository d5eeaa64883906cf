//! What makes a sibling set well formed, and the laws of `sync` and `update` over well-formed
//! sets, as checks that panic with the sets that broke them.
//!
//! ringkv derives `Deserialize` for `SiblingSet`, so a decoded set is only as well formed
//! as its bytes: the laws are promised for sets that keep the invariants `SiblingSet`
//! documents (versions sorted by dot, no dot twice, the context covering every dot, no
//! counter at 0 or u64::MAX, in a dot or in the context). The targets check the laws on decoded sets that pass
//! [`well_formed`] and reject the rest, as a validating decoder would.

use ringkv::version::{Actor, Dot, SiblingSet, VersionVector};

/// Why a set is not well formed, or `None`.
pub fn malformed(set: &SiblingSet) -> Option<String> {
    let versions = set.versions();
    if let Some(w) = versions.windows(2).find(|w| w[0].dot >= w[1].dot) {
        return Some(format!(
            "versions not strictly sorted by dot: {:?} then {:?}",
            w[0].dot, w[1].dot
        ));
    }
    // Counters start at 1: every context "contains" a dot at counter 0 (an absent actor is
    // counter 0), so such a version would be dropped by a sync with any set, even the empty one.
    if let Some(v) = versions.iter().find(|v| v.dot.counter == 0) {
        return Some(format!(
            "a version at counter 0, which no actor issues: {:?}",
            v.dot
        ));
    }
    if let Some(v) = versions.iter().find(|v| !set.context().contains(&v.dot)) {
        return Some(format!("context does not cover the dot {:?}", v.dot));
    }
    // An entry at counter 0 says nothing (an absent actor is counter 0), but it makes two
    // equal histories unequal as values: sync's context would differ from one that descends.
    if let Some((a, _)) = set.context().iter().find(|(_, &c)| c == 0) {
        return Some(format!("a context entry at counter 0 for {a:?}"));
    }
    if set.has_overflowed_counter() {
        return Some("a counter at u64::MAX".into());
    }
    None
}

pub fn well_formed(set: &SiblingSet) -> bool {
    malformed(set).is_none()
}

fn holds(set: &SiblingSet, dot: &Dot) -> bool {
    set.versions().iter().any(|v| v.dot == *dot)
}

fn union(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut u = a.clone();
    u.merge(b);
    u
}

/// The laws of one `sync`, and of `sync` with itself and the empty set.
pub fn check_pair(a: &SiblingSet, b: &SiblingSet) {
    let ab = a.sync(b);
    let ba = b.sync(a);
    assert_eq!(ab, ba, "sync is not commutative:\na = {a:?}\nb = {b:?}");
    assert_eq!(a.sync(a), *a, "sync is not idempotent: {a:?}");
    assert_eq!(
        a.sync(&SiblingSet::new()),
        *a,
        "the empty set is not neutral: {a:?}"
    );
    if let Some(why) = malformed(&ab) {
        panic!("sync of well-formed sets is malformed ({why}):\na = {a:?}\nb = {b:?}\n= {ab:?}");
    }
    assert_eq!(
        *ab.context(),
        union(a.context(), b.context()),
        "sync's context is not the union:\na = {a:?}\nb = {b:?}"
    );
    assert!(
        ab.descends(a) && ab.descends(b),
        "sync does not descend from both sides:\na = {a:?}\nb = {b:?}\n= {ab:?}"
    );
    // No version is lost unless the other side saw its dot and no longer holds it (it was
    // superseded there); none is invented; a dot both hold keeps the same version everywhere.
    for (side, other) in [(a, b), (b, a)] {
        for v in side.versions() {
            let dominated = other.context().contains(&v.dot) && !holds(other, &v.dot);
            assert_eq!(
                holds(&ab, &v.dot),
                !dominated,
                "sync {} the version {:?}:\na = {a:?}\nb = {b:?}\n= {ab:?}",
                if dominated {
                    "kept the superseded"
                } else {
                    "lost the undominated"
                },
                v.dot,
            );
        }
    }
    for v in ab.versions() {
        let from_a = a.versions().iter().find(|x| x.dot == v.dot);
        let from_b = b.versions().iter().find(|x| x.dot == v.dot);
        assert_eq!(
            Some(v),
            from_a.max(from_b),
            "sync holds a version neither side gave it:\na = {a:?}\nb = {b:?}"
        );
    }
    // `descends` is "merging changes nothing", up to which of two versions of one dot wins.
    let same_dots = ab.context() == a.context() && ab.versions().iter().map(|v| v.dot).eq(dots(a));
    assert_eq!(
        a.descends(b),
        same_dots,
        "descends disagrees with sync:\na = {a:?}\nb = {b:?}"
    );
    assert_eq!(
        a.dominates(b),
        a.descends(b) && !b.descends(a),
        "dominates is not strict descent"
    );
}

fn dots(set: &SiblingSet) -> impl Iterator<Item = Dot> + '_ {
    set.versions().iter().map(|v| v.dot)
}

/// Associativity of `sync` over three sets.
pub fn check_triple(a: &SiblingSet, b: &SiblingSet, c: &SiblingSet) {
    let left = a.sync(b).sync(c);
    let right = a.sync(&b.sync(c));
    assert_eq!(
        left, right,
        "sync is not associative:\na = {a:?}\nb = {b:?}\nc = {c:?}"
    );
}

/// The laws of one `update_above`: the outcome `update_above` gave for `set`, a token
/// `seen`, `actor` and `floor`.
pub fn check_update(
    set: &SiblingSet,
    seen: Option<&VersionVector>,
    actor: Actor,
    floor: u64,
    outcome: &Result<(SiblingSet, Dot), ringkv::version::CounterOverflow>,
) {
    let base = set.context().get(&actor).max(floor);
    let (new, dot) = match outcome {
        Err(_) => {
            assert!(
                base >= u64::MAX - 1,
                "update refused with the counter at {base}, below u64::MAX - 1"
            );
            return;
        }
        Ok((new, dot)) => (new, *dot),
    };
    assert_eq!(dot.actor, actor);
    assert!(
        dot.counter > base && dot.counter < u64::MAX,
        "the new dot {dot:?} is not above {base}"
    );
    assert!(
        !set.context().contains(&dot),
        "update reissued the seen dot {dot:?}: {set:?}"
    );
    if let Some(why) = malformed(new) {
        panic!("update of a well-formed set is malformed ({why}):\nset = {set:?}\nseen = {seen:?}\n= {new:?}");
    }
    let mut want_context = set.context().clone();
    want_context.add(dot);
    assert_eq!(
        *new.context(),
        want_context,
        "update's context is not the old one plus the new dot (the token added to it):\nset = {set:?}\nseen = {seen:?}"
    );
    // Exactly the held versions the (clamped) token covers are replaced; a blind write
    // replaces all of them.
    for v in set.versions() {
        let covered = seen.is_none_or(|s| s.contains(&v.dot));
        assert_eq!(
            holds(new, &v.dot),
            !covered,
            "update {} {:?}:\nset = {set:?}\nseen = {seen:?}",
            if covered {
                "kept the covered"
            } else {
                "dropped the uncovered"
            },
            v.dot,
        );
    }
    assert!(holds(new, &dot), "update lost its own version");
    assert!(
        new.dominates(set),
        "an update does not dominate what it updated"
    );
}
