//! Small device-memory, stream, event and graph helpers for Rust callers, the GPU tests and
//! the benchmarks (the library itself never allocates device memory except stream-ordered
//! scratch for a call made without a workspace).

use std::ffi::c_void;

use cudarc::driver::sys;

use super::{check, CtxGuard, CudaDevice};
use crate::context::{Backend, Context};
use crate::error::{Error, Result};

/// The CUDA device of a context, or NoDevice for a CPU context.
pub fn device(ctx: &Context) -> Result<&CudaDevice> {
    match &ctx.backend {
        Backend::Cuda(d) => Ok(d),
        Backend::Cpu => Err(Error::NoDevice("this context runs on the CPU backend".into())),
    }
}

/// A device allocation (cuMemAlloc), freed on drop.
pub struct DeviceBuffer<'a> {
    dev: &'a CudaDevice,
    pub ptr: u64,
    pub bytes: usize,
}

impl<'a> DeviceBuffer<'a> {
    pub fn new(dev: &'a CudaDevice, bytes: usize) -> Result<DeviceBuffer<'a>> {
        let _g = dev.bind()?;
        let mut p: sys::CUdeviceptr = 0;
        check(unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(256)) }, "cuMemAlloc")?;
        Ok(DeviceBuffer { dev, ptr: p, bytes })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice<T: Copy>(dev: &'a CudaDevice, data: &[T]) -> Result<DeviceBuffer<'a>> {
        let b = DeviceBuffer::new(dev, std::mem::size_of_val(data))?;
        b.upload(data)?;
        Ok(b)
    }

    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<()> {
        let n = std::mem::size_of_val(data);
        assert!(n <= self.bytes);
        let _g = self.dev.bind()?;
        check(unsafe { sys::cuMemcpyHtoD_v2(self.ptr, data.as_ptr() as *const c_void, n) }, "cuMemcpyHtoD")
    }

    pub fn download<T: Copy>(&self, out: &mut [T]) -> Result<()> {
        let n = std::mem::size_of_val(out);
        assert!(n <= self.bytes);
        let _g = self.dev.bind()?;
        check(unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, self.ptr, n) }, "cuMemcpyDtoH")
    }

    /// Fills the buffer with a 32-bit pattern (e.g. 0x7fc00000, a NaN, to poison outputs).
    pub fn fill_u32(&self, v: u32) -> Result<()> {
        let _g = self.dev.bind()?;
        check(unsafe { sys::cuMemsetD32_v2(self.ptr, v, self.bytes / 4) }, "cuMemsetD32")
    }
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.bind() {
            unsafe {
                let _ = sys::cuMemFree_v2(self.ptr);
            }
        }
    }
}

/// Binds the device's primary context for raw driver calls (until the guard drops).
pub fn bind(dev: &CudaDevice) -> Result<CtxGuardPub> {
    Ok(CtxGuardPub(dev.bind()?))
}

/// Public wrapper of the context guard.
pub struct CtxGuardPub(#[allow(dead_code)] CtxGuard);

/// A non-blocking stream owned by the caller of these helpers.
pub struct Stream<'a> {
    dev: &'a CudaDevice,
    pub raw: sys::CUstream,
}

impl<'a> Stream<'a> {
    pub fn new(dev: &'a CudaDevice) -> Result<Stream<'a>> {
        let _g = dev.bind()?;
        let mut s: sys::CUstream = std::ptr::null_mut();
        check(unsafe { sys::cuStreamCreate(&mut s, 1) }, "cuStreamCreate")?;
        Ok(Stream { dev, raw: s })
    }
    pub fn handle(&self) -> usize {
        self.raw as usize
    }
    pub fn sync(&self) -> Result<()> {
        let _g = self.dev.bind()?;
        check(unsafe { sys::cuStreamSynchronize(self.raw) }, "cuStreamSynchronize")
    }
    /// Runs `f` under stream capture (relaxed mode) and instantiates the graph.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<Graph<'a>> {
        let _g = self.dev.bind()?;
        unsafe {
            check(sys::cuStreamBeginCapture_v2(self.raw, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED), "cuStreamBeginCapture")?;
            let r = f();
            let mut graph: sys::CUgraph = std::ptr::null_mut();
            let e = check(sys::cuStreamEndCapture(self.raw, &mut graph), "cuStreamEndCapture");
            r?;
            e?;
            let mut exec: sys::CUgraphExec = std::ptr::null_mut();
            let r = check(sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0), "cuGraphInstantiate");
            let _ = sys::cuGraphDestroy(graph);
            r?;
            Ok(Graph { dev: self.dev, exec })
        }
    }
    /// Milliseconds taken by `f`'s work on this stream (events around it; synchronises).
    pub fn time_ms(&self, f: impl FnOnce() -> Result<()>) -> Result<f32> {
        let _g = self.dev.bind()?;
        unsafe {
            let (mut a, mut b): (sys::CUevent, sys::CUevent) = (std::ptr::null_mut(), std::ptr::null_mut());
            check(sys::cuEventCreate(&mut a, 0), "cuEventCreate")?;
            check(sys::cuEventCreate(&mut b, 0), "cuEventCreate")?;
            check(sys::cuEventRecord(a, self.raw), "cuEventRecord")?;
            let r = f();
            check(sys::cuEventRecord(b, self.raw), "cuEventRecord")?;
            check(sys::cuEventSynchronize(b), "cuEventSynchronize")?;
            let mut ms = 0f32;
            check(sys::cuEventElapsedTime(&mut ms, a, b), "cuEventElapsedTime")?;
            let _ = sys::cuEventDestroy_v2(a);
            let _ = sys::cuEventDestroy_v2(b);
            r?;
            Ok(ms)
        }
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.bind() {
            unsafe {
                let _ = sys::cuStreamSynchronize(self.raw);
                let _ = sys::cuStreamDestroy_v2(self.raw);
            }
        }
    }
}

/// An instantiated CUDA graph.
pub struct Graph<'a> {
    dev: &'a CudaDevice,
    exec: sys::CUgraphExec,
}

impl Graph<'_> {
    pub fn launch(&self, stream: &Stream) -> Result<()> {
        let _g = self.dev.bind()?;
        check(unsafe { sys::cuGraphLaunch(self.exec, stream.raw) }, "cuGraphLaunch")
    }
}

impl Drop for Graph<'_> {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.bind() {
            unsafe {
                let _ = sys::cuGraphExecDestroy(self.exec);
            }
        }
    }
}
