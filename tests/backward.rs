//! CPU backward against central finite differences of the forward, in f64 (SPEC 4, 6),
//! over every mode: alpha 1, 1.3, 1.5, 2; causal and not; per group and per head; caller
//! pooled keys or mean pooling. Also determinism and workspace handling.

mod common;
use common::*;
use dashattn::api;
use dashattn::params::{BackwardArgs, ForwardArgs};
use dashattn::{Config, Context, DType, Options, Precision, Selection, Workspace};

struct P64 {
    n: usize,
    lq: usize,
    lk: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    nb: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    pooled: Option<Vec<f64>>,
}

impl P64 {
    fn qs(&self) -> [usize; 4] {
        [self.n, self.lq, self.hq, self.d]
    }
    fn ks(&self) -> [usize; 4] {
        [self.n, self.lk, self.hkv, self.d]
    }
    fn ps(&self) -> [usize; 4] {
        [self.n, self.nb, self.hkv, self.d]
    }
    fn ss(&self) -> [usize; 3] {
        [self.n, self.hq, self.lq]
    }
}

fn ctx1() -> Context {
    Context::new(&Options { backend: dashattn::ffi::types::DASHATTN_BACKEND_CPU, device: 0, num_threads: 1 }).unwrap()
}

/// (o, lse, tau) in f64.
fn fwd(ctx: &Context, cfg: &Config, p: &P64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut o = vec![f64::NAN; p.q.len()];
    let ns = p.n * p.hq * p.lq;
    let (mut lse, mut tau) = (vec![f64::NAN; ns], vec![f64::NAN; ns]);
    let a = ForwardArgs {
        q: view(&p.q, DType::F64, &p.qs()),
        k: view(&p.k, DType::F64, &p.ks()),
        v: view(&p.v, DType::F64, &p.ks()),
        pooled_k: p.pooled.as_ref().map(|x| view(x, DType::F64, &p.ps())),
        head_alpha: None,
        o: view_mut(&mut o, DType::F64, &p.qs()),
        lse: Some(view_mut(&mut lse, DType::F64, &p.ss())),
        tau: Some(view_mut(&mut tau, DType::F64, &p.ss())),
    };
    unsafe { api::forward(ctx, cfg, &a, Workspace::none()) }.unwrap();
    (o, lse, tau)
}

fn loss(ctx: &Context, cfg: &Config, p: &P64, w: &[f64]) -> f64 {
    fwd(ctx, cfg, p).0.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// Returns the largest relative error (per tensor: max |fd - an| / max |an|).
fn check_case(rng: &mut Rng, cfg: Config, g: usize, with_pooled: bool, label: &str) -> f64 {
    let bs = cfg.block_size;
    let (n, lq, lk, hkv, d) = (1, 21, 45, 2, 4);
    let hq = hkv * g;
    let base = Problem::random(rng, n, lq, lk, hq, hkv, d, bs);
    let nb = lk.div_ceil(bs);
    let up = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let mut p = P64 { n, lq, lk, hq, hkv, d, nb, q: up(&base.q), k: up(&base.k), v: up(&base.v), pooled: None };
    if with_pooled {
        p.pooled = Some((0..n * nb * hkv * d).map(|_| rng.normal() * 1.5).collect());
    }
    let ctx = ctx1();
    let w: Vec<f64> = (0..p.q.len()).map(|_| rng.normal()).collect();
    let (o, lse, tau) = fwd(&ctx, &cfg, &p);
    let mut grads: Vec<Vec<f64>> = vec![vec![f64::NAN; p.q.len()], vec![f64::NAN; p.k.len()], vec![f64::NAN; p.v.len()], vec![f64::NAN; n * nb * hkv * d]];
    let a = BackwardArgs {
        q: view(&p.q, DType::F64, &p.qs()),
        k: view(&p.k, DType::F64, &p.ks()),
        v: view(&p.v, DType::F64, &p.ks()),
        pooled_k: p.pooled.as_ref().map(|x| view(x, DType::F64, &p.ps())),
        head_alpha: None,
        o: view(&o, DType::F64, &p.qs()),
        d_o: view(&w, DType::F64, &p.qs()),
        lse: view(&lse, DType::F64, &p.ss()),
        tau: view(&tau, DType::F64, &p.ss()),
        dq: view_mut(&mut grads[0], DType::F64, &p.qs()),
        dk: view_mut(&mut grads[1], DType::F64, &p.ks()),
        dv: view_mut(&mut grads[2], DType::F64, &p.ks()),
        d_pooled_k: if with_pooled { Some(view_mut(&mut grads[3], DType::F64, &p.ps())) } else { None },
    };
    unsafe { api::backward(&ctx, &cfg, &a, Workspace::none()) }.unwrap();
    let mut worst = 0.0f64;
    let h = 1e-6;
    for (ti, name) in ["q", "k", "v", "pooled"].iter().enumerate() {
        if ti == 3 && !with_pooled {
            continue;
        }
        let len = grads[ti].len();
        let an_max = grads[ti].iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
        let mut err = 0.0f64;
        for e in 0..len {
            let get = |p: &mut P64| -> *mut f64 {
                match ti {
                    0 => &mut p.q[e],
                    1 => &mut p.k[e],
                    2 => &mut p.v[e],
                    _ => &mut p.pooled.as_mut().unwrap()[e],
                }
            };
            let x0 = unsafe { *get(&mut p) };
            unsafe { *get(&mut p) = x0 + h };
            let lp = loss(&ctx, &cfg, &p, &w);
            unsafe { *get(&mut p) = x0 - h };
            let lm = loss(&ctx, &cfg, &p, &w);
            unsafe { *get(&mut p) = x0 };
            let fd = (lp - lm) / (2.0 * h);
            err = err.max((fd - grads[ti][e]).abs() / an_max);
        }
        assert!(err < 1e-6, "{label}: d{name} relative error {err:e}");
        worst = worst.max(err);
    }
    worst
}

#[test]
fn gradients_match_finite_differences_in_every_mode() {
    let mut rng = Rng::new(21);
    let mut worst = 0.0f64;
    let mut cases = 0;
    for alpha in [1.0f32, 1.3, 1.5, 2.0] {
        for causal in [true, false] {
            for sel in [Selection::PerGroup, Selection::PerHead] {
                for with_pooled in [false, true] {
                    for g in [1usize, 3] {
                        let cfg = Config { block_size: 16, n_local: 1, causal, selection: sel, alpha, precision: Precision::F64, ..Config::default() };
                        let label = format!("alpha {alpha} causal {causal} {sel:?} pooled {with_pooled} G {g}");
                        worst = worst.max(check_case(&mut rng, cfg, g, with_pooled, &label));
                        cases += 1;
                    }
                }
            }
        }
    }
    eprintln!("{cases} gradient cases; largest relative error against finite differences: {worst:e}");
}

#[test]
fn backward_is_deterministic_and_workspace_sized() {
    let mut rng = Rng::new(22);
    let p = Problem::random(&mut rng, 2, 100, 130, 8, 2, 16, 16);
    let cfg = Config { block_size: 16, ..Config::default() };
    let ctx = cpu();
    let f = forward(&ctx, &cfg, &p, None, None);
    let d_o = rng.normals(p.q.len(), 1.0);
    let g1 = backward(&ctx, &cfg, &p, None, None, &f, &d_o);
    let g2 = backward(&ctx, &cfg, &p, None, None, &f, &d_o);
    assert!(g1.dq.iter().zip(&g2.dq).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(g1.dk.iter().zip(&g2.dk).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(g1.dv.iter().zip(&g2.dv).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(g1.dq.iter().chain(&g1.dk).chain(&g1.dv).all(|x| x.is_finite()));

    // Caller workspace: exactly the queried size works and gives identical bits.
    let q = view(&p.q, DType::F32, &p.q_shape());
    let k = view(&p.k, DType::F32, &p.k_shape());
    let need = api::backward_workspace_size(&ctx, &cfg, &q, &k, &k, None).unwrap();
    assert!(need > 0);
    let mut buf = vec![0u8; need + 256];
    let off = (256 - buf.as_ptr() as usize % 256) % 256;
    let ws = Workspace { ptr: buf.as_mut_ptr() as usize + off, len: need };
    let mut g3 = Grads { dq: vec![f32::NAN; p.q.len()], dk: vec![f32::NAN; p.k.len()], dv: vec![f32::NAN; p.v.len()], dpooled: None };
    let args = BackwardArgs {
        q,
        k,
        v: view(&p.v, DType::F32, &p.k_shape()),
        pooled_k: None,
        head_alpha: None,
        o: view(&f.o, DType::F32, &p.q_shape()),
        d_o: view(&d_o, DType::F32, &p.q_shape()),
        lse: view(&f.lse, DType::F32, &[p.n, p.hq, p.lq]),
        tau: view(&f.tau, DType::F32, &[p.n, p.hq, p.lq]),
        dq: view_mut(&mut g3.dq, DType::F32, &p.q_shape()),
        dk: view_mut(&mut g3.dk, DType::F32, &p.k_shape()),
        dv: view_mut(&mut g3.dv, DType::F32, &p.k_shape()),
        d_pooled_k: None,
    };
    unsafe { api::backward(&ctx, &cfg, &args, ws) }.unwrap();
    assert!(g3.dq.iter().zip(&g1.dq).all(|(a, b)| a.to_bits() == b.to_bits()));
    // One byte short: refused, outputs untouched.
    let mut g4 = vec![f32::NAN; p.q.len()];
    let args2 = BackwardArgs { dq: view_mut(&mut g4, DType::F32, &p.q_shape()), dk: view_mut(&mut g3.dk, DType::F32, &p.k_shape()), ..args };
    let e = unsafe { api::backward(&ctx, &cfg, &args2, Workspace { ptr: ws.ptr, len: need - 1 }) }.unwrap_err();
    assert_eq!(e.status(), dashattn::ffi::types::DASHATTN_ERR_WORKSPACE_TOO_SMALL);
    assert!(g4.iter().all(|x| x.is_nan()));
}
