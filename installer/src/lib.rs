//! slipway installer library
