//! A context: the chosen backend, its device and the borrowed stream.

use crate::cuda::{self, CudaDevice};
use crate::error::{bail, Result};
use crate::ffi::types::*;

/// Which backend a context runs on.
#[derive(Debug)]
pub enum Backend {
    Cpu,
    Cuda(CudaDevice),
}

/// Validated context options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub backend: i32,
    pub device: i32,
    pub num_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { backend: DASHATTN_BACKEND_AUTO, device: 0, num_threads: 0 }
    }
}

pub fn default_ffi_options() -> dashattn_context_options {
    dashattn_context_options {
        struct_size: std::mem::size_of::<dashattn_context_options>() as u32,
        backend: DASHATTN_BACKEND_AUTO,
        device: 0,
        num_threads: 0,
    }
}

impl Options {
    pub fn from_ffi(o: &dashattn_context_options) -> Result<Options> {
        let want = std::mem::size_of::<dashattn_context_options>() as u32;
        if o.struct_size != want {
            bail!(InvalidArgument, "options.struct_size = {} (this library expects {want}; use dashattn_context_options_default)", o.struct_size);
        }
        if !(DASHATTN_BACKEND_AUTO..=DASHATTN_BACKEND_CUDA).contains(&o.backend) {
            bail!(InvalidArgument, "options.backend = {} is not a DASHATTN_BACKEND_* value", o.backend);
        }
        if o.device < 0 {
            bail!(InvalidArgument, "options.device = {} is negative", o.device);
        }
        if o.num_threads < 0 || o.num_threads > 4096 {
            bail!(InvalidArgument, "options.num_threads = {} (must be 0..=4096; 0 = all cores)", o.num_threads);
        }
        Ok(Options { backend: o.backend, device: o.device, num_threads: o.num_threads as usize })
    }
}

/// Whether the CUDA backend has kernels in this build (auto picks it only then).
pub const CUDA_KERNELS_SHIPPED: bool = true;

/// A dashattn context.
#[derive(Debug)]
pub struct Context {
    pub backend: Backend,
    pub threads: usize,
    /// The caller's CUDA stream (borrowed, never owned; 0 = legacy default stream).
    pub stream: usize,
}

impl Context {
    pub fn new(opts: &Options) -> Result<Context> {
        let threads = if opts.num_threads > 0 {
            opts.num_threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        };
        let backend = match opts.backend {
            DASHATTN_BACKEND_CPU => Backend::Cpu,
            DASHATTN_BACKEND_CUDA => Backend::Cuda(CudaDevice::open(opts.device)?),
            _ => match CudaDevice::open(opts.device) {
                Ok(dev) if CUDA_KERNELS_SHIPPED => Backend::Cuda(dev),
                _ => Backend::Cpu,
            },
        };
        Ok(Context { backend, threads, stream: 0 })
    }

    pub fn cpu() -> Context {
        Context::new(&Options { backend: DASHATTN_BACKEND_CPU, ..Options::default() }).expect("CPU context")
    }

    pub fn backend_id(&self) -> i32 {
        match self.backend {
            Backend::Cpu => DASHATTN_BACKEND_CPU,
            Backend::Cuda(_) => DASHATTN_BACKEND_CUDA,
        }
    }

    /// Loads (or NVRTC-compiles) the CUDA kernels now; nothing to do on the CPU.
    pub fn prepare(&self) -> Result<()> {
        match &self.backend {
            Backend::Cpu => Ok(()),
            Backend::Cuda(dev) => dev.prepare(),
        }
    }

    pub fn is_cuda_available() -> bool {
        cuda::device_count().is_ok()
    }
}
