//! Platform glue for KubeEdge-Sedna (docs/sedna.md): its environment contract, LC reports, and
//! import-sedna. Its HTTP protocol lives with the joint-inference clients (`joint::sedna_http`)
//! and the `helmetd cloud` service (`cloud::sedna_http`).

pub mod env;
pub mod import;
pub mod lc;
pub(crate) mod post;
