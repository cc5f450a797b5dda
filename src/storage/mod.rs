//! Container storage: overlay rootfs mounts, tmpfs mounts (the pod's `/dev/shm`), and
//! filesystem usage for CRI `ImageFsInfo` / `ContainerFsInfo` / container stats.
//!
//! Layers themselves are unpacked by `image/` into one diff directory each; this module only
//! stacks them (overlayfs: lower layers read-only, one writable upper per container).

pub mod idmap;
mod mounts;
mod usage;

pub use mounts::{
    is_mounted, mount_layers_readonly, mount_overlay, mount_short_lowers, mount_source_of, mount_tmpfs, unmount, MAX_MOUNT_DATA,
};
pub use usage::dir_usage;

use std::path::PathBuf;

/// Errors from mounting and unmounting. Each names the target and what failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A mount(2) or umount2(2) call failed.
    #[error("{op} {target}: {source}")]
    Syscall {
        op: &'static str,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// A directory could not be created or inspected.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The arguments cannot form a valid mount (no lower layer, a path with `:` or `,`, mount
    /// data longer than one page).
    #[error("mount {target}: {reason}")]
    Invalid { target: PathBuf, reason: String },
}
