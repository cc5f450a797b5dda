//! Images: registry pull, content store, layer unpack (whiteouts -> overlay), image index.
//!
//! - [`archive`] and [`import`]: `berth image import`, loading docker-archive and OCI image
//!   layout tarballs into the store with a pull's guarantees.
//! - [`export`]: `berth image export`, images written as one docker-archive, layers re-tarred
//!   from their directories.
//! - [`reference`]: docker-style name normalization.
//! - [`registry`]: the registry side of a pull (oci-client, mirrors, auth, platform choice).
//! - [`store`]: [`ImageStore`], the image index in the metadata store and the layer directories
//!   `<root>/images/layers/<chain-id hex>/diff`, shared between images by chain ID, and the
//!   image config blobs `<root>/images/configs/<hex>`.
//! - [`unpack`] and [`whiteout`]: applying one layer tar to an empty diff directory with
//!   whiteouts translated for overlayfs.

pub mod archive;
pub mod early;
pub mod export;
pub mod import;
pub mod reference;
pub mod registry;
pub mod store;
pub mod types;
pub mod unpack;
pub mod whiteout;

#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod tests;

pub use reference::{ImageReference, ReferenceError};
pub use registry::RegistryAuth;
pub use store::{FsUsage, Image, ImageStore, LayerRecord};
pub use types::ImageRuntimeConfig;

use std::path::PathBuf;

/// Errors of the image module. Every variant names the image (as the user spelled it) or the
/// layer, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// The registry has no such manifest (or repository).
    #[error("image {image}: not found in registry {registry}: {message}")]
    NotFound { image: String, registry: String, message: String },
    /// The registry wants credentials we do not have, or rejected them.
    #[error("image {image}: registry {registry} requires authentication: {message}")]
    Unauthenticated { image: String, registry: String, message: String },
    /// The registry denied access with valid credentials.
    #[error("image {image}: registry {registry} denied access: {message}")]
    PermissionDenied { image: String, registry: String, message: String },
    /// The registry could not be reached (connection refused, DNS, TLS, timeout).
    #[error("image {image}: registry {registry} unreachable: {message}")]
    Unreachable { image: String, registry: String, message: String },
    /// Any other registry protocol failure (bad manifest, unsupported media type, server error).
    #[error("image {image}: registry {registry}: {message}")]
    Registry { image: String, registry: String, message: String },
    /// A digest did not match: blob content, config diff_ids vs uncompressed layers.
    #[error("image {image}: {what}: expected {expected}, got {actual}")]
    DigestMismatch { image: String, what: String, expected: String, actual: String },
    /// The image config is unusable (not JSON, layers and diff_ids disagree, ...).
    #[error("image {image}: config: {message}")]
    BadConfig { image: String, message: String },
    /// A layer tar entry is hostile or cannot be applied.
    #[error("layer {layer}: entry {entry:?}: {message}")]
    Unpack { layer: String, entry: String, message: String },
    /// An image archive (`berth image import`) is unreadable or not what it claims: `archive`
    /// names it (a path, `-` for stdin, `request body`), `message` the entry or image and what
    /// was expected (see [`archive`]).
    #[error("archive {archive}: {message}")]
    Archive { archive: String, message: String },
    /// A filesystem operation of the store failed.
    #[error("image store {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The metadata store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> ImageError {
        ImageError::Io { path: path.into(), message: e.to_string() }
    }
}
