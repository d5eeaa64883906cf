//! Query parameters: parsed strictly, so that a typo is a 400 and never silently ignored.

use std::time::Duration;

use crate::coordinator::RequestOpts;
use crate::quorum::Quorum;

use super::error::ApiError;

pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// The raw `name=value` pairs, decoded, checked against the names a route accepts.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (name, _) in &pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_param(format!(
                    "unknown query parameter {name:?}; this route takes {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn quorum(&self, name: &str, n: usize) -> Result<Option<Quorum>, ApiError> {
        self.get(name)
            .map(|v| Quorum::parse(v, n).map_err(|e| ApiError::bad_param(format!("{name}: {e}"))))
            .transpose()
    }

    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(ApiError::bad_param(format!(
                "{name}: expected true or false, got {v:?}"
            ))),
        }
    }

    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::bad_param(format!(
                    "{name}: expected a number in {}..{}, got {v:?}",
                    range.start(),
                    range.end()
                ))),
            },
        }
    }

    /// `r`, `w` and `timeout_ms`, validated against the configured N.
    pub fn request_opts(
        &self,
        n: usize,
        default_timeout: Duration,
    ) -> Result<RequestOpts, ApiError> {
        let timeout = self
            .number("timeout_ms", 1..=MAX_TIMEOUT_MS)?
            .map_or(default_timeout, Duration::from_millis);
        Ok(RequestOpts {
            r: self.quorum("r", n)?,
            w: self.quorum("w", n)?,
            timeout,
        })
    }
}
