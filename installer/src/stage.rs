//! (verify/stage owner) stage
