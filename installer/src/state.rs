//! (transaction owner) state
