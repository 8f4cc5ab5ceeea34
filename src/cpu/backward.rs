//! CPU backward (SPEC 4): fine-stage gradients, the prior's gradient through the entmax
//! Jacobian, and mean-pooling backward. One work item per (sequence, KV head) owns that
//! head's dk, dv and d pooled keys, so no two threads touch the same accumulator and the
//! result is deterministic.

use crate::cpu::common::*;
use crate::cpu::forward::pooled_keys;
use crate::cpu::real::{axpy, dot, load_row, Real};
use crate::dtype::Elem;
use crate::entmax;
use crate::error::Result;
use crate::params::{AttnDims, BackwardArgs, Config, Selection, Workspace};

/// Scratch elements: pooled keys [N, Hkv, nb, D] always (given ones are converted).
pub fn workspace_counts(d: &AttnDims) -> Vec<usize> {
    vec![d.n * d.hkv * d.nb * d.d]
}

unsafe fn store_row<A: Real, E: Elem>(dst: *mut E, src: &[A]) {
    for (x, &v) in src.iter().enumerate() {
        *dst.add(x) = v.store::<E>();
    }
}

pub fn backward<A: Real, E: Elem>(threads: usize, cfg: &Config, dims: &AttnDims, a: &BackwardArgs, ws: Workspace, ws_need: usize) -> Result<()> {
    let alphas = head_alphas(a.head_alpha.as_ref(), cfg.alpha, dims.hq)?;
    let mut scratch = Scratch::new(ws, ws_need)?;
    let (nb, d, g, lk) = (dims.nb, dims.d, dims.group, dims.lk);
    let pooled: &mut [A] = scratch.take::<A>(dims.n * dims.hkv * nb * d);
    pooled_keys::<A, E>(threads, dims, cfg.block_size, &a.k, a.pooled_k.as_ref(), pooled);
    let pooled: &[A] = pooled;

    let geo = Geometry::new(dims.lq, lk, cfg.block_size, cfg.n_local, cfg.causal);
    let (sigma_f, sigma_c) = cfg.scales(d);
    let sigma = A::of(sigma_f);
    let units_per_row: usize = if cfg.selection == Selection::PerGroup { 1 } else { g };
    let hpu = g / units_per_row;

    parallel_for(threads, dims.n * dims.hkv, |nh| {
        let (n, hk) = (nh / dims.hkv, nh % dims.hkv);
        let kv = StridedKv { k: &a.k, v: &a.v, n, h: hk };
        let pooled_h = &pooled[nh * nb * d..(nh + 1) * nb * d];
        let mut dk = vec![A::ZERO; lk * d];
        let mut dv = vec![A::ZERO; lk * d];
        let mut dkbar = vec![A::ZERO; nb * d];
        let (mut cand, mut local, mut z, mut sel) = (Vec::new(), Vec::new(), Vec::new(), Vec::<(usize, A)>::new());
        let mut qrows = vec![A::ZERO; g * d];
        let mut dorows = vec![A::ZERO; g * d];
        let mut dqrows = vec![A::ZERO; g * d];
        let (mut krow, mut vrow, mut orow) = (vec![A::ZERO; d], vec![A::ZERO; d], vec![A::ZERO; d]);
        let mut qsum = vec![A::ZERO; d];
        let mut h_sel: Vec<f64> = Vec::new();
        let (mut s_w, mut dz) = (Vec::new(), Vec::new());
        for r in 0..dims.lq {
            let t = geo.position(r);
            geo.blocks(t, &mut cand, &mut local);
            for gi in 0..g {
                let h = hk * g + gi;
                unsafe {
                    load_row(a.q.ptr_at::<E>(&[n, r, h, 0]) as *const E, &mut qrows[gi * d..(gi + 1) * d]);
                    load_row(a.d_o.ptr_at::<E>(&[n, r, h, 0]) as *const E, &mut dorows[gi * d..(gi + 1) * d]);
                }
            }
            dqrows.iter_mut().for_each(|x| *x = A::ZERO);
            for unit in 0..units_per_row {
                let h0 = unit * hpu;
                let qs: Vec<&[A]> = (h0..h0 + hpu).map(|gi| &qrows[gi * d..(gi + 1) * d]).collect();
                let alpha = alphas[hk * g + h0];
                // tau as saved by the forward (SPEC 3.5), not re-solved.
                let tau = load_stat(&a.tau, &[n, hk * g + h0, r]);
                coarse_scores(&cand, &qs, pooled_h, d, sigma_c, &mut z);
                sel.clear();
                s_w.clear();
                for (idx, &j) in cand.iter().enumerate() {
                    if let Some(beta) = entmax::log_prob(z[idx], tau, alpha) {
                        sel.push((j, A::of(beta)));
                        s_w.push(entmax::jacobian_weight(z[idx], tau, alpha));
                    }
                }
                h_sel.clear();
                h_sel.resize(sel.len(), 0.0);
                for gi in h0..h0 + hpu {
                    let h = hk * g + gi;
                    let q = &qrows[gi * d..(gi + 1) * d];
                    let dov = &dorows[gi * d..(gi + 1) * d];
                    let lse = A::of(load_stat(&a.lse, &[n, h, r]));
                    if lse == A::NEG_INF {
                        continue; // attended nothing: every gradient is zero
                    }
                    unsafe { load_row(a.o.ptr_at::<E>(&[n, r, h, 0]) as *const E, &mut orow) };
                    let d_r = dot(dov, &orow);
                    let dq = &mut dqrows[gi * d..(gi + 1) * d];
                    let nsel = sel.len();
                    let blocks = sel.iter().copied().chain(local.iter().map(|&j| (j, A::ZERO)));
                    for (bi, (j, beta)) in blocks.enumerate() {
                        let mut hj = A::ZERO;
                        for i in geo.keys(j, t) {
                            unsafe {
                                load_row(KeyValues::<E>::key(&kv, i), &mut krow);
                                load_row(KeyValues::<E>::value(&kv, i), &mut vrow);
                            }
                            let raw = sigma * dot(q, &krow);
                            let p = (raw + beta - lse).exp();
                            let dpv = dot(dov, &vrow) - d_r;
                            let dl = p * dpv;
                            axpy(&mut dv[i * d..(i + 1) * d], p, dov);
                            axpy(dq, sigma * dl, &krow);
                            axpy(&mut dk[i * d..(i + 1) * d], sigma * dl, q);
                            if bi < nsel {
                                // H_j without dividing by p_j (SPEC 4).
                                hj += (raw - lse).exp() * dpv;
                            }
                        }
                        if bi < nsel {
                            h_sel[bi] += hj.f64();
                        }
                    }
                }
                if sel.is_empty() {
                    continue;
                }
                dz.clear();
                dz.resize(sel.len(), 0.0);
                entmax::vjp(&s_w, &h_sel, &mut dz);
                // z is the mean over the unit's heads: the 1/|unit| factor enters both terms.
                let c = sigma_c / hpu as f64;
                qsum.iter_mut().for_each(|x| *x = A::ZERO);
                for q in &qs {
                    axpy(&mut qsum, A::ONE, q);
                }
                for (bi, &(j, _)) in sel.iter().enumerate() {
                    let w = A::of(c * dz[bi]);
                    axpy(&mut dkbar[j * d..(j + 1) * d], w, &qsum);
                    let kb = &pooled_h[j * d..(j + 1) * d];
                    for gi in h0..h0 + hpu {
                        axpy(&mut dqrows[gi * d..(gi + 1) * d], w, kb);
                    }
                }
            }
            for gi in 0..g {
                unsafe { store_row::<A, E>(a.dq.ptr_at::<E>(&[n, r, hk * g + gi, 0]), &dqrows[gi * d..(gi + 1) * d]) };
            }
        }
        match &a.d_pooled_k {
            Some(dp) => {
                for j in 0..nb {
                    unsafe { store_row::<A, E>(dp.ptr_at::<E>(&[n, j, hk, 0]), &dkbar[j * d..(j + 1) * d]) };
                }
            }
            None => {
                for j in 0..nb {
                    let inv = A::ONE / A::of(geo.block_len(j) as f64);
                    for i in j * cfg.block_size..(j * cfg.block_size + geo.block_len(j)) {
                        axpy(&mut dk[i * d..(i + 1) * d], inv, &dkbar[j * d..(j + 1) * d]);
                    }
                }
            }
        }
        for i in 0..lk {
            unsafe {
                store_row::<A, E>(a.dk.ptr_at::<E>(&[n, i, hk, 0]), &dk[i * d..(i + 1) * d]);
                store_row::<A, E>(a.dv.ptr_at::<E>(&[n, i, hk, 0]), &dv[i * d..(i + 1) * d]);
            }
        }
    });
    Ok(())
}
