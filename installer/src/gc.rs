//! (transaction owner) gc
