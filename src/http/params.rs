//! Query parameters: parsed strictly, so that a typo is a 400 and never silently ignored.

use std::time::Duration;

use crate::coordinator::RequestOpts;
use crate::quorum::Quorum;

use super::error::ApiError;

pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// One `application/x-www-form-urlencoded` name or value: `+` is a space, and what the
/// escapes decode to must be UTF-8.
fn decode(raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| {
            ApiError::bad_param(format!(
                "query parameter {raw:?} is not UTF-8 once percent-decoded"
            ))
        })
}

/// The raw `name=value` pairs, decoded, checked against the names a route accepts.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        // Not `form_urlencoded::parse`: it decodes lossily, so `prefix=%FF` would silently
        // become the prefix U+FFFD and list keys the client did not ask for.
        let pairs: Vec<(String, String)> = raw
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((decode(name)?, decode(value)?))
            })
            .collect::<Result<_, ApiError>>()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_encoding_strictly() {
        let q = Query::parse(
            Some("prefix=a+b%2Fc&&end=%C3%A9&start"),
            &["prefix", "end", "start"],
        )
        .expect("valid query");
        assert_eq!(q.get("prefix"), Some("a b/c"));
        assert_eq!(q.get("end"), Some("\u{e9}"));
        assert_eq!(q.get("start"), Some(""));
        for bad in ["prefix=%FF", "prefix=%C3", "%FF=1"] {
            let e = Query::parse(Some(bad), &["prefix"])
                .err()
                .unwrap_or_else(|| panic!("{bad} was taken"));
            assert_eq!((e.status.as_u16(), e.code), (400, "bad_param"), "{bad}");
        }
        // An escape that is not one stays as it is, as in a form.
        assert_eq!(
            Query::parse(Some("prefix=%zz"), &["prefix"])
                .expect("taken")
                .get("prefix"),
            Some("%zz")
        );
    }
}
