//! Every kernel compiles for the GPUs the project targets (sm_80, sm_90)
//! with the CUDA 13.0 compiler from PyPI, installed by
//! scripts/cuda-toolchain.sh; ptxas's report lists each kernel for both
//! architectures, and none spills registers to local memory. The run-time
//! path too: `dtrain check kernels` compiles the embedded source with NVRTC
//! (what a GPU machine does), and ptxas assembles that PTX without spills.
//! `dtrain check gpu` passes on the emulated device, and on a GPU when the
//! machine has one; `dtrain bench kernels` profiles every op of a step.

use std::path::Path;

/// Every kernel a GPU loads by name (build.rs's list: each `extern "C"
/// __global__` function and both instances of each storage-type template).
fn kernel_names() -> Vec<String> {
    dtrain::engine::cuda::gpu::KERNELS.iter().map(|k| k.to_string()).collect()
}

/// (kernel, arch) → (registers, spill store bytes, spill load bytes, stack bytes).
fn parse_report(text: &str) -> std::collections::BTreeMap<(String, String), (u32, u32, u32, u32)> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut frame = (0, 0, 0);
    let num_before = |line: &str, what: &str| -> Option<u32> {
        let at = line.find(what)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap().to_string();
            let arch = parts.nth(1).unwrap_or("").to_string();
            current = Some((name, arch));
        } else if line.contains("bytes stack frame") {
            frame = (
                num_before(line, "bytes stack frame").unwrap(),
                num_before(line, "bytes spill stores").unwrap(),
                num_before(line, "bytes spill loads").unwrap(),
            );
        } else if line.contains("Used") && line.contains("registers") {
            let regs = num_before(line, "registers").unwrap();
            if let Some(key) = current.take() {
                out.insert(key, (regs, frame.1, frame.2, frame.0));
            }
        }
    }
    out
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spilling() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("dtrain-cubins-{}", std::process::id()));
    let run = std::process::Command::new(root.join("scripts/compile-kernels.sh")).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report = std::fs::read_to_string(out.join("ptxas.txt")).unwrap();
    let found = parse_report(&report);
    for name in kernel_names() {
        for arch in ["sm_80", "sm_90"] {
            let &(regs, stores, loads, stack) =
                found.get(&(name.clone(), arch.to_string())).unwrap_or_else(|| panic!("{name} for {arch} is not in ptxas's report:\n{report}"));
            eprintln!("{name:40} {arch}: {regs:3} registers, {stack} bytes stack");
            assert_eq!((stores, loads), (0, 0), "{name} spills on {arch}");
            assert!(regs <= 255);
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn toolchain_root() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::process::Command::new(root.join("scripts/cuda-toolchain.sh")).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap().trim().into()
}

#[test]
fn nvrtc_compiles_the_embedded_source_and_ptxas_assembles_it() {
    let cuda = toolchain_root();
    let out = std::env::temp_dir().join(format!("dtrain-ptx-{}", std::process::id()));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["check", "kernels", "--arch", "75,80,90", "--out"])
        .arg(&out)
        .env("LD_LIBRARY_PATH", cuda.join("lib"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let names = kernel_names();
    assert!(stdout.contains(&format!("sm_90: {} kernels", names.len())), "{stdout}");
    assert!(stdout.contains("NVRTC: 13.0"), "the NVRTC found is the toolchain's: {stdout}");
    // sm_75 (Turing) has no bf16 instructions: the kernels must still load
    // there (software bf16 rounding, the mma's shuffle twin); the targets
    // sm_80 and sm_90 must also not spill.
    for arch in ["75", "80", "90"] {
        let ptx_path = out.join(format!("kernels.sm_{arch}.ptx"));
        let ptx = std::fs::read_to_string(&ptx_path).unwrap();
        // PTX ISA 9.0 is CUDA 13.0's: the GPU machines' driver loads it.
        assert!(ptx.contains(".version 9.0"), "PTX version: {}", ptx.lines().find(|l| l.starts_with(".version")).unwrap_or("none"));
        for n in &names {
            assert!(ptx.contains(&format!(".entry {n}(")), "{n} missing from the sm_{arch} PTX");
        }
        let asm = std::process::Command::new(cuda.join("bin/ptxas"))
            .args([&format!("-arch=sm_{arch}"), "-v", "-o"])
            .arg(out.join(format!("kernels.sm_{arch}.cubin")))
            .arg(&ptx_path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&asm.stderr);
        assert!(asm.status.success(), "{report}");
        let found = parse_report(&report);
        for n in &names {
            let &(_, stores, loads, _) = found.get(&(n.clone(), format!("sm_{arch}"))).unwrap_or_else(|| panic!("{n} not in the report:\n{report}"));
            if arch != "75" {
                assert_eq!((stores, loads), (0, 0), "{n} spills on sm_{arch} (NVRTC build)");
            }
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn check_gpu_passes_emulated_and_on_this_machines_gpu_if_any() {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain")).args(["check", "gpu", "--device", "emulated"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && stdout.contains("checks passed") && !stdout.contains("FAIL"), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    for op in ["attention backward", "cross-entropy dlogits", "lamb", "training step 2 gradients", "adamw (bf16 copy of the weights)", "mma m16n8k16"]
    {
        assert!(stdout.contains(op), "{op} is not checked:\n{stdout}");
    }
    assert_eq!(stdout.matches("checks passed").count(), 2, "both precisions, fp32 and bf16, are checked:\n{stdout}");
    // The tensor-core GEMM modes, emulated, within their tolerances.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["check", "gpu", "--device", "emulated", "--precision", "fp32", "--gemm-math", "bf16"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && stdout.contains("(InOut, bf16)"), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain")).args(["check", "gpu"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    match dtrain::engine::cuda::gpu::count() {
        Ok(n) if n > 0 => assert!(run.status.success(), "on this machine's GPU:\n{stdout}{stderr}"),
        _ => assert!(!run.status.success() && (stderr.contains("driver") || stderr.contains("GPU")), "without a GPU: {stderr}"),
    }
}

#[test]
fn bench_kernels_profiles_every_op_of_a_step() {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["bench", "kernels", "--device", "emulated", "--model", "tiny", "--batch", "1", "--seq", "32", "--steps", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    for op in [
        "matmul_forward",
        "matmul_backward",
        "attention_forward",
        "attention_backward",
        "layernorm_backward",
        "crossentropy",
        "adamw",
        "GB/s",
        "TFLOP/s",
    ] {
        assert!(stdout.contains(op), "{op} missing:\n{stdout}");
    }
}
