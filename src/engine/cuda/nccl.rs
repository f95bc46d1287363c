//! Several GPUs in one process: NCCL sums the replicas' gradient arenas
//! (see [`crate::parallel`]). One communicator per GPU from
//! `ncclCommInitAll`; the sums of all ranks are issued from one thread
//! inside one NCCL group, on each GPU's legacy default stream — the stream
//! every other call of the engine runs on, so the sum is ordered after the
//! backward pass and before the optimizer step without events. NCCL is
//! loaded at run time like the rest of CUDA; without it, `--gpus` fails
//! with the reason.
//!
//! Only single-GPU machines have been available to test on: the one-rank
//! path (a communicator of one GPU) is what `dtrain check gpu` exercises
//! when NCCL is installed ([`check_one_rank`]); the multi-rank path is the
//! same calls with more ranks.

use super::CudaEngine;
use super::gpu::Gpu;
use crate::engine::Engine;
use crate::model::Gpt;
use crate::parallel::Collective;
use cudarc::nccl::{result as nccl, sys};

/// One NCCL communicator per GPU, rank = position in `ordinals`.
pub struct Nccl {
    comms: Vec<sys::ncclComm_t>,
    ordinals: Vec<usize>,
}

// SAFETY: communicators are used from one thread at a time (the caller's
// `&mut` to the models serialises `sum_grads`).
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Communicators for these GPUs (each at most once).
    pub fn new(ordinals: &[usize]) -> Result<Nccl, String> {
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err("NCCL was not found (libnccl.so.2): install it (e.g. the nvidia-nccl-cu13 wheel) to train on several GPUs".into());
        }
        let mut seen = ordinals.to_vec();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != ordinals.len() || ordinals.is_empty() {
            return Err(format!("GPUs {ordinals:?}: each GPU at most once, at least one"));
        }
        let devs: Vec<i32> = ordinals.iter().map(|&o| i32::try_from(o).map_err(|_| format!("GPU {o}"))).collect::<Result<_, _>>()?;
        let mut comms = vec![std::ptr::null_mut(); devs.len()];
        // SAFETY: `comms` has room for one communicator per device.
        unsafe { nccl::comm_init_all(comms.as_mut_ptr(), devs.len() as i32, devs.as_ptr()) }.map_err(|e| format!("ncclCommInitAll: {e:?}"))?;
        Ok(Nccl { comms, ordinals: ordinals.to_vec() })
    }

    pub fn version() -> Option<String> {
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        nccl::get_nccl_version().ok().map(|v| format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        for &c in &self.comms {
            // SAFETY: created by `comm_init_all`, destroyed once.
            let _ = unsafe { nccl::comm_destroy(c) };
        }
    }
}

impl Collective<CudaEngine<Gpu>> for Nccl {
    fn name(&self) -> String {
        format!("NCCL {} over GPUs {:?}", Nccl::version().unwrap_or_default(), self.ordinals)
    }

    fn sum_grads(&self, models: &mut [Gpt<CudaEngine<Gpu>>]) -> Result<(), String> {
        if models.len() != self.comms.len() {
            return Err(format!("{} replicas for {} NCCL ranks", models.len(), self.comms.len()));
        }
        let len = models[0].layout.total;
        nccl::group_start().map_err(|e| format!("ncclGroupStart: {e:?}"))?;
        let mut issued = Ok(());
        for (m, &comm) in models.iter().zip(&self.comms) {
            let grads = m.engine.at(&m.grads, 0).addr as *mut std::ffi::c_void;
            // SAFETY: the gradient arena holds `len` fp32 values on this
            // communicator's GPU; in place is allowed.
            let r = unsafe {
                nccl::all_reduce(grads, grads, len, sys::ncclDataType_t::ncclFloat32, sys::ncclRedOp_t::ncclSum, comm, std::ptr::null_mut())
            };
            if let Err(e) = r {
                issued = Err(format!("ncclAllReduce: {e:?}"));
                break;
            }
        }
        nccl::group_end().map_err(|e| format!("ncclGroupEnd: {e:?}"))?;
        issued?;
        models.iter().for_each(|m| m.engine.synchronize());
        Ok(())
    }
}

/// `dtrain check gpu`'s NCCL line: a one-rank sum over GPU `ordinal` of a
/// small model's gradients must leave them unchanged, bit for bit (it
/// proves the library, the communicator and the stream handling).
pub fn check_one_rank(ordinal: usize) -> Result<super::check::Check, String> {
    let nccl = Nccl::new(&[ordinal])?;
    let engine = CudaEngine::new(Gpu::open(ordinal)?);
    let mut model = Gpt::new(engine, crate::model::GptConfig::preset("tiny").ok_or("no tiny preset")?).map_err(|e| e.to_string())?;
    let mut rng = crate::rng::Rng::new(5);
    let grads: Vec<f32> = (0..model.layout.total).map(|_| rng.normal()).collect();
    model.write_grads(&grads);
    let mut models = [model];
    nccl.sum_grads(&mut models)?;
    let after = models[0].read_grads();
    let differing = grads.iter().zip(&after).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    Ok(super::check::Check { name: format!("{} (1 rank, values differing)", nccl.name()), error: differing as f64, tolerance: 0.0 })
}
