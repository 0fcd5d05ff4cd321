//! The `tollgate` binary's library half: configuration loading and the
//! composition of services, so integration tests can drive them in-process.

pub mod admin_cli;
pub mod app;
pub mod config;
pub mod memory;
pub mod node;
pub mod roles;
