//! Bittensor compatibility (issue 7): sr25519 hotkeys and the axon wire
//! convention of the `bittensor` Python SDK 10.x, so the Python tooling
//! and dtrain can query each other.

pub mod axon;
pub mod btauth;
pub mod dendrite;
pub mod hotkey;
