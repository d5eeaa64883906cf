//! How sibling sets look in JSON answers: GET's 300, listings, batch results, debug.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use crate::key::Key;
use crate::version::{Actor, CausalityToken, Payload, SiblingSet, Version};

#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct SiblingJson {
    /// The value: as is when `encoding` is `utf8`, standard padded base64 otherwise.
    pub value: String,
    #[schema(value_type = super::openapi::Encoding)]
    pub encoding: &'static str,
    pub content_type: String,
}

/// A value as JSON text: UTF-8 as is, anything else as standard base64.
pub fn encode_value(data: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(data) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (STANDARD.encode(data), "base64"),
    }
}

/// The live siblings of a set, in dot order.
pub fn live_siblings(set: &SiblingSet) -> Vec<SiblingJson> {
    set.live().filter_map(sibling).collect()
}

fn sibling(v: &Version) -> Option<SiblingJson> {
    match &v.payload {
        Payload::Value { data, content_type } => {
            let (value, encoding) = encode_value(data);
            Some(SiblingJson {
                value,
                encoding,
                content_type: content_type.clone(),
            })
        }
        Payload::Tombstone => None,
    }
}

/// The key-bound token of `set`, as every answer about `key` carries it. An empty set (a
/// key never written, or read back as nothing) still gets one: the token of the empty
/// context, bound to the key, so a write after a 404 says what it saw.
pub fn token(key: &Key, set: &SiblingSet) -> String {
    token_for(key.as_bytes(), set)
}

fn token_for(key: &[u8], set: &SiblingSet) -> String {
    let shown: Vec<Actor> = set.versions().iter().map(|v| v.dot.actor).collect();
    CausalityToken::for_key(key, set.context(), &shown).encode()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DotJson {
    pub actor: String,
    pub counter: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredVersionJson {
    pub dot: DotJson,
    pub tombstone: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::openapi::Encoding>)]
    pub encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub written_at_ms: u64,
}

/// Everything a node stores for a key, for `/debug/local`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredSetJson {
    pub key: String,
    pub versions: Vec<StoredVersionJson>,
    pub context: Vec<DotJson>,
    pub causality_token: String,
}

pub fn stored_set(key: &str, set: &SiblingSet) -> StoredSetJson {
    let versions = set
        .versions()
        .iter()
        .map(|v| {
            let (value, encoding, content_type) = match &v.payload {
                Payload::Value { data, content_type } => {
                    let (value, encoding) = encode_value(data);
                    (Some(value), Some(encoding), Some(content_type.clone()))
                }
                Payload::Tombstone => (None, None, None),
            };
            StoredVersionJson {
                dot: DotJson {
                    actor: v.dot.actor.to_string(),
                    counter: v.dot.counter,
                },
                tombstone: v.payload.is_tombstone(),
                value,
                encoding,
                content_type,
                written_at_ms: v.written_at_ms,
            }
        })
        .collect();
    let context = set
        .context()
        .iter()
        .map(|(actor, &counter)| DotJson {
            actor: actor.to_string(),
            counter,
        })
        .collect();
    StoredSetJson {
        key: key.to_owned(),
        versions,
        context,
        causality_token: token_for(key.as_bytes(), set),
    }
}
