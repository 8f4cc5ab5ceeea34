//! CUDA decode over a paged KV cache (SPEC 5), kernels/decode.cu: coarse selection per row
//! and unit, split-KV attention over the selected + local blocks, merge by lse. The grid
//! depends only on shapes (never on sequence lengths or page tables, which the kernels
//! read on the device), so a step can be captured in a CUDA graph and replayed as they
//! change. Also the pooled-key cache upkeep and dashattn_merge_states.

use cudarc::driver::sys;

use super::launch::{launch, launch_pdl, s3, DeviceScratch, Layout};
use super::{check, CudaDevice};
use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::params::{Config, DecodeArgs, DecodeDims, MergeArgs, MergeDims, PagedDims, PoolPagedArgs, Selection, Tensor, Workspace};

/// Mirror of `struct DecParams` in kernels/decode.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DecParams {
    q: u64,
    sq: [i64; 3],
    kc: u64,
    vc: u64,
    pc: u64,
    sk: [i64; 3],
    sv: [i64; 3],
    sp: [i64; 3],
    table: u64,
    st: [i64; 2],
    seq_lens: u64,
    s_sl: i64,
    prev_lens: u64,
    s_prev: i64,
    head_alpha: u64,
    ha_stride: i64,
    o: u64,
    so: [i64; 3],
    z: u64,
    tau: u64,
    sel_n: u64,
    sel_idx: u64,
    sel_beta: u64,
    o_part: u64,
    lse_part: u64,
    n: i32,
    q_len: i32,
    hq: i32,
    hkv: i32,
    d: i32,
    bs: i32,
    ps: i32,
    num_pages: i32,
    max_pages: i32,
    nbmax: i32,
    n_local: i32,
    per_head: i32,
    group: i32,
    splits: i32,
    alpha: f32,
    sigma: f32,
    sigma_c: f32,
    cb: i32,
    lse: u64,
    sl: [i64; 3],
    cnt: u64,
    items: u64,
    nitems: u64,
    wchunk: i32,
    flags: i32,
    m_qlen: u32,
    m_units: u32,
    m_group: u32,
    m_ps: u32,
}
const _: () = assert!(std::mem::size_of::<DecParams>() == 440);

/// Multiplier for the kernels' `fdiv` (kernels/decode.cu): x / d = umulhi(x, m) >> (l - 1)
/// for 0 <= x < 2^31, with l = ceil(log2 d) and m = ceil(2^(31 + l) / d) < 2^32; d <= 1
/// gives 0 (fdiv returns x). d must be below 2^31.
fn fast_div_m(d: usize) -> u32 {
    if d <= 1 {
        return 0;
    }
    let l = usize::BITS - (d - 1).leading_zeros();
    ((1u64 << (31 + l)).div_ceil(d as u64)) as u32
}

/// Mirror of `struct MergeParams` in kernels/decode.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MergeParams {
    o_parts: u64,
    sp: [i64; 4],
    lse_parts: u64,
    sl: [i64; 4],
    o: u64,
    so: [i64; 3],
    lse: u64,
    slo: [i64; 3],
    s: i32,
    n: i32,
    l: i32,
    h: i32,
    d: i32,
}
const _: () = assert!(std::mem::size_of::<MergeParams>() == 168);

fn sfx(dt: DType) -> Result<&'static str> {
    match dt {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        d => bail!(Unsupported, "the CUDA decode path takes bf16 or f16 tensors, not {}", d.name()),
    }
}

fn kname(base: &str, s: &str) -> &'static str {
    // Kernel names are a fixed set: leak-free static lookup.
    match (base, s) {
        ("pool", "bf16") => "dash_pool_paged_bf16",
        ("pool", _) => "dash_pool_paged_f16",
        ("coarse", "bf16") => "dash_dec_coarse_bf16",
        ("coarse", _) => "dash_dec_coarse_f16",
        ("attend", "bf16") => "dash_dec_attend_bf16",
        ("attend", _) => "dash_dec_attend_f16",
        ("merge_f32", "bf16") => "dash_merge_f32_bf16",
        ("merge_f32", _) => "dash_merge_f32_f16",
        ("merge", "bf16") => "dash_merge_bf16",
        ("merge", _) => "dash_merge_f16",
        ("score64", "bf16") => "dash_dec_score_d64_bf16",
        ("score64", _) => "dash_dec_score_d64_f16",
        ("score64pre", "bf16") => "dash_dec_score_d64_pre_bf16",
        ("score64pre", _) => "dash_dec_score_d64_pre_f16",
        ("score64r4", "bf16") => "dash_dec_score_d64_r4_bf16",
        ("score64r4", _) => "dash_dec_score_d64_r4_f16",
        ("score128", "bf16") => "dash_dec_score_d128_bf16",
        ("score128", _) => "dash_dec_score_d128_f16",
        ("score128pre", "bf16") => "dash_dec_score_d128_pre_bf16",
        ("score128pre", _) => "dash_dec_score_d128_pre_f16",
        ("score128r4", "bf16") => "dash_dec_score_d128_r4_bf16",
        ("score128r4", _) => "dash_dec_score_d128_r4_f16",
        ("score64ring", "bf16") => "dash_dec_score_d64_ring_bf16",
        ("score64ring", _) => "dash_dec_score_d64_ring_f16",
        ("score128ring", "bf16") => "dash_dec_score_d128_ring_bf16",
        ("score128ring", _) => "dash_dec_score_d128_ring_f16",
        ("select", "bf16") => "dash_dec_select_bf16",
        ("select", _) => "dash_dec_select_f16",
        ("attn64", "bf16") => "dash_dec_attn_d64_bf16",
        ("attn64", _) => "dash_dec_attn_d64_f16",
        ("attn128", "bf16") => "dash_dec_attn_d128_bf16",
        ("attn128", _) => "dash_dec_attn_d128_f16",
        ("attn64m", "bf16") => "dash_dec_attn_d64_m_bf16",
        ("attn64m", _) => "dash_dec_attn_d64_m_f16",
        ("attn128m", "bf16") => "dash_dec_attn_d128_m_bf16",
        _ => "dash_dec_attn_d128_m_f16",
    }
}

/// Stages of the streamed score kernel's ring (kernels/decode.cu `dec_score_ring`, the S of
/// its instantiation) and its dynamic shared memory: [8 warps][S] chunks of 2 KB (32 lanes x
/// 4 pieces of 16 bytes), for D 64 and 128 alike.
const SCORE_RING_STAGES: usize = 3;
const SCORE_RING_SMEM: usize = 8 * SCORE_RING_STAGES * 2048;

/// Fewest blocks in one attention work item (an item of `per` blocks a row, `per` =
/// max(wchunk, blocks / splits)), by the rows of the step. Each item pays a fixed cost
/// (first-tile latency, warp-state merge, partial write, fence, split count) that one
/// 64-key tile does not hide when rows have few blocks. Measured on the H200 (decode_trace
/// harness, 128k, Hkv 8, per layer at 99.5 / 99.85% sparsity; docs/cuda-notes.md, eleventh
/// session): 8 and 16 rows keep 1 (16 rows, 2: 22.2 / 19.1 -> 22.4 / 20.6 us); 32 rows 1 or
/// 2 within 0.5 us; 64 rows 42.5 / 31.3 -> 35.9 / 31.5 us with 2; 128 rows 60.9 / 44.9 ->
/// 58.4 / 45.4 with 2 (3: 60.8 / 47.2); 256 rows 90.2 / 75.0 (2) -> 88.5 / 69.2 with 3; 512
/// rows 151.2 / 119.6 (2) -> 148.6 / 118.8 with 3 (4: 147.7 / 121.4).
fn wchunk(rows: usize) -> i32 {
    match rows {
        0..=16 => 1,
        17..=255 => 2,
        _ => 3,
    }
}

/// Shared memory of the v2 attention kernel (kernels/decode.cu `dec_attn`).
fn attn_smem(d: usize) -> usize {
    // K, V [2][64][D] + Q [16][D] (16-bit), ok [2][64], m/l [4][16] each, weights [16][64],
    // flag [4], the next item (2 x int4), the item's entries (block, page, log-prior) [3][64]
    2 * 2 * 64 * d * 2 + 16 * d * 2 + 2 * 64 * 4 + 2 * 64 * 4 + 16 * 64 * 4 + 16 + 32 + 3 * 64 * 4
}

/// Rows of a 4-d 16-bit tensor are 16-byte aligned (base pointer and outer strides), D
/// contiguous: the v2 kernels' 16-byte loads.
fn aligned(t: &Tensor) -> bool {
    t.ptr.is_multiple_of(16) && t.strides[3] == 1 && t.strides[..3].iter().all(|&s| s % 8 == 0)
}

/// The v2 kernels need D in {64, 128}, at most 16 heads per selection unit, 16-byte
/// aligned K/V/pooled rows (base pointers and page/slot/head strides) and the shared memory
/// for the score kernel's query rows. Anything else takes the generic v1 kernels.
/// DASHATTN_DECODE_V1=1 forces v1 (A/B measurements).
fn fast_path(dev: &CudaDevice, cfg: &Config, d: &DecodeDims, a: &DecodeArgs, hpu: usize) -> bool {
    if std::env::var("DASHATTN_DECODE_V1").is_ok_and(|v| v == "1") {
        return false;
    }
    let p = &d.paged;
    let rows = if cfg.selection == Selection::PerHead { d.group * d.q_len } else { d.q_len };
    let optin = dev.props.smem_optin.max(48 * 1024) as usize;
    (p.d == 64 || p.d == 128)
        && hpu <= 16
        && aligned(&a.k_cache)
        && aligned(&a.v_cache)
        && aligned(&a.pooled_cache)
        && rows * p.d * 4 <= optin
        && attn_smem(p.d) <= optin
}

struct Plan {
    units: usize,
    hpu: usize,
    nbmax: usize,
    splits: usize,
    layout: Layout,
}

fn plan(dev: &CudaDevice, cfg: &Config, d: &DecodeDims) -> Result<Plan> {
    let p = &d.paged;
    if p.d > 256 {
        bail!(Unsupported, "the CUDA decode supports D <= 256");
    }
    if p.n > 65535 || d.q_len > 65535 {
        bail!(Unsupported, "the CUDA decode supports N <= 65535");
    }
    let (units, hpu) = if cfg.selection == Selection::PerHead { (d.hq, 1) } else { (p.hkv, d.group) };
    if units > 65535 || p.n.checked_mul(units * d.q_len).is_none_or(|x| x > i32::MAX as usize) {
        bail!(
            Unsupported,
            "the CUDA decode supports at most 65535 selection units (KV heads, or query heads with per-head selection) and 2^31 - 1 rows (sequences x units x query rows)"
        );
    }
    let nbmax = (p.max_pages * p.page_size / cfg.block_size).max(1);
    let rows = p.n * units * d.q_len;
    // Most splits (partial results) per row: v1 splits every row this many ways (enough
    // CTAs to fill the machine four times); v2 cuts a row's blocks into work items of
    // max(wchunk, blocks / splits) blocks, so at least 16. A function of shapes only.
    let want = (4 * dev.props.sm_count.max(1) as usize).div_ceil(rows.max(1));
    let splits = want.clamp(16, 64).min(nbmax.max(1));
    let optin = dev.props.smem_optin.max(48 * 1024) as usize;
    if 2 * cfg.block_size * 8 + (2 * hpu * p.d + hpu * cfg.block_size + 2 * hpu) * 4 > optin || hpu * p.d * 4 > optin {
        bail!(Unsupported, "the CUDA decode's shared memory need exceeds this device's limit");
    }
    let b = |parts: &[usize]| crate::params::bytes_of(parts, "CUDA decode workspace");
    let layout = Layout::new(&[
        b(&[rows, nbmax, 4])?,
        b(&[rows, 4])?,
        b(&[rows, 4])?,
        b(&[rows, nbmax, 4])?,
        b(&[rows, nbmax, 4])?,
        b(&[splits, p.n, d.q_len, d.hq, p.d, 4])?,
        b(&[splits, p.n, d.hq, d.q_len, 4])?,
        b(&[rows, 4])?,
        // (the attention grid, up to 64 CTAs more than rows x splits, reads a slot a CTA)
        b(&[rows * splits + 64, 32])?,
        8,
    ])?;
    Ok(Plan { units, hpu, nbmax, splits, layout })
}

pub fn workspace_size(dev: &CudaDevice, cfg: &Config, d: &DecodeDims, dtype: DType) -> Result<usize> {
    sfx(dtype)?;
    Ok(plan(dev, cfg, d)?.layout.total)
}

fn cache_params(p: &PagedDims, k: &Tensor, pooled: &Tensor, table: &Tensor, seq_lens: &Tensor, cfg: &Config) -> DecParams {
    DecParams {
        kc: k.ptr as u64,
        pc: pooled.ptr as u64,
        sk: s3(k),
        sp: s3(pooled),
        table: table.ptr as u64,
        st: [table.strides[0] as i64, table.strides[1] as i64],
        seq_lens: seq_lens.ptr as u64,
        s_sl: seq_lens.strides[0] as i64,
        n: p.n as i32,
        hkv: p.hkv as i32,
        d: p.d as i32,
        bs: cfg.block_size as i32,
        ps: p.page_size as i32,
        num_pages: p.num_pages.min(i32::MAX as usize) as i32,
        max_pages: p.max_pages as i32,
        n_local: cfg.n_local.min(1 << 30) as i32,
        ..DecParams::default()
    }
}

pub fn pool_keys_paged(dev: &CudaDevice, stream: usize, cfg: &Config, p: &PagedDims, a: &PoolPagedArgs, ws: Workspace) -> Result<()> {
    let s = sfx(a.k_cache.dtype)?;
    ws.check(0)?;
    if p.n == 0 || p.hkv == 0 {
        return Ok(());
    }
    if p.n > 65535 || p.hkv > 65535 {
        bail!(Unsupported, "the CUDA pooled-key upkeep supports N, Hkv <= 65535");
    }
    let _g = dev.bind()?;
    let kern = dev.kernels()?;
    let mut dp = cache_params(p, &a.k_cache, &a.pooled_cache, &a.block_table, &a.seq_lens, cfg);
    dp.prev_lens = a.prev_seq_lens.ptr as u64;
    dp.s_prev = a.prev_seq_lens.strides[0] as i64;
    let f = kern.function(kname("pool", s))?;
    unsafe { launch(f, (p.hkv, p.n, 1), p.d.div_ceil(32) * 32, 0, stream as sys::CUstream, &dp, "cuLaunchKernel(dash_pool_paged)") }
}

pub fn decode(dev: &CudaDevice, stream: usize, cfg: &Config, d: &DecodeDims, a: &DecodeArgs, ws: Workspace) -> Result<()> {
    let s = sfx(a.q.dtype)?;
    let pl = plan(dev, cfg, d)?;
    ws.check(pl.layout.total)?;
    let p = &d.paged;
    if p.n == 0 {
        return Ok(());
    }
    let _g = dev.bind()?;
    let kern = dev.kernels()?;
    let scratch = DeviceScratch::new(ws, pl.layout.total, stream, "cuMemAllocAsync (decode workspace)")?;
    let stream = stream as sys::CUstream;
    let at = |i: usize| scratch.base + pl.layout.offsets[i] as u64;
    let (sigma, sigma_c) = cfg.scales(p.d);
    let mut dp = cache_params(p, &a.k_cache, &a.pooled_cache, &a.block_table, &a.seq_lens, cfg);
    dp.q = a.q.ptr as u64;
    dp.sq = s3(&a.q);
    dp.vc = a.v_cache.ptr as u64;
    dp.sv = s3(&a.v_cache);
    dp.head_alpha = a.head_alpha.map_or(0, |t| t.ptr as u64);
    dp.ha_stride = a.head_alpha.map_or(0, |t| t.strides[0] as i64);
    dp.o = a.o.ptr as u64;
    dp.so = s3(&a.o);
    dp.z = at(0);
    dp.tau = at(1);
    dp.sel_n = at(2);
    dp.sel_idx = at(3);
    dp.sel_beta = at(4);
    dp.o_part = at(5);
    dp.lse_part = at(6);
    dp.cnt = at(7);
    dp.items = at(8);
    dp.nitems = at(9);
    dp.lse = a.lse.map_or(0, |t| t.ptr as u64);
    dp.sl = a.lse.as_ref().map_or([0; 3], s3);
    dp.q_len = d.q_len as i32;
    dp.hq = d.hq as i32;
    dp.nbmax = pl.nbmax as i32;
    dp.per_head = (cfg.selection == Selection::PerHead) as i32;
    dp.group = d.group as i32;
    dp.splits = pl.splits as i32;
    dp.alpha = cfg.alpha;
    dp.sigma = sigma as f32;
    dp.sigma_c = sigma_c as f32;
    // Few rows (the latency-bound case): the select kernel prefetches the K/V rows of each
    // row's local blocks into L2 while the score kernel runs (with many rows the attention
    // is bandwidth-bound and the prefetch would only add traffic);
    // DASHATTN_DEC_NO_PREFETCH=1 turns it off (A/B measurements).
    let rows_total = p.n * pl.units * d.q_len;
    dp.wchunk = wchunk(rows_total);
    dp.flags = (rows_total <= 16 && !std::env::var("DASHATTN_DEC_NO_PREFETCH").is_ok_and(|v| v == "1")) as i32;
    // The attention loads q rows 16 bytes at a time when they are 16-byte aligned.
    dp.flags |= (aligned(&a.q) as i32) << 1;
    dp.m_qlen = fast_div_m(d.q_len);
    dp.m_units = fast_div_m(pl.units);
    dp.m_group = fast_div_m(d.group);
    dp.m_ps = fast_div_m(p.page_size);
    if fast_path(dev, cfg, d, a, pl.hpu) {
        // Candidate blocks per score CTA: about 8 CTAs per SM over all (sequence, KV head)
        // pairs, a whole number of the CTA's per-iteration key count.
        let step = if p.d == 64 { 128 } else { 64 };
        let total = p.n * p.hkv * pl.nbmax;
        let cb = total.div_ceil(8 * dev.props.sm_count.max(1) as usize).div_ceil(step).max(1) * step;
        let cb = cb.min(pl.nbmax.div_ceil(step) * step);
        dp.cb = cb as i32;
        let chunks = pl.nbmax.div_ceil(cb);
        if chunks > i32::MAX as usize || p.hkv > 65535 {
            bail!(Unsupported, "the CUDA decode supports Hkv <= 65535");
        }
        let rows = if cfg.selection == Selection::PerHead { d.group * d.q_len } else { d.q_len };
        let (sc, at) = if p.d == 64 { ("score64", "attn64") } else { ("score128", "attn128") };
        // One row per KV head: the variant that loads its first pass's pooled keys before
        // staging q when each CTA makes a single pass (few sequences: latency-bound).
        let single_pass = cb == step;
        let sc = match (rows == 1, single_pass, p.d == 64) {
            (true, false, _) => sc,
            (true, true, true) => "score64pre",
            (true, true, false) => "score128pre",
            (false, _, true) => "score64r4",
            (false, _, false) => "score128r4",
        };
        // Programmatic dependent launch of select and attention on sm_90+ (their kernels
        // wait on the previous grid first); DASHATTN_NO_PDL=1 turns it off.
        let pdl = dev.props.cc_major >= 9 && !std::env::var("DASHATTN_NO_PDL").is_ok_and(|v| v == "1");
        let sms = dev.props.sm_count.max(1) as usize;
        // Splits per row for the work items: with few rows, as many as the attention grid
        // (3 CTAs per SM) holds at one item per CTA (a CTA takes items one after another,
        // without prefetching across them); otherwise at least 16 for balance.
        // With at most 2 x SMs (row, head) pairs, one merger task each merges the splits of
        // its row (flags bit 2; kernels/decode.cu `dec_attn`). With at most 64, the splits
        // also leave room for them in the grid (batch 1 here: 8 rows, 45 splits and 32
        // mergers in 396 CTAs, each CTA one task). DASHATTN_DEC_MERGERS=0 keeps the last
        // split's merge (A/B measurements, tests).
        let pairs = rows_total * pl.hpu;
        // (sm_80: up to 64, the mergers' kernel there has no counter-taken merger tasks)
        let mg_max = if dev.props.cc_major >= 9 { 2 * sms } else { 64 };
        let mg = pairs <= mg_max && !std::env::var("DASHATTN_DEC_MERGERS").is_ok_and(|v| v == "0");
        let mergers = if mg && pairs <= 64 { pairs } else { 0 };
        dp.flags |= (mg as i32) << 2;
        let grid = (3 * sms).min(p.n * pl.units * d.q_len * pl.splits + mergers).max(1);
        dp.splits = ((3 * sms).saturating_sub(mergers) / rows_total.max(1)).clamp(16, pl.splits.max(16)).min(pl.splits) as i32;
        // One row per KV head and several passes a CTA (many sequences): the streamed score
        // kernel instead, one wave of CTAs over all (sequence, KV head, chunk of 2 KB of
        // pooled keys). Not past 2048 candidate blocks a row: there the select (which re-reads
        // its row of z every round) ran slower after it (1M tokens at batch 1: 59.7 -> 74-80
        // us; docs/cuda-notes.md, ninth session). DASHATTN_DEC_SCORE_RING=0 keeps dec_score.
        let ring_chunks = p.n * p.hkv * pl.nbmax.div_ceil(if p.d == 64 { 16 } else { 8 });
        let ring = rows == 1
            && !single_pass
            && pl.nbmax <= 2048
            && ring_chunks <= i32::MAX as usize
            && !std::env::var("DASHATTN_DEC_SCORE_RING").is_ok_and(|v| v == "0");
        unsafe {
            if ring {
                let f = kern.function(kname(if p.d == 64 { "score64ring" } else { "score128ring" }, s))?;
                let smem = SCORE_RING_SMEM;
                let mut per_sm = 0;
                check(sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut per_sm, f, 256, smem), "cuOccupancyMaxActiveBlocksPerMultiprocessor(dash_dec_score_ring)")?;
                let grid = (per_sm.max(1) as usize * sms).min(ring_chunks.div_ceil(8)).max(1);
                launch(f, (grid, 1, 1), 256, smem, stream, &dp, "cuLaunchKernel(dash_dec_score_ring)")?;
            } else {
                let f = kern.function(kname(sc, s))?;
                launch(f, (chunks, p.hkv, p.n), 256, rows * p.d * 4, stream, &dp, "cuLaunchKernel(dash_dec_score)")?;
            }
            let f = kern.function(kname("select", s))?;
            launch_pdl(f, (d.q_len, pl.units, p.n), 256, 0, stream, &dp, pdl, "cuLaunchKernelEx(dash_dec_select)")?;
            // (merges the splits itself: no merge launch; the kernel with merger CTAs when
            // flags bit 2 is set)
            let at = match (at, mg) {
                ("attn64", true) => "attn64m",
                ("attn128", true) => "attn128m",
                (at, _) => at,
            };
            let f = kern.function(kname(at, s))?;
            launch_pdl(f, (grid, 1, 1), 128, attn_smem(p.d), stream, &dp, pdl, "cuLaunchKernelEx(dash_dec_attn)")
        }
    } else {
        v1_coarse_attend(kern, s, cfg, d, &pl, &dp, stream)?;
        merge_parts(kern, s, d, a, &pl, &dp, stream)
    }
}

fn v1_coarse_attend(kern: &super::module::Kernels, s: &str, cfg: &Config, d: &DecodeDims, pl: &Plan, dp: &DecParams, stream: sys::CUstream) -> Result<()> {
    let p = &d.paged;
    let attend_smem = 2 * cfg.block_size * 8 + (2 * pl.hpu * p.d + pl.hpu * cfg.block_size + 2 * pl.hpu) * 4;
    unsafe {
        let f = kern.function(kname("coarse", s))?;
        launch(f, (d.q_len, pl.units, p.n), 256, pl.hpu * p.d * 4, stream, dp, "cuLaunchKernel(dash_dec_coarse)")?;
        let f = kern.function(kname("attend", s))?;
        launch(f, (p.n * pl.units, pl.splits, d.q_len), 128, attend_smem, stream, dp, "cuLaunchKernel(dash_dec_attend)")?;
    }
    Ok(())
}

/// Merges the splits' partial (o, lse) into o (and lse).
fn merge_parts(kern: &super::module::Kernels, s: &str, d: &DecodeDims, a: &DecodeArgs, pl: &Plan, dp: &DecParams, stream: sys::CUstream) -> Result<()> {
    let p = &d.paged;
    let (n, l, h, dd, sp) = (p.n as i64, d.q_len as i64, d.hq as i64, p.d as i64, pl.splits as i64);
    let mp = MergeParams {
        o_parts: dp.o_part,
        sp: [n * l * h * dd, l * h * dd, h * dd, dd],
        lse_parts: dp.lse_part,
        sl: [n * h * l, h * l, l, 1],
        o: a.o.ptr as u64,
        so: s3(&a.o),
        lse: a.lse.map_or(0, |t| t.ptr as u64),
        slo: a.lse.as_ref().map_or([0; 3], s3),
        s: sp as i32,
        n: p.n as i32,
        l: d.q_len as i32,
        h: d.hq as i32,
        d: p.d as i32,
    };
    let f = kern.function(kname("merge_f32", s))?;
    unsafe { launch(f, (d.hq, d.q_len, p.n), 128, 0, stream, &mp, "cuLaunchKernel(dash_merge)") }
}

pub fn merge_states(dev: &CudaDevice, stream: usize, m: &MergeDims, a: &MergeArgs) -> Result<()> {
    let s = sfx(a.o.dtype)?;
    let [parts, n, l, h, d] = *m;
    if n == 0 || l == 0 || h == 0 {
        return Ok(());
    }
    if h > i32::MAX as usize || l > 65535 || n > 65535 || parts > i32::MAX as usize {
        bail!(Unsupported, "the CUDA merge supports L, N <= 65535");
    }
    let _g = dev.bind()?;
    let kern = dev.kernels()?;
    let st = |t: &Tensor, k: usize| -> Vec<i64> { (0..k).map(|i| t.strides[i] as i64).collect() };
    let (op, lp) = (st(&a.o_parts, 4), st(&a.lse_parts, 4));
    let mp = MergeParams {
        o_parts: a.o_parts.ptr as u64,
        sp: [op[0], op[1], op[2], op[3]],
        lse_parts: a.lse_parts.ptr as u64,
        sl: [lp[0], lp[1], lp[2], lp[3]],
        o: a.o.ptr as u64,
        so: s3(&a.o),
        lse: a.lse.map_or(0, |t| t.ptr as u64),
        slo: a.lse.as_ref().map_or([0; 3], s3),
        s: parts as i32,
        n: n as i32,
        l: l as i32,
        h: h as i32,
        d: d as i32,
    };
    let f = kern.function(kname("merge", s))?;
    unsafe { launch(f, (h, l, n), 128, 0, stream as sys::CUstream, &mp, "cuLaunchKernel(dash_merge)") }
}

#[cfg(test)]
mod tests {
    use super::fast_div_m;

    /// The kernels' fdiv: x / d = umulhi(x, m) >> (ceil(log2 d) - 1), x when m = 0.
    fn fdiv(x: u32, m: u32, d: u32) -> u32 {
        if m == 0 {
            return x;
        }
        let s = 31 - (d - 1).leading_zeros();
        (((x as u64 * m as u64) >> 32) as u32) >> s
    }

    #[test]
    fn fast_division_is_exact() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut ds: Vec<u32> = (1..=4100).collect();
        ds.extend((0..31).flat_map(|k| [(1u32 << k).saturating_sub(1).max(1), 1 << k, (1u32 << k) + 1]));
        ds.extend((0..2000).map(|_| (rnd() % (i32::MAX as u64)) as u32 + 1));
        let top = i32::MAX as u32;
        for &d in &ds {
            let m = fast_div_m(d as usize);
            let mut xs = vec![0, 1, d - 1, d, d + 1, top, top - 1, top - d, (top / d) * d, (top / d) * d - 1];
            xs.extend((0..40).map(|_| (rnd() % (top as u64 + 1)) as u32));
            xs.extend((0..20).map(|_| (rnd() % 4096) as u32 * d.min(1 << 19)));
            for x in xs.into_iter().filter(|&x| x <= top) {
                assert_eq!(fdiv(x, m, d), x / d, "x {x} d {d} m {m}");
            }
        }
    }
}
