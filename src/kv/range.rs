//! A range of keys, in the byte order this node stores them: what a listing asks for, and
//! what a peer's `Scan` asks of this node's store.

use std::ops::Bound;

/// A key range: `start` inclusive (or exclusive when `start_exclusive`), `end` exclusive.
#[derive(Clone, Debug, Default)]
pub struct ListRange {
    pub start: Option<Vec<u8>>,
    pub start_exclusive: bool,
    pub end: Option<Vec<u8>>,
}

impl ListRange {
    /// The range as the store's scan takes it.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let start = match (&self.start, self.start_exclusive) {
            (None, _) => Bound::Unbounded,
            (Some(k), true) => Bound::Excluded(k.as_slice()),
            (Some(k), false) => Bound::Included(k.as_slice()),
        };
        let end = self
            .end
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_fields() {
        let all = ListRange::default();
        assert_eq!(all.bounds(), (Bound::Unbounded, Bound::Unbounded));
        let from = ListRange {
            start: Some(b"a".to_vec()),
            start_exclusive: false,
            end: Some(b"m".to_vec()),
        };
        assert_eq!(
            from.bounds(),
            (Bound::Included(&b"a"[..]), Bound::Excluded(&b"m"[..]))
        );
        let after = ListRange {
            start_exclusive: true,
            end: None,
            ..from
        };
        assert_eq!(
            after.bounds(),
            (Bound::Excluded(&b"a"[..]), Bound::Unbounded)
        );
    }
}
