//! The CUDA backend.
//!
//! - A context binds the device's primary context (shared with the CUDA runtime, PyTorch)
//!   and reads the device properties once.
//! - Kernels come from kernels/*.cu: a fatbin built by nvcc in build.rs when nvcc was found
//!   (sm_80 + sm_90a by default), else the embedded sources compiled by NVRTC on first use
//!   for the device's own arch and cached on disk (see `module`).
//! - Every launch goes to the caller's borrowed stream (Context.stream; 0 = the legacy
//!   default stream). With a caller workspace the forward neither allocates nor syncs, so
//!   it can be captured into a CUDA graph; without one it allocates stream-ordered
//!   (cuMemAllocAsync / cuMemFreeAsync on the same stream).
//! - Kernel families: forward (pool, coarse, fine), backward (prep, dq, dkv), decode (pooled
//!   upkeep, coarse, split-KV attend, merge); each has one launcher module here. Shapes or
//!   dtypes a kernel does not cover report DASHATTN_ERR_UNSUPPORTED.

pub mod backward;
pub mod decode;
pub mod forward;
pub mod launch;
pub mod module;
pub mod util;

use std::sync::Mutex;

use cudarc::driver::sys;

use crate::error::{Error, Result};

/// Whether a CUDA driver library can be loaded (cudarc's loader panics when it cannot, so
/// this is asked first).
pub fn driver_present() -> bool {
    std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// Number of CUDA devices, or NoDevice when there is no driver or no device.
pub fn device_count() -> Result<i32> {
    if !driver_present() {
        return Err(Error::NoDevice("libcuda could not be loaded (no NVIDIA driver)".into()));
    }
    let r = std::panic::catch_unwind(|| {
        cudarc::driver::result::init().map_err(|e| Error::NoDevice(format!("cuInit failed: {e:?}")))?;
        cudarc::driver::result::device::get_count().map_err(|e| Error::NoDevice(format!("cuDeviceGetCount failed: {e:?}")))
    })
    .map_err(|_| Error::NoDevice("the CUDA driver could not be initialised".into()))??;
    if r <= 0 {
        return Err(Error::NoDevice("the CUDA driver reports no device".into()));
    }
    Ok(r)
}

/// Turns a driver status into a Result (the message names the call).
pub(crate) fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut p: *const std::os::raw::c_char = std::ptr::null();
    let name = unsafe {
        if sys::cuGetErrorString(r, &mut p) == sys::CUresult::CUDA_SUCCESS && !p.is_null() {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        } else {
            format!("{r:?}")
        }
    };
    if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return Err(Error::OutOfMemory(format!("{what}: {name}")));
    }
    Err(Error::Cuda(format!("{what} failed: {name} ({r:?})")))
}

/// Device properties read once when the context is created.
#[derive(Clone, Copy, Debug)]
pub struct DeviceProps {
    pub sm_count: i32,
    /// Largest dynamic shared memory a block may opt in to (bytes).
    pub smem_optin: i32,
    pub cc_major: i32,
    pub cc_minor: i32,
}

/// A CUDA device bound by a context: the device's primary context (retained for the
/// context's lifetime) and its properties. The kernel module is loaded on first use.
#[derive(Debug)]
pub struct CudaDevice {
    pub ordinal: i32,
    pub props: DeviceProps,
    dev: sys::CUdevice,
    /// The primary context, retained on first use (so that merely opening a device, as
    /// backend AUTO does, creates no CUDA context and takes no device memory).
    ctx: std::sync::OnceLock<usize>,
}

type KernelSlot = (i32, &'static std::result::Result<module::Kernels, Error>);

/// Loaded modules, one per device, shared by every context of the process (all contexts
/// of a device bind the same primary context, which the cache retains for good).
static KERNELS: Mutex<Vec<KernelSlot>> = Mutex::new(Vec::new());

// The raw handles are process-wide driver objects; a context is used by one thread at a
// time (C ABI contract), and the driver API itself is thread-safe.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

/// Pushes the device's primary context for the duration of a call, pops it on drop.
pub(crate) struct CtxGuard;

impl Drop for CtxGuard {
    fn drop(&mut self) {
        let mut old: sys::CUcontext = std::ptr::null_mut();
        unsafe {
            let _ = sys::cuCtxPopCurrent_v2(&mut old);
        }
    }
}

impl CudaDevice {
    pub fn open(ordinal: i32) -> Result<CudaDevice> {
        let n = device_count()?;
        if ordinal < 0 || ordinal >= n {
            return Err(Error::InvalidArgument(format!("options.device = {ordinal} but {n} CUDA device(s) exist")));
        }
        unsafe {
            let mut dev: sys::CUdevice = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal), "cuDeviceGet")?;
            let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
                let mut v = 0;
                check(sys::cuDeviceGetAttribute(&mut v, a, dev), "cuDeviceGetAttribute")?;
                Ok(v)
            };
            use sys::CUdevice_attribute::*;
            let props = (|| -> Result<DeviceProps> {
                Ok(DeviceProps {
                    sm_count: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
                    smem_optin: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
                    cc_major: attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    cc_minor: attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                })
            })();
            Ok(CudaDevice { ordinal, props: props?, dev, ctx: std::sync::OnceLock::new() })
        }
    }

    /// Makes the primary context current for this thread until the guard drops.
    pub(crate) fn bind(&self) -> Result<CtxGuard> {
        let ctx = match self.ctx.get() {
            Some(&c) => c,
            None => {
                let mut c: sys::CUcontext = std::ptr::null_mut();
                check(unsafe { sys::cuDevicePrimaryCtxRetain(&mut c, self.dev) }, "cuDevicePrimaryCtxRetain")?;
                if self.ctx.set(c as usize).is_err() {
                    // another thread retained it first: keep one reference
                    unsafe {
                        let _ = sys::cuDevicePrimaryCtxRelease_v2(self.dev);
                    }
                }
                *self.ctx.get().expect("primary context")
            }
        };
        check(unsafe { sys::cuCtxPushCurrent_v2(ctx as sys::CUcontext) }, "cuCtxPushCurrent")?;
        Ok(CtxGuard)
    }

    /// The kernels, loaded (or NVRTC-compiled) on first use. Call with the context bound.
    pub(crate) fn kernels(&self) -> Result<&'static module::Kernels> {
        let mut all = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = all.iter().find(|(o, _)| *o == self.ordinal) {
            return k.as_ref().map_err(|e| e.clone());
        }
        // keep the primary context alive for as long as the cached modules
        let mut c: sys::CUcontext = std::ptr::null_mut();
        check(unsafe { sys::cuDevicePrimaryCtxRetain(&mut c, self.dev) }, "cuDevicePrimaryCtxRetain")?;
        let k: &'static _ = Box::leak(Box::new(module::Kernels::load(&self.props)));
        all.push((self.ordinal, k));
        k.as_ref().map_err(|e| e.clone())
    }

    /// Loads the kernels now (module load or NVRTC compile), so that a later forward, for
    /// example one being captured into a CUDA graph, does no first-use work.
    pub fn prepare(&self) -> Result<()> {
        let _g = self.bind()?;
        self.kernels().map(|_| ())
    }

    /// Where the kernels came from ("fatbin" or "nvrtc ..."), loading them if needed.
    pub fn kernel_source(&self) -> Result<String> {
        let _g = self.bind()?;
        self.kernels().map(|k| k.origin.clone())
    }

    /// The raw CUdevice handle.
    pub fn raw_device(&self) -> sys::CUdevice {
        self.dev
    }

    /// The primary context (retained by this device object on first use; null before).
    pub fn raw_context(&self) -> sys::CUcontext {
        self.ctx.get().map_or(std::ptr::null_mut(), |&c| c as sys::CUcontext)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.ctx.get().is_some() {
            unsafe {
                let _ = sys::cuDevicePrimaryCtxRelease_v2(self.dev);
            }
        }
    }
}
