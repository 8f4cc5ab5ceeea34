//! dashattn: DashAttention — alpha-entmax hierarchical sparse attention — behind a stable
//! C ABI. See ../SPEC (docs/math.md) for the operator.
//!
//! Layers: `ffi` (extern "C", thin) -> `params` (validated views) -> `api` -> backend
//! (`cpu` | `cuda`).

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc, clippy::too_many_arguments)]

pub mod api;
pub mod context;
pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod entmax;
pub mod error;
pub mod ffi;
pub mod params;

pub use context::{Context, Options};
pub use dtype::DType;
pub use error::{Error, Result};
pub use params::{Config, Precision, Selection, Tensor, Workspace};
