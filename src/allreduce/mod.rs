//! Butterfly all-reduce of the flat gradient vector between peers (issue 4).
//! So far: the codecs, the plan (spans and chunks), the frame header and the
//! owner-side weighted reduction.

pub mod codec;
pub mod plan;
pub mod reduce;
pub mod wire;
