//! chitchat datagrams made by hand, as a buggy or hostile peer would send them: chitchat
//! keeps its message encoder crate-private, so the tests write its wire format (v0
//! digests, an uncompressed delta block) with the public `Serializable` of its parts.

use std::net::SocketAddr;

use chitchat::{ChitchatId, Serializable};

/// chitchat's magic number, and its message and delta-op tags (`message_serialize.rs`,
/// `delta.rs`, `serialize.rs`).
const MAGIC: u16 = 45_139;
const PROTOCOL_V0: u8 = 0;
const SYN: u8 = 0;
const ACK: u8 = 2;
const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
const OP_SET_MAX_VERSION: u8 = 2;
const BLOCK_END: u8 = 0;
const BLOCK_UNCOMPRESSED: u8 = 2;
const KV_SET: u8 = 0;

fn header(message_type: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    MAGIC.serialize(&mut buf);
    buf.push(PROTOCOL_V0);
    buf.push(message_type);
    buf
}

/// A fake node id: never a ringkv node id (those are 16 hex digits).
pub fn fake_id(n: u64, gossip: SocketAddr) -> ChitchatId {
    ChitchatId::new(format!("fake-{n}"), 1, gossip)
}

/// A `Syn` whose digest names `ids`, each at heartbeat `heartbeat`: chitchat starts
/// tracking every id it has not seen (`report_heartbeats_in_digest`).
pub fn syn(cluster_id: &str, ids: &[ChitchatId], heartbeat: u64) -> Vec<u8> {
    let mut buf = header(SYN);
    u16::try_from(ids.len())
        .expect("at most 65,535 ids in a v0 digest")
        .serialize(&mut buf);
    for id in ids {
        id.serialize(&mut buf);
        heartbeat.serialize(&mut buf); // a `Heartbeat` is its u64
        0u64.serialize(&mut buf); // last_gc_version
        0u64.serialize(&mut buf); // max_version
    }
    cluster_id.serialize(&mut buf);
    buf
}

/// An `Ack` whose delta for `id` sets one key at `key_version` and then declares the
/// node's max version to be `max_version`. With `max_version < key_version`, chitchat
/// 0.13 applies the key, raises the node's max version to `key_version`, and then
/// asserts `node_delta.max_version >= self.max_version` (`state.rs:237`): a panic.
pub fn ack_with_low_max_version(id: &ChitchatId, key_version: u64, max_version: u64) -> Vec<u8> {
    let mut ops = Vec::new();
    ops.push(OP_NODE);
    id.serialize(&mut ops);
    0u64.serialize(&mut ops); // last_gc_version
    0u64.serialize(&mut ops); // from_version_excluded
    ops.push(OP_KEY_VALUE);
    "k".serialize(&mut ops);
    "v".serialize(&mut ops);
    key_version.serialize(&mut ops);
    ops.push(KV_SET);
    ops.push(OP_SET_MAX_VERSION);
    max_version.serialize(&mut ops);

    let mut buf = header(ACK);
    buf.push(BLOCK_UNCOMPRESSED);
    u16::try_from(ops.len())
        .expect("one small block")
        .serialize(&mut buf);
    buf.extend_from_slice(&ops);
    buf.push(BLOCK_END);
    buf
}

/// An `Ack` whose delta gives `id` the keys `keys`, at versions `from + 1` on, and
/// declares the node's max version to be the last of them: a well-formed delta, as a
/// buggy peer would keep sending to grow a node's state. At most one block (64 KiB).
pub fn ack_with_keys(id: &ChitchatId, from: u64, keys: &[(String, String)]) -> Vec<u8> {
    let mut ops = Vec::new();
    ops.push(OP_NODE);
    id.serialize(&mut ops);
    0u64.serialize(&mut ops); // last_gc_version
    from.serialize(&mut ops); // from_version_excluded
    let mut version = from;
    for (key, value) in keys {
        version += 1;
        ops.push(OP_KEY_VALUE);
        key.as_str().serialize(&mut ops);
        value.as_str().serialize(&mut ops);
        version.serialize(&mut ops);
        ops.push(KV_SET);
    }
    ops.push(OP_SET_MAX_VERSION);
    version.serialize(&mut ops);

    let mut buf = header(ACK);
    buf.push(BLOCK_UNCOMPRESSED);
    u16::try_from(ops.len())
        .expect("the keys fit one block")
        .serialize(&mut buf);
    buf.extend_from_slice(&ops);
    buf.push(BLOCK_END);
    buf
}
