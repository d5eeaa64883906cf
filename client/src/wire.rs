//! The JSON bodies of the API as this client reads and writes them: GET's 300, a listing
//! page, a batch and its results, an error. Values travel as UTF-8 text or base64
//! (`encoding`); here they are decoded to bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// One live version of a key: its bytes and the media type it was stored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    pub value: Bytes,
    pub content_type: String,
}

/// A sibling as the node writes it.
#[derive(Deserialize)]
pub(crate) struct SiblingJson {
    value: String,
    encoding: String,
    content_type: String,
}

impl SiblingJson {
    fn decode(self) -> Result<Sibling, ClientError> {
        let value = match self.encoding.as_str() {
            "base64" => Bytes::from(STANDARD.decode(self.value).map_err(ClientError::Base64)?),
            // `utf8`; an encoding this client does not know is shown as the text it is.
            _ => Bytes::from(self.value),
        };
        Ok(Sibling {
            value,
            content_type: self.content_type,
        })
    }
}

pub(crate) fn decode_siblings(siblings: Vec<SiblingJson>) -> Result<Vec<Sibling>, ClientError> {
    siblings.into_iter().map(SiblingJson::decode).collect()
}

/// GET's 300.
#[derive(Deserialize)]
pub(crate) struct SiblingsBody {
    pub siblings: Vec<SiblingJson>,
}

/// `{"error": code, "message": text}`.
#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// One key of a listing page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListItem {
    pub key: String,
    pub siblings: Vec<Sibling>,
    pub token: String,
}

/// One page of `GET /kv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub items: Vec<ListItem>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ListItemJson {
    key: String,
    siblings: Vec<SiblingJson>,
    causality_token: String,
}

#[derive(Deserialize)]
pub(crate) struct ListBodyJson {
    items: Vec<ListItemJson>,
    next_cursor: Option<String>,
}

impl ListBodyJson {
    pub(crate) fn decode(self) -> Result<ListPage, ClientError> {
        let items = self
            .items
            .into_iter()
            .map(|i| {
                Ok(ListItem {
                    key: i.key,
                    siblings: decode_siblings(i.siblings)?,
                    token: i.causality_token,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(ListPage {
            items,
            next_cursor: self.next_cursor,
        })
    }
}

/// One op of `POST /batch`. Build with [`BatchOp::get`], [`BatchOp::put`],
/// [`BatchOp::delete`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BatchOp {
    op: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl BatchOp {
    fn new(op: &'static str, key: impl Into<String>) -> Self {
        BatchOp {
            op,
            key: key.into(),
            value: None,
            encoding: None,
            content_type: None,
            token: None,
        }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Self::new("get", key)
    }

    /// A put of `value`: sent as text when it is UTF-8, as base64 otherwise.
    pub fn put(key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        let (value, encoding) = match std::str::from_utf8(value.as_ref()) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (STANDARD.encode(value.as_ref()), "base64"),
        };
        BatchOp {
            value: Some(value),
            encoding: Some(encoding),
            ..Self::new("put", key)
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Self::new("delete", key)
    }

    /// The causality token of what a put or delete replaces.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    pub(crate) fn is_read(&self) -> bool {
        self.op == "get"
    }
}

#[derive(Serialize)]
pub(crate) struct BatchRequest<'a> {
    pub ops: &'a [BatchOp],
}

/// One op's result, as the single-key call would have answered: `status` 200/300 with
/// siblings, 204 for a write, or an error `code` and `message`. The token is there for
/// reads (a 404 too) and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub status: u16,
    pub siblings: Vec<Sibling>,
    pub token: Option<String>,
    pub error: Option<String>,
    pub message: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct BatchResultJson {
    status: u16,
    #[serde(default)]
    siblings: Option<Vec<SiblingJson>>,
    causality_token: Option<String>,
    error: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct BatchBodyJson {
    pub results: Vec<BatchResultJson>,
}

impl BatchResultJson {
    pub(crate) fn decode(self) -> Result<BatchResult, ClientError> {
        Ok(BatchResult {
            status: self.status,
            siblings: decode_siblings(self.siblings.unwrap_or_default())?,
            token: self.causality_token,
            error: self.error,
            message: self.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_decode_from_text_and_base64() {
        let json = r#"{"siblings":[
            {"value":"hi","encoding":"utf8","content_type":"text/plain"},
            {"value":"/wA=","encoding":"base64","content_type":"application/octet-stream"}
        ],"causality_token":"t"}"#;
        let body: SiblingsBody = serde_json::from_str(json).unwrap();
        let s = decode_siblings(body.siblings).unwrap();
        assert_eq!(s[0].value.as_ref(), b"hi");
        assert_eq!(s[1].value.as_ref(), &[0xff, 0x00]);
    }

    #[test]
    fn bad_base64_is_an_error_not_a_value() {
        let json = r#"{"siblings":[{"value":"!!","encoding":"base64","content_type":"x/y"}]}"#;
        let body: SiblingsBody = serde_json::from_str(json).unwrap();
        assert!(matches!(
            decode_siblings(body.siblings),
            Err(ClientError::Base64(_))
        ));
    }

    #[test]
    fn a_binary_put_travels_as_base64() {
        let op = BatchOp::put("k", [0xffu8, 0]).token("t");
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op":"put","key":"k","value":"/wA=","encoding":"base64","token":"t"})
        );
        let text = serde_json::to_value(BatchOp::get("k")).unwrap();
        assert_eq!(text, serde_json::json!({"op":"get","key":"k"}));
    }
}
