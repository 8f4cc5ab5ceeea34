//! Helpers shared by the Rust integration tests: a deterministic RNG, host tensors, and
//! one-call wrappers around the public API on the CPU backend.
#![allow(dead_code)]

use dashattn::api;
use dashattn::params::{BackwardArgs, DecodeArgs, ForwardArgs, PoolPagedArgs};
use dashattn::{Config, Context, DType, Precision, Tensor, Workspace};

/// xorshift64*: deterministic, no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
}

/// Contiguous host tensor view over a slice the call only reads.
pub fn view<T>(data: &[T], dtype: DType, shape: &[usize]) -> Tensor {
    assert_eq!(data.len(), shape.iter().product::<usize>());
    Tensor::contiguous(data.as_ptr() as *const u8, dtype, shape)
}

/// Contiguous host tensor view over a slice the call writes (an output): the pointer comes
/// from a mutable borrow, so writing through it is allowed.
pub fn view_mut<T>(data: &mut [T], dtype: DType, shape: &[usize]) -> Tensor {
    assert_eq!(data.len(), shape.iter().product::<usize>());
    Tensor::contiguous(data.as_mut_ptr() as *const u8, dtype, shape)
}

/// One attention problem in f32 storage.
#[derive(Clone)]
pub struct Problem {
    pub n: usize,
    pub lq: usize,
    pub lk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl Problem {
    /// Random problem. Keys get a per-block shared component so that blocks differ and
    /// entmax selects a proper subset (plain noise makes all pooled keys ~0).
    pub fn random(rng: &mut Rng, n: usize, lq: usize, lk: usize, hq: usize, hkv: usize, d: usize, bs: usize) -> Problem {
        let q = rng.normals(n * lq * hq * d, 1.0);
        let mut k = rng.normals(n * lk * hkv * d, 1.0);
        let nb = lk.div_ceil(bs);
        let topics = rng.normals(n * nb * hkv * d, 1.5);
        for b in 0..n {
            for i in 0..lk {
                for h in 0..hkv {
                    for x in 0..d {
                        k[((b * lk + i) * hkv + h) * d + x] += topics[((b * nb + i / bs) * hkv + h) * d + x];
                    }
                }
            }
        }
        let v = rng.normals(n * lk * hkv * d, 1.0);
        Problem { n, lq, lk, hq, hkv, d, q, k, v }
    }
    pub fn q_shape(&self) -> [usize; 4] {
        [self.n, self.lq, self.hq, self.d]
    }
    pub fn k_shape(&self) -> [usize; 4] {
        [self.n, self.lk, self.hkv, self.d]
    }
    pub fn nb(&self, bs: usize) -> usize {
        self.lk.div_ceil(bs)
    }
}

pub struct ForwardOut {
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
    pub tau: Vec<f32>,
}

pub fn cpu() -> Context {
    Context::cpu()
}

pub fn f64cfg(mut cfg: Config) -> Config {
    cfg.precision = Precision::F64;
    cfg
}

pub fn forward(ctx: &Context, cfg: &Config, p: &Problem, pooled: Option<&[f32]>, head_alpha: Option<&[f32]>) -> ForwardOut {
    let mut out = ForwardOut { o: vec![f32::NAN; p.q.len()], lse: vec![f32::NAN; p.n * p.hq * p.lq], tau: vec![f32::NAN; p.n * p.hq * p.lq] };
    let nb = p.nb(cfg.block_size);
    let args = ForwardArgs {
        q: view(&p.q, DType::F32, &p.q_shape()),
        k: view(&p.k, DType::F32, &p.k_shape()),
        v: view(&p.v, DType::F32, &p.k_shape()),
        pooled_k: pooled.map(|x| view(x, DType::F32, &[p.n, nb, p.hkv, p.d])),
        head_alpha: head_alpha.map(|x| view(x, DType::F32, &[p.hq])),
        o: view_mut(&mut out.o, DType::F32, &p.q_shape()),
        lse: Some(view_mut(&mut out.lse, DType::F32, &[p.n, p.hq, p.lq])),
        tau: Some(view_mut(&mut out.tau, DType::F32, &[p.n, p.hq, p.lq])),
    };
    unsafe { api::forward(ctx, cfg, &args, Workspace::none()) }.expect("forward");
    out
}

pub struct Grads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dpooled: Option<Vec<f32>>,
}

pub fn backward(ctx: &Context, cfg: &Config, p: &Problem, pooled: Option<&[f32]>, head_alpha: Option<&[f32]>, f: &ForwardOut, d_o: &[f32]) -> Grads {
    let nb = p.nb(cfg.block_size);
    let mut g = Grads {
        dq: vec![f32::NAN; p.q.len()],
        dk: vec![f32::NAN; p.k.len()],
        dv: vec![f32::NAN; p.v.len()],
        dpooled: pooled.map(|x| vec![f32::NAN; x.len()]),
    };
    let args = BackwardArgs {
        q: view(&p.q, DType::F32, &p.q_shape()),
        k: view(&p.k, DType::F32, &p.k_shape()),
        v: view(&p.v, DType::F32, &p.k_shape()),
        pooled_k: pooled.map(|x| view(x, DType::F32, &[p.n, nb, p.hkv, p.d])),
        head_alpha: head_alpha.map(|x| view(x, DType::F32, &[p.hq])),
        o: view(&f.o, DType::F32, &p.q_shape()),
        d_o: view(d_o, DType::F32, &p.q_shape()),
        lse: view(&f.lse, DType::F32, &[p.n, p.hq, p.lq]),
        tau: view(&f.tau, DType::F32, &[p.n, p.hq, p.lq]),
        dq: view_mut(&mut g.dq, DType::F32, &p.q_shape()),
        dk: view_mut(&mut g.dk, DType::F32, &p.k_shape()),
        dv: view_mut(&mut g.dv, DType::F32, &p.k_shape()),
        d_pooled_k: g.dpooled.as_mut().map(|x| view_mut(x, DType::F32, &[p.n, nb, p.hkv, p.d])),
    };
    unsafe { api::backward(ctx, cfg, &args, Workspace::none()) }.expect("backward");
    g
}

/// A paged copy of a problem's K/V: pages shuffled, plus the pooled-key cache filled by
/// pool_keys_paged.
pub struct Paged {
    pub page_size: usize,
    pub num_pages: usize,
    pub max_pages: usize,
    pub k_cache: Vec<f32>,
    pub v_cache: Vec<f32>,
    pub pooled: Vec<f32>,
    pub table: Vec<i32>,
    pub seq_lens: Vec<i32>,
}

impl Paged {
    pub fn slots(&self, bs: usize) -> usize {
        (self.page_size / bs).max(1)
    }
    pub fn cache_shape(&self, p: &Problem) -> [usize; 4] {
        [self.num_pages, self.page_size, p.hkv, p.d]
    }
    pub fn pooled_shape(&self, p: &Problem, bs: usize) -> [usize; 4] {
        [self.num_pages, self.slots(bs), p.hkv, p.d]
    }
}

/// Lays sequence b's first lens[b] keys of p out in shuffled pages and pools them.
pub fn paged_from(rng: &mut Rng, ctx: &Context, cfg: &Config, p: &Problem, lens: &[usize], page_size: usize) -> Paged {
    let max_pages = p.lk.div_ceil(page_size);
    let num_pages = p.n * max_pages + 3;
    let mut order: Vec<usize> = (0..num_pages).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let row = p.hkv * p.d;
    let mut pg = Paged {
        page_size,
        num_pages,
        max_pages,
        k_cache: rng.normals(num_pages * page_size * row, 1.0),
        v_cache: rng.normals(num_pages * page_size * row, 1.0),
        pooled: vec![],
        table: vec![0; p.n * max_pages],
        seq_lens: lens.iter().map(|&l| l as i32).collect(),
    };
    pg.pooled = vec![f32::NAN; num_pages * pg.slots(cfg.block_size) * row];
    for b in 0..p.n {
        for i in 0..max_pages {
            pg.table[b * max_pages + i] = order[b * max_pages + i] as i32;
        }
        for i in 0..lens[b] {
            let page = pg.table[b * max_pages + i / page_size] as usize;
            let dst = (page * page_size + i % page_size) * row;
            let src = (b * p.lk + i) * row;
            pg.k_cache[dst..dst + row].copy_from_slice(&p.k[src..src + row]);
            pg.v_cache[dst..dst + row].copy_from_slice(&p.v[src..src + row]);
        }
    }
    let prev = vec![0i32; p.n];
    let pooled_shape = pg.pooled_shape(p, cfg.block_size);
    let args = PoolPagedArgs {
        k_cache: view(&pg.k_cache, DType::F32, &pg.cache_shape(p)),
        pooled_cache: view_mut(&mut pg.pooled, DType::F32, &pooled_shape),
        block_table: view(&pg.table, DType::I32, &[p.n, max_pages]),
        prev_seq_lens: view(&prev, DType::I32, &[p.n]),
        seq_lens: view(&pg.seq_lens, DType::I32, &[p.n]),
    };
    unsafe { api::pool_keys_paged(ctx, cfg, &args, Workspace::none()) }.expect("pool_keys_paged");
    pg
}

/// Decode q [N, q_len, Hq, D] against a paged cache; returns (o, lse).
pub fn decode(ctx: &Context, cfg: &Config, p: &Problem, pg: &Paged, q: &[f32], q_len: usize) -> (Vec<f32>, Vec<f32>) {
    let mut o = vec![f32::NAN; q.len()];
    let mut lse = vec![f32::NAN; p.n * p.hq * q_len];
    let args = DecodeArgs {
        q: view(q, DType::F32, &[p.n, q_len, p.hq, p.d]),
        k_cache: view(&pg.k_cache, DType::F32, &pg.cache_shape(p)),
        v_cache: view(&pg.v_cache, DType::F32, &pg.cache_shape(p)),
        pooled_cache: view(&pg.pooled, DType::F32, &pg.pooled_shape(p, cfg.block_size)),
        block_table: view(&pg.table, DType::I32, &[p.n, pg.max_pages]),
        seq_lens: view(&pg.seq_lens, DType::I32, &[p.n]),
        head_alpha: None,
        o: view_mut(&mut o, DType::F32, &[p.n, q_len, p.hq, p.d]),
        lse: Some(view_mut(&mut lse, DType::F32, &[p.n, p.hq, q_len])),
    };
    unsafe { api::decode(ctx, cfg, &args, Workspace::none()) }.expect("decode");
    (o, lse)
}

pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if num.is_nan() {
        return f64::INFINITY;
    }
    (num / den.max(1e-300)).sqrt()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| if x.is_nan() || y.is_nan() { f64::INFINITY } else { (x as f64 - y as f64).abs() }).fold(0.0, f64::max)
}
