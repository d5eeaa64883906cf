//! Replication factors: N, R and W, how a request names them, and how they clamp to the
//! number of members.

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

/// The configured replication factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    pub n: usize,
    pub r: usize,
    pub w: usize,
}

impl Replication {
    /// The factors in force with `members` nodes in the ring. With fewer members than N,
    /// N, R and W cap at the member count, so a lone node with N=3, R=2, W=2 still serves:
    /// that is where a scale-out starts.
    pub fn effective(self, members: usize) -> Replication {
        let n = self.n.min(members.max(1));
        Replication {
            n,
            r: self.r.min(n),
            w: self.w.min(n),
        }
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
        let lone = Replication { n: 3, r: 2, w: 2 }.effective(1);
        assert_eq!(lone, Replication { n: 1, r: 1, w: 1 });
    }
}
