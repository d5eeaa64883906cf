//! The calls that are not on keys: readiness, `/cluster`, the admin routes, any JSON
//! route (`/debug/*`).

use percent_encoding::utf8_percent_encode;
use reqwest::StatusCode;

use crate::client::{api_error, Idempotent, ESCAPES};
use crate::{Client, ClientError};

impl Client {
    /// `POST` to an admin route (`/admin/leave`…); returns the JSON answer. Not re-sent
    /// once it reached a node.
    pub async fn admin(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .send(Idempotent::No, |http, base| {
                http.post(format!("{base}{path}"))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        self.json(resp, "an admin answer").await
    }

    /// `POST /admin/remove/{id}`: takes a member out of the ring. A live one is refused
    /// (409 `member_live`) unless `force`.
    pub async fn remove(&self, id: &str, force: bool) -> Result<serde_json::Value, ClientError> {
        let id = utf8_percent_encode(id, ESCAPES);
        let query = if force { "?force=true" } else { "" };
        self.admin(&format!("/admin/remove/{id}{query}")).await
    }

    /// `GET /ready`: `Ok` once the node serves requests, its error (`not_ready`) before.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.get_json("/ready").await.map(|_| ())
    }

    /// `GET /cluster`, as JSON.
    pub async fn cluster(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/cluster").await
    }

    /// Whether the node itself stores `key` (`GET /debug/local/{key}`), tombstones
    /// included. Asks the node that answers: meant for a client of one node.
    pub async fn stores(&self, key: &str) -> Result<bool, ClientError> {
        Ok(self.local(key).await?.is_some())
    }

    /// The node's own sibling set for `key` (`GET /debug/local/{key}`), tombstones
    /// included; `None` when it stores nothing for the key. Asks the node that answers:
    /// meant for a client of one node.
    pub async fn local(&self, key: &str) -> Result<Option<serde_json::Value>, ClientError> {
        let path = format!("/debug/local/{}", utf8_percent_encode(key, ESCAPES));
        match self.get_json(&path).await {
            Ok(set) => Ok(Some(set)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET` any route that answers JSON (`/debug/replication`, `/debug/keys?…`); the
    /// path includes its query string.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .send(Idempotent::Yes, |http, base| {
                http.get(format!("{base}{path}"))
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(api_error(resp).await);
        }
        self.json(resp, "a JSON answer").await
    }
}
