//! Build metadata and the CUDA kernels:
//! - the git revision `dtrain --version` reports, so a checkpoint or a
//!   benchmark line can be traced to the code that made it;
//! - the kernels of `kernels/*.cu` as one source text for NVRTC (the GPU
//!   device compiles it at run time for the GPU it finds) and their names;
//!   when nvcc is present (`DTRAIN_NVCC`, `$CUDA_HOME/bin/nvcc` or `nvcc` on
//!   the PATH), also cubins for sm_80 and sm_90, embedded so that those
//!   GPUs load the kernels without compiling anything;
//! - the CPU emulation of the same kernels (kernels/emu), compiled with the
//!   system's C++ compiler so the tests run every kernel without a GPU.
//!   Without a C++ compiler the crate still builds; only the emulated
//!   device is missing (its tests say so).

use std::path::Path;

fn main() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DTRAIN_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo::rustc-check-cfg=cfg(dtrain_emu)");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=kernels/emu");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let (files, names) = kernels().expect("reading kernels/");
    write_gpu_source(Path::new(&out), &files, &names).expect("writing the CUDA source");
    write_cubins(Path::new(&out));

    let cxx = cc::Build::new().cpp(true).get_compiler();
    let present = std::process::Command::new(cxx.path()).arg("--version").output().is_ok_and(|o| o.status.success());
    if !present {
        println!("cargo:warning=no C++ compiler ({}): the CUDA kernels' CPU emulation is not built; its tests will fail", cxx.path().display());
        return;
    }
    // A kernel that does not compile as C++ is a build error, not a warning.
    if let Err(e) = build_emulation(Path::new(&out), &files, &names) {
        panic!("compiling the CUDA kernels' CPU emulation: {e}");
    }
}

/// The kernel files, `kernels/*.cu` and the emulation's self-tests
/// `kernels/emu/*.cu`, and the names of their `extern "C" __global__`
/// functions, found in the source text (with the two instances of each
/// storage-type template, see kernels/common.cuh).
fn kernels() -> std::io::Result<(Vec<String>, Vec<String>)> {
    let mut files = Vec::new();
    for dir in ["kernels", "kernels/emu"] {
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".cu") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    let mut names = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let name = |part: &str| -> String { part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
        for part in text.split("extern \"C\" __global__ void ").skip(1) {
            names.push(name(part));
        }
        // kernels/common.cuh's F32_AND_BF16(name, …) makes name_f32 and name_bf16.
        for part in text.split("\nF32_AND_BF16(").skip(1) {
            let base = name(part);
            names.push(format!("{base}_f32"));
            names.push(format!("{base}_bf16"));
        }
    }
    Ok((files, names))
}

/// One translation unit for NVRTC, which cannot open files: the shared
/// header, then every kernel file without its include line.
fn write_gpu_source(out: &Path, files: &[String], names: &[String]) -> std::io::Result<()> {
    let mut cuda = std::fs::read_to_string("kernels/common.cuh")?.replace("#pragma once", "");
    for f in files.iter().filter(|f| !f.starts_with("kernels/emu/")) {
        cuda.push_str(&format!("\n// ---- {f}\n"));
        cuda.push_str(&std::fs::read_to_string(f)?.replace("#include \"common.cuh\"", ""));
    }
    std::fs::write(out.join("cuda_source.cu"), cuda)?;
    let gpu_names: Vec<&String> = names.iter().filter(|n| !n.starts_with("emu_")).collect();
    std::fs::write(out.join("kernel_names.rs"), format!("&{gpu_names:?}"))
}

/// `cubins.rs`: `&[(compute capability, cubin bytes)]`, empty without nvcc.
fn write_cubins(out: &Path) {
    println!("cargo:rerun-if-env-changed=DTRAIN_NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let candidates: Vec<std::path::PathBuf> =
        [std::env::var_os("DTRAIN_NVCC").map(Into::into), std::env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("bin/nvcc")), Some("nvcc".into())]
            .into_iter()
            .flatten()
            .collect();
    let nvcc = candidates.into_iter().find(|c| std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    let mut entries = Vec::new();
    if let Some(nvcc) = nvcc {
        for arch in [80, 90] {
            let cubin = out.join(format!("kernels.sm_{arch}.cubin"));
            let run = std::process::Command::new(&nvcc)
                .args(["-cubin", &format!("-arch=sm_{arch}"), "-O3", "-std=c++17", "-o"])
                .arg(&cubin)
                .arg(out.join("cuda_source.cu"))
                .output();
            match run {
                Ok(o) if o.status.success() => entries.push(format!("({arch}, include_bytes!({:?}).as_slice())", cubin.display().to_string())),
                Ok(o) => panic!("nvcc ({}) failed on the kernels for sm_{arch}:\n{}", nvcc.display(), String::from_utf8_lossy(&o.stderr)),
                Err(e) => panic!("running nvcc ({}): {e}", nvcc.display()),
            }
        }
    }
    std::fs::write(out.join("cubins.rs"), format!("&[{}]", entries.join(", "))).expect("writing cubins.rs");
}

fn build_emulation(out: &Path, files: &[String], names: &[String]) -> Result<(), String> {
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let sources: String = files.iter().map(|f| format!("#include \"{}\"\n", root.join(f).display())).collect();
    let list: String = names.iter().map(|n| format!("DTRAIN_KERNEL({n})\n")).collect();
    let (src_inc, list_inc) = (out.join("emu_sources.inc"), out.join("emu_kernels.inc"));
    std::fs::write(&src_inc, sources).map_err(|e| e.to_string())?;
    std::fs::write(&list_inc, list).map_err(|e| e.to_string())?;
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(false)
        .define("DTRAIN_EMU_SOURCES", format!("\"{}\"", src_inc.display()).as_str())
        .define("DTRAIN_EMU_KERNELS", format!("\"{}\"", list_inc.display()).as_str())
        .file("kernels/emu/launch.cpp")
        .try_compile("dtrain_emu")
        .map_err(|e| e.to_string())?;
    println!("cargo:rustc-cfg=dtrain_emu");
    Ok(())
}
