//! Every kernel compiles for the GPUs the project targets (sm_80, sm_90)
//! with the CUDA 13.0 compiler from PyPI, installed by
//! scripts/cuda-toolchain.sh; ptxas's report lists each kernel for both
//! architectures, and none spills registers to local memory.

use std::path::Path;

/// `extern "C" __global__` kernel names in kernels/*.cu.
fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "cu") {
            let text = std::fs::read_to_string(&path).unwrap();
            for part in text.split("extern \"C\" __global__ void ").skip(1) {
                names.push(part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
            }
        }
    }
    names.sort();
    names
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
