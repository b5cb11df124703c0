//! (side effects owner) quiesce
