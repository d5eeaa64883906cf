//! The ring (being written).
