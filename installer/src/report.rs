//! (transaction owner) report
