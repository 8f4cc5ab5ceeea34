//! CPU decode step over a paged KV cache (SPEC 5), and the pooled-key cache upkeep.

use crate::cpu::common::*;
use crate::cpu::real::{load_row, Real};
use crate::dtype::Elem;
use crate::error::{bail, Result};
use crate::params::{Config, DecodeArgs, DecodeDims, PagedDims, PoolPagedArgs, Selection, Tensor};

/// Keys and values of one (sequence, KV head) through its page-table row.
struct PagedKv<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
    pages: &'a [usize],
    page_size: usize,
    h: usize,
}

impl<E: Elem> KeyValues<E> for PagedKv<'_> {
    #[inline]
    fn key(&self, i: usize) -> *const E {
        self.k.ptr_at::<E>(&[self.pages[i / self.page_size], i % self.page_size, self.h, 0])
    }
    #[inline]
    fn value(&self, i: usize) -> *const E {
        self.v.ptr_at::<E>(&[self.pages[i / self.page_size], i % self.page_size, self.h, 0])
    }
}

fn read_i32(t: &Tensor, idx: &[usize]) -> i32 {
    unsafe { *t.ptr_at::<i32>(idx) }
}

/// Reads and range-checks the pages that hold the first `len` tokens of sequence b.
fn page_list(p: &PagedDims, table: &Tensor, b: usize, len: usize) -> Result<Vec<usize>> {
    (0..len.div_ceil(p.page_size))
        .map(|i| {
            let e = read_i32(table, &[b, i]);
            if e < 0 || e as usize >= p.num_pages {
                bail!(OutOfRange, "block_table[{b}][{i}] = {e} (num_pages = {})", p.num_pages);
            }
            Ok(e as usize)
        })
        .collect()
}

fn seq_len(p: &PagedDims, t: &Tensor, name: &str, b: usize, min: usize) -> Result<usize> {
    let v = read_i32(t, &[b]);
    let max = p.max_pages * p.page_size;
    if v < min as i32 || v as usize > max {
        bail!(OutOfRange, "{name}[{b}] = {v} (must lie in [{min}, max_pages * page_size = {max}])");
    }
    Ok(v as usize)
}

/// Location (page, slot) of the pooled key of block j in the pooled-key cache.
fn pooled_slot(pages: &[usize], j: usize, bs: usize, page_size: usize) -> (usize, usize) {
    let tok = j * bs;
    (pages[tok / page_size], (tok % page_size) / bs)
}

pub fn pool_keys_paged<A: Real, E: Elem>(threads: usize, cfg: &Config, p: &PagedDims, a: &PoolPagedArgs) -> Result<()> {
    let bs = cfg.block_size;
    // Validate every index before writing anything.
    let mut work = Vec::new();
    let mut claimed = std::collections::HashSet::new();
    for b in 0..p.n {
        let len = seq_len(p, &a.seq_lens, "seq_lens", b, 0)?;
        let prev = read_i32(&a.prev_seq_lens, &[b]);
        if prev < 0 || prev as usize > len {
            bail!(OutOfRange, "prev_seq_lens[{b}] = {prev} (must lie in [0, seq_lens[{b}] = {len}])");
        }
        let (j0, j1) = (prev as usize / bs, len / bs);
        if j1 > j0 {
            let pages = page_list(p, &a.block_table, b, j1 * bs)?;
            // A pooled slot shared by several sequences (prefix sharing) is written once:
            // no two threads may store to the same element.
            let blocks: Vec<usize> = (j0..j1).filter(|&j| claimed.insert(pooled_slot(&pages, j, bs, p.page_size))).collect();
            work.push((blocks, pages));
        }
    }
    parallel_for(threads, work.len() * p.hkv, |it| {
        let ((blocks, pages), h) = (&work[it / p.hkv], it % p.hkv);
        let mut row = vec![A::ZERO; p.d];
        let mut out = vec![A::ZERO; p.d];
        for &j in blocks {
            mean_pool(bs, |i| a.k_cache.ptr_at::<E>(&[pages[(j * bs + i) / p.page_size], (j * bs + i) % p.page_size, h, 0]) as *const E, &mut row, &mut out);
            let (page, slot) = pooled_slot(pages, j, bs, p.page_size);
            let dst = a.pooled_cache.ptr_at::<E>(&[page, slot, h, 0]);
            for (x, &v) in out.iter().enumerate() {
                unsafe { *dst.add(x) = v.store::<E>() };
            }
        }
    });
    Ok(())
}

pub fn decode<A: Real, E: Elem>(threads: usize, cfg: &Config, dd: &DecodeDims, a: &DecodeArgs) -> Result<()> {
    let p = &dd.paged;
    let (d, g, q_len) = (p.d, dd.group, dd.q_len);
    let alphas = head_alphas(a.head_alpha.as_ref(), cfg.alpha, dd.hq)?;
    let mut seqs = Vec::with_capacity(p.n);
    for b in 0..p.n {
        let len = seq_len(p, &a.seq_lens, "seq_lens", b, q_len)?;
        seqs.push((len, page_list(p, &a.block_table, b, len)?));
    }
    let (sigma_f, sigma_c) = cfg.scales(d);
    let sigma = A::of(sigma_f);
    let units_per_row: usize = if cfg.selection == Selection::PerGroup { 1 } else { g };
    let hpu = g / units_per_row;
    parallel_for(threads, p.n * p.hkv, |u| {
        let (b, hk) = (u / p.hkv, u % p.hkv);
        let (len, pages) = (&seqs[b].0, &seqs[b].1);
        let geo = Geometry::new(q_len, *len, cfg.block_size, cfg.n_local, true);
        // Pooled keys of the complete blocks (the only ones that can be candidates).
        let full = len / cfg.block_size;
        let mut pooled = vec![A::ZERO; full * d];
        for j in 0..full {
            let (page, slot) = pooled_slot(pages, j, cfg.block_size, p.page_size);
            unsafe { load_row(a.pooled_cache.ptr_at::<E>(&[page, slot, hk, 0]) as *const E, &mut pooled[j * d..(j + 1) * d]) };
        }
        let kv = PagedKv { k: &a.k_cache, v: &a.v_cache, pages, page_size: p.page_size, h: hk };
        let (mut cand, mut local, mut z, mut sel) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut blocks: Vec<(usize, A)> = Vec::new();
        let mut qrows = vec![A::ZERO; g * d];
        let mut row = vec![A::ZERO; d];
        let (mut out, mut lse, mut st) = (vec![A::ZERO; g * d], vec![A::ZERO; g], Vec::new());
        for r in 0..q_len {
            let t = geo.position(r);
            geo.blocks(t, &mut cand, &mut local);
            for gi in 0..g {
                unsafe { load_row(a.q.ptr_at::<E>(&[b, r, hk * g + gi, 0]) as *const E, &mut qrows[gi * d..(gi + 1) * d]) };
            }
            for unit in 0..units_per_row {
                let h0 = unit * hpu;
                let qs: Vec<&[A]> = (h0..h0 + hpu).map(|gi| &qrows[gi * d..(gi + 1) * d]).collect();
                select_blocks(&cand, &qs, &pooled, d, sigma_c, alphas[hk * g + h0], &mut z, &mut sel);
                blocks.clear();
                blocks.extend_from_slice(&sel);
                blocks.extend(local.iter().map(|&j| (j, A::ZERO)));
                attend::<A, E, _>(&geo, t, &qs, &kv, &blocks, sigma, &mut row, &mut st, &mut out, &mut lse);
                for gi in h0..h0 + hpu {
                    let h = hk * g + gi;
                    let (o_h, lse_h) = (&out[(gi - h0) * d..(gi - h0 + 1) * d], lse[gi - h0]);
                    unsafe {
                        let o = a.o.ptr_at::<E>(&[b, r, h, 0]);
                        for (x, &v) in o_h.iter().enumerate() {
                            *o.add(x) = v.store::<E>();
                        }
                        if let Some(l) = &a.lse {
                            store_stat(l, &[b, h, r], lse_h.f64());
                        }
                    }
                }
            }
        }
    });
    Ok(())
}
