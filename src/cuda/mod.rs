//! The CUDA backend. This build finds the driver and device; kernels are not shipped yet,
//! so every operation reports DASHATTN_ERR_UNSUPPORTED (see the CUDA forward issue).

use crate::error::{Error, Result};

/// A CUDA device bound by a context.
#[derive(Debug)]
pub struct CudaDevice {
    pub ordinal: i32,
}

/// Whether a CUDA driver library can be loaded (cudarc's loader panics when it cannot, so
/// this is asked first).
pub fn driver_present() -> bool {
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
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

impl CudaDevice {
    pub fn open(ordinal: i32) -> Result<CudaDevice> {
        let n = device_count()?;
        if ordinal < 0 || ordinal >= n {
            return Err(Error::InvalidArgument(format!("options.device = {ordinal} but {n} CUDA device(s) exist")));
        }
        Ok(CudaDevice { ordinal })
    }

    pub fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported(format!("{what} has no CUDA kernel in this build yet; use the CPU backend"))
    }
}
