//! (verify/stage owner) verify
