//! The library's error type. Every variant maps to one C status code; the message names
//! the offending argument and is what dashattn_last_error_message() returns.

use crate::ffi::types::*;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An error with its C status code class and a message naming the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("null pointer: {0}")]
    NullPointer(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid shape: {0}")]
    InvalidShape(String),
    #[error("invalid stride: {0}")]
    InvalidStride(String),
    #[error("invalid dtype: {0}")]
    InvalidDtype(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("overflow: {0}")]
    Overflow(String),
    #[error("workspace too small: {0}")]
    WorkspaceTooSmall(String),
    #[error("misaligned pointer: {0}")]
    Misaligned(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The C status code of this error.
    pub fn status(&self) -> dashattn_status {
        match self {
            Error::NullPointer(_) => DASHATTN_ERR_NULL_POINTER,
            Error::InvalidArgument(_) => DASHATTN_ERR_INVALID_ARGUMENT,
            Error::InvalidShape(_) => DASHATTN_ERR_INVALID_SHAPE,
            Error::InvalidStride(_) => DASHATTN_ERR_INVALID_STRIDE,
            Error::InvalidDtype(_) => DASHATTN_ERR_INVALID_DTYPE,
            Error::InvalidConfig(_) => DASHATTN_ERR_INVALID_CONFIG,
            Error::Overflow(_) => DASHATTN_ERR_OVERFLOW,
            Error::WorkspaceTooSmall(_) => DASHATTN_ERR_WORKSPACE_TOO_SMALL,
            Error::Misaligned(_) => DASHATTN_ERR_MISALIGNED,
            Error::OutOfRange(_) => DASHATTN_ERR_OUT_OF_RANGE,
            Error::NoDevice(_) => DASHATTN_ERR_NO_DEVICE,
            Error::Unsupported(_) => DASHATTN_ERR_UNSUPPORTED,
            Error::Cuda(_) => DASHATTN_ERR_CUDA,
            Error::OutOfMemory(_) => DASHATTN_ERR_OUT_OF_MEMORY,
            Error::Internal(_) => DASHATTN_ERR_INTERNAL,
        }
    }
}

/// Static description of a status code.
pub fn status_cstr(status: dashattn_status) -> &'static std::ffi::CStr {
    match status {
        DASHATTN_SUCCESS => c"success",
        DASHATTN_ERR_NULL_POINTER => c"a required pointer argument was NULL",
        DASHATTN_ERR_INVALID_ARGUMENT => c"invalid argument value",
        DASHATTN_ERR_INVALID_SHAPE => c"invalid tensor rank or shape",
        DASHATTN_ERR_INVALID_STRIDE => c"invalid tensor strides",
        DASHATTN_ERR_INVALID_DTYPE => c"unsupported or mismatched dtype",
        DASHATTN_ERR_INVALID_CONFIG => c"invalid config",
        DASHATTN_ERR_OVERFLOW => c"size or byte count overflows",
        DASHATTN_ERR_WORKSPACE_TOO_SMALL => c"workspace too small",
        DASHATTN_ERR_MISALIGNED => c"misaligned pointer",
        DASHATTN_ERR_OUT_OF_RANGE => c"index out of range",
        DASHATTN_ERR_NO_DEVICE => c"no CUDA driver or device",
        DASHATTN_ERR_UNSUPPORTED => c"not supported by this backend or build",
        DASHATTN_ERR_CUDA => c"CUDA driver error",
        DASHATTN_ERR_OUT_OF_MEMORY => c"out of memory",
        DASHATTN_ERR_INTERNAL => c"internal error (please report)",
        _ => c"unknown status code",
    }
}

/// Static description of a status code.
pub fn status_str(status: dashattn_status) -> &'static str {
    status_cstr(status).to_str().unwrap_or("?")
}

macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$kind(format!($($arg)*)))
    };
}
pub(crate) use bail;
