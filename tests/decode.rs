//! Decode over a paged KV cache equals the last q_len rows of the forward on the same keys
//! laid out contiguously (SPEC 5, 6); pooled-key cache upkeep is incremental.

mod common;
use common::*;
use dashattn::api;
use dashattn::params::PoolPagedArgs;
use dashattn::{Config, DType, Selection, Workspace};

/// Forward of sequence b alone (its first len keys, its q rows), with the pooled keys taken
/// from the paged cache so both sides see the same pooled values.
fn forward_rows(cfg: &Config, p: &Problem, pg: &Paged, q: &[f32], q_len: usize, b: usize) -> ForwardOut {
    let len = pg.seq_lens[b] as usize;
    let row = p.hkv * p.d;
    let sub = Problem {
        n: 1,
        lq: q_len,
        lk: len,
        hq: p.hq,
        hkv: p.hkv,
        d: p.d,
        q: q[b * q_len * p.hq * p.d..(b + 1) * q_len * p.hq * p.d].to_vec(),
        k: p.k[b * p.lk * row..(b * p.lk + len) * row].to_vec(),
        v: p.v[b * p.lk * row..(b * p.lk + len) * row].to_vec(),
    };
    let nb = len.div_ceil(cfg.block_size);
    let mut pooled = vec![0f32; nb * row];
    for j in 0..nb {
        if (j + 1) * cfg.block_size > len {
            continue; // partial block: never a candidate in causal mode
        }
        let tok = j * cfg.block_size;
        let page = pg.table[b * pg.max_pages + tok / pg.page_size] as usize;
        let slot = (tok % pg.page_size) / cfg.block_size;
        let src = (page * pg.slots(cfg.block_size) + slot) * row;
        pooled[j * row..(j + 1) * row].copy_from_slice(&pg.pooled[src..src + row]);
    }
    forward(&cpu(), cfg, &sub, Some(&pooled), None)
}

#[test]
fn decode_equals_forward_rows() {
    let mut rng = Rng::new(31);
    let ctx = cpu();
    let mut cases = 0;
    for &(bs, page_size) in &[(16usize, 16usize), (16, 8), (16, 64), (32, 32)] {
        for &(hq, hkv) in &[(2usize, 2usize), (8, 2), (8, 1)] {
            for sel in [Selection::PerGroup, Selection::PerHead] {
                for q_len in [1usize, 3, 16] {
                    let cfg = Config { block_size: bs, n_local: 1 + cases % 2, selection: sel, ..Config::default() };
                    let lk = 200;
                    let p = Problem::random(&mut rng, 4, 1, lk, hq, hkv, 8, bs);
                    // Ragged: a long one, a partial last block, one shorter than the local window,
                    // and one with no history beyond its own q_len tokens.
                    let lens = [lk, 3 * bs + 5, bs / 2 + q_len, q_len];
                    let pg = paged_from(&mut rng, &ctx, &cfg, &p, &lens, page_size);
                    let q = rng.normals(p.n * q_len * hq * p.d, 1.0);
                    let (o, lse) = decode(&ctx, &cfg, &p, &pg, &q, q_len);
                    for b in 0..p.n {
                        let f = forward_rows(&cfg, &p, &pg, &q, q_len, b);
                        let span = q_len * hq * p.d;
                        let err = rel_l2(&o[b * span..(b + 1) * span], &f.o);
                        assert!(err < 1e-6, "B {bs} page {page_size} hq {hq} hkv {hkv} {sel:?} q_len {q_len} seq {b}: rel L2 {err:e}");
                        assert!(max_abs_diff(&lse[b * hq * q_len..(b + 1) * hq * q_len], &f.lse) < 1e-5);
                    }
                    cases += 1;
                }
            }
        }
    }
    eprintln!("{cases} decode configurations match the forward");
}

#[test]
fn shared_prefix_pages() {
    // Two sequences whose first page is the same physical page.
    let mut rng = Rng::new(32);
    let ctx = cpu();
    let cfg = Config { block_size: 16, ..Config::default() };
    let mut p = Problem::random(&mut rng, 2, 1, 96, 4, 2, 8, 16);
    let row = p.hkv * p.d;
    let (a, b) = p.k.split_at_mut(p.lk * row);
    b[..32 * row].copy_from_slice(&a[..32 * row]);
    let (a, b) = p.v.split_at_mut(p.lk * row);
    b[..32 * row].copy_from_slice(&a[..32 * row]);
    let mut pg = paged_from(&mut rng, &ctx, &cfg, &p, &[96, 70], 32);
    pg.table[pg.max_pages] = pg.table[0];
    let q = rng.normals(2 * 4 * 8, 1.0);
    let (o, _) = decode(&ctx, &cfg, &p, &pg, &q, 1);
    for s in 0..2 {
        let f = forward_rows(&cfg, &p, &pg, &q, 1, s);
        assert!(rel_l2(&o[s * 32..(s + 1) * 32], &f.o) < 1e-6);
    }
}

#[test]
fn pooled_cache_upkeep_is_incremental() {
    let mut rng = Rng::new(33);
    let ctx = cpu();
    let cfg = Config { block_size: 16, ..Config::default() };
    let p = Problem::random(&mut rng, 2, 1, 100, 2, 2, 8, 16);
    let lens = [100usize, 77];
    let full = paged_from(&mut rng, &ctx, &cfg, &p, &lens, 8);
    // Same pages, pooled cache rebuilt one token at a time.
    let mut inc = vec![f32::NAN; full.pooled.len()];
    for step in 1..=100 {
        let prev: Vec<i32> = lens.iter().map(|&l| (step - 1).min(l) as i32).collect();
        let cur: Vec<i32> = lens.iter().map(|&l| step.min(l) as i32).collect();
        let args = PoolPagedArgs {
            k_cache: view(&full.k_cache, DType::F32, &full.cache_shape(&p)),
            pooled_cache: view_mut(&mut inc, DType::F32, &full.pooled_shape(&p, 16)),
            block_table: view(&full.table, DType::I32, &[p.n, full.max_pages]),
            prev_seq_lens: view(&prev, DType::I32, &[p.n]),
            seq_lens: view(&cur, DType::I32, &[p.n]),
        };
        unsafe { api::pool_keys_paged(&ctx, &cfg, &args, Workspace::none()) }.unwrap();
    }
    for (a, b) in inc.iter().zip(&full.pooled) {
        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
    }
    assert!(inc.iter().filter(|x| !x.is_nan()).count() == (100 / 16 + 77 / 16) * 16);
}

/// Merging partial results over disjoint key sets equals attention over all keys (checked
/// where the operator is plain softmax: non-causal, every block local).
#[test]
fn merge_states_equals_full_attention() {
    use dashattn::params::MergeArgs;
    let mut rng = Rng::new(34);
    let ctx = cpu();
    let cfg = f64cfg(Config { block_size: 16, causal: false, n_local: 100, ..Config::default() });
    let p = Problem::random(&mut rng, 2, 5, 90, 4, 2, 8, 16);
    let full = forward(&ctx, &cfg, &p, None, None);
    let row = p.hkv * p.d;
    let split = |lo: usize, hi: usize| {
        let take = |x: &Vec<f32>| (0..p.n).flat_map(|b| x[(b * p.lk + lo) * row..(b * p.lk + hi) * row].to_vec()).collect::<Vec<f32>>();
        Problem { lk: hi - lo, k: take(&p.k), v: take(&p.v), ..p.clone() }
    };
    let parts = [split(0, 37), split(37, 90)];
    let outs: Vec<ForwardOut> = parts.iter().map(|pp| forward(&ctx, &cfg, pp, None, None)).collect();
    let o_parts: Vec<f32> = outs.iter().flat_map(|f| f.o.clone()).collect();
    let lse_parts: Vec<f32> = outs.iter().flat_map(|f| f.lse.clone()).collect();
    let mut o = vec![f32::NAN; p.q.len()];
    let mut lse = vec![f32::NAN; full.lse.len()];
    let args = MergeArgs {
        o_parts: view(&o_parts, DType::F32, &[2, p.n, p.lq, p.hq, p.d]),
        lse_parts: view(&lse_parts, DType::F32, &[2, p.n, p.hq, p.lq]),
        o: view_mut(&mut o, DType::F32, &p.q_shape()),
        lse: Some(view_mut(&mut lse, DType::F32, &[p.n, p.hq, p.lq])),
    };
    unsafe { api::merge_states(&ctx, dashattn::Precision::F64, &args) }.unwrap();
    assert!(rel_l2(&o, &full.o) < 1e-6, "{}", rel_l2(&o, &full.o));
    assert!(max_abs_diff(&lse, &full.lse) < 1e-5);
}
