//! Library version.

use std::os::raw::c_char;

/// Major version of this header.
pub const DASHATTN_VERSION_MAJOR: u32 = 0;
/// Minor version of this header.
pub const DASHATTN_VERSION_MINOR: u32 = 1;
/// Patch version of this header.
pub const DASHATTN_VERSION_PATCH: u32 = 0;

/// The loaded library's version as MAJOR * 10000 + MINOR * 100 + PATCH. Compare with the
/// DASHATTN_VERSION_* macros of the header you compiled against. Thread-safe.
#[no_mangle]
pub extern "C" fn dashattn_version() -> u32 {
    DASHATTN_VERSION_MAJOR * 10000 + DASHATTN_VERSION_MINOR * 100 + DASHATTN_VERSION_PATCH
}

/// The version as a static NUL-terminated string, e.g. "0.1.0". Never NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn dashattn_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
