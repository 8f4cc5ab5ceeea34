//! CUDA backward (SPEC 4), kernels/backward.cu v2: pooled keys (the forward's pool kernel),
//! D_r = <dO, o>, then per query tile the selection scan and dq (tensor cores), the
//! selection inverted per key block (bit transpose), and per key block dK/dV/d kbar over
//! only the tiles that attend it. Every accumulator has a single owner, so the result is
//! bitwise deterministic (no atomics), and nothing is allocated or synchronised on the host
//! when the caller passes a workspace (graph capturable).

use cudarc::driver::sys;

use super::forward::{launch_pool, rows_aligned};
use super::launch::{launch, s3, DeviceScratch, Layout};
use super::CudaDevice;
use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::params::{AttnDims, BackwardArgs, Config, Selection, Workspace};

/// Mirror of `struct BwdParams` in kernels/backward.cu (same order, same types).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct BwdParams {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    dout: u64,
    lse: u64,
    tau: u64,
    kbar: u64,
    alpha: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    dpooled: u64,
    drow: u64,
    crow: u64,
    kbhl: u64,
    mask: u64,
    wmask: u64,
    maskt: u64,
    q_s: [i64; 3],
    k_s: [i64; 3],
    v_s: [i64; 3],
    o_s: [i64; 3],
    do_s: [i64; 3],
    dq_s: [i64; 3],
    dk_s: [i64; 3],
    dv_s: [i64; 3],
    dp_s: [i64; 3],
    lse_s: [i64; 3],
    tau_s: [i64; 3],
    alpha_s: i64,
    n: i32,
    lq: i32,
    lk: i32,
    hq: i32,
    hkv: i32,
    g: i32,
    d: i32,
    nb: i32,
    nbw: i32,
    ntiles: i32,
    ntw: i32,
    bs: i32,
    bs_log2: i32,
    n_local: i32,
    causal: i32,
    per_head: i32,
    rows_per_warp: i32,
    rows_per_tile: i32,
    aligned16: i32,
    pad0: i32,
    alpha_default: f32,
    scale: f32,
    coarse_scale: f32,
    pad: f32,
}

const _: () = assert!(std::mem::size_of::<BwdParams>() == 520);

/// Launch geometry and workspace layout of one backward call.
struct Plan {
    bf16: bool,
    bn: usize,
    nw: usize,
    rows_per_warp: usize,
    rows_per_tile: usize,
    ntiles: usize,
    nbw: usize,
    ntw: usize,
    smem_select: usize,
    smem_dq: usize,
    smem_dkv: usize,
    /// kbar, drow, crow, mask, wmask, maskt, kbhl
    layout: Layout,
}

fn plan(dev: &CudaDevice, cfg: &Config, dims: &AttnDims, dtype: DType) -> Result<Plan> {
    let bf16 = match dtype {
        DType::BF16 => true,
        DType::F16 => false,
        d => bail!(Unsupported, "the CUDA backward takes bf16 or f16 tensors, not {} (use the CPU backend)", d.name()),
    };
    if dims.d != 64 && dims.d != 128 {
        bail!(Unsupported, "the CUDA backward supports head dimension 64 or 128, not {}", dims.d);
    }
    if !matches!(cfg.block_size, 32 | 64 | 128) {
        bail!(Unsupported, "the CUDA backward supports block_size 32, 64 or 128, not {}", cfg.block_size);
    }
    if dims.group == 0 || dims.group > 16 {
        bail!(Unsupported, "the CUDA backward supports GQA group sizes 1..=16, not {}", dims.group);
    }
    let lim = 1usize << 30;
    if dims.lq >= lim || dims.lk >= lim || cfg.n_local >= lim || dims.hq >= 65536 || dims.n >= 65536 || dims.n * dims.hkv >= 65536 {
        bail!(Unsupported, "the CUDA backward needs Lq, Lk < 2^30 and N, Hq, N * Hkv < 65536");
    }
    let d = dims.d;
    let bs = cfg.block_size;
    let bn = if d == 128 { 32 } else { bs.min(64) };
    let nw = bs / 16;
    let rows_per_warp = 16 / dims.group;
    let rows_per_tile = 4 * rows_per_warp;
    let ntiles = dims.lq.div_ceil(rows_per_tile);
    let nbw = dims.nb.div_ceil(32);
    let ntw = ntiles.div_ceil(32);
    // kernels/backward.cu: dq_impl and dkv_impl shared-memory carving
    let smem_select = 64 * d * 2 + 2 * 16 * (d + 8) * 4 + 4 * 16 * 20 * 4 + 4 * nbw * 4;
    let smem_dq = 2 * 16 * d * 2 + 16 * (d + 4) * 4 + 4 * bn * d * 2 + 8 * d * 4 + 64 * 4 + 16 * 4 + nbw * 4;
    let smem_dkv = 2 * bs * d * 2 + 4 * 64 * d * 2 + 4 * d * 4 + 9 * 64 * 4 + nw * 64 * 4 + 4 * 64 * 4 + 4 * 4 + 2 * 4 * 64 * 4;
    let optin = dev.props.smem_optin.max(48 * 1024) as usize;
    let smem_max = smem_select.max(smem_dq).max(smem_dkv);
    if smem_max > optin {
        bail!(Unsupported, "the CUDA backward needs {smem_max} bytes of shared memory (nb = {}); this device allows {optin}", dims.nb);
    }
    let b = |parts: &[usize]| crate::params::bytes_of(parts, "CUDA backward workspace");
    let layout = Layout::new(&[
        b(&[dims.n, dims.hkv, dims.nb, d, 4])?,
        b(&[dims.n, dims.hq, dims.lq, 4])?,
        b(&[dims.n, dims.hq, dims.lq, 4])?,
        b(&[dims.n, dims.hkv, ntiles, nbw, 4])?,
        b(&[dims.n, dims.hkv, ntiles, 4, nbw, 4])?,
        b(&[dims.n, dims.hkv, dims.nb, ntw, 4])?,
        b(&[dims.n, dims.hkv, dims.nb, d, 4])?,
    ])?;
    Ok(Plan { bf16, bn, nw, rows_per_warp, rows_per_tile, ntiles, nbw, ntw, smem_select, smem_dq, smem_dkv, layout })
}

pub fn workspace_size(dev: &CudaDevice, cfg: &Config, dims: &AttnDims, dtype: DType) -> Result<usize> {
    Ok(plan(dev, cfg, dims, dtype)?.layout.total)
}

pub fn backward(dev: &CudaDevice, stream: usize, cfg: &Config, dims: &AttnDims, a: &BackwardArgs, ws: Workspace) -> Result<()> {
    let pl = plan(dev, cfg, dims, a.q.dtype)?;
    let lay = &pl.layout;
    ws.check(lay.total)?;
    if dims.n == 0 || dims.hq == 0 || (dims.lq == 0 && dims.lk == 0) {
        return Ok(());
    }
    let _g = dev.bind()?;
    let kern = dev.kernels()?;
    let scratch = DeviceScratch::new(ws, lay.total, stream, "cuMemAllocAsync (backward workspace)")?;
    let stream = stream as sys::CUstream;
    let base = scratch.base;
    let kbar = base + lay.offsets[0] as u64;
    let ty = if pl.bf16 { "bf16" } else { "f16" };
    let (sigma, sigma_c) = cfg.scales(dims.d);
    let z3 = [0i64; 3];

    // Pooled keys (fp32) with the forward's pool kernel: the values the forward used.
    if dims.nb > 0 {
        unsafe { launch_pool(kern, pl.bf16, cfg, dims, &a.k, a.pooled_k.as_ref(), kbar, stream)? };
    }
    let aligned16 = [&a.q, &a.k, &a.v, &a.d_o].iter().all(|t| rows_aligned(t, 16));
    let p = BwdParams {
        q: a.q.ptr as u64,
        k: a.k.ptr as u64,
        v: a.v.ptr as u64,
        o: a.o.ptr as u64,
        dout: a.d_o.ptr as u64,
        lse: a.lse.ptr as u64,
        tau: a.tau.ptr as u64,
        kbar,
        alpha: a.head_alpha.map_or(0, |t| t.ptr as u64),
        dq: a.dq.ptr as u64,
        dk: a.dk.ptr as u64,
        dv: a.dv.ptr as u64,
        dpooled: a.d_pooled_k.map_or(0, |t| t.ptr as u64),
        drow: base + lay.offsets[1] as u64,
        crow: base + lay.offsets[2] as u64,
        mask: base + lay.offsets[3] as u64,
        wmask: base + lay.offsets[4] as u64,
        maskt: base + lay.offsets[5] as u64,
        kbhl: base + lay.offsets[6] as u64,
        q_s: s3(&a.q),
        k_s: s3(&a.k),
        v_s: s3(&a.v),
        o_s: s3(&a.o),
        do_s: s3(&a.d_o),
        dq_s: s3(&a.dq),
        dk_s: s3(&a.dk),
        dv_s: s3(&a.dv),
        dp_s: a.d_pooled_k.as_ref().map_or(z3, s3),
        lse_s: s3(&a.lse),
        tau_s: s3(&a.tau),
        alpha_s: a.head_alpha.map_or(0, |t| t.strides[0] as i64),
        n: dims.n as i32,
        lq: dims.lq as i32,
        lk: dims.lk as i32,
        hq: dims.hq as i32,
        hkv: dims.hkv as i32,
        g: dims.group as i32,
        d: dims.d as i32,
        nb: dims.nb as i32,
        nbw: pl.nbw as i32,
        ntiles: pl.ntiles as i32,
        ntw: pl.ntw as i32,
        bs: cfg.block_size as i32,
        bs_log2: cfg.block_size.trailing_zeros() as i32,
        n_local: cfg.n_local as i32,
        causal: cfg.causal as i32,
        per_head: (cfg.selection == Selection::PerHead) as i32,
        rows_per_warp: pl.rows_per_warp as i32,
        rows_per_tile: pl.rows_per_tile as i32,
        aligned16: aligned16 as i32,
        pad0: 0,
        alpha_default: cfg.alpha,
        scale: sigma as f32,
        coarse_scale: sigma_c as f32,
        pad: 0.0,
    };
    let (n, hkv) = (dims.n, dims.hkv);
    unsafe {
        if dims.lq > 0 {
            let f = kern.function(if pl.bf16 { "dash_bwd_prep_bf16" } else { "dash_bwd_prep_f16" })?;
            launch(f, ((dims.lq * dims.hq).div_ceil(8), n, 1), 256, 0, stream, &p, "cuLaunchKernel(dash_bwd_prep)")?;
            let f = kern.function(match (pl.bf16, dims.d) {
                (true, 64) => "dash_bwd_select_bf16_d64",
                (true, _) => "dash_bwd_select_bf16_d128",
                (false, 64) => "dash_bwd_select_f16_d64",
                (false, _) => "dash_bwd_select_f16_d128",
            })?;
            if dims.nb > 0 {
                let split = kern.function(if pl.bf16 { "dash_bwd_split_bf16" } else { "dash_bwd_split_f16" })?;
                launch(split, (dims.nb, hkv, n), dims.d / 2, 0, stream, &p, "cuLaunchKernel(dash_bwd_split)")?;
            }
            launch(f, (pl.ntiles, hkv, n), 128, pl.smem_select, stream, &p, "cuLaunchKernel(dash_bwd_select)")?;
            let f = kern.function(dq_name(ty, dims.d, pl.bn))?;
            launch(f, (4 * pl.ntiles, hkv, n), 32, pl.smem_dq, stream, &p, "cuLaunchKernel(dash_bwd_dq)")?;
            if pl.nbw > 0 {
                let f = kern.function("dash_bwd_transpose")?;
                launch(f, (pl.ntw, pl.nbw, n * hkv), 32, 0, stream, &p, "cuLaunchKernel(dash_bwd_transpose)")?;
            }
        }
        if dims.nb > 0 {
            let f = kern.function(dkv_name(ty, dims.d, pl.nw))?;
            launch(f, (dims.nb, hkv, n), pl.nw * 32, pl.smem_dkv, stream, &p, "cuLaunchKernel(dash_bwd_dkv)")?;
        }
    }
    drop(scratch);
    Ok(())
}

fn dq_name(ty: &str, d: usize, bn: usize) -> &'static str {
    match (ty, d, bn) {
        ("bf16", 64, 64) => "dash_bwd_dq_bf16_d64_bn64",
        ("bf16", 64, _) => "dash_bwd_dq_bf16_d64_bn32",
        ("bf16", _, _) => "dash_bwd_dq_bf16_d128_bn32",
        (_, 64, 64) => "dash_bwd_dq_f16_d64_bn64",
        (_, 64, _) => "dash_bwd_dq_f16_d64_bn32",
        (_, _, _) => "dash_bwd_dq_f16_d128_bn32",
    }
}

fn dkv_name(ty: &str, d: usize, nw: usize) -> &'static str {
    match (ty, d, nw) {
        ("bf16", 64, 2) => "dash_bwd_dkv_bf16_d64_b2",
        ("bf16", 64, 4) => "dash_bwd_dkv_bf16_d64_b4",
        ("bf16", 64, _) => "dash_bwd_dkv_bf16_d64_b8",
        ("bf16", _, 2) => "dash_bwd_dkv_bf16_d128_b2",
        ("bf16", _, 4) => "dash_bwd_dkv_bf16_d128_b4",
        ("bf16", _, _) => "dash_bwd_dkv_bf16_d128_b8",
        (_, 64, 2) => "dash_bwd_dkv_f16_d64_b2",
        (_, 64, 4) => "dash_bwd_dkv_f16_d64_b4",
        (_, 64, _) => "dash_bwd_dkv_f16_d64_b8",
        (_, _, 2) => "dash_bwd_dkv_f16_d128_b2",
        (_, _, 4) => "dash_bwd_dkv_f16_d128_b4",
        (_, _, _) => "dash_bwd_dkv_f16_d128_b8",
    }
}
