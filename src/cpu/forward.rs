//! CPU forward (SPEC 3): pooled keys, coarse entmax selection, fine softmax with the prior.

use crate::cpu::common::*;
use crate::cpu::real::{load_row, Real};
use crate::dtype::Elem;
use crate::error::Result;
use crate::params::{AttnDims, Config, ForwardArgs, Selection, Tensor, Workspace};

/// Query rows per work item.
const ROWS_PER_ITEM: usize = 16;

/// Scratch elements of the forward: the pooled keys [N, Hkv, nb, D] unless given.
pub fn workspace_counts(d: &AttnDims, pooled_given: bool) -> Vec<usize> {
    if pooled_given {
        vec![]
    } else {
        vec![d.n * d.hkv * d.nb * d.d]
    }
}

/// Pooled keys of every (n, hkv) as [N, Hkv, nb, D] in the accumulation type: the mean of
/// the keys present in each block, or the caller's pooled keys converted.
pub fn pooled_keys<A: Real, E: Elem>(threads: usize, dims: &AttnDims, bs: usize, k: &Tensor, given: Option<&Tensor>, out: &mut [A]) {
    let (nb, d) = (dims.nb, dims.d);
    let out_ptr = SharedMut(out.as_mut_ptr());
    parallel_for(threads, dims.n * dims.hkv, |u| {
        let (n, h) = (u / dims.hkv, u % dims.hkv);
        let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(u * nb * d), nb * d) };
        let mut row = vec![A::ZERO; d];
        for j in 0..nb {
            let o = &mut dst[j * d..(j + 1) * d];
            match given {
                Some(p) => unsafe { load_row(p.ptr_at::<E>(&[n, j, h, 0]) as *const E, o) },
                None => {
                    let cnt = (bs * (j + 1)).min(dims.lk) - bs * j;
                    mean_pool(cnt, |i| k.ptr_at::<E>(&[n, j * bs + i, h, 0]) as *const E, &mut row, o);
                }
            }
        }
    });
}

pub fn forward<A: Real, E: Elem>(threads: usize, cfg: &Config, dims: &AttnDims, a: &ForwardArgs, ws: Workspace, ws_need: usize) -> Result<()> {
    let alphas = head_alphas(a.head_alpha.as_ref(), cfg.alpha, dims.hq)?;
    let mut scratch = Scratch::new(ws, ws_need)?;
    let (nb, d, g) = (dims.nb, dims.d, dims.group);
    let mut owned_pooled = Vec::new();
    let pooled: &mut [A] = if a.pooled_k.is_some() {
        owned_pooled.resize(dims.n * dims.hkv * nb * d, A::ZERO);
        &mut owned_pooled
    } else {
        scratch.take::<A>(dims.n * dims.hkv * nb * d)
    };
    pooled_keys::<A, E>(threads, dims, cfg.block_size, &a.k, a.pooled_k.as_ref(), pooled);
    let pooled: &[A] = pooled;

    let geo = Geometry::new(dims.lq, dims.lk, cfg.block_size, cfg.n_local, cfg.causal);
    let (sigma, sigma_c) = cfg.scales(d);
    let sigma = A::of(sigma);
    let chunks = dims.lq.div_ceil(ROWS_PER_ITEM);
    let units_per_row: usize = if cfg.selection == Selection::PerGroup { 1 } else { g };
    parallel_for(threads, dims.n * dims.hkv * chunks, |item| {
        let (nh, chunk) = (item / chunks, item % chunks);
        let (n, hk) = (nh / dims.hkv, nh % dims.hkv);
        let kv = StridedKv { k: &a.k, v: &a.v, n, h: hk };
        let pooled_h = &pooled[nh * nb * d..(nh + 1) * nb * d];
        let (mut cand, mut local, mut z, mut sel) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut blocks: Vec<(usize, A)> = Vec::new();
        let mut qrows = vec![A::ZERO; g * d];
        let mut row = vec![A::ZERO; d];
        let (mut out, mut lse, mut st) = (vec![A::ZERO; g * d], vec![A::ZERO; g], Vec::new());
        for r in chunk * ROWS_PER_ITEM..((chunk + 1) * ROWS_PER_ITEM).min(dims.lq) {
            let t = geo.position(r);
            geo.blocks(t, &mut cand, &mut local);
            for gi in 0..g {
                unsafe { load_row(a.q.ptr_at::<E>(&[n, r, hk * g + gi, 0]) as *const E, &mut qrows[gi * d..(gi + 1) * d]) };
            }
            let heads_per_unit = g / units_per_row;
            for unit in 0..units_per_row {
                let h0 = unit * heads_per_unit;
                let qs: Vec<&[A]> = (h0..h0 + heads_per_unit).map(|gi| &qrows[gi * d..(gi + 1) * d]).collect();
                let alpha = alphas[hk * g + h0];
                let tau = select_blocks(&cand, &qs, pooled_h, d, sigma_c, alpha, &mut z, &mut sel);
                blocks.clear();
                blocks.extend_from_slice(&sel);
                blocks.extend(local.iter().map(|&j| (j, A::ZERO)));
                attend::<A, E, _>(&geo, t, &qs, &kv, &blocks, sigma, &mut row, &mut st, &mut out, &mut lse);
                for gi in h0..h0 + heads_per_unit {
                    let h = hk * g + gi;
                    let (o_h, lse_h) = (&out[(gi - h0) * d..(gi - h0 + 1) * d], lse[gi - h0]);
                    unsafe {
                        let o = a.o.ptr_at::<E>(&[n, r, h, 0]);
                        for (x, &v) in o_h.iter().enumerate() {
                            *o.add(x) = v.store::<E>();
                        }
                        if let Some(l) = &a.lse {
                            store_stat(l, &[n, h, r], lse_h.f64());
                        }
                        if let Some(tt) = &a.tau {
                            store_stat(tt, &[n, h, r], tau);
                        }
                    }
                }
            }
        }
    });
    Ok(())
}
