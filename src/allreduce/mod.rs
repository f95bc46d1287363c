//! Butterfly all-reduce of the flat gradient vector between peers (issue 4).
//! So far: the wire codecs and the plan (spans and chunks).

pub mod codec;
pub mod plan;
