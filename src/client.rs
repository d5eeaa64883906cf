//! The HTTP client of the API, for the CLI and the bench: the `ringkv-client` crate
//! (`client/`), re-exported so the node's own commands and tools use the one definition
//! that applications use.

pub use ringkv_client::*;
