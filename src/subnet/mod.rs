//! The distributed-training network's roles (issue 5). So far: the
//! control plane (signed queries, the bounded server, the client, node
//! keys) and the validator's scoring rules.

pub mod auth;
pub mod client;
pub mod keyfile;
pub mod protocol;
pub mod scoring;
pub mod server;
