//! Context lifetime, stream binding and backend query.

use std::os::raw::c_void;

use super::types::*;
use super::{guard, read_sized, write_out};
use crate::context::{default_ffi_options, Context, Options};
use crate::error::{bail, Result};

const CONTEXT_MAGIC: u64 = 0x6461_7368_6174_746e; // "dashattn"

/// An opaque dashattn context: the backend (CPU or one CUDA device) and its stream.
/// Create with dashattn_context_create, free with dashattn_context_destroy. A context may
/// be used by one thread at a time; use one context per thread for concurrency.
pub struct dashattn_context {
    magic: u64,
    inner: Context,
}

/// Borrows the Context behind a caller's pointer (NULL and foreign pointers are refused).
pub(crate) unsafe fn context<'a>(ctx: *mut dashattn_context) -> Result<&'a mut Context> {
    if ctx.is_null() {
        bail!(NullPointer, "ctx is NULL");
    }
    if (*ctx).magic != CONTEXT_MAGIC {
        bail!(InvalidArgument, "ctx is not a live dashattn context (destroyed or not created by dashattn_context_create)");
    }
    Ok(&mut (*ctx).inner)
}

/// Fills `*options` with the defaults (backend AUTO, device 0, all CPU cores) and the
/// right struct_size. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn dashattn_context_options_default(options: *mut dashattn_context_options) -> dashattn_status {
    guard(|| write_out("options", options, default_ffi_options()))
}

/// Creates a context. `options` may be NULL (defaults). On success `*out_ctx` receives a
/// new context owned by the caller; on error `*out_ctx` is left untouched.
/// Backend AUTO picks CUDA when a driver and a device are present, else the CPU (query it
/// with dashattn_context_get_backend: the two backends take different memory). Backend CUDA without a driver or device fails with DASHATTN_ERR_NO_DEVICE.
/// With CUDA, the context binds the device's primary context (shared with the CUDA
/// runtime, PyTorch, CUDA.jl). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn dashattn_context_create(options: *const dashattn_context_options, out_ctx: *mut *mut dashattn_context) -> dashattn_status {
    guard(|| {
        if out_ctx.is_null() {
            bail!(NullPointer, "out_ctx is NULL");
        }
        let opts = if options.is_null() { Options::default() } else { Options::from_ffi(&read_sized("options", options, crate::error::Error::InvalidArgument)?)? };
        let ctx = Box::new(dashattn_context { magic: CONTEXT_MAGIC, inner: Context::new(&opts)? });
        write_out("out_ctx", out_ctx, Box::into_raw(ctx))
    })
}

/// Destroys a context. NULL is accepted and ignored. The caller must ensure no call on it
/// is in flight. Returns DASHATTN_ERR_INVALID_ARGUMENT for a pointer that is not a live
/// context (as far as that can be detected).
#[no_mangle]
pub unsafe extern "C" fn dashattn_context_destroy(ctx: *mut dashattn_context) -> dashattn_status {
    guard(|| {
        if ctx.is_null() {
            return Ok(());
        }
        context(ctx)?;
        (*ctx).magic = 0;
        drop(Box::from_raw(ctx));
        Ok(())
    })
}

/// Sets the CUDA stream (a CUstream / cudaStream_t) that later calls launch on. The stream
/// is borrowed, never owned or synchronised by dashattn; NULL selects the legacy default
/// stream. Ignored by the CPU backend (accepted and stored).
#[no_mangle]
pub unsafe extern "C" fn dashattn_context_set_stream(ctx: *mut dashattn_context, stream: *mut c_void) -> dashattn_status {
    guard(|| {
        context(ctx)?.stream = stream as usize;
        Ok(())
    })
}

/// Loads the CUDA kernels of the context's device now (from the embedded fatbin, or compiled
/// by NVRTC and cached on disk), so that no later call does first-use work: call it before
/// capturing dashattn calls into a CUDA graph. A no-op for the CPU backend. Not needed
/// otherwise (the first call loads them).
#[no_mangle]
pub unsafe extern "C" fn dashattn_context_prepare(ctx: *mut dashattn_context) -> dashattn_status {
    guard(|| context(ctx)?.prepare())
}

/// Writes the backend the context runs on (DASHATTN_BACKEND_CPU or _CUDA) to `*out_backend`.
#[no_mangle]
pub unsafe extern "C" fn dashattn_context_get_backend(ctx: *mut dashattn_context, out_backend: *mut i32) -> dashattn_status {
    guard(|| {
        let b = context(ctx)?.backend_id();
        write_out("out_backend", out_backend, b)
    })
}

/// Writes 1 to `*out_available` when a CUDA driver and at least one device are present,
/// else 0. Never fails for a missing driver. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn dashattn_cuda_available(out_available: *mut i32) -> dashattn_status {
    guard(|| write_out("out_available", out_available, Context::is_cuda_available() as i32))
}
