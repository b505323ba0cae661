//! Subcommands that are more than a few lines.

pub mod bench_dispatch;
pub mod bench_pipeline;
pub mod bench_surge;
pub mod bench_uplink;
pub mod demo;
pub mod detect;
