//! The helmetd daemon as a library: configuration, commands and the control path.
//! `main.rs` is only the binary's edge (argument parsing, exit codes).

pub mod autoscaler;
pub mod commands;
pub mod config;
pub mod logging;
