//! dashattn demo: forward, backward and decode on the best backend available (CUDA when a
//! GPU and kernels are present, else CPU), each checked against the f64 CPU reference on
//! the same bf16 inputs, with the achieved block sparsity.
//!
//!     cargo run --release --example demo [-- --len 2048 --heads 8 --kv-heads 2 --dim 64]

use std::time::Instant;

use dashattn::api;
use dashattn::cpu::block_stats;
use dashattn::ffi::types::{DASHATTN_BACKEND_AUTO, DASHATTN_BACKEND_CUDA};
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

fn t(v: &[bf16], shape: &[usize]) -> Tensor {
    Tensor::contiguous(v.as_ptr() as *const u8, DType::BF16, shape)
}
fn tf(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::contiguous(v.as_ptr() as *const u8, DType::F32, shape)
}

fn rel_l2(a: &[bf16], b: &[bf16]) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        n += (x.to_f64() - y.to_f64()).powi(2);
        d += y.to_f64().powi(2);
    }
    (n / d.max(1e-300)).sqrt()
}

struct Fwd {
    o: Vec<bf16>,
    lse: Vec<f32>,
    tau: Vec<f32>,
}

fn main() {
    let (len, hq, hkv, d, bs) = (arg("--len", 2048), arg("--heads", 8), arg("--kv-heads", 2), arg("--dim", 64), arg("--block", 64));
    let n = 1;
    let ctx = Context::new(&Options { backend: DASHATTN_BACKEND_AUTO, ..Options::default() }).expect("context");
    let reference = Context::cpu();
    let on_gpu = ctx.backend_id() == DASHATTN_BACKEND_CUDA;
    println!("dashattn {} | backend: {} | N={n} L={len} Hq={hq} Hkv={hkv} D={d} B={bs} bf16, causal, alpha 1.5", env!("CARGO_PKG_VERSION"), if on_gpu { "CUDA" } else { "CPU (no usable GPU)" });

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
    let (qs, ks, ss) = ([n, len, hq, d], [n, len, hkv, d], [n, hq, len]);
    let cfg = Config { block_size: bs, ..Config::default() };
    let ref_cfg = Config { precision: Precision::F64, ..cfg };

    let run_fwd = |c: &Context, cfg: &Config| -> Fwd {
        let f = Fwd { o: vec![bf16::NAN; q.len()], lse: vec![f32::NAN; n * hq * len], tau: vec![f32::NAN; n * hq * len] };
        let a = ForwardArgs { q: t(&q, &qs), k: t(&k, &ks), v: t(&v, &ks), pooled_k: None, head_alpha: None, o: t(&f.o, &qs), lse: Some(tf(&f.lse, &ss)), tau: Some(tf(&f.tau, &ss)) };
        api::forward(c, cfg, &a, Workspace::none()).expect("forward");
        f
    };
    let t0 = Instant::now();
    let f = run_fwd(&ctx, &cfg);
    let t_fwd = t0.elapsed();
    let fr = run_fwd(&reference, &ref_cfg);
    let fa = ForwardArgs { q: t(&q, &qs), k: t(&k, &ks), v: t(&v, &ks), pooled_k: None, head_alpha: None, o: t(&fr.o, &qs), lse: None, tau: None };
    let st = block_stats(&ref_cfg, &fa, &tf(&fr.tau, &ss)).expect("stats");
    println!(
        "forward : {:8.2} ms | rel L2 error vs f64 reference: o {:.2e} | blocks attended {}/{} dense -> block sparsity {:.1}% (selected {} of {} candidate blocks)",
        t_fwd.as_secs_f64() * 1e3,
        rel_l2(&f.o, &fr.o),
        st.attended,
        st.dense,
        100.0 * st.sparsity(),
        st.selected,
        st.candidates
    );

    // Backward of loss = sum(o * w).
    let w: Vec<bf16> = (0..q.len()).map(|_| bf16::from_f32(rng.normal())).collect();
    let run_bwd = |c: &Context, cfg: &Config, f: &Fwd| -> [Vec<bf16>; 3] {
        let g = [vec![bf16::NAN; q.len()], vec![bf16::NAN; k.len()], vec![bf16::NAN; v.len()]];
        let a = BackwardArgs {
            q: t(&q, &qs),
            k: t(&k, &ks),
            v: t(&v, &ks),
            pooled_k: None,
            head_alpha: None,
            o: t(&f.o, &qs),
            d_o: t(&w, &qs),
            lse: tf(&f.lse, &ss),
            tau: tf(&f.tau, &ss),
            dq: t(&g[0], &qs),
            dk: t(&g[1], &ks),
            dv: t(&g[2], &ks),
            d_pooled_k: None,
        };
        api::backward(c, cfg, &a, Workspace::none()).expect("backward");
        g
    };
    let t0 = Instant::now();
    let g = run_bwd(&ctx, &cfg, &f);
    let t_bwd = t0.elapsed();
    let gr = run_bwd(&reference, &ref_cfg, &fr);
    println!(
        "backward: {:8.2} ms | rel L2 error vs f64 reference: dq {:.2e} dk {:.2e} dv {:.2e}",
        t_bwd.as_secs_f64() * 1e3,
        rel_l2(&g[0], &gr[0]),
        rel_l2(&g[1], &gr[1]),
        rel_l2(&g[2], &gr[2])
    );

    // Decode: the keys in a paged cache (pages of 2 blocks, reversed order), pooled-key cache
    // filled once, then one decode step for the last query token.
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
    let pooled = vec![bf16::NAN; pages * 2 * row];
    let (prev, lens) = (vec![0i32], vec![len as i32]);
    let cs = [pages, page, hkv, d];
    let ps = [pages, 2, hkv, d];
    let pa = PoolPagedArgs { k_cache: t(&kc, &cs), pooled_cache: t(&pooled, &ps), block_table: Tensor::contiguous(table.as_ptr() as *const u8, DType::I32, &[1, pages]), prev_seq_lens: Tensor::contiguous(prev.as_ptr() as *const u8, DType::I32, &[1]), seq_lens: Tensor::contiguous(lens.as_ptr() as *const u8, DType::I32, &[1]) };
    api::pool_keys_paged(&ctx, &cfg, &pa, Workspace::none()).expect("pool_keys_paged");
    let q_last = &q[(len - 1) * hq * d..];
    let o_dec = vec![bf16::NAN; hq * d];
    let da = DecodeArgs {
        q: t(q_last, &[1, 1, hq, d]),
        k_cache: t(&kc, &cs),
        v_cache: t(&vc, &cs),
        pooled_cache: t(&pooled, &ps),
        block_table: pa.block_table,
        seq_lens: pa.seq_lens,
        head_alpha: None,
        o: t(&o_dec, &[1, 1, hq, d]),
        lse: None,
    };
    let t0 = Instant::now();
    api::decode(&ctx, &cfg, &da, Workspace::none()).expect("decode");
    let t_dec = t0.elapsed();
    println!(
        "decode  : {:8.3} ms | rel L2 error vs last forward row (f64 reference): {:.2e}",
        t_dec.as_secs_f64() * 1e3,
        rel_l2(&o_dec, &fr.o[(len - 1) * hq * d..])
    );
}
