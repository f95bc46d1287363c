//! Butterfly all-reduce of the flat gradient vector between peers (issue 4).
//! So far: the wire codecs.

pub mod codec;
