//! The node's identity: a node id made once and kept in the data dir, and the epoch that
//! changes after every unclean stop (see [`crate::version::Actor`]).

use crate::store::{Store, StoreError, Table, WriteTxn};
use crate::version::Actor;

const NODE_ID: &[u8] = b"node_id";
const EPOCH: &[u8] = b"epoch";
/// 1 while a node runs, 0 after a clean shutdown.
const RUNNING: &[u8] = b"running";
const JOINED: &[u8] = b"joined";
const LEFT: &[u8] = b"left";
/// Set once this node learns its cluster removed it (see [`Identity::mark_removed`]).
const REMOVED: &[u8] = b"removed";
/// The highest dot counter this node has issued, over all keys (see [`Identity::dot_floor`]).
const DOT_COUNTER: &[u8] = b"dot_counter";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub actor: Actor,
    /// Whether the previous run ended without a clean shutdown.
    pub recovered_from_crash: bool,
    /// Every dot this node issues has a counter above this one, whatever key it is for.
    ///
    /// Counters per key alone are not enough: a key's history can vanish from this node
    /// (its tombstones collected, or the key moved away when the ring changed) while an old
    /// copy survives on a replica that was away. Counting again from that key's empty
    /// history would reissue a dot the old copy holds, for another value: the two
    /// versions would pass for one, and the stale one could even win over the new write.
    /// A node-wide floor makes every dot of an actor unique, and a new write then covers
    /// whatever this actor wrote before. (It also covers a version of this actor that
    /// the node forgot and never saw again; only a read of the other replicas before the
    /// write could keep that one, and writes do not read.) It is stored with the writes
    /// that raise it, so it is as durable as they are; a crash that loses both also moves
    /// the epoch, which makes a new actor.
    pub dot_floor: u64,
}

impl Identity {
    pub fn node_id(&self) -> u64 {
        self.actor.node
    }

    /// The node id this data dir holds, if any, without touching anything else.
    pub fn stored_node_id(store: &dyn Store) -> Result<Option<u64>, StoreError> {
        Ok(store
            .get(Table::Meta, NODE_ID)?
            .and_then(|raw| <[u8; 8]>::try_from(raw.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Loads or creates the identity and marks the node running, durably, before it
    /// issues any dot.
    pub fn load(store: &dyn Store, fresh_id: impl FnOnce() -> u64) -> Result<Self, StoreError> {
        let node = match store.get(Table::Meta, NODE_ID)? {
            Some(raw) => u64::from_be_bytes(fixed(&raw)?),
            None => fresh_id(),
        };
        let epoch = match store.get(Table::Meta, EPOCH)? {
            Some(raw) => u32::from_be_bytes(fixed(&raw)?),
            None => 0,
        };
        let crashed = store.get(Table::Meta, RUNNING)?.as_deref() == Some(&[1]);
        // A crash may have lost dots this actor issued (under periodic fsync), so the next
        // dots come from a new epoch that no replica has seen.
        let epoch = if crashed {
            // Checked like every counter: a wrapped epoch would make an old actor again.
            epoch.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt("the actor epoch is exhausted (u32::MAX crashes)".into())
            })?
        } else {
            epoch
        };
        store.write(true, &mut |txn| {
            txn.put(Table::Meta, NODE_ID, &node.to_be_bytes())?;
            txn.put(Table::Meta, EPOCH, &epoch.to_be_bytes())?;
            txn.put(Table::Meta, RUNNING, &[1])
        })?;
        let dot_floor = match store.get(Table::Meta, DOT_COUNTER)? {
            Some(raw) => u64::from_be_bytes(fixed(&raw)?),
            None => 0,
        };
        Ok(Identity {
            actor: Actor { node, epoch },
            recovered_from_crash: crashed,
            dot_floor,
        })
    }

    /// Whether this node finished joining a cluster once (it restarts as normal, not as a
    /// joiner that must pull all its ranges again).
    pub fn has_joined(store: &dyn Store) -> Result<bool, StoreError> {
        Ok(store.get(Table::Meta, JOINED)?.as_deref() == Some(&[1]))
    }

    pub fn mark_joined(store: &dyn Store) -> Result<(), StoreError> {
        store.write(true, &mut |txn| txn.put(Table::Meta, JOINED, &[1]))
    }

    /// Whether this data dir belongs to a node that left its cluster. Its data is stale
    /// by now — keys deleted and collected since would come back — so it must not serve.
    pub fn has_left(store: &dyn Store) -> Result<bool, StoreError> {
        Ok(store.get(Table::Meta, LEFT)?.as_deref() == Some(&[1]))
    }

    pub fn mark_left(store: &dyn Store) -> Result<(), StoreError> {
        store.write(true, &mut |txn| txn.put(Table::Meta, LEFT, &[1]))
    }

    /// Whether this data dir belongs to a node its cluster removed. Like a node that left,
    /// its data is stale and its ranges have new owners, so it must not serve again.
    pub fn has_removed(store: &dyn Store) -> Result<bool, StoreError> {
        Ok(store.get(Table::Meta, REMOVED)?.as_deref() == Some(&[1]))
    }

    /// Recorded, durably, as soon as the node hears it was removed: it may be stopped any
    /// moment after, and its next start must refuse.
    pub fn mark_removed(store: &dyn Store) -> Result<(), StoreError> {
        store.write(true, &mut |txn| txn.put(Table::Meta, REMOVED, &[1]))
    }

    /// Records, in the writer's transaction, the highest counter issued so far. The writer
    /// calls it only with counters of dots it issued (never one from a token or a peer),
    /// so the floor moves only by this node's own dots.
    pub fn record_dot_floor(txn: &mut dyn WriteTxn, counter: u64) -> Result<(), StoreError> {
        txn.put(Table::Meta, DOT_COUNTER, &counter.to_be_bytes())
    }

    /// Records a clean shutdown, durably: the next start keeps this epoch.
    pub fn mark_clean_shutdown(store: &dyn Store) -> Result<(), StoreError> {
        store.write(true, &mut |txn| txn.put(Table::Meta, RUNNING, &[0]))
    }
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], StoreError> {
    raw.try_into()
        .map_err(|_| StoreError::Corrupt(format!("meta value of {} bytes, want {N}", raw.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn epoch_moves_only_after_a_crash() {
        let store = MemoryStore::new();
        let first = Identity::load(&store, || 42).unwrap();
        assert_eq!(first.actor, Actor { node: 42, epoch: 0 });
        Identity::mark_clean_shutdown(&store).unwrap();
        let clean = Identity::load(&store, || 7).unwrap();
        assert_eq!(clean.actor, Actor { node: 42, epoch: 0 });
        // No clean shutdown this time.
        let crashed = Identity::load(&store, || 7).unwrap();
        assert_eq!(crashed.actor, Actor { node: 42, epoch: 1 });
        assert!(crashed.recovered_from_crash);
    }

    #[test]
    fn the_removed_mark_is_kept() {
        let store = MemoryStore::new();
        Identity::load(&store, || 42).unwrap();
        assert!(!Identity::has_removed(&store).unwrap());
        Identity::mark_removed(&store).unwrap();
        assert!(Identity::has_removed(&store).unwrap());
        assert!(!Identity::has_left(&store).unwrap());
    }

    #[test]
    fn dot_floor_survives_a_restart() {
        let store = MemoryStore::new();
        assert_eq!(Identity::load(&store, || 42).unwrap().dot_floor, 0);
        store
            .write(true, &mut |txn| Identity::record_dot_floor(txn, 17))
            .unwrap();
        Identity::mark_clean_shutdown(&store).unwrap();
        assert_eq!(Identity::load(&store, || 7).unwrap().dot_floor, 17);
    }
}
