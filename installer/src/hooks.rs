//! (side effects owner) hooks
