//! (transaction owner) eligibility
