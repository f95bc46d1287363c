//! The distributed-training network's roles (issue 5). So far: the
//! validator's scoring rules.

pub mod scoring;
