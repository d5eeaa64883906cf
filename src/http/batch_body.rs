//! The body of `POST /batch`, read without building it: each op is kept as its raw JSON
//! text (borrowed from the body), and ops past the limit are counted, not kept.
//!
//! Parsing the body into `serde_json::Value`s first, as this did, held about 100 bytes per
//! body byte before the op count was checked (an op `{"":0}` of 7 bytes is a map node of
//! ~650): one 16 MiB body held 1.5 GB only to be refused with a 413. Now the parse holds a
//! slice per kept op, at most `max_ops` of them; each op is then parsed into its own small
//! typed struct, whose strings are bounded by the op's text.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The ops of a body: the first `max_ops` as raw JSON, and how many the body holds.
pub(super) struct Ops<'a> {
    pub kept: Vec<&'a RawValue>,
    pub total: usize,
}

/// Reads `{"ops": [...]}` (other fields ignored, as before), keeping at most `max_ops` ops.
pub(super) fn parse(body: &[u8], max_ops: usize) -> Result<Ops<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let ops = Body { max_ops }.deserialize(&mut de)?;
    de.end()?;
    Ok(ops)
}

struct Body {
    max_ops: usize,
}

impl<'de> DeserializeSeed<'de> for Body {
    type Value = Ops<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Ops<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body {
    type Value = Ops<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with an \"ops\" array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ops<'de>, A::Error> {
        let mut ops = None;
        // A field name is allocated and dropped before the next: bounded by its own text.
        while let Some(name) = map.next_key::<String>()? {
            if name != "ops" {
                map.next_value::<IgnoredAny>()?;
            } else if ops.is_some() {
                return Err(de::Error::duplicate_field("ops"));
            } else {
                ops = Some(map.next_value_seed(List {
                    max_ops: self.max_ops,
                })?);
            }
        }
        ops.ok_or_else(|| de::Error::missing_field("ops"))
    }
}

struct List {
    max_ops: usize,
}

impl<'de> DeserializeSeed<'de> for List {
    type Value = Ops<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Ops<'de>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List {
    type Value = Ops<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of ops")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ops<'de>, A::Error> {
        let mut kept = Vec::new();
        while kept.len() < self.max_ops {
            match seq.next_element::<&'de RawValue>()? {
                Some(op) => kept.push(op),
                None => {
                    let total = kept.len();
                    return Ok(Ops { kept, total });
                }
            }
        }
        // Past the limit the batch is refused (413 with the count): count, keep nothing.
        let mut total = kept.len();
        while seq.next_element::<IgnoredAny>()?.is_some() {
            total = total.saturating_add(1);
        }
        Ok(Ops { kept, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ops_up_to_the_limit_and_counts_the_rest() {
        let ops = parse(br#"{"x":[1,{"y":2}],"ops":[{"op":"get"},1,"s",[2]]}"#, 2).unwrap();
        assert_eq!(ops.total, 4);
        let kept: Vec<&str> = ops.kept.iter().map(|r| r.get()).collect();
        assert_eq!(kept, [r#"{"op":"get"}"#, "1"]);
        let all = parse(br#"{"ops":[]}"#, 2).unwrap();
        assert_eq!((all.kept.len(), all.total), (0, 0));
    }

    #[test]
    fn refuses_what_is_not_one_batch_object() {
        for body in [
            &br#"[1]"#[..],
            br#"{}"#,
            br#"{"ops":{}}"#,
            br#"{"ops":[],"ops":[]}"#,
            br#"{"ops":[]} x"#,
            br#"{"ops":[1,]}"#,
            b"",
        ] {
            assert!(
                parse(body, 10).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
