//! berth-conformance: a CRI v1 test suite that runs against any CRI endpoint.
//!
//! The harness ([`harness`]) sets up a local registry with test images, a CNI config and the
//! daemon under test (berth, containerd, or an endpoint given with `BERTH_ENDPOINT`); the cases
//! ([`cases`]) each check one user-visible behaviour. The test binary `tests/cri.rs` runs them.
#![deny(unsafe_code)]

pub mod cases;
pub mod cgroups;
pub mod client;
pub mod ctx;
pub mod daemon;
pub mod harness;
pub mod http;
pub mod imagekit;
pub mod images;
pub mod nri_plugin;
pub mod proc;
pub mod rawh2;
pub mod registry;
pub mod stream_client;
