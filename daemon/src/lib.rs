//! The helmetd daemon as a library: configuration, commands and the control path.
//! `main.rs` is only the binary's edge (argument parsing, exit codes).

pub mod alerts;
pub mod autoscaler;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod http;
pub mod joint;
pub mod kubeedge;
pub mod logging;
pub mod motion;
pub mod page;
pub mod run;
pub mod sedna;
pub mod spool;
pub mod supervisor;
pub mod systemd;
pub mod telemetry;
pub mod track;
pub mod uplink;
pub mod worker;
pub mod zones;
