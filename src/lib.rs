//! dtrain: decentralized training of GPT-2 language models.
//!
//! - [`model`]: GPT-2's configuration, arena layout, the forward/backward
//!   call lists and Hugging Face checkpoints;
//! - [`engine`]: the kernel-set trait and its CPU implementation;
//! - [`optim`]: AdamW, LAMB and gradient clipping;
//! - [`data`]: text and token-shard inputs and the batch loader;
//! - [`train`]: the single-node training loop behind `dtrain train`;
//! - [`allreduce`]: butterfly all-reduce between peers over TCP;
//! - [`subnet`]: the network's roles (so far the validator's scoring);
//! - [`diloco`]: inner steps and the outer Nesterov step (DiLoCo mode);
//! - [`hub`]: where model versions are published, tagged by epoch.

pub mod allreduce;
pub mod bench;
pub mod data;
pub mod diloco;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod rng;
pub mod subnet;
pub mod testnet;
pub mod train;
