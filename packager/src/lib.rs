//! slipway-pack library
