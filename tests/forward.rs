//! CPU forward against an independent, loop-by-loop transcription of SPEC 3, and the
//! identities of SPEC 6.

mod common;
use common::*;
use dashattn::{entmax, Config, Selection};

/// SPEC 3 written out directly in f64: returns (o, lse, tau) for one problem.
fn spec_forward(cfg: &Config, p: &Problem, alphas: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (b, d, g) = (cfg.block_size, p.d, p.hq / p.hkv);
    let nb = p.lk.div_ceil(b);
    let sigma = if cfg.scale > 0.0 { cfg.scale as f64 } else { 1.0 / (d as f64).sqrt() };
    let sigma_c = if cfg.coarse_scale > 0.0 { cfg.coarse_scale as f64 } else { sigma };
    let qv = |n: usize, r: usize, h: usize| &p.q[((n * p.lq + r) * p.hq + h) * d..][..d];
    let kv = |n: usize, i: usize, h: usize| &p.k[((n * p.lk + i) * p.hkv + h) * d..][..d];
    let vv = |n: usize, i: usize, h: usize| &p.v[((n * p.lk + i) * p.hkv + h) * d..][..d];
    let dotf = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum::<f64>();
    let mut o = vec![0.0; p.q.len()];
    let mut lse = vec![0.0; p.n * p.hq * p.lq];
    let mut taus = vec![0.0; p.n * p.hq * p.lq];
    for n in 0..p.n {
        for h in 0..p.hq {
            let hk = h / g;
            let kbar: Vec<Vec<f64>> = (0..nb)
                .map(|j| {
                    let keys: Vec<usize> = (j * b..((j + 1) * b).min(p.lk)).collect();
                    (0..d).map(|x| keys.iter().map(|&i| kv(n, i, hk)[x] as f64).sum::<f64>() / keys.len() as f64).collect()
                })
                .collect();
            for r in 0..p.lq {
                let t = p.lk as i64 - p.lq as i64 + r as i64;
                let c = t.div_euclid(b as i64);
                let nl = cfg.n_local as i64;
                let (mut cand, mut local) = (vec![], vec![]);
                for j in 0..nb as i64 {
                    let is_local = if cfg.causal { j > c - nl && j <= c } else { (j - c).abs() < nl };
                    let is_cand = if cfg.causal { j <= c - nl } else { !is_local };
                    if is_local {
                        local.push(j as usize);
                    } else if is_cand {
                        cand.push(j as usize);
                    }
                }
                let heads: Vec<usize> = match cfg.selection {
                    Selection::PerGroup => (hk * g..hk * g + g).collect(),
                    Selection::PerHead => vec![h],
                };
                let alpha = alphas[heads[0]];
                let z: Vec<f64> = cand
                    .iter()
                    .map(|&j| heads.iter().map(|&hh| sigma_c * dotf(qv(n, r, hh), &kbar[j])).sum::<f64>() / heads.len() as f64)
                    .collect();
                let tau = entmax::threshold(&z, alpha);
                let mut logits: Vec<(f64, usize)> = vec![];
                let q = qv(n, r, h);
                let mut add_block = |j: usize, beta: f64| {
                    for i in j * b..((j + 1) * b).min(p.lk) {
                        if cfg.causal && i as i64 > t {
                            continue;
                        }
                        let kd: Vec<f64> = kv(n, i, hk).iter().map(|&x| x as f64).collect();
                        logits.push((sigma * dotf(q, &kd) + beta, i));
                    }
                };
                for (idx, &j) in cand.iter().enumerate() {
                    if let Some(beta) = entmax::log_prob(z[idx], tau, alpha) {
                        add_block(j, beta);
                    }
                }
                for &j in &local {
                    add_block(j, 0.0);
                }
                let row = (n * p.hq + h) * p.lq + r;
                taus[row] = tau;
                if logits.is_empty() {
                    lse[row] = f64::NEG_INFINITY;
                    continue;
                }
                let m = logits.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = logits.iter().map(|x| (x.0 - m).exp()).sum();
                lse[row] = m + s.ln();
                for &(l, i) in &logits {
                    let a = (l - lse[row]).exp();
                    for x in 0..d {
                        o[((n * p.lq + r) * p.hq + h) * d + x] += a * vv(n, i, hk)[x] as f64;
                    }
                }
            }
        }
    }
    (o, lse, taus)
}

fn check_against_spec(cfg: &Config, p: &Problem, head_alpha: Option<&[f32]>, label: &str) {
    let ctx = cpu();
    let alphas: Vec<f64> = match head_alpha {
        Some(a) => a.iter().map(|&x| x as f64).collect(),
        None => vec![cfg.alpha as f64; p.hq],
    };
    let (o_ref, lse_ref, tau_ref) = spec_forward(cfg, p, &alphas);
    let o_ref32: Vec<f32> = o_ref.iter().map(|&x| x as f32).collect();
    for (prec, tol) in [(true, 1e-7f64), (false, 2e-5f64)] {
        let c = if prec { f64cfg(*cfg) } else { *cfg };
        let out = forward(&ctx, &c, p, None, head_alpha);
        let err = rel_l2(&out.o, &o_ref32);
        assert!(err < tol.max(1e-7), "{label} (f64 acc {prec}): rel L2 {err:e}");
        for (i, (&l, &lr)) in out.lse.iter().zip(&lse_ref).enumerate() {
            assert!(l == lr as f32 || (l as f64 - lr).abs() < 1e-4 * (1.0 + lr.abs()), "{label}: lse[{i}] {l} vs {lr}");
        }
        for (i, (&t, &tr)) in out.tau.iter().zip(&tau_ref).enumerate() {
            assert!(t == tr as f32 || (t as f64 - tr).abs() < 1e-4 * (1.0 + tr.abs()), "{label}: tau[{i}] {t} vs {tr}");
        }
    }
}

#[test]
fn forward_matches_spec_transcription() {
    let mut rng = Rng::new(11);
    let mut n_cases = 0;
    for &(lq, lk) in &[(70usize, 70usize), (33, 100), (1, 77), (45, 16)] {
        for &(hq, hkv) in &[(2usize, 2usize), (4, 1), (8, 2)] {
            for causal in [true, false] {
                for sel in [Selection::PerGroup, Selection::PerHead] {
                    for &(bs, nl, alpha) in &[(16usize, 1usize, 1.5f32), (16, 2, 1.3), (32, 1, 2.0), (16, 1, 1.0)] {
                        let cfg = Config { block_size: bs, n_local: nl, causal, selection: sel, alpha, ..Config::default() };
                        let p = Problem::random(&mut rng, 2, lq, lk, hq, hkv, 8, bs);
                        check_against_spec(&cfg, &p, None, &format!("lq {lq} lk {lk} hq {hq} hkv {hkv} causal {causal} {sel:?} B {bs} nl {nl} alpha {alpha}"));
                        n_cases += 1;
                    }
                }
            }
        }
    }
    eprintln!("{n_cases} forward cases match the SPEC transcription");
}

#[test]
fn per_head_alpha_and_scales() {
    let mut rng = Rng::new(12);
    let p = Problem::random(&mut rng, 1, 50, 90, 4, 2, 16, 16);
    let alphas = [1.0f32, 1.2, 1.7, 2.0];
    for sel in [Selection::PerGroup, Selection::PerHead] {
        let cfg = Config { block_size: 16, selection: sel, scale: 0.3, coarse_scale: 0.7, ..Config::default() };
        check_against_spec(&cfg, &p, Some(&alphas), &format!("per-head alpha {sel:?}"));
    }
}

/// SPEC 6: with no candidate blocks the operator is plain causal softmax attention.
#[test]
fn no_candidates_is_causal_softmax() {
    let mut rng = Rng::new(13);
    let p = Problem::random(&mut rng, 2, 40, 60, 4, 2, 16, 64);
    let cfg = f64cfg(Config { block_size: 64, ..Config::default() }); // Lk <= B: one block, always local
    let out = forward(&cpu(), &cfg, &p, None, None);
    let d = p.d;
    let mut o_ref = vec![0f32; p.q.len()];
    for n in 0..p.n {
        for h in 0..p.hq {
            for r in 0..p.lq {
                let t = p.lk - p.lq + r;
                let q = &p.q[((n * p.lq + r) * p.hq + h) * d..][..d];
                let s: Vec<f64> = (0..=t)
                    .map(|i| q.iter().zip(&p.k[((n * p.lk + i) * p.hkv + h / 2) * d..][..d]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for x in 0..d {
                    let v: f64 = (0..=t).map(|i| (s[i] - m).exp() / z * p.v[((n * p.lk + i) * p.hkv + h / 2) * d + x] as f64).sum();
                    o_ref[((n * p.lq + r) * p.hq + h) * d + x] = v as f32;
                }
                assert!(out.tau[(n * p.hq + h) * p.lq + r] == f32::NEG_INFINITY);
            }
        }
    }
    let err = rel_l2(&out.o, &o_ref);
    assert!(err < 1e-7, "rel L2 {err:e}");
}

/// With G = 1 the per-group and per-head selections are the same operator.
#[test]
fn per_group_equals_per_head_when_g_is_one() {
    let mut rng = Rng::new(14);
    let p = Problem::random(&mut rng, 2, 80, 150, 3, 3, 16, 16);
    let a = forward(&cpu(), &Config { block_size: 16, selection: Selection::PerGroup, ..Config::default() }, &p, None, None);
    let b = forward(&cpu(), &Config { block_size: 16, selection: Selection::PerHead, ..Config::default() }, &p, None, None);
    assert_eq!(a.o, b.o);
    assert_eq!(a.lse, b.lse);
    assert_eq!(a.tau, b.tau);
}

/// Caller-given pooled keys equal to the mean pooling give the same result.
#[test]
fn caller_pooled_keys_equal_mean_pooling() {
    let mut rng = Rng::new(15);
    let p = Problem::random(&mut rng, 1, 64, 100, 2, 1, 8, 16);
    let cfg = f64cfg(Config { block_size: 16, causal: false, n_local: 1, ..Config::default() });
    let nb = p.nb(16);
    let mut pooled = vec![0f32; nb * p.d];
    for j in 0..nb {
        let keys: Vec<usize> = (j * 16..((j + 1) * 16).min(p.lk)).collect();
        for x in 0..p.d {
            pooled[j * p.d + x] = (keys.iter().map(|&i| p.k[i * p.d + x] as f64).sum::<f64>() / keys.len() as f64) as f32;
        }
    }
    let a = forward(&cpu(), &cfg, &p, None, None);
    let b = forward(&cpu(), &cfg, &p, Some(&pooled), None);
    assert!(rel_l2(&b.o, &a.o) < 1e-6);
}

/// Sparsity is real: with concentrated keys entmax selects a proper subset of the
/// candidate blocks, and block_stats counts it.
#[test]
fn entmax_selects_a_subset() {
    use dashattn::params::ForwardArgs;
    let mut rng = Rng::new(16);
    let p = Problem::random(&mut rng, 1, 256, 256, 2, 1, 32, 16);
    let cfg = Config { block_size: 16, alpha: 1.5, ..Config::default() };
    let out = forward(&cpu(), &cfg, &p, None, None);
    assert!(out.o.iter().all(|x| x.is_finite()));
    let a = ForwardArgs {
        q: view(&p.q, dashattn::DType::F32, &p.q_shape()),
        k: view(&p.k, dashattn::DType::F32, &p.k_shape()),
        v: view(&p.v, dashattn::DType::F32, &p.k_shape()),
        pooled_k: None,
        head_alpha: None,
        o: view(&out.o, dashattn::DType::F32, &p.q_shape()),
        lse: None,
        tau: None,
    };
    let st = unsafe { dashattn::cpu::block_stats(&cfg, &a, &view(&out.tau, dashattn::DType::F32, &[1, 2, 256])) }.unwrap();
    // 2 heads x (sum over rows of complete blocks before the local one).
    let cand: u64 = 2 * (0..256u64).map(|t| t / 16).sum::<u64>();
    assert_eq!(st.candidates, cand);
    assert!(st.selected > 0 && st.selected < st.candidates, "{st:?}");
    assert!(st.sparsity() > 0.3, "{st:?}");
    // alpha = 1 (softmax) selects every candidate.
    let cfg1 = Config { alpha: 1.0, ..cfg };
    let out1 = forward(&cpu(), &cfg1, &p, None, None);
    let st1 = unsafe { dashattn::cpu::block_stats(&cfg1, &a, &view(&out1.tau, dashattn::DType::F32, &[1, 2, 256])) }.unwrap();
    assert_eq!(st1.selected, st1.candidates);
}

/// Outputs may be interleaved views of one buffer (packed qkv layout) but never overlap.
#[test]
fn packed_outputs_are_accepted_and_overlap_is_refused() {
    use dashattn::params::BackwardArgs;
    use dashattn::{DType, Tensor};
    let mut rng = Rng::new(17);
    let cfg = Config { block_size: 16, ..Config::default() };
    let p = Problem::random(&mut rng, 1, 40, 40, 2, 2, 8, 16);
    let f = forward(&cpu(), &cfg, &p, None, None);
    let d_o = rng.normals(p.q.len(), 1.0);
    let reference = backward(&cpu(), &cfg, &p, None, None, &f, &d_o);
    // dqkv packed as [N, L, 3, H, D]; dq, dk, dv are views at offsets 0, H*D, 2*H*D.
    let mut packed = vec![f32::NAN; 3 * p.q.len()];
    let base = packed.as_mut_ptr(); // the library writes through views of this buffer
    let hd = p.hq * p.d;
    let viewp = |off: usize| {
        let mut t = Tensor::contiguous(base.wrapping_add(off) as *const u8, DType::F32, &p.q_shape());
        t.strides[0] = 3 * p.lq * hd;
        t.strides[1] = 3 * hd;
        t
    };
    let mut args = BackwardArgs {
        q: view(&p.q, DType::F32, &p.q_shape()),
        k: view(&p.k, DType::F32, &p.k_shape()),
        v: view(&p.v, DType::F32, &p.k_shape()),
        pooled_k: None,
        head_alpha: None,
        o: view(&f.o, DType::F32, &p.q_shape()),
        d_o: view(&d_o, DType::F32, &p.q_shape()),
        lse: view(&f.lse, DType::F32, &[1, 2, 40]),
        tau: view(&f.tau, DType::F32, &[1, 2, 40]),
        dq: viewp(0),
        dk: viewp(hd),
        dv: viewp(2 * hd),
        d_pooled_k: None,
    };
    unsafe { dashattn::api::backward(&cpu(), &cfg, &args, dashattn::Workspace::none()) }.unwrap();
    for r in 0..40 {
        for x in 0..hd {
            assert_eq!(packed[r * 3 * hd + x], reference.dq[r * hd + x]);
            assert_eq!(packed[r * 3 * hd + hd + x], reference.dk[r * hd + x]);
            assert_eq!(packed[r * 3 * hd + 2 * hd + x], reference.dv[r * hd + x]);
        }
    }
    // dk shifted by one element into dq's rows: refused.
    args.dk = viewp(1);
    let e = unsafe { dashattn::api::backward(&cpu(), &cfg, &args, dashattn::Workspace::none()) }.unwrap_err();
    assert_eq!(e.status(), dashattn::ffi::types::DASHATTN_ERR_INVALID_ARGUMENT, "{e}");
}
