//! Replication factors: N, R and W as configured, how a request names a quorum, and the
//! reply tracker. How they clamp to the rings is `cluster::policy`'s.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many replicas a request waits for, as the client wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quorum {
    One,
    Quorum,
    All,
    Count(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct QuorumParseError(String);

impl Quorum {
    /// Parses `one`, `quorum`, `all` or a count in `1..=n`.
    pub fn parse(s: &str, n: usize) -> Result<Self, QuorumParseError> {
        match s {
            "one" => Ok(Quorum::One),
            "quorum" => Ok(Quorum::Quorum),
            "all" => Ok(Quorum::All),
            _ => match usize::from_str(s) {
                Ok(c) if (1..=n).contains(&c) => Ok(Quorum::Count(c)),
                _ => Err(QuorumParseError(format!(
                    "expected 1..{n}, one, quorum or all; got {s:?}"
                ))),
            },
        }
    }

    /// The number of replies needed when `n` replicas are in play.
    pub fn resolve(self, n: usize) -> usize {
        let wanted = match self {
            Quorum::One => 1,
            Quorum::Quorum => n / 2 + 1,
            Quorum::All => n,
            Quorum::Count(c) => c,
        };
        wanted.clamp(1, n.max(1))
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quorum::One => f.write_str("one"),
            Quorum::Quorum => f.write_str("quorum"),
            Quorum::All => f.write_str("all"),
            Quorum::Count(c) => write!(f, "{c}"),
        }
    }
}

/// Replication factors: as configured, or as in force on a view (see
/// `cluster::policy::ReplicationPolicy::effective`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    pub n: usize,
    pub r: usize,
    pub w: usize,
}

/// Counts replies toward a quorum, by distinct node: a node that stores a write twice
/// (as a replica and again as a stand-in holding a hint) is still one copy.
#[derive(Debug, Clone)]
pub struct Tracker<Id: Ord> {
    needed: usize,
    outstanding: usize,
    succeeded: BTreeSet<Id>,
    failed: usize,
}

impl<Id: Ord> Tracker<Id> {
    /// Waits for `needed` distinct successes out of `attempts` requests in flight.
    pub fn new(needed: usize, attempts: usize) -> Self {
        Tracker {
            needed,
            outstanding: attempts,
            succeeded: BTreeSet::new(),
            failed: 0,
        }
    }

    /// One request succeeded at `id`.
    pub fn success(&mut self, id: Id) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.succeeded.insert(id);
    }

    /// One request failed.
    pub fn failure(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.failed += 1;
    }

    /// A request was replaced by another (a stand-in after a failed replica): one more
    /// reply to wait for.
    pub fn retry(&mut self) {
        self.outstanding += 1;
    }

    pub fn is_met(&self) -> bool {
        self.succeeded.len() >= self.needed
    }

    /// No outstanding request can meet the quorum any more.
    pub fn is_lost(&self) -> bool {
        !self.is_met() && self.succeeded.len() + self.outstanding < self.needed
    }

    pub fn is_done(&self) -> bool {
        self.outstanding == 0
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    pub fn succeeded(&self) -> usize {
        self.succeeded.len()
    }

    pub fn failed(&self) -> usize {
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_clamps() {
        assert_eq!(Quorum::parse("2", 3), Ok(Quorum::Count(2)));
        assert!(Quorum::parse("0", 3).is_err());
        assert!(Quorum::parse("4", 3).is_err());
        assert!(Quorum::parse("abc", 3).is_err());
        assert_eq!(Quorum::Quorum.resolve(3), 2);
        assert_eq!(Quorum::All.resolve(1), 1);
        assert_eq!(Quorum::Count(3).resolve(1), 1);
    }

    proptest::proptest! {
        /// Met exactly when `needed` distinct ids succeeded; never both met and lost; lost
        /// only when the remaining replies cannot make it.
        #[test]
        fn tracker_counts_distinct_successes(
            needed in 1usize..5,
            replies in proptest::collection::vec(proptest::option::of(0u8..4), 0..8),
        ) {
            let mut t = Tracker::new(needed, replies.len());
            let mut distinct = BTreeSet::new();
            for (i, r) in replies.iter().enumerate() {
                match r {
                    Some(id) => { t.success(*id); distinct.insert(*id); }
                    None => t.failure(),
                }
                let remaining = replies.len() - i - 1;
                proptest::prop_assert_eq!(t.is_met(), distinct.len() >= needed);
                proptest::prop_assert!(!(t.is_met() && t.is_lost()));
                proptest::prop_assert_eq!(t.is_lost(), !t.is_met() && distinct.len() + remaining < needed);
            }
            proptest::prop_assert!(t.is_done());
        }
    }
}
