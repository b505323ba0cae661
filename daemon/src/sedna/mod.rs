//! Drop-in compatibility with KubeEdge-Sedna joint inference (docs/sedna.md): its HTTP
//! protocol between edge and cloud on both sides.

pub mod http_client;
pub mod http_server;
// Sedna's environment contract, LC reports, and import-sedna.
pub mod env;
pub mod import;
pub mod lc;
mod post;
