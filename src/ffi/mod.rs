//! The C ABI: only extern "C" items. Each function is a shell: a panic guard, pointer
//! checks, conversion into validated params, then a call into crate::api.

pub mod context;
pub mod error;
pub mod ops;
pub mod types;
pub mod version;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Result};
use types::*;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(msg: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

pub(crate) fn last_error() -> String {
    LAST_ERROR.with(|e| e.borrow().clone())
}

/// Runs `f`, catching panics; records the message of a failure for this thread.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> dashattn_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => DASHATTN_SUCCESS,
        Ok(Err(e)) => {
            let s = e.status();
            set_last_error(e.to_string());
            s
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("internal error (caught panic): {msg}"));
            DASHATTN_ERR_INTERNAL
        }
    }
}

/// Reads a size-prefixed struct: checks NULL, then that struct_size matches (a mismatch is
/// reported with `mismatch`'s status: INVALID_CONFIG for configs, INVALID_ARGUMENT else).
pub(crate) unsafe fn read_sized<T: Copy>(name: &str, p: *const T, mismatch: fn(String) -> Error) -> Result<T> {
    if p.is_null() {
        return Err(Error::NullPointer(format!("{name} is NULL")));
    }
    let size = std::ptr::read_unaligned(p as *const u32);
    if size as usize != std::mem::size_of::<T>() {
        return Err(mismatch(format!(
            "{name}->struct_size = {size} (this library expects {}; initialise it with the *_default function)",
            std::mem::size_of::<T>()
        )));
    }
    Ok(std::ptr::read_unaligned(p))
}

/// Writes through an out-pointer after checking it.
pub(crate) unsafe fn write_out<T>(name: &str, p: *mut T, v: T) -> Result<()> {
    if p.is_null() {
        return Err(Error::NullPointer(format!("{name} is NULL")));
    }
    std::ptr::write_unaligned(p, v);
    Ok(())
}
