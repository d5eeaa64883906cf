//! Inputs the fuzz targets failed on, pinned: each runs through its target (which must
//! now pass), with what it found.

use ringkv::version::{Actor, Dot, Payload, SiblingSet};
use ringkv_fuzz::alloc::peak_during;
use ringkv_fuzz::engine::unhex;
use ringkv_fuzz::{dvv, target};

fn run(name: &str, input: &[u8]) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    (t.run)(input);
}

/// http_batch: a body of many small object ops was parsed into `serde_json::Value`s before
/// the op count was checked, holding ~100 bytes per body byte (a 16 MiB body: 1.5 GB) only
/// to be refused with a 413. Fixed in `http::batch_body` (ops kept as raw text, counted past
/// the limit); the target's bounded-allocation check fails on the old parse.
#[test]
fn batch_of_many_object_ops_holds_little_memory() {
    let body = format!(r#"{{"ops":[{}]}}"#, [r#"{"":0}"#; 20_000].join(","));
    run("http_batch", body.as_bytes());
    // And at the real limit of ops: the kept ops, not the body, decide what is held.
    let (result, peak) = peak_during(|| {
        ringkv::http::fuzzing::batch(body.as_bytes(), 1000, 1 << 20).map(|ops| ops.len())
    });
    let e = result.expect_err("20,000 ops are over the limit");
    assert_eq!(e.status.as_u16(), 413, "{e:?}");
    assert!(
        peak < body.len(),
        "refusing a {}-byte batch held {peak} bytes",
        body.len()
    );
}

/// dvv (decoded mode): a set from the wire holding a version at counter 0. Every context
/// contains a dot at counter 0 (an absent actor is counter 0), so a sync with any set, even
/// the empty one, drops it: the empty set is not neutral for such a set. No actor issues
/// counter 0; the target now rejects such sets as malformed (the validator a peer's sets
/// go through should too).
#[test]
fn a_version_at_counter_zero_is_malformed() {
    let input = unhex(
        "01929293929201010281a556616c756592c4046c656674aa746578742f706c61696e0b93929202010181a5\
         56616c756592c4057269676874aa746578742f706c61696e0c829201010292020101929193929202010081\
         a556616c756592c4057269676874aa746578742f706c61696e0c8292010101920201019291939292030101\
         a9546f6d6273746f6e650d829201010292030101",
    );
    run("dvv", &input);
    let actor = Actor { node: 2, epoch: 1 };
    let (set, _) = SiblingSet::new()
        .update(None, actor, Payload::Tombstone, 0)
        .expect("a fresh counter");
    assert!(dvv::well_formed(&set));
    // The same set with its dot's counter at 0, as the wire can carry it.
    let bytes = rmp_serde::to_vec(&set).expect("encodes");
    let mut forged = bytes.clone();
    let at = forged
        .windows(3)
        .position(|w| w == [0x92, 0x02, 0x01])
        .expect("the actor [2, 1] in the dot");
    assert_eq!(forged[at + 3], 0x01, "the dot's counter follows its actor");
    forged[at + 3] = 0x00;
    let zero: SiblingSet = rmp_serde::from_slice(&forged).expect("the wire accepts it");
    assert_eq!(zero.versions()[0].dot, Dot { actor, counter: 0 });
    assert!(!dvv::well_formed(&zero));
    assert!(
        zero.sync(&SiblingSet::new()).is_empty(),
        "sync with nothing drops it"
    );
}

/// dvv (decoded mode, found by AFL++ in 90 s): a set from the wire whose context holds an
/// entry at counter 0. It is the same history as without the entry (`descends` says so), but
/// not the same value: a sync with it adds the entry, so "a descends b" no longer means "a
/// synced with b is a", and replicas' digests of one history differ. No node writes such an
/// entry; the target now rejects such sets as malformed (the validator a peer's sets go
/// through should too, or drop the entry).
#[test]
fn a_context_entry_at_counter_zero_is_malformed() {
    let input = unhex(
        "01929293929201010281a556616c756592c4046c656674aa7164676d2b6f6f656c710b93929202010181a5\
         56616c756592c4057269676874aa746578742f706c61696e0c829201010292020101929193929202010181\
         a556616c756592c4057269676874aa746578742f706c61696e0c8292010000920201019291939292030101\
         a9546f6d6273746f6e650d829201010292030101",
    );
    run("dvv", &input);
    let (a, _) = SiblingSet::new()
        .update(None, Actor { node: 2, epoch: 1 }, Payload::Tombstone, 0)
        .expect("a fresh counter");
    // `a`'s context {[2,1]: 1} with a zero entry for [1,0] in front, as the wire can carry it.
    let bytes = rmp_serde::to_vec(&a).expect("encodes");
    let ctx = [0x81, 0x92, 0x02, 0x01, 0x01];
    let at = bytes
        .windows(ctx.len())
        .rposition(|w| w == ctx)
        .expect("the context map");
    let mut forged = bytes[..at].to_vec();
    forged.extend_from_slice(&[0x82, 0x92, 0x01, 0x00, 0x00, 0x92, 0x02, 0x01, 0x01]);
    forged.extend_from_slice(&bytes[at + ctx.len()..]);
    let b: SiblingSet = rmp_serde::from_slice(&forged).expect("the wire accepts it");
    assert!(!dvv::well_formed(&b));
    assert!(a.descends(&b) && b.descends(&a), "one history");
    // Fixed: a vector's merge skips entries at counter 0, so a sync with it leaves the set
    // as it was, and a node refuses such a context where it enters.
    assert_eq!(a.sync(&b), a, "a sync with it leaves the set as it was");
    assert!(ringkv::version::check_vector(b.context(), 64).is_err());
}
