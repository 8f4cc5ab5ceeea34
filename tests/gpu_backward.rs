//! CUDA backward against the f64 CPU reference (SPEC 4, 6) over the modes the forward
//! supports, plus bitwise determinism. Skips cleanly (reported) without a GPU.

mod common;
use common::*;
use dashattn::api;
use dashattn::cuda::util::{device, DeviceBuffer};
use dashattn::ffi::types::DASHATTN_BACKEND_CUDA;
use dashattn::params::{BackwardArgs, ForwardArgs};
use dashattn::{Config, Context, DType, Options, Precision, Selection, Tensor, Workspace};
use half::{bf16, f16};

fn cuda() -> Option<Context> {
    match Context::new(&Options { backend: DASHATTN_BACKEND_CUDA, ..Options::default() }) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    lq: usize,
    lk: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    bs: usize,
    causal: bool,
    sel: Selection,
    alpha: f32,
    pooled: bool,
    head_alpha: bool,
    bf: bool,
}

/// Rounds to the storage dtype; returns (16-bit bits, the rounded values as f64).
fn round(x: &[f32], bf: bool) -> (Vec<u16>, Vec<f64>) {
    x.iter()
        .map(|&v| if bf { let b = bf16::from_f32(v); (b.to_bits(), b.to_f64()) } else { let h = f16::from_f32(v); (h.to_bits(), h.to_f64()) })
        .unzip()
}

fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::contiguous(v.as_ptr() as *const u8, DType::F64, shape)
}

/// An output the CPU reference writes: the pointer comes from a mutable borrow.
fn t64_out(v: &mut [f64], shape: &[usize]) -> Tensor {
    Tensor::contiguous(v.as_mut_ptr() as *const u8, DType::F64, shape)
}

fn dev_t(b: &DeviceBuffer, dt: DType, shape: &[usize]) -> Tensor {
    let mut t = Tensor::contiguous(std::ptr::null(), dt, shape);
    t.ptr = b.ptr as usize;
    t
}

fn to_f64(bits: &[u16], bf: bool) -> Vec<f64> {
    bits.iter().map(|&b| if bf { bf16::from_bits(b).to_f64() } else { f16::from_bits(b).to_f64() }).collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        n += (x - y) * (x - y);
        d += y * y;
    }
    if n.is_nan() {
        f64::INFINITY
    } else {
        (n / d.max(1e-300)).sqrt()
    }
}

fn run_case(gpu: &Context, rng: &mut Rng, c: Case) -> [f64; 4] {
    let dev = device(gpu).unwrap();
    let cfg = Config { block_size: c.bs, causal: c.causal, selection: c.sel, alpha: c.alpha, n_local: 1, ..Config::default() };
    let rcfg = Config { precision: Precision::F64, ..cfg };
    let p = Problem::random(rng, c.n, c.lq, c.lk, c.hq, c.hkv, c.d, c.bs);
    let nb = p.nb(c.bs);
    let (qs, ks, ss, ps) = (p.q_shape(), p.k_shape(), [c.n, c.hq, c.lq], [c.n, nb, c.hkv, c.d]);
    let (qb, q) = round(&p.q, c.bf);
    let (kb, k) = round(&p.k, c.bf);
    let (vb, v) = round(&p.v, c.bf);
    let (pb, pooled) = round(&rng.normals(c.n * nb * c.hkv * c.d, 1.5), c.bf);
    let (dob, d_o) = round(&rng.normals(p.q.len(), 1.0), c.bf);
    let alphas: Vec<f32> = (0..c.hq).map(|h| [1.0f32, 1.25, 1.5, 2.0][h % 4]).collect();
    let ha64: Vec<f64> = alphas.iter().map(|&a| a as f64).collect();
    let _ = ha64;
    // Reference: f64 CPU forward + backward on the rounded inputs.
    let cpu = cpu();
    let mut o = vec![f64::NAN; q.len()];
    let (mut lse, mut tau) = (vec![f64::NAN; c.n * c.hq * c.lq], vec![f64::NAN; c.n * c.hq * c.lq]);
    let ha_t = Tensor::contiguous(alphas.as_ptr() as *const u8, DType::F32, &[c.hq]);
    let fa = ForwardArgs {
        q: t64(&q, &qs),
        k: t64(&k, &ks),
        v: t64(&v, &ks),
        pooled_k: c.pooled.then(|| t64(&pooled, &ps)),
        head_alpha: c.head_alpha.then_some(ha_t),
        o: t64_out(&mut o, &qs),
        lse: Some(t64_out(&mut lse, &ss)),
        tau: Some(t64_out(&mut tau, &ss)),
    };
    unsafe { api::forward(&cpu, &rcfg, &fa, Workspace::none()) }.unwrap();
    let mut g = [vec![f64::NAN; q.len()], vec![f64::NAN; k.len()], vec![f64::NAN; v.len()], vec![f64::NAN; pooled.len()]];
    let [g0, g1, g2, g3] = &mut g;
    let ba = BackwardArgs {
        q: fa.q,
        k: fa.k,
        v: fa.v,
        pooled_k: fa.pooled_k,
        head_alpha: fa.head_alpha,
        o: t64(&o, &qs),
        d_o: t64(&d_o, &qs),
        lse: t64(&lse, &ss),
        tau: t64(&tau, &ss),
        dq: t64_out(g0, &qs),
        dk: t64_out(g1, &ks),
        dv: t64_out(g2, &ks),
        d_pooled_k: c.pooled.then(|| t64_out(g3, &ps)),
    };
    unsafe { api::backward(&cpu, &rcfg, &ba, Workspace::none()) }.unwrap();

    // GPU backward on the reference forward state (o rounded to the dtype, lse/tau f32).
    let dt = if c.bf { DType::BF16 } else { DType::F16 };
    let (ob, _) = round(&o.iter().map(|&x| x as f32).collect::<Vec<_>>(), c.bf);
    let lse32: Vec<f32> = lse.iter().map(|&x| x as f32).collect();
    let tau32: Vec<f32> = tau.iter().map(|&x| x as f32).collect();
    let up = |x: &[u16]| DeviceBuffer::from_slice(dev, x).unwrap();
    let (dq_, dk_, dv_, do_, dp_) = (up(&qb), up(&kb), up(&vb), up(&dob), up(&pb));
    let (d_o_b, d_lse, d_tau) = (up(&ob), DeviceBuffer::from_slice(dev, &lse32).unwrap(), DeviceBuffer::from_slice(dev, &tau32).unwrap());
    let d_ha = DeviceBuffer::from_slice(dev, &alphas).unwrap();
    let outs = [DeviceBuffer::new(dev, qb.len() * 2).unwrap(), DeviceBuffer::new(dev, kb.len() * 2).unwrap(), DeviceBuffer::new(dev, vb.len() * 2).unwrap(), DeviceBuffer::new(dev, pb.len() * 2).unwrap()];
    let run = || -> Vec<Vec<u16>> {
        for b in &outs {
            b.fill_u32(if c.bf { 0x7fc0_7fc0 } else { 0x7e00_7e00 }).unwrap();
        }
        let ga = BackwardArgs {
            q: dev_t(&dq_, dt, &qs),
            k: dev_t(&dk_, dt, &ks),
            v: dev_t(&dv_, dt, &ks),
            pooled_k: c.pooled.then(|| dev_t(&dp_, dt, &ps)),
            head_alpha: c.head_alpha.then(|| dev_t(&d_ha, DType::F32, &[c.hq])),
            o: dev_t(&d_o_b, dt, &qs),
            d_o: dev_t(&do_, dt, &qs),
            lse: dev_t(&d_lse, DType::F32, &ss),
            tau: dev_t(&d_tau, DType::F32, &ss),
            dq: dev_t(&outs[0], dt, &qs),
            dk: dev_t(&outs[1], dt, &ks),
            dv: dev_t(&outs[2], dt, &ks),
            d_pooled_k: c.pooled.then(|| dev_t(&outs[3], dt, &ps)),
        };
        unsafe { api::backward(gpu, &cfg, &ga, Workspace::none()) }.unwrap();
        outs.iter()
            .zip([qb.len(), kb.len(), vb.len(), pb.len()])
            .map(|(b, n)| {
                let mut h = vec![0u16; n];
                b.download(&mut h).unwrap();
                h
            })
            .collect()
    };
    let r1 = run();
    let r2 = run();
    assert_eq!(r1, r2, "{c:?}: backward is not bitwise deterministic");
    let mut errs = [0.0; 4];
    for i in 0..3 {
        errs[i] = rel(&to_f64(&r1[i], c.bf), &g[i]);
    }
    if c.pooled {
        errs[3] = rel(&to_f64(&r1[3], c.bf), &g[3]);
    }
    errs
}

#[test]
fn gpu_backward_matches_cpu_reference() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(0xB4C0 ^ std::process::id() as u64);
    let base = Case { n: 2, lq: 333, lk: 333, hq: 8, hkv: 2, d: 128, bs: 64, causal: true, sel: Selection::PerGroup, alpha: 1.5, pooled: false, head_alpha: false, bf: true };
    let mut cases = vec![base];
    for d in [64, 128] {
        for bs in [32, 64, 128] {
            cases.push(Case { d, bs, ..base });
        }
    }
    for (hq, hkv) in [(4, 4), (8, 2), (8, 1)] {
        for causal in [true, false] {
            for sel in [Selection::PerGroup, Selection::PerHead] {
                cases.push(Case { hq, hkv, causal, sel, d: 64, ..base });
            }
        }
    }
    for alpha in [1.0f32, 1.3, 2.0] {
        cases.push(Case { alpha, d: 64, ..base });
    }
    cases.push(Case { lq: 17, lk: 500, ..base });
    cases.push(Case { lq: 1, lk: 300, n: 3, ..base });
    cases.push(Case { pooled: true, ..base });
    cases.push(Case { head_alpha: true, sel: Selection::PerHead, ..base });
    cases.push(Case { bf: false, ..base });
    cases.push(Case { bf: false, causal: false, sel: Selection::PerHead, d: 64, ..base });
    // GQA 16 (one row per warp), several mask words per tile and tile words per block
    // (nb = 66, 132 tiles), and more query rows than keys (non-causal: rows before the keys).
    cases.push(Case { hq: 16, hkv: 1, d: 64, ..base });
    cases.push(Case { n: 1, lq: 2100, lk: 2100, bs: 32, d: 64, ..base });
    cases.push(Case { n: 1, lq: 1000, lk: 1000, hq: 16, hkv: 2, alpha: 2.0, sel: Selection::PerHead, ..base });
    cases.push(Case { lq: 400, lk: 150, causal: false, d: 64, ..base });
    // DASHATTN_TEST_CASES=n runs the first n cases only (for compute-sanitizer runs).
    if let Some(k) = std::env::var("DASHATTN_TEST_CASES").ok().and_then(|v| v.parse::<usize>().ok()) {
        cases.truncate(k);
    }
    let mut worst = 0.0f64;
    for c in cases {
        let e = run_case(&gpu, &mut rng, c);
        let tol = if c.bf { 1e-2 } else { 2e-3 };
        eprintln!("{:>4}x{:<4} hq {:>2} hkv {} d {:>3} B {:>3} causal {:5} {:8} alpha {} pooled {:5} ha {:5} {}: rel L2 dq {:.1e} dk {:.1e} dv {:.1e} dkbar {:.1e}", c.lq, c.lk, c.hq, c.hkv, c.d, c.bs, c.causal, format!("{:?}", c.sel), c.alpha, c.pooled, c.head_alpha, if c.bf { "bf16" } else { "f16" }, e[0], e[1], e[2], e[3]);
        for (i, name) in ["dq", "dk", "dv", "d_pooled_k"].iter().enumerate() {
            assert!(e[i] <= tol, "{c:?}: {name} rel L2 {:.3e} > {tol}", e[i]);
        }
        worst = worst.max(e.iter().cloned().fold(0.0, f64::max));
    }
    eprintln!("gpu backward: worst rel L2 {worst:.2e}");
}
