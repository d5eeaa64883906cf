//! Ring ranges as position intervals. Which ranges a node replicates is
//! `cluster::policy`'s.

use crate::cluster::ring::TokenRange;
use crate::merkle::Interval;

/// A ring range as closed position intervals: one, or two when it wraps past zero.
pub fn intervals(range: &TokenRange) -> Vec<Interval> {
    let (start, end) = (range.start_exclusive, range.end_inclusive);
    if start == end {
        return vec![Interval::FULL];
    }
    match start.checked_add(1) {
        // (MAX, end]: wraps to 0 and covers [0, end].
        None => vec![Interval { lo: 0, hi: end }],
        Some(lo) if lo <= end => vec![Interval { lo, hi: end }],
        Some(lo) => vec![Interval { lo, hi: u64::MAX }, Interval { lo: 0, hi: end }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_ranges_split_in_two() {
        let r = |s, e| TokenRange {
            start_exclusive: s,
            end_inclusive: e,
        };
        assert_eq!(intervals(&r(10, 20)), vec![Interval { lo: 11, hi: 20 }]);
        assert_eq!(
            intervals(&r(20, 10)),
            vec![
                Interval {
                    lo: 21,
                    hi: u64::MAX
                },
                Interval { lo: 0, hi: 10 }
            ]
        );
        assert_eq!(intervals(&r(u64::MAX, 5)), vec![Interval { lo: 0, hi: 5 }]);
        assert_eq!(intervals(&r(7, 7)), vec![Interval::FULL]);
    }
}
