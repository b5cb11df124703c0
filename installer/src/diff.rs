//! (verify/stage owner) diff
