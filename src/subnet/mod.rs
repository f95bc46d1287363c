//! The distributed-training network's roles (issue 5). So far: the
//! control plane (signed queries, the bounded server, the client, node
//! keys), the registry (trait and file) and the validator's scoring rules.

pub mod auth;
pub mod bittensor;
pub mod client;
pub mod dashboard;
pub mod endpoint;
mod epoch_record;
pub mod gauntlet;
pub mod grad_transfer;
pub mod inner_check;
pub mod keyfile;
pub mod links;
pub mod metrics;
pub mod miner;
pub mod node;
pub mod protocol;
pub mod registry;
pub mod scoring;
pub mod server;
pub mod swarm;
pub mod validator;
pub mod work;
