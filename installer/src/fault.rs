//! (transaction owner) fault
