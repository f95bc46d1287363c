//! Butterfly all-reduce of the flat gradient vector between peers (issue 4).
//! So far: the codecs, the plan (spans and chunks) and the frame header.

pub mod codec;
pub mod plan;
pub mod wire;
