//! The log against a disk that loses what was not synced: every acknowledged write is
//! there after a crash, at any point of a random workload, and nothing never written
//! appears.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

/// One write that reached the disk's cache but not its platter.
#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Platter {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What reads see: `durable` with `pending` applied.
    current: Vec<u8>,
    pending: Vec<Pending>,
    /// Set at a crash until the next incarnation: the dying process writes nothing.
    fenced: bool,
}

fn put_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    if buf.len() < offset + data.len() {
        buf.resize(offset + data.len(), 0);
    }
    buf[offset..offset + data.len()].copy_from_slice(data);
}

impl Pending {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            Pending::Write(offset, data) => put_at(buf, *offset, data),
            Pending::SetLen(len) => buf.resize(*len as usize, 0),
        }
    }
}

/// An in-memory file whose un-synced writes a crash drops, some of them, in any order,
/// and the last one it keeps possibly torn.
#[derive(Debug, Clone, Default)]
struct FaultyDisk(Arc<Mutex<Platter>>);

impl FaultyDisk {
    fn platter(&self) -> std::sync::MutexGuard<'_, Platter> {
        self.0.lock().unwrap()
    }

    fn fence(&self) {
        self.platter().fenced = true;
    }

    /// Power loss: of the pending writes, those whose bit in `keep` is set reach the
    /// platter, in order; the last of them only its first `tear`th (in 1/256) if `tear`.
    fn crash(&self, keep: u64, tear: Option<u8>) {
        let mut p = self.platter();
        let pending = std::mem::take(&mut p.pending);
        let kept: Vec<_> = pending
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep & (1 << (i % 64)) != 0)
            .map(|(_, w)| w)
            .collect();
        let mut durable = std::mem::take(&mut p.durable);
        for (i, w) in kept.iter().enumerate() {
            match (w, tear) {
                (Pending::Write(offset, data), Some(t)) if i + 1 == kept.len() => {
                    let cut = data.len() * usize::from(t) / 256;
                    put_at(&mut durable, *offset, &data[..cut]);
                }
                _ => w.apply(&mut durable),
            }
        }
        p.current = durable.clone();
        p.durable = durable;
        p.fenced = false;
    }

    fn check(p: &Platter) -> std::io::Result<()> {
        if p.fenced {
            return Err(std::io::Error::other("crashed"));
        }
        Ok(())
    }
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> std::io::Result<u64> {
        let p = self.platter();
        Self::check(&p)?;
        Ok(p.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let p = self.platter();
        Self::check(&p)?;
        let offset = offset as usize;
        let src = p
            .current
            .get(offset..offset + out.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut p = self.platter();
        Self::check(&p)?;
        p.current.resize(len as usize, 0);
        p.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut p = self.platter();
        Self::check(&p)?;
        let pending = std::mem::take(&mut p.pending);
        for w in &pending {
            w.apply(&mut p.durable);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut p = self.platter();
        Self::check(&p)?;
        put_at(&mut p.current, offset, data);
        p.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }
}

const CACHE: usize = 1 << 20;

fn open(db: &FaultyDisk, log: &FaultyDisk, settings: WalSettings) -> Result<WalStore, StoreError> {
    let redb = RedbStore::open_with_backend(db.clone(), CACHE)?;
    WalStore::open(redb, Box::new(log.clone()), settings)
}

fn small() -> WalSettings {
    WalSettings {
        max_bytes: 400,
        max_age: Duration::from_secs(3600),
    }
}

fn put(store: &WalStore, durable: bool, key: u8, value: &str) -> Result<(), StoreError> {
    store.write(durable, &mut |txn| {
        txn.put(Table::Data, &[key], value.as_bytes())
    })
}

fn contents(store: &WalStore) -> BTreeMap<u8, String> {
    store
        .scan(Table::Data, Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k[0], String::from_utf8(v).unwrap()))
        .collect()
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        key: u8,
        durable: bool,
    },
    Sync,
    Crash {
        keep_db: u64,
        keep_log: u64,
        tear: Option<u8>,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..6, any::<bool>()).prop_map(|(key, durable)| Step::Write { key, durable }),
        2 => Just(Step::Sync),
        1 => (any::<u64>(), any::<u64>(), proptest::option::of(any::<u8>()))
            .prop_map(|(keep_db, keep_log, tear)| Step::Crash { keep_db, keep_log, tear }),
    ]
}

/// The state a run of writes leaves, from `base`.
fn after(base: &BTreeMap<u8, String>, writes: &[(u8, String)]) -> BTreeMap<u8, String> {
    let mut state = base.clone();
    for (k, v) in writes {
        state.insert(*k, v.clone());
    }
    state
}

/// After a crash the store holds exactly what some prefix of the writes since the last
/// recovery left, and that prefix covers every acknowledged write.
fn check_recovered(
    recovered: &BTreeMap<u8, String>,
    base: &BTreeMap<u8, String>,
    writes: &[(u8, String)],
    acked: usize,
) -> Result<(), TestCaseError> {
    let ok = (acked..=writes.len()).any(|p| after(base, &writes[..p]) == *recovered);
    prop_assert!(
        ok,
        "recovered {recovered:?} is no state of writes {writes:?} from {base:?} with {acked} acknowledged"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_acknowledged_write_survives_a_crash(steps in proptest::collection::vec(step(), 1..40)) {
        let (db, log) = (FaultyDisk::default(), FaultyDisk::default());
        let mut store = open(&db, &log, small()).unwrap();
        let mut base = BTreeMap::new();
        let mut writes: Vec<(u8, String)> = Vec::new();
        let mut acked = 0;
        for (i, s) in steps.into_iter().enumerate() {
            match s {
                Step::Write { key, durable } => {
                    let value = format!("v{i}-{}", "x".repeat(i % 7 * 10));
                    put(&store, durable, key, &value).unwrap();
                    writes.push((key, value));
                    if durable {
                        acked = writes.len();
                    }
                }
                Step::Sync => {
                    store.sync().unwrap();
                    acked = writes.len();
                }
                Step::Crash { keep_db, keep_log, tear } => {
                    db.fence();
                    log.fence();
                    drop(store);
                    db.crash(keep_db, tear);
                    log.crash(keep_log, tear);
                    store = open(&db, &log, small()).unwrap();
                    let recovered = contents(&store);
                    check_recovered(&recovered, &base, &writes, acked)?;
                    base = recovered;
                    writes.clear();
                    acked = 0;
                }
            }
        }
    }
}

/// Records appended while the previous sync runs are covered by the next one, and the
/// log starts over at each checkpoint: it never grows past its bound plus one record.
#[test]
fn the_log_is_bounded_by_its_checkpoints() {
    let (db, log) = (FaultyDisk::default(), FaultyDisk::default());
    let store = open(&db, &log, small()).unwrap();
    for i in 0..200u32 {
        put(&store, true, (i % 10) as u8, &format!("value {i}")).unwrap();
    }
    let len = log.platter().current.len();
    assert!(len < 400 + 200, "log of {len} bytes");
    // Everything is there after a crash that keeps only what was synced.
    db.fence();
    log.fence();
    drop(store);
    db.crash(0, None);
    log.crash(0, None);
    let store = open(&db, &log, small()).unwrap();
    let c = contents(&store);
    for i in 190..200u32 {
        assert_eq!(c[&((i % 10) as u8)], format!("value {i}"));
    }
}

/// A record damaged in the middle of the log, with a synced one after it, stops the open
/// with an error that says so; the database is not touched.
#[test]
fn a_damaged_middle_record_refuses_to_open() {
    let (db, log) = (FaultyDisk::default(), FaultyDisk::default());
    let store = open(&db, &log, WalSettings::default()).unwrap();
    for i in 0..3u8 {
        put(&store, true, i, "v").unwrap();
    }
    db.fence();
    log.fence();
    drop(store);
    db.crash(0, None);
    log.crash(0, None);
    log.platter().durable[record::HEADER_BYTES + 2] ^= 1;
    log.crash(0, None);
    let e = open(&db, &log, WalSettings::default()).unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt(m) if m.contains("says it was synced")),
        "{e}"
    );
}

/// A write whose record was torn before its sync is gone after the crash, and the
/// replay says how many bytes it ignored; the synced writes before it are all there.
#[test]
fn a_torn_last_record_is_dropped_and_counted() {
    let (db, log) = (FaultyDisk::default(), FaultyDisk::default());
    let store = open(&db, &log, WalSettings::default()).unwrap();
    put(&store, true, 1, "kept").unwrap();
    put(&store, false, 2, "torn").unwrap();
    db.fence();
    log.fence();
    drop(store);
    db.crash(0, None);
    log.crash(u64::MAX, Some(128));
    let store = open(&db, &log, WalSettings::default()).unwrap();
    assert_eq!(store.replayed().records, 1);
    assert!(store.replayed().tail_bytes > 0);
    let c = contents(&store);
    assert_eq!(c.get(&1).map(String::as_str), Some("kept"));
    assert_eq!(c.get(&2), None);
}
