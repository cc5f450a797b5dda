//! What an OCI runtime says it supports: `<runtime> features` (OCI runtime-spec features.md).
//!
//! Placeholder (issue #5): filled with the parsed `features` document.
