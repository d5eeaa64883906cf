//! Scans bounded in bytes as well as rows (pure logic, shared by every [`Store`]).
//!
//! A row count alone does not bound memory: a key's set may hold `--max-siblings` values of
//! `--max-value-bytes` each, so a page of a thousand rows can be gigabytes. A scan therefore
//! also stops once the rows it read reach a byte budget. It always returns at least one row
//! when the range has one, so that a caller paging on `more` always progresses, even past
//! a row larger than the whole budget.
//!
//! [`Store`]: super::Store

use super::{Entry, StoreError};

/// Rows of a bounded scan, in key order, and whether the range holds rows past the last.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub rows: Vec<Entry>,
    pub more: bool,
}

/// The bytes a row counts for against a scan's budget: its key and its value.
pub fn row_bytes(row: &Entry) -> usize {
    row.0.len().saturating_add(row.1.len())
}

/// Takes rows from `rows` until `limit` rows, or until the rows taken reach `max_bytes`
/// (at least one row whatever its size). Reads one row past the cut to tell `more` (it is
/// dropped, not kept), and never reads further: a store passes its lazy iterator here.
pub fn take_bounded<I>(rows: I, limit: usize, max_bytes: usize) -> Result<ScanPage, StoreError>
where
    I: IntoIterator<Item = Result<Entry, StoreError>>,
{
    let mut rows = rows.into_iter();
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    loop {
        let full = page.rows.len() >= limit || (!page.rows.is_empty() && bytes >= max_bytes);
        let Some(row) = rows.next() else {
            return Ok(page);
        };
        let row = row?;
        if full {
            page.more = true;
            return Ok(page);
        }
        bytes = bytes.saturating_add(row_bytes(&row));
        page.rows.push(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(sizes: &[usize]) -> Vec<Entry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i as u32).to_be_bytes().to_vec(), vec![0u8; n]))
            .collect()
    }

    #[test]
    fn a_row_larger_than_the_budget_still_comes_alone() {
        let all = rows(&[1000, 10]);
        let page = take_bounded(all.clone().into_iter().map(Ok), 10, 100).unwrap();
        assert_eq!(page.rows, all[..1].to_vec());
        assert!(page.more);
        let page = take_bounded(all.into_iter().map(Ok).skip(1), 10, 100).unwrap();
        assert_eq!(page.rows.len(), 1);
        assert!(!page.more);
    }

    #[test]
    fn an_error_is_returned_not_skipped() {
        let it = vec![
            Ok(rows(&[1]).remove(0)),
            Err(StoreError::Corrupt("x".into())),
        ];
        assert!(take_bounded(it, 10, 100).is_err());
    }

    proptest! {
        /// Paging with the cut visits every row exactly once, in order; each page holds
        /// at most `limit` rows, and goes past `max_bytes` only by its last row; `more`
        /// is false exactly on the last page.
        #[test]
        fn pages_cover_every_row_once_within_the_budget(
            sizes in proptest::collection::vec(0usize..5000, 0..60),
            limit in 1usize..20,
            max_bytes in 0usize..20_000,
        ) {
            let all = rows(&sizes);
            let mut seen = Vec::new();
            let mut pages = 0;
            loop {
                let page = take_bounded(
                    all.iter().skip(seen.len()).cloned().map(Ok),
                    limit,
                    max_bytes,
                ).unwrap();
                pages += 1;
                prop_assert!(pages <= all.len() + 1, "paging does not progress");
                prop_assert!(page.rows.len() <= limit);
                if seen.len() < all.len() {
                    prop_assert!(!page.rows.is_empty(), "a page with rows left is empty");
                }
                let before_last: usize = page.rows.iter().rev().skip(1).map(row_bytes).sum();
                prop_assert!(before_last < max_bytes || page.rows.len() <= 1);
                seen.extend(page.rows.iter().cloned());
                prop_assert_eq!(page.more, seen.len() < all.len());
                if !page.more {
                    break;
                }
            }
            prop_assert_eq!(seen, all);
        }
    }
}
