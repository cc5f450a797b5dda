//! berth: a Kubernetes CRI runtime.
//!
//! Layering (see docs/architecture.md): `server` decodes CRI requests and calls one domain module
//! (`sandbox`, `container`, `image`); those use the lower modules (`oci`, `monitor`, `storage`,
//! `network`, `state`). Lower modules never reach up into `server`.
#![deny(unsafe_code)]

pub mod apparmor;
pub mod base64;
pub mod cgroups;
pub mod chroot;
pub mod cleanup;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod error;
pub mod exits;

pub mod handlers;
pub mod heap;
pub mod image;
pub mod inspect;
pub mod metrics;
pub mod monitor;
pub mod mountinfo;
pub mod network;
pub mod nri;
pub mod nrihost;
pub mod oci;
pub mod pause;
pub mod records;
pub mod sandbox;
pub mod sdnotify;
pub mod server;
pub mod spec;
pub mod state;
pub mod stats;
pub mod stopdeadline;
pub mod storage;
pub mod streaming;
pub mod util;
