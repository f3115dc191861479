//! augur: a proxy-wasm filter for Envoy that decides, per request, which
//! features of a new release a request gets and which stack serves it.
//!
//! Pipeline, one module per stage (all pure, natively tested, each owning its
//! section of the configuration): [`profile`] → [`model`] → [`segments`] →
//! [`routing`] → [`flags`] → [`record`] / [`metrics`], composed by [`engine`];
//! [`config`] assembles the sections. [`stream`] is the runtime of one
//! configuration on one worker (streams and ticks) against small host traits;
//! [`rollback`] is the in-proxy automated rollback; `filter` and `abi` (wasm
//! only) are the thin proxy-wasm adapter; [`offline`] (native only) runs the
//! same runtime without a proxy (`augur simulate`, and the tests' host).

pub mod config;
pub mod control;
pub mod engine;
pub mod flags;
pub mod hash;
pub mod headers;
pub mod metrics;
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod offline;
pub mod outcome;
pub mod profile;
pub mod record;
pub mod rollback;
pub mod routing;
pub mod segments;
pub mod stream;
#[doc(hidden)]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
