//! (transaction owner) source
