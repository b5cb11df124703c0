//! (side effects owner) service
