//! augur: a proxy-wasm filter for Envoy that decides, per request, which
//! features of a new release a request gets and which stack serves it.
//!
//! Pipeline, one module per stage (all pure, natively tested):
//! [`config`] → [`profile`] → [`model`] → [`flags`] → [`routing`] → [`record`] / [`metrics`],
//! composed by [`engine`]; [`host`] runs a request against a small host trait,
//! and `filter` (wasm only) is the thin proxy-wasm adapter.

pub mod config;
pub mod control;
pub mod engine;
pub mod flags;
pub mod hash;
pub mod headers;
pub mod host;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod record;
pub mod rollback;
pub mod routing;
pub mod segments;
#[doc(hidden)]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
