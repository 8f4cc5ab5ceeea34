//! The Rust-level operations: validate, then hand to the context's backend. The C ABI in
//! src/ffi is a thin shell over these; Rust callers and the tests use them directly.
//! Operations that touch tensor memory are `unsafe fn`: a `Tensor` is a raw view (address,
//! shape, strides) that only the caller can vouch for. Workspace-size queries read
//! descriptors only and are safe.

use crate::context::{Backend, Context};
use crate::cpu;
use crate::error::{bail, Result};
use crate::params::*;

fn check_precision(ctx: &Context, cfg: &Config) -> Result<()> {
    if cfg.precision == Precision::F64 && !matches!(ctx.backend, Backend::Cpu) {
        bail!(Unsupported, "config.precision = DASHATTN_PRECISION_F64 is a CPU-backend reference mode");
    }
    Ok(())
}

/// f64 tensors are a CPU-backend reference feature.
fn check_dtype(ctx: &Context, t: &Tensor) -> Result<()> {
    if t.dtype == crate::dtype::DType::F64 && !matches!(ctx.backend, Backend::Cpu) {
        bail!(Unsupported, "f64 tensors are supported by the CPU backend only");
    }
    Ok(())
}

pub fn forward_workspace_size(ctx: &Context, cfg: &Config, q: &Tensor, k: &Tensor, v: &Tensor, pooled_k: Option<&Tensor>) -> Result<usize> {
    check_precision(ctx, cfg)?;
    let dims = attn_dims(cfg, q, k, v, pooled_k)?;
    check_dtype(ctx, q)?;
    match &ctx.backend {
        Backend::Cpu => cpu::forward_workspace_size(cfg, &dims, pooled_k.is_some()),
        Backend::Cuda(dev) => crate::cuda::forward::workspace_size(dev, cfg, &dims, q.dtype),
    }
}

/// # Safety
/// Every tensor's `ptr`, shape and strides must describe memory valid for the whole call:
/// host memory for the CPU backend, device memory of the context's device for CUDA;
/// outputs writable and not aliased by anything else in use.
pub unsafe fn forward(ctx: &Context, cfg: &Config, a: &ForwardArgs, ws: Workspace) -> Result<()> {
    check_precision(ctx, cfg)?;
    let dims = a.validate(cfg)?;
    for t in [Some(&a.q), a.lse.as_ref(), a.tau.as_ref()].into_iter().flatten() {
        check_dtype(ctx, t)?;
    }
    match &ctx.backend {
        Backend::Cpu => cpu::forward(ctx.threads, cfg, &dims, a, ws),
        Backend::Cuda(dev) => crate::cuda::forward::forward(dev, ctx.stream, cfg, &dims, a, ws),
    }
}

pub fn backward_workspace_size(ctx: &Context, cfg: &Config, q: &Tensor, k: &Tensor, v: &Tensor, pooled_k: Option<&Tensor>) -> Result<usize> {
    check_precision(ctx, cfg)?;
    let dims = attn_dims(cfg, q, k, v, pooled_k)?;
    check_dtype(ctx, q)?;
    match &ctx.backend {
        Backend::Cpu => cpu::backward_workspace_size(cfg, &dims),
        Backend::Cuda(dev) => crate::cuda::backward::workspace_size(dev, cfg, &dims, q.dtype),
    }
}

/// # Safety
/// Every tensor's `ptr`, shape and strides must describe memory valid for the whole call:
/// host memory for the CPU backend, device memory of the context's device for CUDA;
/// outputs writable and not aliased by anything else in use.
pub unsafe fn backward(ctx: &Context, cfg: &Config, a: &BackwardArgs, ws: Workspace) -> Result<()> {
    check_precision(ctx, cfg)?;
    let dims = a.validate(cfg)?;
    for t in [&a.q, &a.lse, &a.tau] {
        check_dtype(ctx, t)?;
    }
    match &ctx.backend {
        Backend::Cpu => cpu::backward(ctx.threads, cfg, &dims, a, ws),
        Backend::Cuda(dev) => crate::cuda::backward::backward(dev, ctx.stream, cfg, &dims, a, ws),
    }
}

pub fn pool_keys_paged_workspace_size(ctx: &Context, cfg: &Config, k_cache: &Tensor, pooled_cache: &Tensor, block_table: &Tensor, seq_lens: &Tensor) -> Result<usize> {
    check_precision(ctx, cfg)?;
    paged_dims(cfg, k_cache, pooled_cache, block_table, seq_lens)?;
    check_dtype(ctx, k_cache)?;
    Ok(0)
}

/// # Safety
/// Every tensor's `ptr`, shape and strides must describe memory valid for the whole call:
/// host memory for the CPU backend, device memory of the context's device for CUDA;
/// outputs writable and not aliased by anything else in use.
pub unsafe fn pool_keys_paged(ctx: &Context, cfg: &Config, a: &PoolPagedArgs, ws: Workspace) -> Result<()> {
    check_precision(ctx, cfg)?;
    let p = a.validate(cfg)?;
    check_dtype(ctx, &a.k_cache)?;
    match &ctx.backend {
        Backend::Cpu => cpu::pool_keys_paged(ctx.threads, cfg, &p, a, ws),
        Backend::Cuda(dev) => crate::cuda::decode::pool_keys_paged(dev, ctx.stream, cfg, &p, a, ws),
    }
}

pub fn decode_workspace_size(ctx: &Context, cfg: &Config, q: &Tensor, k_cache: &Tensor, pooled_cache: &Tensor, block_table: &Tensor, seq_lens: &Tensor) -> Result<usize> {
    check_precision(ctx, cfg)?;
    let d = decode_dims(cfg, q, k_cache, pooled_cache, block_table, seq_lens)?;
    check_dtype(ctx, q)?;
    match &ctx.backend {
        Backend::Cpu => Ok(0),
        Backend::Cuda(dev) => crate::cuda::decode::workspace_size(dev, cfg, &d, q.dtype),
    }
}

/// # Safety
/// Every tensor's `ptr`, shape and strides must describe memory valid for the whole call:
/// host memory for the CPU backend, device memory of the context's device for CUDA;
/// outputs writable and not aliased by anything else in use.
pub unsafe fn decode(ctx: &Context, cfg: &Config, a: &DecodeArgs, ws: Workspace) -> Result<()> {
    check_precision(ctx, cfg)?;
    let d = a.validate(cfg)?;
    for t in [Some(&a.q), a.lse.as_ref()].into_iter().flatten() {
        check_dtype(ctx, t)?;
    }
    match &ctx.backend {
        Backend::Cpu => cpu::decode(ctx.threads, cfg, &d, a, ws),
        Backend::Cuda(dev) => crate::cuda::decode::decode(dev, ctx.stream, cfg, &d, a, ws),
    }
}

/// # Safety
/// Every tensor's `ptr`, shape and strides must describe memory valid for the whole call:
/// host memory for the CPU backend, device memory of the context's device for CUDA;
/// outputs writable and not aliased by anything else in use.
pub unsafe fn merge_states(ctx: &Context, precision: Precision, a: &MergeArgs) -> Result<()> {
    let m = a.validate()?;
    for t in [Some(&a.o), Some(&a.lse_parts), a.lse.as_ref()].into_iter().flatten() {
        check_dtype(ctx, t)?;
    }
    match &ctx.backend {
        Backend::Cpu => cpu::merge_states(ctx.threads, precision, &m, a),
        Backend::Cuda(dev) => crate::cuda::decode::merge_states(dev, ctx.stream, &m, a),
    }
}
