//! Status strings and the thread-local error detail.

use std::os::raw::c_char;

use super::types::*;

/// A static, NUL-terminated description of a status code ("unknown status code" for values
/// outside the DASHATTN_* set). Never NULL; the string must not be freed. Thread-safe.
#[no_mangle]
pub extern "C" fn dashattn_status_string(status: dashattn_status) -> *const c_char {
    crate::error::status_cstr(status).as_ptr()
}

/// Copies the detail message of the most recent failed call on the calling thread into
/// `buf` (capacity `buf_size` bytes, always NUL-terminated when buf_size > 0, truncated if
/// needed). Returns the full message length in bytes without the NUL, so a caller can size
/// its buffer: `n = dashattn_last_error_message(NULL, 0)`. `buf` may be NULL only when
/// `buf_size` is 0. Thread-safe (the message is thread-local).
#[no_mangle]
pub unsafe extern "C" fn dashattn_last_error_message(buf: *mut c_char, buf_size: usize) -> usize {
    let msg = std::panic::catch_unwind(super::last_error).unwrap_or_default();
    let bytes = msg.as_bytes();
    if !buf.is_null() && buf_size > 0 {
        let n = bytes.len().min(buf_size - 1);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
    bytes.len()
}
