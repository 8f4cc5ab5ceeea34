//! dashattn demo: forward, backward and decode on the best backend available (CUDA when a
//! GPU is usable, else CPU), each checked against the f64 CPU reference on the same bf16
//! inputs, with the achieved block sparsity.
//!
//!     cargo run --release --example demo [-- --len 2048 --heads 8 --kv-heads 2 --dim 64]

use std::time::Instant;

use dashattn::api;
use dashattn::context::Backend;
use dashattn::cpu::block_stats;
use dashattn::cuda::util::DeviceBuffer;
use dashattn::ffi::types::DASHATTN_BACKEND_AUTO;
use dashattn::params::{BackwardArgs, DecodeArgs, ForwardArgs, PoolPagedArgs};
use dashattn::{Config, Context, DType, Options, Precision, Tensor, Workspace};
use half::bf16;

struct Rng(u64);
impl Rng {
    fn normal(&mut self) -> f32 {
        let mut u = || {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        };
        let (a, b) = (u().max(1e-300), u());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rel_l2(a: &[bf16], b: &[bf16]) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        n += (x.to_f64() - y.to_f64()).powi(2);
        d += y.to_f64().powi(2);
    }
    (n / d.max(1e-300)).sqrt()
}

/// Where a context's tensors live: host memory (CPU backend) or device copies (CUDA).
struct Mem<'a> {
    ctx: &'a Context,
}

/// A host array and, on CUDA, its device copy.
struct Arr<'a, T: Copy> {
    host: Vec<T>,
    dev: Option<DeviceBuffer<'a>>,
}

impl<'a> Mem<'a> {
    fn put<T: Copy>(&self, host: Vec<T>) -> Arr<'a, T> {
        let dev = match &self.ctx.backend {
            Backend::Cpu => None,
            Backend::Cuda(d) => Some(DeviceBuffer::from_slice(d, &host).expect("device copy")),
        };
        Arr { host, dev }
    }
    /// View of an input.
    fn t<T: Copy>(&self, a: &Arr<T>, dt: DType, shape: &[usize]) -> Tensor {
        let mut t = Tensor::contiguous(a.host.as_ptr() as *const u8, dt, shape);
        if let Some(d) = &a.dev {
            t.ptr = d.ptr as usize;
        }
        t
    }
    /// View of an output (host memory the CPU backend writes: taken from a mutable borrow).
    fn out<T: Copy>(&self, a: &mut Arr<T>, dt: DType, shape: &[usize]) -> Tensor {
        let mut t = Tensor::contiguous(a.host.as_mut_ptr() as *const u8, dt, shape);
        if let Some(d) = &a.dev {
            t.ptr = d.ptr as usize;
        }
        t
    }
    fn get<T: Copy>(&self, a: &mut Arr<T>) {
        if let Some(d) = &a.dev {
            d.download(&mut a.host).expect("download");
        }
    }
}

struct Inputs<'x> {
    q: &'x [bf16],
    k: &'x [bf16],
    v: &'x [bf16],
    w: &'x [bf16],
    qs: [usize; 4],
    ks: [usize; 4],
    ss: [usize; 3],
}

struct Fwd<'a> {
    o: Arr<'a, bf16>,
    lse: Arr<'a, f32>,
    tau: Arr<'a, f32>,
}

fn run_forward<'a>(inp: &Inputs, m: &Mem<'a>, c: &Context, cfg: &Config, sync: &dyn Fn()) -> (Fwd<'a>, f64) {
    let (q, k, v, qs, ks, ss) = (inp.q, inp.k, inp.v, inp.qs, inp.ks, inp.ss);
    let (n, hq, len) = (qs[0], qs[2], qs[1]);
        let (qq, kk, vv) = (m.put(q.to_vec()), m.put(k.to_vec()), m.put(v.to_vec()));
        let mut f = Fwd { o: m.put(vec![bf16::NAN; q.len()]), lse: m.put(vec![f32::NAN; n * hq * len]), tau: m.put(vec![f32::NAN; n * hq * len]) };
        let a = ForwardArgs { q: m.t(&qq, DType::BF16, &qs), k: m.t(&kk, DType::BF16, &ks), v: m.t(&vv, DType::BF16, &ks), pooled_k: None, head_alpha: None, o: m.out(&mut f.o, DType::BF16, &qs), lse: Some(m.out(&mut f.lse, DType::F32, &ss)), tau: Some(m.out(&mut f.tau, DType::F32, &ss)) };
        unsafe { api::forward(c, cfg, &a, Workspace::none()) }.expect("forward"); // warm-up (kernel load)
        let t0 = Instant::now();
        unsafe { api::forward(c, cfg, &a, Workspace::none()) }.expect("forward");
        sync();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        m.get(&mut f.o);
        m.get(&mut f.lse);
        m.get(&mut f.tau);
        (f, ms)
}

fn run_backward(inp: &Inputs, m: &Mem<'_>, c: &Context, cfg: &Config, f: &Fwd, sync: &dyn Fn()) -> ([Vec<bf16>; 3], f64) {
    let (q, k, v, w, qs, ks, ss) = (inp.q, inp.k, inp.v, inp.w, inp.qs, inp.ks, inp.ss);
        let (qq, kk, vv, ww) = (m.put(q.to_vec()), m.put(k.to_vec()), m.put(v.to_vec()), m.put(w.to_vec()));
        let (oo, ll, tt) = (m.put(f.o.host.clone()), m.put(f.lse.host.clone()), m.put(f.tau.host.clone()));
        let mut g = [m.put(vec![bf16::NAN; q.len()]), m.put(vec![bf16::NAN; k.len()]), m.put(vec![bf16::NAN; v.len()])];
        let a = BackwardArgs {
            q: m.t(&qq, DType::BF16, &qs),
            k: m.t(&kk, DType::BF16, &ks),
            v: m.t(&vv, DType::BF16, &ks),
            pooled_k: None,
            head_alpha: None,
            o: m.t(&oo, DType::BF16, &qs),
            d_o: m.t(&ww, DType::BF16, &qs),
            lse: m.t(&ll, DType::F32, &ss),
            tau: m.t(&tt, DType::F32, &ss),
            dq: m.out(&mut g[0], DType::BF16, &qs),
            dk: m.out(&mut g[1], DType::BF16, &ks),
            dv: m.out(&mut g[2], DType::BF16, &ks),
            d_pooled_k: None,
        };
        unsafe { api::backward(c, cfg, &a, Workspace::none()) }.expect("backward");
        let t0 = Instant::now();
        unsafe { api::backward(c, cfg, &a, Workspace::none()) }.expect("backward");
        sync();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        for x in g.iter_mut() {
            m.get(x);
        }
        let [a0, a1, a2] = g;
        ([a0.host, a1.host, a2.host], ms)
}

fn main() {
    let (len, hq, hkv, d, bs) = (arg("--len", 2048), arg("--heads", 8), arg("--kv-heads", 2), arg("--dim", 64), arg("--block", 64));
    let n = 1;
    let ctx = Context::new(&Options { backend: DASHATTN_BACKEND_AUTO, ..Options::default() }).expect("context");
    let reference = Context::cpu();
    let backend = match &ctx.backend {
        Backend::Cpu => "CPU (no usable GPU)".to_string(),
        Backend::Cuda(dev) => format!("CUDA device {} ({} SMs, cc {}.{})", dev.ordinal, dev.props.sm_count, dev.props.cc_major, dev.props.cc_minor),
    };
    println!("dashattn {} | backend: {backend} | N={n} L={len} Hq={hq} Hkv={hkv} D={d} B={bs} bf16, causal, alpha 1.5", env!("CARGO_PKG_VERSION"));
    let mem = Mem { ctx: &ctx };
    let host = Mem { ctx: &reference };

    // Inputs: keys are per-block topic vectors plus noise, queries mix a few topics, so
    // attention is concentrated on few blocks (as in trained models).
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let nb = len.div_ceil(bs);
    let topics: Vec<f32> = (0..nb * hkv * d).map(|_| rng.normal() * 1.5).collect();
    let k: Vec<bf16> = (0..len * hkv * d).map(|i| bf16::from_f32(topics[((i / (hkv * d)) / bs * hkv + (i / d) % hkv) * d + i % d] + rng.normal())).collect();
    let v: Vec<bf16> = (0..len * hkv * d).map(|_| bf16::from_f32(rng.normal())).collect();
    let q: Vec<bf16> = (0..len * hq * d)
        .map(|i| {
            let (row, h, x) = (i / (hq * d), (i / d) % hq, i % d);
            let pick = |s: usize| topics[((row * 7 + s * 131 + h) % nb * hkv + h * hkv / hq) * d + x];
            bf16::from_f32(0.6 * pick(0) + 0.4 * pick(1) + 0.5 * rng.normal())
        })
        .collect();
    let w: Vec<bf16> = (0..q.len()).map(|_| bf16::from_f32(rng.normal())).collect();
    let (qs, ks, ss) = ([n, len, hq, d], [n, len, hkv, d], [n, hq, len]);
    let cfg = Config { block_size: bs, ..Config::default() };
    let ref_cfg = Config { precision: Precision::F64, ..cfg };
    let sync = || {
        if let Backend::Cuda(dev) = &ctx.backend {
            // A tiny download orders the host clock after the device work.
            let b = DeviceBuffer::new(dev, 4).expect("sync buffer");
            let mut x = [0u8; 4];
            b.download(&mut x).expect("sync");
        }
    };

    let inp = Inputs { q: &q, k: &k, v: &v, w: &w, qs, ks, ss };

    let (f, t_fwd) = run_forward(&inp, &mem, &ctx, &cfg, &sync);
    let (fr, _) = run_forward(&inp, &host, &reference, &ref_cfg, &sync);
    let fa = ForwardArgs { q: Tensor::contiguous(q.as_ptr() as *const u8, DType::BF16, &qs), k: Tensor::contiguous(k.as_ptr() as *const u8, DType::BF16, &ks), v: Tensor::contiguous(v.as_ptr() as *const u8, DType::BF16, &ks), pooled_k: None, head_alpha: None, o: Tensor::contiguous(fr.o.host.as_ptr() as *const u8, DType::BF16, &qs), lse: None, tau: None };
    // SAFETY: every view points into live host vectors of this function.
    let st = unsafe { block_stats(&ref_cfg, &fa, &Tensor::contiguous(fr.tau.host.as_ptr() as *const u8, DType::F32, &ss)) }.expect("stats");
    println!(
        "forward : {:8.3} ms | rel L2 error vs f64 reference: o {:.2e} | blocks attended {}/{} dense -> block sparsity {:.1}% (selected {} of {} candidate blocks)",
        t_fwd,
        rel_l2(&f.o.host, &fr.o.host),
        st.attended,
        st.dense,
        100.0 * st.sparsity(),
        st.selected,
        st.candidates
    );

    // Backward of loss = sum(o * w), from each backend's own forward state.

    let (g, t_bwd) = run_backward(&inp, &mem, &ctx, &cfg, &f, &sync);
    let (gr, _) = run_backward(&inp, &host, &reference, &ref_cfg, &fr, &sync);
    println!("backward: {:8.3} ms | rel L2 error vs f64 reference: dq {:.2e} dk {:.2e} dv {:.2e}", t_bwd, rel_l2(&g[0], &gr[0]), rel_l2(&g[1], &gr[1]), rel_l2(&g[2], &gr[2]));

    // Decode: the keys in a paged cache (pages of 2 blocks, reversed order), the pooled-key
    // cache filled once, then one decode step for the last query token.
    let page = 2 * bs;
    let pages = len.div_ceil(page);
    let row = hkv * d;
    let table: Vec<i32> = (0..pages as i32).rev().collect();
    let (mut kc, mut vc) = (vec![bf16::ZERO; pages * page * row], vec![bf16::ZERO; pages * page * row]);
    for i in 0..len {
        let dst = (table[i / page] as usize * page + i % page) * row;
        kc[dst..dst + row].copy_from_slice(&k[i * row..(i + 1) * row]);
        vc[dst..dst + row].copy_from_slice(&v[i * row..(i + 1) * row]);
    }
    let (cs, ps) = ([pages, page, hkv, d], [pages, 2, hkv, d]);
    let (kca, vca) = (mem.put(kc), mem.put(vc));
    let mut pooled = mem.put(vec![bf16::NAN; pages * 2 * row]);
    let (tab, prev, lens) = (mem.put(table), mem.put(vec![0i32]), mem.put(vec![len as i32]));
    let pa = PoolPagedArgs { k_cache: mem.t(&kca, DType::BF16, &cs), pooled_cache: mem.out(&mut pooled, DType::BF16, &ps), block_table: mem.t(&tab, DType::I32, &[1, pages]), prev_seq_lens: mem.t(&prev, DType::I32, &[1]), seq_lens: mem.t(&lens, DType::I32, &[1]) };
    unsafe { api::pool_keys_paged(&ctx, &cfg, &pa, Workspace::none()) }.expect("pool_keys_paged");
    let q_last = mem.put(q[(len - 1) * hq * d..].to_vec());
    let mut o_dec = mem.put(vec![bf16::NAN; hq * d]);
    let da = DecodeArgs {
        q: mem.t(&q_last, DType::BF16, &[1, 1, hq, d]),
        k_cache: pa.k_cache,
        v_cache: mem.t(&vca, DType::BF16, &cs),
        pooled_cache: pa.pooled_cache,
        block_table: pa.block_table,
        seq_lens: pa.seq_lens,
        head_alpha: None,
        o: mem.out(&mut o_dec, DType::BF16, &[1, 1, hq, d]),
        lse: None,
    };
    unsafe { api::decode(&ctx, &cfg, &da, Workspace::none()) }.expect("decode");
    let t0 = Instant::now();
    unsafe { api::decode(&ctx, &cfg, &da, Workspace::none()) }.expect("decode");
    sync();
    let t_dec = t0.elapsed().as_secs_f64() * 1e3;
    mem.get(&mut o_dec);
    mem.get(&mut pooled);
    println!("decode  : {:8.3} ms | rel L2 error vs last forward row (f64 reference): {:.2e}", t_dec, rel_l2(&o_dec.host, &fr.o.host[(len - 1) * hq * d..]));
    println!("(times are one warm call each, host clock; see docs/performance.md for benchmarks)");
}
