//! The attention operations: forward, backward, pooled-key cache upkeep and decode, each
//! with its workspace-size query.

use std::os::raw::c_void;

use super::context::{context, dashattn_context};
use super::types::*;
use super::{guard, read_sized, write_out};
use crate::api;
use crate::error::Result;
use crate::params::*;

unsafe fn read_config(cfg: *const dashattn_config) -> Result<Config> {
    Config::from_ffi(&read_sized("config", cfg, crate::error::Error::InvalidConfig)?)
}

unsafe fn t(name: &str, p: *const dashattn_tensor) -> Result<Tensor> {
    Tensor::from_ffi(name, p)
}

unsafe fn opt(name: &str, p: *const dashattn_tensor) -> Result<Option<Tensor>> {
    Tensor::from_ffi_opt(name, p)
}

fn ws(p: *mut c_void, size: usize) -> Workspace {
    Workspace { ptr: p as usize, len: size }
}

/// Fills `*config` with the defaults: block_size 64, n_local 1, causal 1, per-group
/// selection, alpha 1.5, scale 1/sqrt(D), coarse_scale = scale, f32 accumulation,
/// deterministic 1. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn dashattn_config_default(config: *mut dashattn_config) -> dashattn_status {
    guard(|| write_out("config", config, default_ffi_config()))
}

/// Bytes of workspace dashattn_forward needs for these inputs (same arguments as the
/// forward's inputs; `pooled_k` may be NULL). Reads descriptors only, never tensor data.
#[no_mangle]
pub unsafe extern "C" fn dashattn_forward_workspace_size(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    q: *const dashattn_tensor,
    k: *const dashattn_tensor,
    v: *const dashattn_tensor,
    pooled_k: *const dashattn_tensor,
    out_size: *mut usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let pooled = opt("pooled_k", pooled_k)?;
        let n = api::forward_workspace_size(ctx, &cfg, &t("q", q)?, &t("k", k)?, &t("v", v)?, pooled.as_ref())?;
        write_out("out_size", out_size, n)
    })
}

/// DashAttention forward (SPEC 3).
///
/// Layouts (element strides arbitrary and non-negative, last dimension contiguous):
///  - q [N, Lq, Hq, D]; k, v [N, Lk, Hkv, D]; Hq a multiple of Hkv; q, k, v one dtype
///    (f16 or bf16 on CUDA; f32, f16, bf16 or f64 on the CPU). Query row r sits at
///    position Lk - Lq + r.
///  - pooled_k (optional, may be NULL) [N, ceil(Lk/B), Hkv, D], same dtype: the caller's
///    pooled block keys; NULL means mean pooling of k.
///  - head_alpha (optional) [Hq] f32 in [1, 2]: per-head alpha overriding config->alpha;
///    with per-group selection a group uses its first head's alpha.
///  - o [N, Lq, Hq, D] output, dtype of q.
///  - lse, tau (optional outputs, NULL to skip; required later by dashattn_backward)
///    [N, Hq, Lq] f32 (the CPU backend also writes f64, for reference runs). A row that attends no key gets o = 0 and lse = -inf; tau is -inf
///    for rows without candidate blocks.
///  - workspace: `workspace_size` bytes, 256-byte aligned, at least what
///    dashattn_forward_workspace_size returned; NULL and 0 let the library allocate.
///
/// Outputs must not overlap each other or the inputs. On error nothing is written.
/// CPU backend: all pointers are host memory and the call returns when done.
#[no_mangle]
pub unsafe extern "C" fn dashattn_forward(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    q: *const dashattn_tensor,
    k: *const dashattn_tensor,
    v: *const dashattn_tensor,
    pooled_k: *const dashattn_tensor,
    head_alpha: *const dashattn_tensor,
    o: *const dashattn_tensor,
    lse: *const dashattn_tensor,
    tau: *const dashattn_tensor,
    workspace: *mut c_void,
    workspace_size: usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let args = ForwardArgs {
            q: t("q", q)?,
            k: t("k", k)?,
            v: t("v", v)?,
            pooled_k: opt("pooled_k", pooled_k)?,
            head_alpha: opt("head_alpha", head_alpha)?,
            o: t("o", o)?,
            lse: opt("lse", lse)?,
            tau: opt("tau", tau)?,
        };
        unsafe { api::forward(ctx, &cfg, &args, ws(workspace, workspace_size)) }
    })
}

/// Bytes of workspace dashattn_backward needs for these inputs. Reads descriptors only.
#[no_mangle]
pub unsafe extern "C" fn dashattn_backward_workspace_size(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    q: *const dashattn_tensor,
    k: *const dashattn_tensor,
    v: *const dashattn_tensor,
    pooled_k: *const dashattn_tensor,
    out_size: *mut usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let pooled = opt("pooled_k", pooled_k)?;
        let n = api::backward_workspace_size(ctx, &cfg, &t("q", q)?, &t("k", k)?, &t("v", v)?, pooled.as_ref())?;
        write_out("out_size", out_size, n)
    })
}

/// DashAttention backward (SPEC 4): gradients of a loss with respect to q, k, v (and the
/// caller's pooled keys), given d_o = dLoss/do.
///
/// Inputs are exactly those of the forward call (same config, q, k, v, pooled_k,
/// head_alpha) plus its outputs o, lse and tau, and d_o [N, Lq, Hq, D] (dtype of q).
/// Outputs: dq like q, dk and dv like k, and d_pooled_k like pooled_k — required when
/// pooled_k was given (its gradient goes there instead of into dk), NULL otherwise.
/// Outputs are overwritten (not accumulated into) and must not overlap anything else.
/// With config->deterministic = 1 results are bitwise identical run to run.
#[no_mangle]
pub unsafe extern "C" fn dashattn_backward(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    q: *const dashattn_tensor,
    k: *const dashattn_tensor,
    v: *const dashattn_tensor,
    pooled_k: *const dashattn_tensor,
    head_alpha: *const dashattn_tensor,
    o: *const dashattn_tensor,
    d_o: *const dashattn_tensor,
    lse: *const dashattn_tensor,
    tau: *const dashattn_tensor,
    dq: *const dashattn_tensor,
    dk: *const dashattn_tensor,
    dv: *const dashattn_tensor,
    d_pooled_k: *const dashattn_tensor,
    workspace: *mut c_void,
    workspace_size: usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let args = BackwardArgs {
            q: t("q", q)?,
            k: t("k", k)?,
            v: t("v", v)?,
            pooled_k: opt("pooled_k", pooled_k)?,
            head_alpha: opt("head_alpha", head_alpha)?,
            o: t("o", o)?,
            d_o: t("d_o", d_o)?,
            lse: t("lse", lse)?,
            tau: t("tau", tau)?,
            dq: t("dq", dq)?,
            dk: t("dk", dk)?,
            dv: t("dv", dv)?,
            d_pooled_k: opt("d_pooled_k", d_pooled_k)?,
        };
        unsafe { api::backward(ctx, &cfg, &args, ws(workspace, workspace_size)) }
    })
}

/// Bytes of workspace dashattn_pool_keys_paged needs. Reads descriptors only.
#[no_mangle]
pub unsafe extern "C" fn dashattn_pool_keys_paged_workspace_size(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    k_cache: *const dashattn_tensor,
    pooled_cache: *const dashattn_tensor,
    block_table: *const dashattn_tensor,
    seq_lens: *const dashattn_tensor,
    out_size: *mut usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let n = api::pool_keys_paged_workspace_size(ctx, &cfg, &t("k_cache", k_cache)?, &t("pooled_cache", pooled_cache)?, &t("block_table", block_table)?, &t("seq_lens", seq_lens)?)?;
        write_out("out_size", out_size, n)
    })
}

/// Pooled-key cache upkeep (SPEC 5): for every sequence b, writes the pooled key (mean of
/// its B keys) of each block that became complete between prev_seq_lens[b] and
/// seq_lens[b], i.e. blocks j with prev_seq_lens[b] / B <= j < seq_lens[b] / B.
/// Call it after appending tokens to the K cache (and once after a prefill, with
/// prev_seq_lens = 0).
///
/// Layouts: k_cache [num_pages, page_size, Hkv, D] (f32/f16/bf16; page_size a multiple or
/// a divisor of config->block_size); pooled_cache [num_pages, max(1, page_size / B), Hkv, D]
/// (same dtype; the output); block_table [N, max_pages] i32, the pages of each sequence
/// in order; prev_seq_lens and seq_lens [N] i32 with 0 <= prev <= seq <= max_pages *
/// page_size. The pooled key of block j of sequence b lives at page
/// block_table[b][j*B / page_size], slot (j*B mod page_size) / B.
/// CPU backend: every block-table entry read is range-checked before anything is written.
/// Sequences may share pages (prefix sharing) in whole blocks only: the pooled key of a
/// block lives in the page of its first token, so two sequences whose blocks start on one
/// page must hold identical keys in all of that block's pages.
#[no_mangle]
pub unsafe extern "C" fn dashattn_pool_keys_paged(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    k_cache: *const dashattn_tensor,
    pooled_cache: *const dashattn_tensor,
    block_table: *const dashattn_tensor,
    prev_seq_lens: *const dashattn_tensor,
    seq_lens: *const dashattn_tensor,
    workspace: *mut c_void,
    workspace_size: usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let args = PoolPagedArgs {
            k_cache: t("k_cache", k_cache)?,
            pooled_cache: t("pooled_cache", pooled_cache)?,
            block_table: t("block_table", block_table)?,
            prev_seq_lens: t("prev_seq_lens", prev_seq_lens)?,
            seq_lens: t("seq_lens", seq_lens)?,
        };
        unsafe { api::pool_keys_paged(ctx, &cfg, &args, ws(workspace, workspace_size)) }
    })
}

/// Bytes of workspace dashattn_decode needs. Reads descriptors only.
#[no_mangle]
pub unsafe extern "C" fn dashattn_decode_workspace_size(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    q: *const dashattn_tensor,
    k_cache: *const dashattn_tensor,
    pooled_cache: *const dashattn_tensor,
    block_table: *const dashattn_tensor,
    seq_lens: *const dashattn_tensor,
    out_size: *mut usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let n = api::decode_workspace_size(ctx, &cfg, &t("q", q)?, &t("k_cache", k_cache)?, &t("pooled_cache", pooled_cache)?, &t("block_table", block_table)?, &t("seq_lens", seq_lens)?)?;
        write_out("out_size", out_size, n)
    })
}

/// Decode step over a paged KV cache (SPEC 5), causal.
///
/// q [N, q_len, Hq, D] holds q_len (1..=16) new tokens per sequence, already appended to
/// the caches, so row r of sequence b sits at position seq_lens[b] - q_len + r.
/// k_cache, v_cache [num_pages, page_size, Hkv, D]; pooled_cache as in
/// dashattn_pool_keys_paged and up to date for every complete block; block_table
/// [N, max_pages] i32; seq_lens [N] i32 with q_len <= seq_lens[b] <= max_pages * page_size;
/// head_alpha optional [Hq] f32; o [N, q_len, Hq, D] output; lse optional [N, Hq, q_len]
/// f32 output (f64 also on the CPU). The same math as dashattn_forward on the sequence laid
/// out contiguously with pooled_k = the cache's pooled keys (for f16/bf16 caches these are
/// rounded to the cache dtype, so decode can differ from a forward that pools k itself by
/// an ulp or two). The CUDA backend cannot range-check device-resident block tables and
/// lengths before launching: its kernels skip keys on out-of-range pages instead.
#[no_mangle]
pub unsafe extern "C" fn dashattn_decode(
    ctx: *mut dashattn_context,
    config: *const dashattn_config,
    q: *const dashattn_tensor,
    k_cache: *const dashattn_tensor,
    v_cache: *const dashattn_tensor,
    pooled_cache: *const dashattn_tensor,
    block_table: *const dashattn_tensor,
    seq_lens: *const dashattn_tensor,
    head_alpha: *const dashattn_tensor,
    o: *const dashattn_tensor,
    lse: *const dashattn_tensor,
    workspace: *mut c_void,
    workspace_size: usize,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let cfg = read_config(config)?;
        let args = DecodeArgs {
            q: t("q", q)?,
            k_cache: t("k_cache", k_cache)?,
            v_cache: t("v_cache", v_cache)?,
            pooled_cache: t("pooled_cache", pooled_cache)?,
            block_table: t("block_table", block_table)?,
            seq_lens: t("seq_lens", seq_lens)?,
            head_alpha: opt("head_alpha", head_alpha)?,
            o: t("o", o)?,
            lse: opt("lse", lse)?,
        };
        unsafe { api::decode(ctx, &cfg, &args, ws(workspace, workspace_size)) }
    })
}

/// Merges S partial attention results computed over disjoint key sets for the same queries
/// (e.g. a long context split across streams or devices): lse = logsumexp over parts,
/// o = sum_s exp(lse_s - lse) * o_s. A part with lse = -inf contributes nothing; when all
/// are -inf, o = 0 and lse = -inf.
///
/// Layouts: o_parts [S, N, L, H, D] (f16/bf16; f32 and f64 on the CPU), lse_parts
/// [S, N, H, L] f32, o [N, L, H, D] output (dtype of o_parts), lse optional output [N, H, L]
/// f32 (the CPU also takes f64 for both). No workspace.
#[no_mangle]
pub unsafe extern "C" fn dashattn_merge_states(
    ctx: *mut dashattn_context,
    o_parts: *const dashattn_tensor,
    lse_parts: *const dashattn_tensor,
    o: *const dashattn_tensor,
    lse: *const dashattn_tensor,
) -> dashattn_status {
    guard(|| {
        let ctx = context(ctx)?;
        let args = MergeArgs { o_parts: t("o_parts", o_parts)?, lse_parts: t("lse_parts", lse_parts)?, o: t("o", o)?, lse: opt("lse", lse)? };
        unsafe { api::merge_states(ctx, Precision::F32, &args) }
    })
}
