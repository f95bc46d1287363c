//! Butterfly all-reduce of the flat gradient vector between peers: every
//! member owns a span, receives everyone's chunks of it (scatter-reduce),
//! averages them and sends the average back to all (all-gather), over one
//! mio event loop of raw TCP connections. `Peer::all_reduce` is the call.

pub mod audit;
pub mod codec;
mod conn;
mod convert;
pub mod group;
pub mod handshake;
pub mod identity;
pub mod plan;
pub mod projection;
pub mod reduce;
pub mod report;
pub mod round;
pub mod ruling;
mod topk;
pub mod wire;

pub use group::{Fault, Group, Member, Settings};
pub use identity::{Identity, PublicKey};
pub use report::{Failure, Report, SpanStatus};
pub use round::{Peer, SetupError};
