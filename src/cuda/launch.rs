//! Launch plumbing shared by the CUDA launchers: one kernel launch with a by-value params
//! struct, and workspace carving (caller's workspace, or stream-ordered scratch).

use std::ffi::c_void;

use cudarc::driver::sys;

use super::check;
use crate::error::Result;
use crate::params::{Workspace, WORKSPACE_ALIGN};

/// Launches `f` with one by-value parameter struct on `stream`.
///
/// # Safety
/// `P` must match the kernel's parameter struct byte for byte.
pub unsafe fn launch<P>(f: sys::CUfunction, grid: (usize, usize, usize), block: usize, smem: usize, stream: sys::CUstream, p: &P, what: &str) -> Result<()> {
    let mut pp = p as *const P as *mut c_void;
    check(
        sys::cuLaunchKernel(f, grid.0 as u32, grid.1 as u32, grid.2 as u32, block as u32, 1, 1, smem as u32, stream, &mut pp as *mut *mut c_void, std::ptr::null_mut()),
        what,
    )
}

/// Whether the driver exports `cuLaunchKernelEx` (CUDA 11.8+ drivers; cudarc's loader
/// panics on a missing symbol, so it is looked up first). Asked once.
pub fn launch_ex_available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| std::panic::catch_unwind(|| unsafe { sys::culib().get::<unsafe extern "C" fn()>(b"cuLaunchKernelEx\0").is_ok() }).unwrap_or(false))
}

/// Like `launch`, with programmatic stream serialization when `pdl` (sm_90+): the kernel
/// may start before the previous one on the stream finishes, and must execute
/// `griddepcontrol.wait` before it reads anything that kernel wrote. Without
/// `cuLaunchKernelEx` in the driver, or if that launch is refused, a plain launch (the
/// kernel's wait is then a no-op).
///
/// # Safety
/// As `launch`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_pdl<P>(f: sys::CUfunction, grid: (usize, usize, usize), block: usize, smem: usize, stream: sys::CUstream, p: &P, pdl: bool, what: &str) -> Result<()> {
    if !pdl || !launch_ex_available() {
        return launch(f, grid, block, smem, stream, p, what);
    }
    let mut pp = p as *const P as *mut c_void;
    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: grid.0 as u32,
        gridDimY: grid.1 as u32,
        gridDimZ: grid.2 as u32,
        blockDimX: block as u32,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem as u32,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    if sys::cuLaunchKernelEx(&cfg, f, &mut pp as *mut *mut c_void, std::ptr::null_mut()) == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    launch(f, grid, block, smem, stream, p, what)
}

/// Byte offsets of workspace buffers, each aligned to WORKSPACE_ALIGN.
pub struct Layout {
    pub offsets: Vec<usize>,
    pub total: usize,
}

impl Layout {
    pub fn new(sizes: &[usize]) -> Result<Layout> {
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut total = 0usize;
        for &s in sizes {
            offsets.push(total);
            let r = s.checked_add(WORKSPACE_ALIGN - 1).map(|x| x / WORKSPACE_ALIGN * WORKSPACE_ALIGN);
            total = r.and_then(|r| total.checked_add(r)).ok_or_else(|| crate::error::Error::Overflow("CUDA workspace size overflows".into()))?;
        }
        Ok(Layout { offsets, total })
    }
}

/// The caller's workspace, or scratch allocated and freed in stream order on `stream`.
pub struct DeviceScratch {
    pub base: u64,
    owned: sys::CUdeviceptr,
    stream: sys::CUstream,
}

impl DeviceScratch {
    /// `stream` is the caller's CUstream handle as an integer (0 = legacy default stream).
    pub fn new(ws: Workspace, need: usize, stream: usize, what: &str) -> Result<DeviceScratch> {
        let stream = stream as sys::CUstream;
        ws.check(need)?;
        if ws.ptr != 0 {
            return Ok(DeviceScratch { base: ws.ptr as u64, owned: 0, stream });
        }
        let mut p: sys::CUdeviceptr = 0;
        unsafe { check(sys::cuMemAllocAsync(&mut p, need.max(WORKSPACE_ALIGN), stream), what)? };
        Ok(DeviceScratch { base: p, owned: p, stream })
    }
}

impl Drop for DeviceScratch {
    fn drop(&mut self) {
        if self.owned != 0 {
            unsafe {
                let _ = sys::cuMemFreeAsync(self.owned, self.stream);
            }
        }
    }
}

pub fn s3(t: &crate::params::Tensor) -> [i64; 3] {
    [t.strides[0] as i64, t.strides[1] as i64, t.strides[2] as i64]
}
