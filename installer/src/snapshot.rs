//! (side effects owner) snapshot
