//! (transaction owner) transaction
