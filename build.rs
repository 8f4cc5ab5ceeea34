//! Generates the C header from src/ffi with cbindgen into OUT_DIR. The committed copy in
//! include/ is checked against it by tests/header.rs (scripts/gen-header.sh refreshes it).

use std::path::PathBuf;

fn main() {
    cuda_kernels();
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("dashattn.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    match cbindgen::Builder::new().with_config(config).with_src(crate_dir.join("src/ffi/mod.rs")).generate() {
        Ok(b) => {
            b.write_to_file(&out);
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// CUDA kernels: kernels/*.cu become a fatbin (nvcc from $CUDA_HOME/bin or PATH, archs from
// DASHATTN_CUDA_ARCHS, default "80,90a") embedded with include_bytes!; the sources are
// always embedded too, for NVRTC at run time (devices the fatbin does not cover, builds
// without nvcc, DASHATTN_FORCE_NVRTC=1). DASHATTN_NO_NVCC=1 skips nvcc. A failing nvcc is
// a warning, never a build error.

fn find_nvcc() -> Option<PathBuf> {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(h) = std::env::var(var) {
            let p = PathBuf::from(h).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file())
}

fn cuda_kernels() {
    use std::fmt::Write as _;
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kdir = crate_dir.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for v in ["CUDA_HOME", "CUDA_PATH", "DASHATTN_CUDA_ARCHS", "DASHATTN_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect())
        .unwrap_or_default();
    files.sort();
    let archs = std::env::var("DASHATTN_CUDA_ARCHS").unwrap_or_else(|_| "80,90a".into());
    let archs: Vec<String> = archs.split([',', ' ', ';']).map(|s| s.trim().trim_start_matches("sm_").to_string()).filter(|s| !s.is_empty()).collect();
    let nvcc = if std::env::var("DASHATTN_NO_NVCC").is_ok_and(|v| v == "1") { None } else { find_nvcc() };
    let mut fatbins: Vec<(String, PathBuf)> = Vec::new();
    if let Some(nvcc) = &nvcc {
        // one nvcc per file, in parallel; a file that fails is left to NVRTC at run time
        let mut jobs = Vec::new();
        for f in &files {
            let stem = f.file_stem().unwrap().to_string_lossy().to_string();
            let out = out_dir.join(format!("{stem}.fatbin"));
            let mut cmd = std::process::Command::new(nvcc);
            cmd.arg("-fatbin").arg("-O3").arg("-std=c++17");
            for a in &archs {
                cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
            }
            cmd.arg(f).arg("-o").arg(&out);
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            match cmd.spawn() {
                Ok(child) => jobs.push((stem, out, f.clone(), child)),
                Err(e) => println!("cargo:warning=could not run {}: {e} (NVRTC at run time)", nvcc.display()),
            }
        }
        for (stem, out, f, child) in jobs {
            match child.wait_with_output() {
                Ok(o) if o.status.success() => fatbins.push((stem, out)),
                Ok(o) => println!("cargo:warning=nvcc failed on {} (NVRTC at run time): {}", f.display(), String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")),
                Err(e) => println!("cargo:warning=nvcc on {}: {e} (NVRTC at run time)", f.display()),
            }
        }
    }
    let mut gen = String::new();
    gen.push_str("/// nvcc-built fatbins (empty when nvcc was not found at build time).\n");
    gen.push_str("pub const FATBINS: &[(&str, &[u8])] = &[\n");
    for (stem, p) in &fatbins {
        let _ = writeln!(gen, "    ({stem:?}, include_bytes!({:?})),", p.display().to_string());
    }
    gen.push_str("];\n");
    let arch_list = if fatbins.is_empty() { String::new() } else { archs.iter().map(|a| format!("sm_{a}")).collect::<Vec<_>>().join(", ") };
    let _ = writeln!(gen, "pub const FATBIN_ARCHS: &str = {arch_list:?};");
    // NVRTC gets each source with its local includes (`#include "x.cuh"` of a file in
    // kernels/) inlined, so it compiles without an include path.
    gen.push_str("/// Kernel sources for NVRTC (local includes inlined).\npub const SOURCES: &[(&str, &str)] = &[\n");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let src = std::fs::read_to_string(f).expect("read kernel source");
        let mut flat = String::with_capacity(src.len() * 2);
        for line in src.lines() {
            let inc = line.trim().strip_prefix("#include \"").and_then(|r| r.strip_suffix('"'));
            match inc.map(|h| kdir.join(h)).filter(|p| p.is_file()) {
                Some(h) => {
                    let text = std::fs::read_to_string(&h).expect("read kernel header");
                    for l in text.lines().filter(|l| l.trim() != "#pragma once") {
                        flat.push_str(l);
                        flat.push('\n');
                    }
                }
                None => {
                    flat.push_str(line);
                    flat.push('\n');
                }
            }
        }
        let out = out_dir.join(format!("nvrtc_{name}"));
        std::fs::write(&out, flat).expect("write inlined kernel source");
        let _ = writeln!(gen, "    ({name:?}, include_str!({:?})),", out.display().to_string());
    }
    gen.push_str("];\n");
    std::fs::write(out_dir.join("cuda_kernels.rs"), gen).expect("write cuda_kernels.rs");
}
