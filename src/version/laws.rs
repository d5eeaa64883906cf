//! Property tests of the sibling set's laws (written next).
