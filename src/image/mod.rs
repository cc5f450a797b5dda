//! Images: registry pull, content store, layer unpack (whiteouts -> overlay), image index.

pub mod types;
pub use types::ImageRuntimeConfig;
