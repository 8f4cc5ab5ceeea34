//! The C-visible types: status codes, enums (as int32_t constants), the tensor descriptor,
//! the attention config and the context options. Plain data only; no logic.

use std::os::raw::c_void;

/// Status code returned by every fallible function (0 = success).
pub type dashattn_status = i32;

/// Success.
pub const DASHATTN_SUCCESS: dashattn_status = 0;
/// A required pointer argument was NULL.
pub const DASHATTN_ERR_NULL_POINTER: dashattn_status = 1;
/// An argument other than the config has an invalid value (context options, a head_alpha
/// entry outside [1, 2], overlapping outputs, a foreign context pointer, ...).
pub const DASHATTN_ERR_INVALID_ARGUMENT: dashattn_status = 2;
/// A tensor has the wrong rank or a shape inconsistent with the other tensors.
pub const DASHATTN_ERR_INVALID_SHAPE: dashattn_status = 3;
/// A tensor has unsupported strides (negative, last dim not contiguous, overlapping output).
pub const DASHATTN_ERR_INVALID_STRIDE: dashattn_status = 4;
/// A tensor has an unsupported dtype or dtypes of tensors that must agree differ.
pub const DASHATTN_ERR_INVALID_DTYPE: dashattn_status = 5;
/// The dashattn_config is invalid: struct_size, block_size, n_local, alpha, scales, or an
/// enum/flag field (causal, selection, precision, deterministic) out of range.
pub const DASHATTN_ERR_INVALID_CONFIG: dashattn_status = 6;
/// A size or byte count overflows 64-bit arithmetic.
pub const DASHATTN_ERR_OVERFLOW: dashattn_status = 7;
/// The caller-provided workspace is smaller than the matching *_workspace_size query.
pub const DASHATTN_ERR_WORKSPACE_TOO_SMALL: dashattn_status = 8;
/// A pointer is not aligned to its element size (workspace: 256 bytes).
pub const DASHATTN_ERR_MISALIGNED: dashattn_status = 9;
/// An index read from memory (block table, sequence length) is out of range.
pub const DASHATTN_ERR_OUT_OF_RANGE: dashattn_status = 10;
/// No CUDA driver or no CUDA device is present.
pub const DASHATTN_ERR_NO_DEVICE: dashattn_status = 11;
/// The request is valid but not supported by this backend / build.
pub const DASHATTN_ERR_UNSUPPORTED: dashattn_status = 12;
/// A CUDA driver call failed.
pub const DASHATTN_ERR_CUDA: dashattn_status = 13;
/// Memory allocation failed.
pub const DASHATTN_ERR_OUT_OF_MEMORY: dashattn_status = 14;
/// A bug inside dashattn (a caught panic). Please report it.
pub const DASHATTN_ERR_INTERNAL: dashattn_status = 15;

/// dtype: 32-bit IEEE float.
pub const DASHATTN_DTYPE_F32: i32 = 0;
/// dtype: IEEE half.
pub const DASHATTN_DTYPE_F16: i32 = 1;
/// dtype: bfloat16.
pub const DASHATTN_DTYPE_BF16: i32 = 2;
/// dtype: 32-bit signed integer (block tables, sequence lengths).
pub const DASHATTN_DTYPE_I32: i32 = 3;
/// dtype: 64-bit IEEE float (CPU backend only: reference computations and tests).
pub const DASHATTN_DTYPE_F64: i32 = 4;

/// backend: CUDA when a driver and device exist, else CPU.
pub const DASHATTN_BACKEND_AUTO: i32 = 0;
/// backend: the CPU reference backend (host memory).
pub const DASHATTN_BACKEND_CPU: i32 = 1;
/// backend: CUDA (device memory).
pub const DASHATTN_BACKEND_CUDA: i32 = 2;

/// selection granularity: all G query heads of a KV group share one block distribution
/// (their coarse scores are averaged). The default.
pub const DASHATTN_SELECT_PER_GROUP: i32 = 0;
/// selection granularity: every query head has its own block distribution.
pub const DASHATTN_SELECT_PER_HEAD: i32 = 1;

/// precision: f32 accumulation (the default).
pub const DASHATTN_PRECISION_DEFAULT: i32 = 0;
/// precision: f64 accumulation (CPU backend only; the test reference).
pub const DASHATTN_PRECISION_F64: i32 = 1;

/// Maximum tensor rank a dashattn_tensor can describe.
pub const DASHATTN_MAX_RANK: usize = 6;

/// A strided view of a tensor. Plain data: no pointers to other memory besides `data`.
///
/// `shape[i]` and `strides[i]` (in elements, not bytes) are read for i < rank; the rest is
/// ignored. Strides must be non-negative and the last dimension contiguous (stride 1) for
/// the attention tensors. `data` is host memory for the CPU backend and device memory for
/// the CUDA backend, and must be aligned to the element size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dashattn_tensor {
    /// Pointer to element [0, 0, ...]. May be NULL only for tensors with zero elements.
    pub data: *mut c_void,
    /// One of DASHATTN_DTYPE_*.
    pub dtype: i32,
    /// Number of dimensions (1..=DASHATTN_MAX_RANK).
    pub rank: i32,
    /// Extent of each dimension.
    pub shape: [i64; DASHATTN_MAX_RANK],
    /// Element stride of each dimension.
    pub strides: [i64; DASHATTN_MAX_RANK],
}

/// Attention configuration. Starts with its own size so it can grow: set struct_size =
/// sizeof(dashattn_config), best through dashattn_config_default().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dashattn_config {
    /// sizeof(dashattn_config).
    pub struct_size: u32,
    /// Coarse block size B: 16, 32, 64 (default) or 128.
    pub block_size: i32,
    /// Number of local blocks always attended with prior 1 (default 1; causal needs >= 1).
    pub n_local: i32,
    /// 1: causal (bottom-right aligned, as FlashAttention 2.1+); 0: not causal. Default 1.
    pub causal: i32,
    /// DASHATTN_SELECT_PER_GROUP (default) or DASHATTN_SELECT_PER_HEAD.
    pub selection: i32,
    /// DASHATTN_PRECISION_DEFAULT or DASHATTN_PRECISION_F64 (CPU only).
    pub precision: i32,
    /// Entmax alpha in [1, 2] (default 1.5). Ignored when a per-head alpha tensor is passed.
    pub alpha: f32,
    /// Fine softmax scale sigma; 0 means 1/sqrt(D).
    pub scale: f32,
    /// Coarse score scale sigma_c; 0 means the fine scale.
    pub coarse_scale: f32,
    /// 1: backward must be bitwise deterministic run to run (default 1). 0 allows a faster
    /// non-deterministic backward where a backend has one.
    pub deterministic: i32,
}

/// Options for dashattn_context_create. Starts with its own size so it can grow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dashattn_context_options {
    /// sizeof(dashattn_context_options).
    pub struct_size: u32,
    /// DASHATTN_BACKEND_AUTO (default), _CPU or _CUDA.
    pub backend: i32,
    /// CUDA device ordinal (default 0). Ignored by the CPU backend.
    pub device: i32,
    /// CPU worker threads; 0 (default) means all available cores.
    pub num_threads: i32,
}
