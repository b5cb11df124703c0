//! (side effects owner) health
