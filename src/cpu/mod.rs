//! The CPU backend: SPEC-literal, f32 or f64 accumulation, both cores.

pub mod backward;
pub mod common;
pub mod decode;
pub mod forward;
pub mod real;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::params::*;

/// Calls `$($f)::+::<A, E>($args)` for the accumulation type of `$prec` and storage dtype `$dt`.
macro_rules! dispatch {
    ($prec:expr, $dt:expr, $($f:ident)::+, ($($arg:expr),*)) => {
        match ($prec, $dt) {
            (Precision::F32, DType::F32) => $($f)::+::<f32, f32>($($arg),*),
            (Precision::F32, DType::F16) => $($f)::+::<f32, f16>($($arg),*),
            (Precision::F32, DType::BF16) => $($f)::+::<f32, bf16>($($arg),*),
            (Precision::F64, DType::F32) => $($f)::+::<f64, f32>($($arg),*),
            (Precision::F32, DType::F64) => $($f)::+::<f32, f64>($($arg),*),
            (Precision::F64, DType::F64) => $($f)::+::<f64, f64>($($arg),*),
            (Precision::F64, DType::F16) => $($f)::+::<f64, f16>($($arg),*),
            (Precision::F64, DType::BF16) => $($f)::+::<f64, bf16>($($arg),*),
            (_, dt) => bail!(InvalidDtype, "attention tensors cannot be {}", dt.name()),
        }
    };
}

fn acc_size(p: Precision) -> usize {
    match p {
        Precision::F32 => 4,
        Precision::F64 => 8,
    }
}

pub fn forward_workspace_size(cfg: &Config, dims: &AttnDims, pooled_given: bool) -> Result<usize> {
    common::Scratch::bytes(&forward::workspace_counts(dims, pooled_given), acc_size(cfg.precision))
}

pub fn backward_workspace_size(cfg: &Config, dims: &AttnDims) -> Result<usize> {
    common::Scratch::bytes(&backward::workspace_counts(dims), acc_size(cfg.precision))
}

pub fn forward(threads: usize, cfg: &Config, dims: &AttnDims, a: &ForwardArgs, ws: Workspace) -> Result<()> {
    let need = forward_workspace_size(cfg, dims, a.pooled_k.is_some())?;
    dispatch!(cfg.precision, a.q.dtype, forward::forward, (threads, cfg, dims, a, ws, need))
}

pub fn backward(threads: usize, cfg: &Config, dims: &AttnDims, a: &BackwardArgs, ws: Workspace) -> Result<()> {
    let need = backward_workspace_size(cfg, dims)?;
    dispatch!(cfg.precision, a.q.dtype, backward::backward, (threads, cfg, dims, a, ws, need))
}

pub fn pool_keys_paged(threads: usize, cfg: &Config, p: &PagedDims, a: &PoolPagedArgs, ws: Workspace) -> Result<()> {
    ws.check(0)?;
    dispatch!(cfg.precision, a.k_cache.dtype, decode::pool_keys_paged, (threads, cfg, p, a))
}

pub fn decode(threads: usize, cfg: &Config, d: &DecodeDims, a: &DecodeArgs, ws: Workspace) -> Result<()> {
    ws.check(0)?;
    dispatch!(cfg.precision, a.q.dtype, decode::decode, (threads, cfg, d, a))
}
