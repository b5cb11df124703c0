//! (transaction owner) commands
