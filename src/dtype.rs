//! Element types: the storage dtypes of tensors and their conversions.

use half::{bf16, f16};

use crate::error::{bail, Result};
use crate::ffi::types::*;

/// Storage dtype of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I32,
}

impl DType {
    pub fn from_raw(name: &str, v: i32) -> Result<DType> {
        Ok(match v {
            DASHATTN_DTYPE_F32 => DType::F32,
            DASHATTN_DTYPE_F16 => DType::F16,
            DASHATTN_DTYPE_BF16 => DType::BF16,
            DASHATTN_DTYPE_I32 => DType::I32,
            DASHATTN_DTYPE_F64 => DType::F64,
            _ => bail!(InvalidDtype, "{name}.dtype = {v} is not a DASHATTN_DTYPE_* value"),
        })
    }
    pub fn raw(self) -> i32 {
        match self {
            DType::F32 => DASHATTN_DTYPE_F32,
            DType::F16 => DASHATTN_DTYPE_F16,
            DType::BF16 => DASHATTN_DTYPE_BF16,
            DType::I32 => DASHATTN_DTYPE_I32,
            DType::F64 => DASHATTN_DTYPE_F64,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
        }
    }
}

/// A floating-point storage element (f32, f64, f16, bf16).
pub trait Elem: Copy + Send + Sync + Default + 'static {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn from_f32(x: f32) -> Self;
    fn from_f64(x: f64) -> Self;
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Elem for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

impl Elem for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}

impl Elem for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}
