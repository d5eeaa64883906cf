//! The log's record: one committed transaction's resulting rows, framed with its length,
//! a sequence number and a checksum; and the rules that end, or refuse, a replay.
//!
//! Frame: `MAGIC (4) | payload length (4) | seq (8) | synced (8) | xxh3 of the three and the
//! payload (8) | payload`, little-endian. `synced` is the highest seq known durable when the
//! record was appended: it tells a torn tail from damage (see [`scan`]). The payload lists the rows the transaction left behind (a put
//! carries the row's new value, a delete its key), so replaying a record is a plain
//! overwrite: idempotent, and needing nothing from the state it lands on.

use xxhash_rust::xxh3::Xxh3;

use crate::store::{StoreError, Table};

/// "RKWL": tells a frame's start from zeros and stale bytes cheaply, before hashing.
const MAGIC: [u8; 4] = *b"RKWL";
pub(crate) const HEADER_BYTES: usize = 32;
/// A payload longer than this is refused when written and taken for damage when read;
/// far above any batch (`--max-commit-batch` writes of at most `--max-value-bytes`).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 1 << 30;

/// One row change of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
}

fn table_code(table: Table) -> u8 {
    // Position in `Table::ALL`, which only ever grows at its end.
    Table::ALL
        .iter()
        .position(|t| *t == table)
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(u8::MAX)
}

fn hash(len: u32, seq: u64, synced: u64, payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&synced.to_le_bytes());
    h.update(payload);
    h.digest()
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Engine("a row is too long for the log".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The framed record of `ops` at `seq`, appended when `synced` was the highest durable seq.
pub fn encode(seq: u64, synced: u64, ops: &[Op]) -> Result<Vec<u8>, StoreError> {
    let mut payload = Vec::new();
    for op in ops {
        match op {
            Op::Put { table, key, value } => {
                payload.extend_from_slice(&[table_code(*table), 1]);
                push_bytes(&mut payload, key)?;
                push_bytes(&mut payload, value)?;
            }
            Op::Delete { table, key } => {
                payload.extend_from_slice(&[table_code(*table), 0]);
                push_bytes(&mut payload, key)?;
            }
        }
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::Engine(format!(
            "a transaction of {} bytes is over the log's record bound",
            payload.len()
        )));
    }
    // Checked above: MAX_PAYLOAD_BYTES fits in u32.
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(&hash(len, seq, synced, &payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A whole, checksummed frame found in the log.
#[derive(Debug)]
pub struct Frame<'a> {
    pub seq: u64,
    pub synced: u64,
    pub payload: &'a [u8],
    /// Header and payload.
    pub bytes: usize,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// The frame starting at `buf[0]`, if a whole one with a matching checksum is there.
pub fn frame(buf: &[u8]) -> Option<Frame<'_>> {
    if buf.get(..4)? != MAGIC {
        return None;
    }
    let len = u32_at(buf, 4)?;
    let seq = u64_at(buf, 8)?;
    let synced = u64_at(buf, 16)?;
    let sum = u64_at(buf, 24)?;
    let payload_len = usize::try_from(len).ok()?;
    if payload_len > MAX_PAYLOAD_BYTES {
        return None;
    }
    let end = HEADER_BYTES.checked_add(payload_len)?;
    let payload = buf.get(HEADER_BYTES..end)?;
    (hash(len, seq, synced, payload) == sum).then_some(Frame {
        seq,
        synced,
        payload,
        bytes: end,
    })
}

/// The rows of a frame's payload. The checksum matched, so a payload that does not parse
/// was written so by this code: an error, not a tail.
pub fn decode(payload: &[u8]) -> Result<Vec<Op>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("log record: {what}"));
    let mut ops = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize| -> Result<Vec<u8>, StoreError> {
        let len = u32_at(payload, *at).ok_or_else(|| bad("short length"))?;
        let start = at.checked_add(4).ok_or_else(|| bad("offset"))?;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| bad("length"))?)
            .ok_or_else(|| bad("offset"))?;
        let bytes = payload.get(start..end).ok_or_else(|| bad("short row"))?;
        *at = end;
        Ok(bytes.to_vec())
    };
    while at < payload.len() {
        let (code, kind) = match payload.get(at..at + 2) {
            Some([c, k]) => (*c, *k),
            _ => return Err(bad("short op")),
        };
        at += 2;
        let table = *Table::ALL
            .get(usize::from(code))
            .ok_or_else(|| bad("unknown table"))?;
        let key = take(&mut at)?;
        ops.push(match kind {
            1 => Op::Put {
                table,
                key,
                value: take(&mut at)?,
            },
            0 => Op::Delete { table, key },
            _ => return Err(bad("unknown op")),
        });
    }
    Ok(ops)
}

/// What a scan of the log found past the checkpoint.
#[derive(Debug, Default)]
pub struct Scan {
    /// The records to replay, in order: `(seq, ops)`.
    pub records: Vec<(u64, Vec<Op>)>,
    /// Where the next record goes: the end of the last whole record.
    pub end: usize,
    /// Bytes past `end` that were not a record of this log's current run: a torn last
    /// write, or what an earlier run left in the recycled file.
    pub tail_bytes: usize,
}

/// Reads the log in `buf`, whose records after the checkpoint `checkpoint` must run
/// `checkpoint + 1, + 2, …` from offset 0. It ends at the first place that holds no such
/// record. A record with a seq at or below the checkpoint is what an earlier run left (the
/// file is reused from its start after a checkpoint), and ends it too.
///
/// Where it ends, the record expected there (`last + 1`) is damaged or missing. That is a
/// torn tail unless some later record of this run says, in its `synced`, that the
/// expected one had been made durable: then the log was damaged in its middle, and the
/// scan is an error, since skipping would lose acknowledged writes and replaying on would
/// apply later writes without them. Later records that do not say so were written after
/// the last sync and may reach the disk in any order; they are dropped with the tail.
pub fn scan(buf: &[u8], checkpoint: u64) -> Result<Scan, StoreError> {
    let mut out = Scan::default();
    let mut last = checkpoint;
    let mut at = 0usize;
    while let Some(f) = buf.get(at..).and_then(frame) {
        if Some(f.seq) != last.checked_add(1) {
            break;
        }
        out.records.push((f.seq, decode(f.payload)?));
        last = f.seq;
        at += f.bytes;
    }
    out.end = at;
    let mut probe = at;
    while let Some(rest) = buf.get(probe..) {
        if rest.len() < HEADER_BYTES {
            break;
        }
        match rest.windows(4).position(|w| w == MAGIC) {
            None => break,
            Some(p) => probe += p,
        }
        if let Some(f) = buf.get(probe..).and_then(frame) {
            if f.seq > last && f.synced > last {
                return Err(StoreError::Corrupt(format!(
                    "write-ahead log: record {} (at offset {at}) is damaged or missing, but record {} at offset {probe} says it was synced; refusing to skip it",
                    last.saturating_add(1),
                    f.seq
                )));
            }
        }
        probe += 1;
    }
    out.tail_bytes = buf.len() - at;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            table: Table::Data,
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn log(records: &[(u64, Vec<Op>)]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|(seq, ops)| encode(*seq, seq - 1, ops).unwrap())
            .collect()
    }

    #[test]
    fn records_round_trip_in_order() {
        let ops = vec![
            put("a", "1"),
            Op::Delete {
                table: Table::Index,
                key: b"x".to_vec(),
            },
            Op::Put {
                table: Table::Tombstones,
                key: vec![],
                value: vec![0; 300],
            },
        ];
        let buf = log(&[(5, ops.clone()), (6, vec![put("b", "2")])]);
        let s = scan(&buf, 4).unwrap();
        assert_eq!(s.records, vec![(5, ops), (6, vec![put("b", "2")])]);
        assert_eq!((s.end, s.tail_bytes), (buf.len(), 0));
    }

    /// Every cut through the last record ends the replay at the record before it.
    #[test]
    fn a_torn_tail_ends_the_replay_at_the_last_whole_record() {
        let buf = log(&[(1, vec![put("a", "1")]), (2, vec![put("b", "22")])]);
        let first = encode(1, 0, &[put("a", "1")]).unwrap().len();
        for cut in first..buf.len() {
            let s = scan(&buf[..cut], 0).unwrap();
            assert_eq!(s.records.len(), 1, "cut at {cut}");
            assert_eq!((s.end, s.tail_bytes), (first, cut - first));
        }
        // A flipped bit in the last record is a tail too: nothing of this run follows it.
        let mut flipped = buf.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(scan(&flipped, 0).unwrap().records.len(), 1);
    }

    /// A damaged record with a valid one after it stops the replay with an error.
    #[test]
    fn a_damaged_record_in_the_middle_is_an_error() {
        let mut buf = log(&[
            (1, vec![put("a", "1")]),
            (2, vec![put("b", "2")]),
            (3, vec![put("c", "3")]),
        ]);
        let first = encode(1, 0, &[put("a", "1")]).unwrap().len();
        buf[first + HEADER_BYTES] ^= 0x40;
        let e = scan(&buf, 0).unwrap_err();
        assert!(e.to_string().contains("record 3 at offset"), "{e}");
        // A missing record that a later one says was synced is refused too.
        let gap = log(&[(1, vec![put("a", "1")]), (3, vec![put("c", "3")])]);
        assert!(scan(&gap, 0)
            .unwrap_err()
            .to_string()
            .contains("says it was synced"));
    }

    /// Records written after the last sync may reach the disk out of order: a valid one
    /// behind a torn one that no record says was synced is tail, not damage.
    #[test]
    fn unsynced_records_behind_a_torn_one_are_tail() {
        let mut buf: Vec<u8> = [
            encode(1, 0, &[put("a", "1")]).unwrap(),
            encode(2, 1, &[put("b", "2")]).unwrap(),
            encode(3, 1, &[put("c", "3")]).unwrap(),
        ]
        .concat();
        let first = encode(1, 0, &[put("a", "1")]).unwrap().len();
        buf[first + HEADER_BYTES] ^= 0x40;
        let s = scan(&buf, 0).unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.tail_bytes, buf.len() - first);
    }

    /// After a checkpoint the file is written again from its start: the earlier run's
    /// records past the new end are stale, not damage, and none of them is replayed.
    #[test]
    fn records_at_or_below_the_checkpoint_are_stale() {
        let old = log(&[
            (1, vec![put("a", "1")]),
            (2, vec![put("b", "2")]),
            (3, vec![put("c", "3")]),
        ]);
        assert!(scan(&old, 3).unwrap().records.is_empty());
        let mut recycled = old.clone();
        let new = encode(4, 3, &[put("d", "4")]).unwrap();
        recycled[..new.len()].copy_from_slice(&new);
        let s = scan(&recycled, 3).unwrap();
        assert_eq!(s.records, vec![(4, vec![put("d", "4")])]);
        assert_eq!(s.tail_bytes, old.len() - new.len());
        // Zeros (a preallocated file) are a tail as well.
        let mut zeros = new.clone();
        zeros.resize(4096, 0);
        assert_eq!(scan(&zeros, 3).unwrap().records.len(), 1);
    }

    #[test]
    fn a_bad_payload_behind_a_good_checksum_is_an_error() {
        let payload = [9u8, 1, 0, 0, 0, 0];
        let len = payload.len() as u32;
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&1u64.to_le_bytes());
        buf.extend_from_slice(&0u64.to_le_bytes());
        buf.extend_from_slice(&hash(len, 1, 0, &payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        assert!(matches!(scan(&buf, 0), Err(StoreError::Corrupt(_))));
    }
}
