//! network: a mini-libcni (conflist loading, ADD/DEL, result cache, capabilities) and pinned
//! network namespaces.

pub mod cache;
pub mod conf;
pub mod exec;
pub mod netns;
mod types;

pub use types::{AttachRequest, AttachResult, NetworkError, PortMapping};
