//! (transaction owner) journal
