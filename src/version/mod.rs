//! Causality: actors, dots, version vectors, sibling sets and the client's causality token.
//!
//! The model is the dotted version vector of Riak 2.0 (Preguiça et al.): every stored
//! version carries the single event (its *dot*) that created it, and the sibling set as a
//! whole carries a causal context (a version vector) of every event it has seen. A version
//! is dropped only when the other side has seen its dot and no longer holds it, which means
//! something newer replaced it. That rule is what keeps siblings bounded by the real write
//! concurrency instead of by the number of clients.

mod siblings;
mod token;
mod vv;
mod wellformed;

pub use siblings::{CounterOverflow, Payload, SiblingSet, Version};
pub use token::{key_hash, CausalityToken, TokenError, MAX_TOKEN_ACTORS, TOKEN_FORMAT};
pub use vv::{Actor, Dot, VersionVector};
pub use wellformed::{check_vector, Malformed};

#[cfg(test)]
mod laws;

#[cfg(test)]
mod forged;
