//! CUDA decode, pooled-key upkeep and merge against the f64 CPU reference on the same
//! (rounded) inputs, random page tables, ragged lengths; CUDA-graph capture and replay
//! while sequence lengths change. Skips cleanly (reported) without a GPU.

mod common;
use common::*;
use dashattn::api;
use dashattn::cuda::util::{device, DeviceBuffer, Stream};
use dashattn::ffi::types::DASHATTN_BACKEND_CUDA;
use dashattn::params::{DecodeArgs, MergeArgs, PoolPagedArgs};
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

fn dev_t(b: &DeviceBuffer, dt: DType, shape: &[usize]) -> Tensor {
    let mut t = Tensor::contiguous(std::ptr::null(), dt, shape);
    t.ptr = b.ptr as usize;
    t
}
fn host_t<T>(v: &[T], dt: DType, shape: &[usize]) -> Tensor {
    Tensor::contiguous(v.as_ptr() as *const u8, dt, shape)
}
/// A host output the CPU backend writes: the pointer comes from a mutable borrow.
fn host_out<T>(v: &mut [T], dt: DType, shape: &[usize]) -> Tensor {
    Tensor::contiguous(v.as_mut_ptr() as *const u8, dt, shape)
}
fn bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}
fn vals(b: &[u16]) -> Vec<f64> {
    b.iter().map(|&x| bf16::from_bits(x).to_f64()).collect()
}
/// 16-bit storage of `dt` (BF16 or F16).
fn bits_as(x: &[f32], dt: DType) -> Vec<u16> {
    match dt {
        DType::F16 => x.iter().map(|&v| f16::from_f32(v).to_bits()).collect(),
        _ => bits(x),
    }
}
fn vals_as(b: &[u16], dt: DType) -> Vec<f64> {
    match dt {
        DType::F16 => b.iter().map(|&x| f16::from_bits(x).to_f64()).collect(),
        _ => vals(b),
    }
}
fn is_nan_as(x: u16, dt: DType) -> bool {
    match dt {
        DType::F16 => f16::from_bits(x).is_nan(),
        _ => bf16::from_bits(x).is_nan(),
    }
}
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        n += (x - y) * (x - y);
        d += y * y;
    }
    if n.is_nan() { f64::INFINITY } else { (n / d.max(1e-300)).sqrt() }
}

struct Cache {
    #[allow(dead_code)]
    ps: usize,
    pages: usize,
    max_pages: usize,
    k: Vec<u16>,
    v: Vec<u16>,
    table: Vec<i32>,
    lens: Vec<i32>,
}

fn make_cache(rng: &mut Rng, n: usize, hkv: usize, d: usize, ps: usize, lens: &[usize], bs: usize) -> Cache {
    make_cache_as(rng, n, hkv, d, ps, lens, bs, DType::BF16)
}

#[allow(clippy::too_many_arguments)]
fn make_cache_as(rng: &mut Rng, n: usize, hkv: usize, d: usize, ps: usize, lens: &[usize], bs: usize, dt: DType) -> Cache {
    let maxlen = *lens.iter().max().unwrap();
    let max_pages = maxlen.div_ceil(ps) + 1;
    // Each sequence owns the pages its length needs (+ 1); its table entries past those name
    // random pages (never read: a kernel that did would attend foreign keys and fail the
    // comparison). Allocating n * max_pages made ragged batches of one long sequence build
    // gigabytes of cache on the host.
    let need: Vec<usize> = lens.iter().map(|&l| l.div_ceil(ps) + 1).collect();
    let pages = need.iter().sum::<usize>() + 2;
    let mut order: Vec<usize> = (0..pages).collect();
    for i in (1..pages).rev() {
        order.swap(i, rng.below(i + 1));
    }
    // Topic structure per block so that selection is sparse.
    let row = hkv * d;
    let mut k = rng.normals(pages * ps * row, 1.0);
    let topics = rng.normals(pages * ps / bs.min(ps).max(1) * row + row, 1.5);
    for (i, x) in k.iter_mut().enumerate() {
        let tok = i / row;
        *x += topics[(tok / bs.min(ps)) * row + i % row];
    }
    let mut owned = order.iter();
    let mut table = vec![0i32; n * max_pages];
    for (b, &nb) in need.iter().enumerate() {
        for i in 0..max_pages {
            table[b * max_pages + i] = if i < nb { *owned.next().unwrap() } else { order[rng.below(pages)] } as i32;
        }
    }
    // Sequence 1 shares sequence 0's first block of pages (a shared prefix). Sharing is per
    // whole block: a pooled-key slot belongs to the page holding its block's first token.
    if n > 1 {
        for i in 0..(bs / ps).max(1) {
            table[max_pages + i] = table[i];
        }
    }
    Cache { ps, pages, max_pages, k: bits_as(&k, dt), v: bits_as(&rng.normals(pages * ps * row, 1.0), dt), table, lens: lens.iter().map(|&l| l as i32).collect() }
}

/// One decode problem: GPU (pool upkeep + decode, eager and optionally graph-replayed with
/// shortened lengths) against the f64 CPU reference on the same rounded inputs.
struct Case {
    hq: usize,
    hkv: usize,
    d: usize,
    bs: usize,
    ps: usize,
    sel: Selection,
    q_len: usize,
    dt: DType,
    lens: Vec<usize>,
    graph: bool,
    /// entmax alpha (1.5 the default; 2 = sparsemax, 1 = softmax, others by Newton)
    alpha: f32,
    /// q one element past a 16-byte boundary (the attention's scalar q loads)
    q_off: bool,
    /// q ~ N(0, q_scale^2): 0 makes every score equal (ties), large ones sharp rows
    q_scale: f64,
}

fn run_case(gpu: &Context, rng: &mut Rng, cs_: &Case) -> f64 {
    let dev = device(gpu).unwrap();
    let cpu = cpu();
    let &Case { hq, hkv, d, bs, ps, sel, q_len, dt, ref lens, graph, alpha, q_off, q_scale } = cs_;
    let n = lens.len();
    let c = make_cache_as(rng, n, hkv, d, ps, lens, bs, dt);
    let cfg = Config { block_size: bs, selection: sel, alpha, ..Config::default() };
    let rcfg = Config { precision: Precision::F64, ..cfg };
    let slots = (ps / bs).max(1);
    let (cs, pss) = ([c.pages, ps, hkv, d], [c.pages, slots, hkv, d]);
    let up = |x: &[u16]| DeviceBuffer::from_slice(dev, x).unwrap();
    let (dk, dvv) = (up(&c.k), up(&c.v));
    let dpool = DeviceBuffer::new(dev, c.pages * slots * hkv * d * 2).unwrap();
    dpool.fill_u32(0x7fc0_7fc0).unwrap();
    let dtab = DeviceBuffer::from_slice(dev, &c.table).unwrap();
    let dlens = DeviceBuffer::from_slice(dev, &c.lens).unwrap();
    let zeros = vec![0i32; n];
    let dprev = DeviceBuffer::from_slice(dev, &zeros).unwrap();
    // Pooled-key upkeep on both backends.
    let pa = PoolPagedArgs {
        k_cache: dev_t(&dk, dt, &cs),
        pooled_cache: dev_t(&dpool, dt, &pss),
        block_table: dev_t(&dtab, DType::I32, &[n, c.max_pages]),
        prev_seq_lens: dev_t(&dprev, DType::I32, &[n]),
        seq_lens: dev_t(&dlens, DType::I32, &[n]),
    };
    unsafe { api::pool_keys_paged(gpu, &cfg, &pa, Workspace::none()) }.unwrap();
    let mut pool_gpu = vec![0u16; c.pages * slots * hkv * d];
    dpool.download(&mut pool_gpu).unwrap();
    let nan = if dt == DType::F16 { f16::NAN.to_bits() } else { bf16::NAN.to_bits() };
    let mut pool_cpu = vec![nan; pool_gpu.len()];
    let pc = PoolPagedArgs {
        k_cache: host_t(&c.k, dt, &cs),
        pooled_cache: host_out(&mut pool_cpu, dt, &pss),
        block_table: host_t(&c.table, DType::I32, &[n, c.max_pages]),
        prev_seq_lens: host_t(&zeros, DType::I32, &[n]),
        seq_lens: host_t(&c.lens, DType::I32, &[n]),
    };
    unsafe { api::pool_keys_paged(&cpu, &cfg, &pc, Workspace::none()) }.unwrap();
    let written: Vec<usize> = (0..pool_cpu.len()).filter(|&i| !is_nan_as(pool_cpu[i], dt)).collect();
    assert!(!written.is_empty());
    let (pg64, pc64) = (vals_as(&pool_gpu, dt), vals_as(&pool_cpu, dt));
    for &i in &written {
        let (a, b) = (pg64[i], pc64[i]);
        assert!((a - b).abs() <= 1e-2 * (1.0 + b.abs()), "pooled cache [{i}]: gpu {a} cpu {b}");
    }
    drop(pc64);
    // Decode: CPU reference reads the GPU's pooled cache (identical inputs).
    let q = bits_as(&rng.normals(n * q_len * hq * d, q_scale), dt);
    let qsh = [n, q_len, hq, d];
    let mut o_ref = vec![f64::NAN; q.len()];
    let mut lse_ref = vec![f64::NAN; n * hq * q_len];
    let (k64, v64, q64) = (vals_as(&c.k, dt), vals_as(&c.v, dt), vals_as(&q, dt));
    let ra = DecodeArgs {
        q: host_t(&q64, DType::F64, &qsh),
        k_cache: host_t(&k64, DType::F64, &cs),
        v_cache: host_t(&v64, DType::F64, &cs),
        pooled_cache: host_t(&pg64, DType::F64, &pss),
        block_table: pc.block_table,
        seq_lens: pc.seq_lens,
        head_alpha: None,
        o: host_out(&mut o_ref, DType::F64, &qsh),
        lse: Some(host_out(&mut lse_ref, DType::F64, &[n, hq, q_len])),
    };
    unsafe { api::decode(&cpu, &rcfg, &ra, Workspace::none()) }.unwrap();
    drop((k64, v64, pg64));
    let dq = if q_off { up(&[&[0u16][..], &q[..]].concat()) } else { up(&q) };
    let mut tq = dev_t(&dq, dt, &qsh);
    tq.ptr += 2 * q_off as usize;
    let dout = DeviceBuffer::new(dev, q.len() * 2).unwrap();
    let dlse = DeviceBuffer::new(dev, n * hq * q_len * 4).unwrap();
    let ga = DecodeArgs {
        q: tq,
        k_cache: dev_t(&dk, dt, &cs),
        v_cache: dev_t(&dvv, dt, &cs),
        pooled_cache: dev_t(&dpool, dt, &pss),
        block_table: pa.block_table,
        seq_lens: pa.seq_lens,
        head_alpha: None,
        o: dev_t(&dout, dt, &qsh),
        lse: Some(dev_t(&dlse, DType::F32, &[n, hq, q_len])),
    };
    dout.fill_u32(0x7fc0_7fc0).unwrap();
    unsafe { api::decode(gpu, &cfg, &ga, Workspace::none()) }.unwrap();
    let mut o_gpu = vec![0u16; q.len()];
    dout.download(&mut o_gpu).unwrap();
    let mut lse_gpu = vec![0f32; n * hq * q_len];
    dlse.download(&mut lse_gpu).unwrap();
    let err = rel(&vals_as(&o_gpu, dt), &o_ref);
    let lerr = lse_gpu.iter().zip(&lse_ref).map(|(&a, &b)| if a as f64 == b { 0.0 } else { (a as f64 - b).abs() }).fold(0.0, f64::max);
    let maxlen = lens.iter().max().unwrap();
    eprintln!(
        "decode {} n {n} maxlen {maxlen} hq {hq} hkv {hkv} d {d} B {bs} page {ps} {sel:?} q_len {q_len} alpha {alpha}{}: rel L2 o {err:.2e}, max |lse diff| {lerr:.2e}",
        dt.name(),
        if q_off { " (q misaligned)" } else { "" }
    );
    let tol = if dt == DType::F16 { 2e-3 } else { 1e-2 };
    assert!(err <= tol, "decode rel L2 {err:e}");
    assert!(lerr <= 1e-2, "decode lse diff {lerr:e}");
    if !graph {
        return err;
    }
    // Graph: capture one decode with a caller workspace, replay with new lengths.
    let need = api::decode_workspace_size(gpu, &cfg, &ga.q, &ga.k_cache, &ga.pooled_cache, &ga.block_table, &ga.seq_lens).unwrap();
    let ws = DeviceBuffer::new(dev, need).unwrap();
    let stream = Stream::new(dev).unwrap();
    let mut gctx = Context::new(&Options { backend: DASHATTN_BACKEND_CUDA, ..Options::default() }).unwrap();
    gctx.stream = stream.handle();
    let wsd = Workspace { ptr: ws.ptr as usize, len: need };
    let graph = stream.capture(|| unsafe { api::decode(&gctx, &cfg, &ga, wsd) }).unwrap();
    let lens2: Vec<i32> = c.lens.iter().map(|&l| (l - 7).max(q_len as i32)).collect();
    for lens_now in [&c.lens, &lens2] {
        dlens.upload(lens_now).unwrap();
        dout.fill_u32(0x7fc0_7fc0).unwrap();
        graph.launch(&stream).unwrap();
        stream.sync().unwrap();
        let mut og = vec![0u16; q.len()];
        dout.download(&mut og).unwrap();
        // Eager run on the same lengths for comparison.
        unsafe { api::decode(gpu, &cfg, &ga, Workspace::none()) }.unwrap();
        let mut oe = vec![0u16; q.len()];
        dout.download(&mut oe).unwrap();
        assert_eq!(og, oe, "graph replay differs from an eager run");
    }
    dlens.upload(&c.lens).unwrap();
    err
}

#[test]
fn gpu_decode_matches_cpu_reference_and_replays_in_a_graph() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(0xDEC0 ^ std::process::id() as u64);
    let mut worst = 0.0f64;
    use DType::{BF16, F16};
    use Selection::{PerGroup, PerHead};
    // (hq, hkv, d, B, page, selection, q_len, dtype): GQA 1..16, D 64/128, q_len 1..16.
    let cases = [
        (32usize, 8usize, 128usize, 64usize, 64usize, PerGroup, 1usize, BF16),
        (32, 8, 128, 64, 16, PerGroup, 1, BF16),
        (8, 8, 64, 32, 128, PerHead, 1, BF16),
        (16, 1, 64, 64, 64, PerGroup, 4, BF16),
        (8, 2, 128, 128, 32, PerHead, 16, BF16),
        (32, 8, 128, 64, 64, PerGroup, 1, F16),
        (16, 16, 128, 16, 16, PerGroup, 2, F16),
        (32, 2, 128, 64, 128, PerGroup, 16, BF16),
        (32, 2, 64, 64, 64, PerHead, 3, F16),
        (12, 4, 128, 32, 64, PerGroup, 1, BF16),
        (16, 1, 128, 64, 256, PerHead, 8, BF16),
        (4, 4, 96, 64, 64, PerGroup, 1, BF16), // D = 96: generic (v1) kernels
    ];
    for &(hq, hkv, d, bs, ps, sel, q_len, dt) in &cases {
        let lens = vec![3000usize, 777, 40.max(q_len), q_len];
        let c = Case { hq, hkv, d, bs, ps, sel, q_len, dt, lens, graph: true, alpha: 1.5, q_off: false, q_scale: 1.0 };
        worst = worst.max(run_case(&gpu, &mut rng, &c));
    }
    // Other entmax alphas (each threshold solver of the select kernel, on steps of few and
    // of many rows: cases 3, 0 and 5 have 16 / 32 / 32 rows, 7 has 128, 8, 4 and 10 have
    // 384-512, so items of at least 1, 2 and 3 blocks) and a misaligned q.
    let alphas = [(2.0f32, false, 0usize), (1.0, false, 3), (1.25, true, 8), (1.75, false, 4), (2.0, true, 5), (1.0, false, 10), (2.0, false, 7)];
    for &(alpha, q_off, i) in &alphas {
        let (hq, hkv, d, bs, ps, sel, q_len, dt) = cases[i];
        let lens = vec![3000usize, 777, 40.max(q_len), q_len];
        let c = Case { hq, hkv, d, bs, ps, sel, q_len, dt, lens, graph: false, alpha, q_off, q_scale: 1.0 };
        worst = worst.max(run_case(&gpu, &mut rng, &c));
    }
    eprintln!("gpu decode: worst rel L2 {worst:.2e}");
}

/// A ~1M-token history at batch 1 (16384 candidate blocks of 64).
#[test]
fn gpu_decode_one_million_tokens() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(0x1E6);
    for &(q_len, sel) in &[(1usize, Selection::PerGroup), (4, Selection::PerHead)] {
        let c = Case { hq: 4, hkv: 1, d: 64, bs: 64, ps: 64, sel, q_len, dt: DType::BF16, lens: vec![1 << 20], graph: q_len == 1, alpha: 1.5, q_off: false, q_scale: 1.0 };
        run_case(&gpu, &mut rng, &c);
    }
}

/// Batch 512 at short, ragged context (enough candidate blocks that the score CTAs make
/// several passes: the variant without the early pooled-key loads).
#[test]
fn gpu_decode_batch_512() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(512);
    let lens: Vec<usize> = (0..512).map(|i| if i % 37 == 0 { 1 } else { 1 + rng.below(3000) }).collect();
    let c = Case { hq: 16, hkv: 4, d: 128, bs: 64, ps: 16, sel: Selection::PerGroup, q_len: 1, dt: DType::BF16, lens, graph: true, alpha: 1.5, q_off: false, q_scale: 1.0 };
    run_case(&gpu, &mut rng, &c);
}

/// The streamed score kernel (`dec_score_ring`: one row per KV head, and so many candidate
/// blocks over the batch that the per-(sequence, KV head) score CTAs would make several
/// passes): D 64 / 128, bf16 / f16, GQA 1 / 4 / 8, pages of several blocks, blocks of several
/// pages, ragged lengths (a one-token sequence, lengths one past a block, short of the local
/// window), graph replay with shortened lengths on the first case. (Rows of <= 2048 candidate
/// blocks: longer ones keep dec_score.)
#[test]
fn gpu_decode_streamed_scores() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(0x5C0E);
    use DType::{BF16, F16};
    // 64 sequences, one of 12000 tokens (every (sequence, KV head) is scored over the batch's
    // widest row of candidate blocks, 187 here at B 64), the others short and ragged: n * hkv
    // * candidate blocks stays above 8 CTAs an SM x the score CTA's keys a pass (64 at D 128,
    // 128 at D 64) for up to ~180 SMs, while the CPU reference stays small.
    let mut lens = vec![12000usize, 1, 3, 64, 65, 129, 777];
    lens.extend((lens.len()..64).map(|i| 1 + (i * 37) % 600));
    let cases = [(64usize, 8usize, 128usize, 64usize, 256usize, BF16), (16, 16, 64, 64, 16, F16), (32, 8, 128, 32, 64, F16), (64, 8, 64, 32, 32, BF16)];
    for (i, &(hq, hkv, d, bs, ps, dt)) in cases.iter().enumerate() {
        let c = Case { hq, hkv, d, bs, ps, sel: Selection::PerGroup, q_len: 1, dt, lens: lens.clone(), graph: i == 0, alpha: 1.5, q_off: false, q_scale: 1.0 };
        run_case(&gpu, &mut rng, &c);
    }
}

/// Steps of at most 2 x SMs (row, head) pairs, where one merger task a pair merges its row's
/// splits (kernels/decode.cu `merge_head`): batch 1, 2 and 8, GQA 1 / 2 / 4 / 8, per-group and
/// per-head selection, D 64 / 128, bf16 / f16, q_len 1 and 3, ragged lengths (a partial last
/// block, shorter than the local window), rows of many splits (5000 tokens: ~78 candidate
/// blocks) and of one; graph replay on the first and the first batch-8 case. (On sm_90 the
/// table above takes the mergers in its cases of up to 2 x SMs pairs and the last split's
/// merge in the others; DASHATTN_DEC_MERGERS=0 runs everything on the last split's merge.)
#[test]
fn gpu_decode_mergers() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(0x3E26);
    use DType::{BF16, F16};
    use Selection::{PerGroup, PerHead};
    let cases = [
        (32usize, 8usize, 128usize, 64usize, 64usize, PerGroup, 1usize, BF16, vec![5000usize]),
        (64, 8, 128, 64, 16, PerGroup, 1, F16, vec![4999]),
        (8, 8, 64, 64, 64, PerHead, 1, BF16, vec![5000, 65]),
        (8, 2, 64, 32, 128, PerGroup, 3, F16, vec![3001, 3]),
        (32, 8, 128, 128, 64, PerGroup, 1, BF16, vec![130, 7000]),
        // batch 8: 256 pairs, more items than CTAs (merger tasks from the counter on sm_90;
        // on sm_80 the last split's merge)
        (32, 8, 128, 64, 64, PerGroup, 1, BF16, vec![5000, 4100, 3000, 65, 1, 2500, 4999, 700]),
        (16, 8, 64, 64, 16, PerGroup, 1, F16, vec![4000, 129, 3900, 3000, 2048, 1, 4097, 3500]),
    ];
    for (i, (hq, hkv, d, bs, ps, sel, q_len, dt, lens)) in cases.into_iter().enumerate() {
        let c = Case { hq, hkv, d, bs, ps, sel, q_len, dt, lens, graph: i == 0 || i == 5, alpha: 1.5, q_off: false, q_scale: 1.0 };
        run_case(&gpu, &mut rng, &c);
    }
}

/// The select's threshold for alpha 1.5 and 2 (kernels/decode.cu `select_row`) on rows of
/// 255, 256 and 257 candidate blocks (then 78 and 1), with scores all equal (q = 0: every
/// candidate ties, the whole row is selected), flat (q ~ N(0, 1): nearly all candidates
/// within reach of the max) and sharp (q ~ N(0, 24^2): few).
#[test]
fn gpu_decode_select_solvers() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Rng::new(0x5E1E);
    let lens = vec![16384usize, 16448, 16512, 5000, 65];
    for (i, &(alpha, q_scale)) in [(1.5f32, 0.0f64), (1.5, 1.0), (1.5, 24.0), (2.0, 0.0), (2.0, 1.0), (2.0, 24.0)].iter().enumerate() {
        let (hq, hkv, dt) = if i % 2 == 0 { (8, 2, DType::BF16) } else { (4, 4, DType::F16) };
        let c = Case { hq, hkv, d: 64, bs: 64, ps: 64, sel: Selection::PerGroup, q_len: 1, dt, lens: lens.clone(), graph: i == 2, alpha, q_off: false, q_scale };
        run_case(&gpu, &mut rng, &c);
    }
}

#[test]
fn gpu_merge_states_matches_cpu() {
    let Some(gpu) = cuda() else { return };
    let dev = device(&gpu).unwrap();
    let mut rng = Rng::new(77);
    let (s, n, l, h, d) = (3usize, 2usize, 5usize, 4usize, 64usize);
    let o = bits(&rng.normals(s * n * l * h * d, 1.0));
    let mut lse: Vec<f32> = rng.normals(s * n * h * l, 2.0);
    lse[3] = f32::NEG_INFINITY;
    let mut out_cpu = vec![0u16; n * l * h * d];
    let mut lse_cpu = vec![0f32; n * h * l];
    let ma = MergeArgs {
        o_parts: host_t(&o, DType::BF16, &[s, n, l, h, d]),
        lse_parts: host_t(&lse, DType::F32, &[s, n, h, l]),
        o: host_out(&mut out_cpu, DType::BF16, &[n, l, h, d]),
        lse: Some(host_out(&mut lse_cpu, DType::F32, &[n, h, l])),
    };
    unsafe { api::merge_states(&cpu(), Precision::F32, &ma) }.unwrap();
    let (dop, dl) = (DeviceBuffer::from_slice(dev, &o).unwrap(), DeviceBuffer::from_slice(dev, &lse).unwrap());
    let (dout, dlo) = (DeviceBuffer::new(dev, out_cpu.len() * 2).unwrap(), DeviceBuffer::new(dev, lse_cpu.len() * 4).unwrap());
    let ga = MergeArgs {
        o_parts: dev_t(&dop, DType::BF16, &[s, n, l, h, d]),
        lse_parts: dev_t(&dl, DType::F32, &[s, n, h, l]),
        o: dev_t(&dout, DType::BF16, &[n, l, h, d]),
        lse: Some(dev_t(&dlo, DType::F32, &[n, h, l])),
    };
    unsafe { api::merge_states(&gpu, Precision::F32, &ga) }.unwrap();
    let mut og = vec![0u16; out_cpu.len()];
    dout.download(&mut og).unwrap();
    let err = rel(&vals(&og), &vals(&out_cpu));
    assert!(err < 1e-2, "merge rel L2 {err:e}");
    let _ = max_abs_diff;
}

/// Device-resident lengths cannot be range-checked on the host: a length beyond the block
/// table makes that sequence empty (o = 0, lse = -inf) instead of reading or writing past
/// any buffer; the other sequences are unaffected.
#[test]
fn gpu_decode_out_of_range_length_is_empty() {
    let Some(gpu) = cuda() else { return };
    let dev = device(&gpu).unwrap();
    let mut rng = Rng::new(99);
    let (n, hq, hkv, d, bs, ps) = (2usize, 8usize, 2usize, 64usize, 64usize, 64usize);
    let c = make_cache(&mut rng, n, hkv, d, ps, &[300, 200], bs);
    let cfg = Config { block_size: bs, ..Config::default() };
    let (cs, pss) = ([c.pages, ps, hkv, d], [c.pages, 1, hkv, d]);
    let up = |x: &[u16]| DeviceBuffer::from_slice(dev, x).unwrap();
    let (dk, dvv) = (up(&c.k), up(&c.v));
    let dpool = DeviceBuffer::new(dev, c.pages * hkv * d * 2).unwrap();
    let dtab = DeviceBuffer::from_slice(dev, &c.table).unwrap();
    let dlens = DeviceBuffer::from_slice(dev, &c.lens).unwrap();
    let dprev = DeviceBuffer::from_slice(dev, &[0i32; 2]).unwrap();
    let pa = PoolPagedArgs {
        k_cache: dev_t(&dk, DType::BF16, &cs),
        pooled_cache: dev_t(&dpool, DType::BF16, &pss),
        block_table: dev_t(&dtab, DType::I32, &[n, c.max_pages]),
        prev_seq_lens: dev_t(&dprev, DType::I32, &[n]),
        seq_lens: dev_t(&dlens, DType::I32, &[n]),
    };
    unsafe { api::pool_keys_paged(&gpu, &cfg, &pa, Workspace::none()) }.unwrap();
    let q = bits(&rng.normals(n * hq * d, 1.0));
    let dq = up(&q);
    let (dout, dlse) = (DeviceBuffer::new(dev, q.len() * 2).unwrap(), DeviceBuffer::new(dev, n * hq * 4).unwrap());
    let ga = DecodeArgs {
        q: dev_t(&dq, DType::BF16, &[n, 1, hq, d]),
        k_cache: pa.k_cache,
        v_cache: dev_t(&dvv, DType::BF16, &cs),
        pooled_cache: pa.pooled_cache,
        block_table: pa.block_table,
        seq_lens: pa.seq_lens,
        head_alpha: None,
        o: dev_t(&dout, DType::BF16, &[n, 1, hq, d]),
        lse: Some(dev_t(&dlse, DType::F32, &[n, hq, 1])),
    };
    unsafe { api::decode(&gpu, &cfg, &ga, Workspace::none()) }.unwrap();
    let mut good = vec![0u16; q.len()];
    dout.download(&mut good).unwrap();
    dlens.upload(&[1 << 20, 200]).unwrap();
    unsafe { api::decode(&gpu, &cfg, &ga, Workspace::none()) }.unwrap();
    let mut o = vec![0u16; q.len()];
    dout.download(&mut o).unwrap();
    let mut lse = vec![0f32; n * hq];
    dlse.download(&mut lse).unwrap();
    assert!(o[..hq * d].iter().all(|&x| x == 0), "the out-of-range sequence must be empty");
    assert!(lse[..hq].iter().all(|&x| x == f32::NEG_INFINITY));
    assert_eq!(o[hq * d..], good[hq * d..], "the other sequence must be unaffected");
}
