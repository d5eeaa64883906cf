//! Whether a sibling set a peer sent keeps the invariants every set this code builds keeps:
//! the check a replica makes before a peer's set enters its store (`rpc::bounds`).
//!
//! `SiblingSet` derives `Deserialize`, so a decoded set is whatever the frame said: its
//! versions may be out of order or repeat a dot, which breaks [`SiblingSet::sync`]'s merge
//! walk (it assumes sorted, distinct dots) and makes replicas that merged it disagree.

use super::siblings::SiblingSet;
use super::vv::{Dot, VersionVector};

/// How a set breaks the sibling set's invariants (see [`SiblingSet`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{n} versions in one set; at most {max}")]
    TooManyVersions { n: usize, max: usize },
    #[error("its causal context names {n} actors; at most {max}")]
    TooManyActors { n: usize, max: usize },
    #[error("versions are not in dot order (dot {0:?} after a later one)")]
    Unsorted(Dot),
    #[error("dot {0:?} is held twice")]
    DuplicateDot(Dot),
    /// Counter 0 is never issued: every context "contains" it, so a version with it would
    /// be superseded by any set.
    #[error("dot {0:?} has counter 0, which no actor issues")]
    ZeroCounter(Dot),
    /// u64::MAX is never issued (see [`SiblingSet::update_above`]).
    #[error("a counter is u64::MAX, which no actor issues (forged or corrupt)")]
    OverflowedCounter,
    #[error("dot {0:?} is not in the set's own causal context")]
    DotOutsideContext(Dot),
    /// An entry at counter 0 says nothing (an absent actor is counter 0), yet it makes two
    /// equal histories unequal values, so replicas' digests of one history would differ.
    /// No node writes one (`VersionVector::add` and `merge` skip them); found by fuzzing.
    #[error("its causal context has an entry at counter 0")]
    ZeroContextEntry,
}

/// A version vector a peer sent: at most `max_actors` actors, none at u64::MAX.
pub fn check_vector(vv: &VersionVector, max_actors: usize) -> Result<(), Malformed> {
    if vv.len() > max_actors {
        return Err(Malformed::TooManyActors {
            n: vv.len(),
            max: max_actors,
        });
    }
    if vv.max_counter() == u64::MAX {
        return Err(Malformed::OverflowedCounter);
    }
    if vv.iter().any(|(_, &c)| c == 0) {
        return Err(Malformed::ZeroContextEntry);
    }
    Ok(())
}

impl SiblingSet {
    /// Checks the invariants (sorted, distinct dots, each in the context, counters in
    /// `1..u64::MAX`) and the bounds a peer's set is held to: at most `max_versions`
    /// versions and `max_actors` actors in its context. The bounds come first, so that a
    /// huge set is refused before it is walked.
    pub fn check_well_formed(
        &self,
        max_versions: usize,
        max_actors: usize,
    ) -> Result<(), Malformed> {
        let versions = self.versions();
        if versions.len() > max_versions {
            return Err(Malformed::TooManyVersions {
                n: versions.len(),
                max: max_versions,
            });
        }
        check_vector(self.context(), max_actors)?;
        let mut previous: Option<Dot> = None;
        for v in versions {
            let dot = v.dot;
            match dot.counter {
                0 => return Err(Malformed::ZeroCounter(dot)),
                u64::MAX => return Err(Malformed::OverflowedCounter),
                _ => {}
            }
            match previous.map(|p| p.cmp(&dot)) {
                Some(std::cmp::Ordering::Equal) => return Err(Malformed::DuplicateDot(dot)),
                Some(std::cmp::Ordering::Greater) => return Err(Malformed::Unsorted(dot)),
                _ => {}
            }
            if !self.context().contains(&dot) {
                return Err(Malformed::DotOutsideContext(dot));
            }
            previous = Some(dot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::version::{Actor, Payload};

    fn actor(n: u64) -> Actor {
        Actor { node: n, epoch: 0 }
    }

    #[test]
    fn a_context_entry_at_counter_zero_is_refused() {
        // As a peer or the disk would send it: the map with its zero entry, decoded.
        let wire: std::collections::BTreeMap<Actor, u64> = [(actor(1), 0), (actor(2), 3)].into();
        let decoded: VersionVector =
            rmp_serde::from_slice(&rmp_serde::to_vec(&wire).unwrap()).unwrap();
        assert!(matches!(
            check_vector(&decoded, 8),
            Err(Malformed::ZeroContextEntry)
        ));
        // Built by this node's own code, a zero never becomes an entry.
        let built: VersionVector = [(actor(1), 0), (actor(2), 3)].into_iter().collect();
        assert_eq!(built.len(), 1);
        assert!(check_vector(&built, 8).is_ok());
    }

    fn val(s: &str) -> Payload {
        Payload::Value {
            data: Bytes::copy_from_slice(s.as_bytes()),
            content_type: "text/plain".into(),
        }
    }

    /// A set as a peer's frame may carry it: built from msgpack of the same shape, since
    /// the fields are private and the constructors keep the invariants.
    fn raw(versions: &[(u64, u64)], context: &[(u64, u64)]) -> SiblingSet {
        #[derive(serde::Serialize)]
        struct RawSet {
            versions: Vec<crate::version::Version>,
            context: VersionVector,
        }
        let set = RawSet {
            versions: versions
                .iter()
                .map(|&(a, counter)| crate::version::Version {
                    dot: Dot {
                        actor: actor(a),
                        counter,
                    },
                    payload: val("v"),
                    written_at_ms: 0,
                })
                .collect(),
            context: context.iter().map(|&(a, c)| (actor(a), c)).collect(),
        };
        let bytes = rmp_serde::to_vec(&set).expect("encodes");
        rmp_serde::from_slice(&bytes).expect("a set decodes from the same shape")
    }

    #[test]
    fn sets_this_code_builds_are_well_formed() {
        let (a, _) = SiblingSet::new()
            .update(None, actor(1), val("a"), 0)
            .unwrap();
        let (b, _) = SiblingSet::new()
            .update(None, actor(2), val("b"), 0)
            .unwrap();
        let merged = a.sync(&b);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged.check_well_formed(2, 2), Ok(()));
        assert_eq!(SiblingSet::new().check_well_formed(0, 0), Ok(()));
        assert_eq!(
            raw(&[(1, 1), (1, 3), (2, 1)], &[(1, 3), (2, 1)]).check_well_formed(3, 2),
            Ok(())
        );
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let check = |v: &[(u64, u64)], c: &[(u64, u64)]| raw(v, c).check_well_formed(8, 8);
        assert!(matches!(
            check(&[(1, 2), (1, 1)], &[(1, 2)]),
            Err(Malformed::Unsorted(_))
        ));
        assert!(matches!(
            check(&[(1, 1), (1, 1)], &[(1, 1)]),
            Err(Malformed::DuplicateDot(_))
        ));
        assert!(matches!(
            check(&[(1, 0)], &[(1, 1)]),
            Err(Malformed::ZeroCounter(_))
        ));
        assert_eq!(
            check(&[(1, u64::MAX)], &[(1, 1)]),
            Err(Malformed::OverflowedCounter)
        );
        assert_eq!(
            check(&[(1, 1)], &[(1, u64::MAX)]),
            Err(Malformed::OverflowedCounter)
        );
        assert!(matches!(
            check(&[(1, 5)], &[(1, 4)]),
            Err(Malformed::DotOutsideContext(_))
        ));
        assert!(matches!(
            check(&[(2, 1)], &[(1, 4)]),
            Err(Malformed::DotOutsideContext(_))
        ));
    }

    #[test]
    fn the_bounds_hold_before_the_walk() {
        let many: Vec<(u64, u64)> = (1..=9).map(|c| (1, c)).collect();
        assert_eq!(
            raw(&many, &[(1, 9)]).check_well_formed(8, 8),
            Err(Malformed::TooManyVersions { n: 9, max: 8 })
        );
        let actors: Vec<(u64, u64)> = (1..=9).map(|a| (a, 1)).collect();
        assert_eq!(
            raw(&[], &actors).check_well_formed(8, 8),
            Err(Malformed::TooManyActors { n: 9, max: 8 })
        );
        let vv: VersionVector = actors.iter().map(|&(a, c)| (actor(a), c)).collect();
        assert!(check_vector(&vv, 9).is_ok());
        assert!(check_vector(&vv, 8).is_err());
    }
}
