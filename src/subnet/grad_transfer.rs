//! A miner's gradient between its engine and the all-reduce, which works on
//! a host vector.
//!
//! On an engine behind a bus (a GPU) with the fp16 or bf16 codec, only
//! encoded bytes cross the bus: the device encodes every span but this
//! peer's own (which the owner averages in fp32, so it comes over exact),
//! the host decodes those bytes into the vector the round encodes again —
//! to the very same bytes, since fp16/bf16 values re-encode to themselves —
//! and after the round the host encodes the result and the device decodes
//! it. The averaged values are decoded bytes, which re-encode exactly, so
//! the device ends with the same bits as every other peer's host vector: the
//! round's result is unchanged, and the bus carries 2 bytes a value each
//! way instead of 4. Gradients with a NaN or inf, fp32 and int8 (whose
//! blockwise scales do not re-encode exactly) take the plain fp32 path, so
//! the round still sees and rejects non-finite values as it would.

use crate::allreduce::codec::Codec;
use crate::engine::Engine;
use crate::model::Gpt;
use std::ops::Range;

/// Buffers kept between rounds (no page faults on the vector each round).
#[derive(Default)]
pub struct GradTransfer {
    host: Vec<f32>,
    bytes: Vec<u8>,
    codec: Option<Codec>,
}

impl GradTransfer {
    pub fn new() -> GradTransfer {
        GradTransfer::default()
    }

    /// Whether the last download went encoded (with this codec).
    pub fn encoded(&self) -> Option<Codec> {
        self.codec
    }

    /// The model's gradients as the all-reduce's input vector; `own` is
    /// this peer's span in the round's plan.
    pub fn download<E: Engine>(&mut self, model: &Gpt<E>, codec: Codec, own: Range<usize>) -> &mut Vec<f32> {
        let total = model.layout.total;
        let encodable = matches!(codec, Codec::F16 | Codec::Bf16) && model.engine.behind_bus();
        self.codec = (encodable && model.grad_sum_squares().is_finite()).then_some(codec);
        self.host.resize(total, 0.0);
        let Some(codec) = self.codec else {
            model.read_grad_range_into(0, &mut self.host);
            return &mut self.host;
        };
        for r in [0..own.start, own.clone(), own.end..total] {
            if r.is_empty() {
                continue;
            }
            if r == own {
                model.read_grad_range_into(r.start, &mut self.host[r]);
                continue;
            }
            self.bytes.resize(codec.encoded_len(r.len()), 0);
            model.read_grads_encoded(codec, r.clone(), &mut self.bytes);
            codec.decode(&self.bytes, &mut self.host[r]).expect("the device's own finite encoding decodes");
        }
        &mut self.host
    }

    /// The round's result back into the model's gradients, with the spans
    /// nobody averaged set to zero (they are not applied).
    pub fn upload<E: Engine>(&mut self, model: &mut Gpt<E>, unaveraged: &[Range<usize>]) {
        for r in unaveraged {
            self.host[r.clone()].fill(0.0);
        }
        let Some(codec) = self.codec else {
            return model.write_grads(&self.host);
        };
        self.bytes.resize(codec.encoded_len(self.host.len()), 0);
        codec.encode(&self.host, &mut self.bytes);
        model.write_grads_decoded(codec, &self.bytes).expect("the host's own encoding decodes");
    }
}
