//! Kernel delivery: the fatbin that build.rs made with nvcc, or the embedded kernel sources
//! compiled by NVRTC for the device's own arch (cubin, never PTX), cached on disk.
//!
//! Environment:
//! - DASHATTN_FORCE_NVRTC=1: skip the fatbin, always use NVRTC (and its cache).
//! - DASHATTN_NVRTC_LIB=/path/libnvrtc.so.N: the NVRTC library to load (else libnvrtc.so,
//!   .so.13, .so.12 from the loader path, $CUDA_HOME/lib64, /usr/local/cuda/lib64).
//! - DASHATTN_CACHE_DIR: cubin cache directory (else $XDG_CACHE_HOME/dashattn, else
//!   ~/.cache/dashattn). DASHATTN_NO_CACHE=1 disables the cache.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

use cudarc::driver::sys;

use super::{check, DeviceProps};
use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
}

/// Whether this build carries an nvcc-built fatbin (else NVRTC only).
pub fn has_fatbin() -> bool {
    !embedded::FATBINS.is_empty()
}

/// The archs the fatbin was built for ("" without a fatbin).
pub fn fatbin_archs() -> &'static str {
    embedded::FATBIN_ARCHS
}

/// Loaded kernel modules of one device.
#[derive(Debug)]
pub struct Kernels {
    pub origin: String,
    /// (module, its source text): a kernel is looked up only in the module whose source
    /// defines it (no failing cuModuleGetFunction calls for sanitizers to report).
    modules: Vec<(usize, &'static str)>,
    funcs: Mutex<HashMap<&'static str, usize>>,
    smem_optin: i32,
}

unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn env_on(name: &str) -> bool {
    std::env::var(name).map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false)
}

unsafe fn load_image(image: &[u8]) -> Result<sys::CUmodule> {
    // cuModuleLoadData wants an aligned image: copy into u64 storage.
    let mut buf = vec![0u64; image.len().div_ceil(8) + 1];
    std::ptr::copy_nonoverlapping(image.as_ptr(), buf.as_mut_ptr() as *mut u8, image.len());
    let mut m: sys::CUmodule = std::ptr::null_mut();
    check(sys::cuModuleLoadData(&mut m, buf.as_ptr() as *const c_void), "cuModuleLoadData")?;
    Ok(m)
}

impl Kernels {
    /// Loads every kernel module for the current context's device. Must be called with the
    /// device's primary context current.
    pub fn load(props: &DeviceProps) -> Result<Kernels> {
        let force = env_on("DASHATTN_FORCE_NVRTC");
        let arch = nvrtc_arch(props);
        let mut mods = Vec::new();
        let mut origins = Vec::new();
        let mut errors = Vec::new();
        for (name, src) in embedded::SOURCES {
            let stem = name.trim_end_matches(".cu");
            let mut fat_err = String::new();
            if !force {
                if let Some((_, image)) = embedded::FATBINS.iter().find(|(s, _)| *s == stem) {
                    match unsafe { load_image(image) } {
                        Ok(m) => {
                            mods.push((m as usize, *src));
                            origins.push(format!("{stem}: fatbin ({})", embedded::FATBIN_ARCHS));
                            continue;
                        }
                        Err(e) => fat_err = format!("fatbin ({}): {e}; ", embedded::FATBIN_ARCHS),
                    }
                }
            }
            match nvrtc_cubin(name, src, &arch).and_then(|(c, how)| unsafe { load_image(&c) }.map(|m| (m, how))) {
                Ok((m, how)) => {
                    mods.push((m as usize, *src));
                    origins.push(format!("{stem}: nvrtc {arch} ({how})"));
                }
                Err(e) => errors.push(format!("{stem}: {fat_err}{e}")),
            }
        }
        if mods.is_empty() {
            return Err(Error::Unsupported(format!("no usable CUDA kernels: {}", errors.join("; "))));
        }
        let mut origin = origins.join("; ");
        if !errors.is_empty() {
            origin = format!("{origin}; unavailable: {}", errors.join("; "));
        }
        Ok(Kernels { origin, modules: mods, funcs: Mutex::new(HashMap::new()), smem_optin: props.smem_optin })
    }

    /// A kernel by name, with its dynamic shared memory limit raised to the device's opt-in
    /// maximum on first lookup.
    pub fn function(&self, name: &'static str) -> Result<sys::CUfunction> {
        let mut map = self.funcs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&f) = map.get(name) {
            return Ok(f as sys::CUfunction);
        }
        let cname = CString::new(name).expect("kernel name");
        // Kernels are named dash_<family>_...; macro-generated names only show a prefix in
        // the source. Try the modules whose source holds the longest '_'-prefix of the name
        // (the whole name first, down to dash_<family>), so a lookup does not probe modules
        // that lack the kernel (each miss is a CUDA API error that compute-sanitizer reports).
        let parts: Vec<&str> = name.split('_').collect();
        let mut order: Vec<usize> = Vec::new();
        for k in (2..=parts.len()).rev() {
            let prefix = parts[..k].join("_");
            order = self.modules.iter().filter(|(_, s)| s.contains(prefix.as_str())).map(|m| m.0).collect();
            if !order.is_empty() {
                break;
            }
        }
        if order.is_empty() {
            order = self.modules.iter().map(|m| m.0).collect();
        }
        for m in order {
            let mut f: sys::CUfunction = std::ptr::null_mut();
            let r = unsafe { sys::cuModuleGetFunction(&mut f, m as sys::CUmodule, cname.as_ptr()) };
            if r == sys::CUresult::CUDA_SUCCESS {
                // the dynamic limit is the opt-in maximum less the kernel's static smem
                let mut stat = 0;
                unsafe {
                    let _ = sys::cuFuncGetAttribute(&mut stat, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f);
                }
                let dynamic = (self.smem_optin - stat.max(0)).max(0);
                check(
                    unsafe { sys::cuFuncSetAttribute(f, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic) },
                    "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                )?;
                map.insert(name, f as usize);
                return Ok(f);
            }
        }
        Err(Error::Internal(format!("kernel {name} is missing from the loaded modules ({})", self.origin)))
    }
}

/// The NVRTC target for the device: a real arch (cubin), with the arch-specific "a"
/// variant on Hopper.
pub fn nvrtc_arch(p: &DeviceProps) -> String {
    let base = format!("sm_{}{}", p.cc_major, p.cc_minor);
    if p.cc_major == 9 && p.cc_minor == 0 {
        format!("{base}a")
    } else {
        base
    }
}

// ---------------------------------------------------------------------------------------
// NVRTC, loaded with dlopen (cudarc's loader only knows libnvrtc.so.12 names with the
// cuda-12080 feature, and panics when none is found).

type Prog = *mut c_void;

#[allow(clippy::type_complexity)]
struct Nvrtc {
    create: unsafe extern "C" fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Prog) -> c_int,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    err: unsafe extern "C" fn(c_int) -> *const c_char,
}

fn nvrtc_candidates() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("DASHATTN_NVRTC_LIB") {
        v.push(p);
    }
    for n in ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"] {
        v.push(n.to_string());
    }
    let mut roots: Vec<String> = Vec::new();
    if let Ok(h) = std::env::var("CUDA_HOME") {
        roots.push(h);
    }
    if let Ok(h) = std::env::var("CUDA_PATH") {
        roots.push(h);
    }
    roots.push("/usr/local/cuda".into());
    for r in roots {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            for n in ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"] {
                v.push(format!("{r}/{sub}/{n}"));
            }
        }
    }
    v
}

#[allow(clippy::missing_transmute_annotations)]
fn nvrtc() -> Result<&'static Nvrtc> {
    static LIB: std::sync::OnceLock<std::result::Result<Nvrtc, String>> = std::sync::OnceLock::new();
    LIB.get_or_init(|| unsafe {
        let mut handle = std::ptr::null_mut();
        let cands = nvrtc_candidates();
        for c in &cands {
            let cs = CString::new(c.as_str()).unwrap();
            handle = libc::dlopen(cs.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if !handle.is_null() {
                break;
            }
        }
        if handle.is_null() {
            return Err(format!("NVRTC could not be loaded (tried {cands:?}; set DASHATTN_NVRTC_LIB)"));
        }
        // NVRTC dlopens libnvrtc-builtins by soname; when libnvrtc came from a directory
        // outside the loader path (a pip wheel, $CUDA_HOME), preload the builtins from there.
        {
            let sym = libc::dlsym(handle, c"nvrtcVersion".as_ptr());
            let mut info: libc::Dl_info = std::mem::zeroed();
            if !sym.is_null() && libc::dladdr(sym, &mut info) != 0 && !info.dli_fname.is_null() {
                let path = std::path::PathBuf::from(CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned());
                if let Some(dir) = path.parent() {
                    if let Ok(rd) = std::fs::read_dir(dir) {
                        for e in rd.flatten() {
                            let n = e.file_name().to_string_lossy().into_owned();
                            if n.starts_with("libnvrtc-builtins.so") && !n.contains(".alt") {
                                if let Ok(cs) = CString::new(e.path().to_string_lossy().into_owned()) {
                                    libc::dlopen(cs.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                                }
                            }
                        }
                    }
                }
            }
        }
        macro_rules! sym {
            ($n:literal) => {{
                let p = libc::dlsym(handle, concat!($n, "\0").as_ptr() as *const c_char);
                if p.is_null() {
                    return Err(format!("NVRTC lacks {}", $n));
                }
                std::mem::transmute::<*mut c_void, _>(p)
            }};
        }
        Ok(Nvrtc {
            create: sym!("nvrtcCreateProgram"),
            compile: sym!("nvrtcCompileProgram"),
            log_size: sym!("nvrtcGetProgramLogSize"),
            log: sym!("nvrtcGetProgramLog"),
            cubin_size: sym!("nvrtcGetCUBINSize"),
            cubin: sym!("nvrtcGetCUBIN"),
            destroy: sym!("nvrtcDestroyProgram"),
            version: sym!("nvrtcVersion"),
            err: sym!("nvrtcGetErrorString"),
        })
    })
    .as_ref()
    .map_err(|e| Error::Unsupported(e.clone()))
}

fn cache_dir() -> Option<std::path::PathBuf> {
    if env_on("DASHATTN_NO_CACHE") {
        return None;
    }
    if let Ok(d) = std::env::var("DASHATTN_CACHE_DIR") {
        return Some(d.into());
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        if !d.is_empty() {
            return Some(std::path::Path::new(&d).join("dashattn"));
        }
    }
    std::env::var("HOME").ok().map(|h| std::path::Path::new(&h).join(".cache").join("dashattn"))
}

const NVRTC_OPTS: &[&str] = &["--std=c++17", "-DDASHATTN_NVRTC=1"];

/// Compiles one source to a cubin for `arch`, or takes it from the disk cache. Returns the
/// cubin and "cached" / "compiled in X s".
pub fn nvrtc_cubin(name: &str, src: &str, arch: &str) -> Result<(Vec<u8>, String)> {
    let lib = nvrtc()?;
    let (mut maj, mut min) = (0, 0);
    unsafe { (lib.version)(&mut maj, &mut min) };
    let ver = format!("{maj}.{min}");
    let key = fnv1a(&[src.as_bytes(), arch.as_bytes(), NVRTC_OPTS.join(" ").as_bytes(), ver.as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("{}-{key:016x}-{arch}.cubin", name.trim_end_matches(".cu"))));
    if let Some(p) = &path {
        if let Ok(b) = std::fs::read(p) {
            if b.len() > 16 {
                return Ok((b, format!("cached {}", p.display())));
            }
        }
    }
    let t0 = std::time::Instant::now();
    let cubin = unsafe {
        let csrc = CString::new(src).map_err(|_| Error::Internal("kernel source has a NUL".into()))?;
        let cname = CString::new(name).unwrap();
        let mut prog: Prog = std::ptr::null_mut();
        let r = (lib.create)(&mut prog, csrc.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null());
        if r != 0 {
            return Err(Error::Cuda(format!("nvrtcCreateProgram: {}", CStr::from_ptr((lib.err)(r)).to_string_lossy())));
        }
        let mut opts: Vec<CString> = NVRTC_OPTS.iter().map(|s| CString::new(*s).unwrap()).collect();
        opts.push(CString::new(format!("--gpu-architecture={arch}")).unwrap());
        let optp: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
        let r = (lib.compile)(prog, optp.len() as c_int, optp.as_ptr());
        let mut ls = 0usize;
        (lib.log_size)(prog, &mut ls);
        let mut log = vec![0u8; ls.max(1)];
        (lib.log)(prog, log.as_mut_ptr() as *mut c_char);
        let log = String::from_utf8_lossy(&log).trim_end_matches('\0').to_string();
        if r != 0 {
            (lib.destroy)(&mut prog);
            return Err(Error::Cuda(format!("NVRTC {ver} failed to compile {name} for {arch}: {}\n{log}", CStr::from_ptr((lib.err)(r)).to_string_lossy())));
        }
        let mut n = 0usize;
        (lib.cubin_size)(prog, &mut n);
        let mut out = vec![0u8; n];
        let r = (lib.cubin)(prog, out.as_mut_ptr() as *mut c_char);
        (lib.destroy)(&mut prog);
        if r != 0 || n == 0 {
            return Err(Error::Cuda(format!("nvrtcGetCUBIN failed for {name} ({arch})")));
        }
        out
    };
    let how = format!("compiled in {:.2} s", t0.elapsed().as_secs_f64());
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &cubin).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok((cubin, how))
}

/// The embedded kernel sources (file name, text), as NVRTC sees them.
pub fn sources() -> &'static [(&'static str, &'static str)] {
    embedded::SOURCES
}
