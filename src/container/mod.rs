//! Container lifecycle (being written; see the lead).

pub mod spec;
pub mod user;
