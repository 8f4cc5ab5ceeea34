//! The CPU backend: SPEC-literal, f32 or f64 accumulation, both cores.

pub(crate) mod backward;
pub(crate) mod common;
pub(crate) mod decode;
pub(crate) mod forward;
pub(crate) mod real;

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

/// Block statistics of a forward call, from its inputs and the tau it returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Candidate blocks over all rows and query heads.
    pub candidates: u64,
    /// Selected candidate blocks (x_j > 0).
    pub selected: u64,
    /// Blocks attended (selected + local) over all rows and query heads.
    pub attended: u64,
    /// Blocks dense attention would visit (causal: up to the diagonal).
    pub dense: u64,
}

impl BlockStats {
    /// Fraction of the dense key blocks that were skipped.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.attended as f64 / self.dense.max(1) as f64
    }
}

/// Counts candidate, selected and attended blocks of a forward on host tensors (the
/// achieved sparsity that demos and benchmarks report). `tau` is the forward's output.
///
/// # Safety
/// The tensors of `a` (inputs only; outputs are not read) and `tau` must describe valid
/// host memory.
pub unsafe fn block_stats(cfg: &Config, a: &ForwardArgs, tau: &Tensor) -> Result<BlockStats> {
    let dims = a.validate(cfg)?;
    dispatch!(cfg.precision, a.q.dtype, block_stats_impl, (cfg, &dims, a, tau))
}

fn block_stats_impl<A: real::Real, E: crate::dtype::Elem>(cfg: &Config, dims: &AttnDims, a: &ForwardArgs, tau: &Tensor) -> Result<BlockStats> {
    use common::*;
    let (nb, d, g) = (dims.nb, dims.d, dims.group);
    let mut pooled = vec![A::ZERO; dims.n * dims.hkv * nb * d];
    forward::pooled_keys::<A, E>(1, dims, cfg.block_size, &a.k, a.pooled_k.as_ref(), &mut pooled);
    let alphas = head_alphas(a.head_alpha.as_ref(), cfg.alpha, dims.hq)?;
    let geo = Geometry::new(dims.lq, dims.lk, cfg.block_size, cfg.n_local, cfg.causal);
    let (_, sigma_c) = cfg.scales(d);
    let mut st = BlockStats::default();
    let (mut cand, mut local, mut z) = (Vec::new(), Vec::new(), Vec::new());
    let mut q = vec![A::ZERO; g * d];
    let hpu = if cfg.selection == Selection::PerGroup { g } else { 1 };
    for n in 0..dims.n {
        for hk in 0..dims.hkv {
            let ph = &pooled[(n * dims.hkv + hk) * nb * d..][..nb * d];
            for r in 0..dims.lq {
                let t = geo.position(r);
                geo.blocks(t, &mut cand, &mut local);
                let dense = if cfg.causal { if t < 0 { 0 } else { t as usize / cfg.block_size + 1 } } else { nb };
                for gi in 0..g {
                    unsafe { real::load_row(a.q.ptr_at::<E>(&[n, r, hk * g + gi, 0]) as *const E, &mut q[gi * d..(gi + 1) * d]) };
                }
                for h0 in (0..g).step_by(hpu) {
                    let qs: Vec<&[A]> = (h0..h0 + hpu).map(|gi| &q[gi * d..(gi + 1) * d]).collect();
                    coarse_scores(&cand, &qs, ph, d, sigma_c, &mut z);
                    let tau_v = load_stat(tau, &[n, hk * g + h0, r]);
                    let sel = z.iter().filter(|&&zj| crate::entmax::log_prob(zj, tau_v, alphas[hk * g + h0]).is_some()).count() as u64;
                    let heads = hpu as u64;
                    st.candidates += cand.len() as u64 * heads;
                    st.selected += sel * heads;
                    st.attended += (sel + local.len() as u64) * heads;
                    st.dense += dense as u64 * heads;
                }
            }
        }
    }
    Ok(st)
}

/// Merges S partial attention results by their lse: lse = logsumexp_s lse_s,
/// o = sum_s exp(lse_s - lse) o_s (o = 0, lse = -inf when every part is empty).
pub fn merge_states(threads: usize, cfg_precision: Precision, m: &MergeDims, a: &MergeArgs) -> Result<()> {
    dispatch!(cfg_precision, a.o.dtype, merge_impl, (threads, m, a))
}

fn merge_impl<A: real::Real, E: crate::dtype::Elem>(threads: usize, m: &MergeDims, a: &MergeArgs) -> Result<()> {
    use common::*;
    let [s, n, l, h, d] = *m;
    parallel_for(threads, n * l, |u| {
        let (b, r) = (u / l, u % l);
        let mut acc = vec![A::ZERO; d];
        let mut row = vec![A::ZERO; d];
        for hh in 0..h {
            let lses: Vec<f64> = (0..s).map(|p| load_stat(&a.lse_parts, &[p, b, hh, r])).collect();
            let mx = lses.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            acc.iter_mut().for_each(|x| *x = A::ZERO);
            let lse = if mx == f64::NEG_INFINITY {
                f64::NEG_INFINITY
            } else {
                let tot: f64 = lses.iter().map(|&x| (x - mx).exp()).sum();
                let lse = mx + tot.ln();
                for (p, &lp) in lses.iter().enumerate() {
                    let w = (lp - lse).exp();
                    if w > 0.0 {
                        unsafe { real::load_row(a.o_parts.ptr_at::<E>(&[p, b, r, hh, 0]) as *const E, &mut row) };
                        real::axpy(&mut acc, A::of(w), &row);
                    }
                }
                lse
            };
            unsafe {
                let o = a.o.ptr_at::<E>(&[b, r, hh, 0]);
                for (x, &v) in acc.iter().enumerate() {
                    *o.add(x) = v.store::<E>();
                }
                if let Some(lt) = &a.lse {
                    store_stat(lt, &[b, hh, r], lse);
                }
            }
        }
    });
    Ok(())
}
