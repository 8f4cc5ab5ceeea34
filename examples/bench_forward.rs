//! Forward benchmark through the public Rust API on the CUDA backend.
//!
//!     cargo run --release --example bench_forward -- [--lens 8192,16384,32768,65536]
//!         [--kscale 0.5,1,2,4,8] [--hq 32] [--hkv 8] [--dim 128] [--block 64]
//!         [--alpha 1.5] [--reps 10] [--json out.json]
//!
//! Inputs (bf16, batch 1, causal) come from a "topic" generator with a concentration knob
//! `kscale` (documented in docs/performance.md):
//!   T[j, hk] ~ N(0, I_D)                        a topic vector per key block and KV head
//!   k[i, hk] = kscale * (T[block(i), hk] + 0.5 e)   e ~ N(0, I)
//!   v[i, hk] = e
//!   q[r, h]  = (T[j1] + T[j2] + T[j3]) / sqrt(3) + e,  j1..3 uniform over blocks <= block(r)
//! Larger kscale spreads the coarse scores, so entmax keeps fewer blocks (higher sparsity).
//! Normals are approximated by the Irwin-Hall sum of 4 uniforms (benchmark data only).
//!
//! Reported per (L, kscale): time of the whole forward (median of `reps`, CUDA events), of
//! the pool+coarse stages alone, the fraction of (query tile, key block) pairs the fine
//! kernel computes (read back from the workspace's union masks; 1 - that = block sparsity
//! at tile level) and TF/s on the computed blocks (4 * 64 M-rows * B * D flops per pair).

use std::sync::atomic::Ordering;

use dashattn::api;
use dashattn::context::Options;
use dashattn::cuda::forward::{plan, DEBUG_STAGES};
use dashattn::cuda::util::{device, DeviceBuffer, Stream};
use dashattn::ffi::types::DASHATTN_BACKEND_CUDA;
use dashattn::params::{attn_dims, ForwardArgs};
use dashattn::{Config, Context, DType, Tensor, Workspace};
use half::bf16;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(default)
}
fn list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    let a: Vec<String> = std::env::args().collect();
    let s = a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).cloned().unwrap_or_else(|| default.to_string());
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

struct Rng(u64);
impl Rng {
    #[inline]
    fn u(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    #[inline]
    fn normal(&mut self) -> f32 {
        (self.u() + self.u() + self.u() + self.u() - 2.0) * 1.732_050_8
    }
}

/// Fills `out` (rows of `row` elements) in parallel; f(rng, row_index, row_slice).
fn par_fill(out: &mut [bf16], row: usize, seed: u64, f: impl Fn(&mut Rng, usize, &mut [bf16]) + Sync) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4);
    let rows = out.len() / row;
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (ci, chunk) in out.chunks_mut(per * row).enumerate() {
            let f = &f;
            s.spawn(move || {
                let mut rng = Rng(seed ^ (ci as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                for (i, r) in chunk.chunks_mut(row).enumerate() {
                    f(&mut rng, ci * per + i, r);
                }
            });
        }
    });
}

fn main() {
    let lens: Vec<usize> = list("--lens", "8192,16384,32768,65536");
    let kscales: Vec<f32> = list("--kscale", "0.5,1,2,4,8");
    let (hq, hkv, d, bs) = (arg("--hq", 32usize), arg("--hkv", 8usize), arg("--dim", 128usize), arg("--block", 64usize));
    let alpha: f32 = arg("--alpha", 1.5f32);
    let reps: usize = arg("--reps", 10usize);
    let json_path: String = arg("--json", String::new());
    let ctx = match Context::new(&Options { backend: DASHATTN_BACKEND_CUDA, device: 0, num_threads: 0 }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no CUDA context: {e}");
            std::process::exit(2);
        }
    };
    let dev = device(&ctx).unwrap();
    dev.prepare().unwrap();
    println!("# device: {} SMs, cc {}.{}, kernels: {}", dev.props.sm_count, dev.props.cc_major, dev.props.cc_minor, dev.kernel_source().unwrap());
    println!("# causal, N=1, Hq={hq}, Hkv={hkv}, D={d}, B={bs}, alpha={alpha}, bf16, reps={reps} (median)");
    println!("{:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8}", "L", "kscale", "fwd_ms", "coarse_ms", "computed", "sparsity", "fineTF/s");
    let mut json = Vec::new();
    let g = hq / hkv;
    let stream = Stream::new(dev).unwrap();
    let mut ctx_s = Context::new(&Options { backend: DASHATTN_BACKEND_CUDA, device: 0, num_threads: 0 }).unwrap();
    ctx_s.stream = stream.handle();
    for &l in &lens {
        let nb = l.div_ceil(bs);
        let qs = [1, l, hq, d];
        let ks = [1, l, hkv, d];
        let dq = DeviceBuffer::new(dev, l * hq * d * 2).unwrap();
        let dk = DeviceBuffer::new(dev, l * hkv * d * 2).unwrap();
        let dv = DeviceBuffer::new(dev, l * hkv * d * 2).unwrap();
        let d_o = DeviceBuffer::new(dev, l * hq * d * 2).unwrap();
        let d_lse = DeviceBuffer::new(dev, l * hq * 4).unwrap();
        let t = |p: u64, dt: DType, s: &[usize]| {
            let mut x = Tensor::contiguous(std::ptr::null(), dt, s);
            x.ptr = p as usize;
            x
        };
        let args = ForwardArgs {
            q: t(dq.ptr, DType::BF16, &qs),
            k: t(dk.ptr, DType::BF16, &ks),
            v: t(dv.ptr, DType::BF16, &ks),
            pooled_k: None,
            head_alpha: None,
            o: t(d_o.ptr, DType::BF16, &qs),
            lse: Some(t(d_lse.ptr, DType::F32, &[1, hq, l])),
            tau: None,
        };
        let cfg = Config { block_size: bs, alpha, ..Config::default() };
        let need = api::forward_workspace_size(&ctx, &cfg, &args.q, &args.k, &args.v, None).unwrap();
        let ws = DeviceBuffer::new(dev, need).unwrap();
        let wsv = Workspace { ptr: ws.ptr as usize, len: need };
        let dims = attn_dims(&cfg, &args.q, &args.k, &args.v, None).unwrap();
        let pl = plan(dev, &cfg, &dims, DType::BF16).unwrap();
        // topics [nb, hkv, d]
        let mut rng = Rng(0x1234_5678 ^ l as u64);
        let topics: Vec<f32> = (0..nb * hkv * d).map(|_| rng.normal()).collect();
        let mut v = vec![bf16::ZERO; l * hkv * d];
        par_fill(&mut v, d, 7, |r, _, row| row.iter_mut().for_each(|x| *x = bf16::from_f32(r.normal())));
        dv.upload(&v).unwrap();
        drop(v);
        let mut q = vec![bf16::ZERO; l * hq * d];
        par_fill(&mut q, d, 11, |r, idx, row| {
            let (pos, h) = (idx / hq, idx % hq);
            let hk = h / g;
            let c = pos / bs;
            let js = [(r.u() * (c + 1) as f32) as usize, (r.u() * (c + 1) as f32) as usize, (r.u() * (c + 1) as f32) as usize];
            for (x, o) in row.iter_mut().enumerate() {
                let mut s = 0f32;
                for &j in &js {
                    s += topics[(j.min(c) * hkv + hk) * d + x];
                }
                *o = bf16::from_f32(s * 0.577_350_3 + r.normal());
            }
        });
        dq.upload(&q).unwrap();
        drop(q);
        for &ksc in &kscales {
            let mut k = vec![bf16::ZERO; l * hkv * d];
            par_fill(&mut k, d, 13, |r, idx, row| {
                let (pos, hk) = (idx / hkv, idx % hkv);
                let j = pos / bs;
                for (x, o) in row.iter_mut().enumerate() {
                    *o = bf16::from_f32(ksc * (topics[(j * hkv + hk) * d + x] + 0.5 * r.normal()));
                }
            });
            dk.upload(&k).unwrap();
            drop(k);
            let run = || unsafe { api::forward(&ctx_s, &cfg, &args, wsv) };
            let time = |stages: u32| -> f64 {
                DEBUG_STAGES.store(stages, Ordering::Relaxed);
                for _ in 0..2 {
                    run().unwrap();
                }
                let mut ts: Vec<f32> = (0..reps).map(|_| stream.time_ms(run).unwrap()).collect();
                ts.sort_by(|a, b| a.total_cmp(b));
                DEBUG_STAGES.store(7, Ordering::Relaxed);
                ts[ts.len() / 2] as f64
            };
            let t_all = time(7);
            let t_coarse = time(3);
            run().unwrap();
            stream.sync().unwrap();
            // computed (tile, block) pairs from the union masks
            let mut mask = vec![0u32; hkv * pl.ntiles * pl.nbw];
            {
                let _g = dashattn::cuda::util::bind(dev).unwrap();
                unsafe {
                    cudarc::driver::sys::cuMemcpyDtoH_v2(mask.as_mut_ptr() as *mut std::ffi::c_void, ws.ptr + pl.ws_mask as u64, mask.len() * 4);
                }
            }
            let (mut computed, mut dense) = (0u64, 0u64);
            for hk in 0..hkv {
                for tile in 0..pl.ntiles {
                    let words = &mask[(hk * pl.ntiles + tile) * pl.nbw..][..pl.nbw];
                    computed += words.iter().map(|w| w.count_ones() as u64).sum::<u64>();
                    let last = ((tile + 1) * pl.rows_per_tile).min(l) - 1;
                    dense += (last / bs + 1) as u64;
                }
            }
            let frac = computed as f64 / dense as f64;
            let flops = computed as f64 * 4.0 * 64.0 * bs as f64 * d as f64;
            let tfs = flops / (t_all - t_coarse).max(1e-6) / 1e9;
            println!("{:>7} {:>6} {:>9.3} {:>9.3} {:>8.1}% {:>8.1}% {:>8.1}", l, ksc, t_all, t_coarse, frac * 100.0, (1.0 - frac) * 100.0, tfs);
            json.push(format!(
                "{{\"L\":{l},\"kscale\":{ksc},\"fwd_ms\":{t_all:.4},\"coarse_ms\":{t_coarse:.4},\"computed_frac\":{frac:.5},\"tflops_fine\":{tfs:.2},\"hq\":{hq},\"hkv\":{hkv},\"d\":{d},\"bs\":{bs},\"alpha\":{alpha}}}"
            ));
        }
    }
    if !json_path.is_empty() {
        std::fs::write(&json_path, format!("[{}]\n", json.join(",\n"))).unwrap();
    }
}
