//! CUDA forward (SPEC 3): planning, workspace layout and the three launches
//! (kernels/forward.cu: pool -> coarse -> fine), all on the caller's stream.


use cudarc::driver::sys;

use super::launch::{launch, DeviceScratch};
use super::CudaDevice;
use crate::dtype::DType;
use crate::error::{bail, Error, Result};
use crate::params::{AttnDims, Config, ForwardArgs, Selection, Tensor, Workspace, WORKSPACE_ALIGN};

/// Which stages a forward runs (bit 0 pool, bit 1 coarse, bit 2 fine); benchmarks clear
/// bits to time the stages apart. Anything but 7 leaves outputs incomplete.
pub static DEBUG_STAGES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(7);

/// Mirror of `struct Params` in kernels/forward.cu (same order, same types).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub pooled: u64,
    pub alpha: u64,
    pub lse: u64,
    pub tau_out: u64,
    pub kbar: u64,
    pub tau_ws: u64,
    pub mask: u64,
    pub q_s: [i64; 3],
    pub k_s: [i64; 3],
    pub v_s: [i64; 3],
    pub o_s: [i64; 3],
    pub p_s: [i64; 3],
    pub lse_s: [i64; 3],
    pub tau_s: [i64; 3],
    pub alpha_s: i64,
    pub n: i32,
    pub lq: i32,
    pub lk: i32,
    pub hq: i32,
    pub hkv: i32,
    pub g: i32,
    pub d: i32,
    pub nb: i32,
    pub nbw: i32,
    pub ntiles: i32,
    pub bs: i32,
    pub n_local: i32,
    pub causal: i32,
    pub per_head: i32,
    pub rows_per_warp: i32,
    pub rows_per_tile: i32,
    pub tiles_per_coarse: i32,
    pub nb_pad: i32,
    pub qkv_aligned16: i32,
    pub o_aligned4: i32,
    pub bs_log2: i32,
    pub pad1: i32,
    pub alpha_default: f32,
    pub scale: f32,
    pub coarse_scale: f32,
    pub pad2: f32,
}

const _: () = assert!(std::mem::size_of::<KernelParams>() == 368);

/// Launch geometry of one forward call.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub bf16: bool,
    pub d: usize,
    pub bn: usize,
    pub rows_per_warp: usize,
    pub rows_per_tile: usize,
    pub ntiles: usize,
    pub tiles_per_coarse: usize,
    pub coarse_rpw: usize,
    pub nbw: usize,
    pub nb_pad: usize,
    pub units: usize,
    pub coarse_smem: usize,
    pub fine_smem: usize,
    /// Workspace byte offsets: kbar, tau, mask; and the total.
    pub ws_kbar: usize,
    pub ws_tau: usize,
    pub ws_mask: usize,
    pub ws_total: usize,
}

fn round_up(x: usize) -> usize {
    x.div_ceil(WORKSPACE_ALIGN) * WORKSPACE_ALIGN
}

fn mul(parts: &[usize]) -> Result<usize> {
    crate::params::bytes_of(parts, "CUDA forward workspace")
}

pub fn plan(dev: &CudaDevice, cfg: &Config, dims: &AttnDims, dtype: DType) -> Result<Plan> {
    let bf16 = match dtype {
        DType::BF16 => true,
        DType::F16 => false,
        d => bail!(Unsupported, "the CUDA forward takes bf16 or f16 tensors, not {} (use the CPU backend)", d.name()),
    };
    if dims.d != 64 && dims.d != 128 {
        bail!(Unsupported, "the CUDA forward supports head dimension 64 or 128, not {}", dims.d);
    }
    if !matches!(cfg.block_size, 32 | 64 | 128) {
        bail!(Unsupported, "the CUDA forward supports block_size 32, 64 or 128, not {}", cfg.block_size);
    }
    if dims.group == 0 || dims.group > 16 {
        bail!(Unsupported, "the CUDA forward supports GQA group sizes 1..=16, not {}", dims.group);
    }
    let lim = 1usize << 30;
    if dims.lq >= lim || dims.lk >= lim || dims.hq >= 65536 || dims.hkv >= 65536 || dims.n >= 65536 || cfg.n_local >= lim {
        bail!(Unsupported, "the CUDA forward needs Lq, Lk < 2^30 and N, Hq, Hkv < 65536");
    }
    let d = dims.d;
    let bn = cfg.block_size.min(64);
    let g = dims.group;
    let rows_per_warp = 16 / g;
    let rows_per_tile = 4 * rows_per_warp;
    let ntiles = dims.lq.div_ceil(rows_per_tile);
    let upr = if cfg.selection == Selection::PerHead { g } else { 1 };
    let urt = rows_per_tile * upr;
    let tiles_per_coarse = (64 / urt).max(1);
    let nbw = dims.nb.div_ceil(32);
    let nb_pad = nbw * 32;
    let units = if cfg.selection == Selection::PerHead { dims.hq } else { dims.hkv };
    let optin = dev.props.smem_optin.max(48 * 1024) as usize;
    // kernels/forward.cu coarse_impl: sZ [4 RB, nb_pad] + sQ [4 RB, D + 4] + sKb [256, 36]
    // + compact lists 8 x 256 x (f32, i32) + masks
    let coarse_bytes = |rb: usize| (4 * rb * nb_pad + 4 * rb * (d + 4) + 256 * 36 + 8 * 256 * 2) * 4 + tiles_per_coarse * nbw * 4;
    let coarse_rpw = match [8usize, 4, 2].into_iter().find(|&r| coarse_bytes(r) <= optin) {
        Some(r) => r,
        None => bail!(Unsupported, "the CUDA forward's coarse stage holds a row of {} block scores in shared memory; this device allows {optin} bytes (too many key blocks: raise block_size)", dims.nb),
    };
    let fine_smem = (64 * d + 4 * bn * d) * 2 + (2 * d + 64) * 4 + nbw * 4;
    if fine_smem > optin {
        bail!(Unsupported, "the CUDA forward needs {fine_smem} bytes of shared memory; this device allows {optin}");
    }
    let kbar = round_up(mul(&[dims.n, dims.hkv, dims.nb, d, 4])?);
    let tau = round_up(mul(&[dims.n, units, dims.lq, 4])?);
    let mask = round_up(mul(&[dims.n, dims.hkv, ntiles, nbw, 4])?);
    let total = kbar.checked_add(tau).and_then(|x| x.checked_add(mask)).ok_or_else(|| Error::Overflow("CUDA forward workspace size overflows".into()))?;
    Ok(Plan {
        bf16,
        d,
        bn,
        rows_per_warp,
        rows_per_tile,
        ntiles,
        tiles_per_coarse,
        coarse_rpw,
        nbw,
        nb_pad,
        units,
        coarse_smem: coarse_bytes(coarse_rpw),
        fine_smem,
        ws_kbar: 0,
        ws_tau: kbar,
        ws_mask: kbar + tau,
        ws_total: total,
    })
}

pub fn workspace_size(dev: &CudaDevice, cfg: &Config, dims: &AttnDims, dtype: DType) -> Result<usize> {
    Ok(plan(dev, cfg, dims, dtype)?.ws_total)
}

fn strides3(t: &Tensor) -> [i64; 3] {
    [t.strides[0] as i64, t.strides[1] as i64, t.strides[2] as i64]
}

/// Whether every row start of a [N, L, H, D] tensor is `align`-byte aligned.
pub(crate) fn rows_aligned(t: &Tensor, align: usize) -> bool {
    let es = t.dtype.size();
    if !t.ptr.is_multiple_of(align) {
        return false;
    }
    (0..3).all(|i| t.shape[i] <= 1 || (t.strides[i] * es).is_multiple_of(align))
}

/// The forward on the device: tensors are device pointers, launches go to `stream`.
pub fn forward(dev: &CudaDevice, stream: usize, cfg: &Config, dims: &AttnDims, a: &ForwardArgs, ws: Workspace) -> Result<()> {
    let pl = plan(dev, cfg, dims, a.q.dtype)?;
    ws.check(pl.ws_total)?;
    if dims.n == 0 || dims.lq == 0 || dims.hq == 0 {
        return Ok(());
    }
    let _g = dev.bind()?;
    let kern = dev.kernels()?;
    let scratch = DeviceScratch::new(ws, pl.ws_total, stream, "cuMemAllocAsync (forward workspace)")?;
    let stream = stream as sys::CUstream;
    let base = scratch.base;

    let (sigma, sigma_c) = cfg.scales(dims.d);
    let z3 = [0i64; 3];
    let p = KernelParams {
        q: a.q.ptr as u64,
        k: a.k.ptr as u64,
        v: a.v.ptr as u64,
        o: a.o.ptr as u64,
        pooled: a.pooled_k.map_or(0, |t| t.ptr as u64),
        alpha: a.head_alpha.map_or(0, |t| t.ptr as u64),
        lse: a.lse.map_or(0, |t| t.ptr as u64),
        tau_out: a.tau.map_or(0, |t| t.ptr as u64),
        kbar: base + pl.ws_kbar as u64,
        tau_ws: base + pl.ws_tau as u64,
        mask: base + pl.ws_mask as u64,
        q_s: strides3(&a.q),
        k_s: strides3(&a.k),
        v_s: strides3(&a.v),
        o_s: strides3(&a.o),
        p_s: a.pooled_k.as_ref().map_or(z3, strides3),
        lse_s: a.lse.as_ref().map_or(z3, strides3),
        tau_s: a.tau.as_ref().map_or(z3, strides3),
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
        bs: cfg.block_size as i32,
        n_local: cfg.n_local as i32,
        causal: cfg.causal as i32,
        per_head: (cfg.selection == Selection::PerHead) as i32,
        rows_per_warp: pl.rows_per_warp as i32,
        rows_per_tile: pl.rows_per_tile as i32,
        tiles_per_coarse: pl.tiles_per_coarse as i32,
        nb_pad: pl.nb_pad as i32,
        qkv_aligned16: (rows_aligned(&a.q, 16) && rows_aligned(&a.k, 16) && rows_aligned(&a.v, 16)) as i32,
        o_aligned4: rows_aligned(&a.o, 4) as i32,
        bs_log2: cfg.block_size.trailing_zeros() as i32,
        pad1: 0,
        alpha_default: cfg.alpha,
        scale: sigma as f32,
        coarse_scale: sigma_c as f32,
        pad2: 0.0,
    };
    let ty = if pl.bf16 { "bf16" } else { "f16" };
    let (n, hkv) = (dims.n, dims.hkv);
    let stages = DEBUG_STAGES.load(std::sync::atomic::Ordering::Relaxed);
    unsafe {
        if dims.nb > 0 && stages & 1 != 0 {
            launch_pool(kern, pl.bf16, cfg, dims, &a.k, a.pooled_k.as_ref(), p.kbar, stream)?;
        }
        if stages & 2 != 0 {
            let f = kern.function(coarse_name(ty, pl.d, pl.coarse_rpw))?;
            launch(f, (pl.ntiles.div_ceil(pl.tiles_per_coarse), hkv, n), 256, pl.coarse_smem, stream, &p, "cuLaunchKernel(dash_coarse)")?;
        }
        if stages & 4 != 0 {
            let f = kern.function(fine_name(ty, pl.d, pl.bn))?;
            launch(f, (pl.ntiles, hkv, n), 128, pl.fine_smem, stream, &p, "cuLaunchKernel(dash_fine)")?;
        }
    }
    drop(scratch);
    Ok(())
}

/// Pooled keys kbar [N, Hkv, nb, D] fp32 at `kbar` (mean of each block's keys, or the
/// caller's pooled keys converted) with `dash_pool_*`: the forward's first stage, and the
/// backward's, so both see the same values. The kernel reads only the fields set here.
///
/// # Safety
/// `k`, `pooled` and `kbar` must be device memory of the shapes `dims` describes.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_pool(kern: &super::module::Kernels, bf16: bool, cfg: &Config, dims: &AttnDims, k: &Tensor, pooled: Option<&Tensor>, kbar: u64, stream: sys::CUstream) -> Result<()> {
    let p = KernelParams {
        k: k.ptr as u64,
        pooled: pooled.map_or(0, |t| t.ptr as u64),
        kbar,
        k_s: strides3(k),
        p_s: pooled.map_or([0; 3], strides3),
        n: dims.n as i32,
        lq: dims.lq as i32,
        lk: dims.lk as i32,
        hq: dims.hq as i32,
        hkv: dims.hkv as i32,
        g: dims.group as i32,
        d: dims.d as i32,
        nb: dims.nb as i32,
        bs: cfg.block_size as i32,
        bs_log2: cfg.block_size.trailing_zeros() as i32,
        ..KernelParams::default()
    };
    let f = kern.function(if bf16 { "dash_pool_bf16" } else { "dash_pool_f16" })?;
    launch(f, (dims.nb, dims.hkv, dims.n), dims.d, 0, stream, &p, "cuLaunchKernel(dash_pool)")
}

fn coarse_name(ty: &str, d: usize, rb: usize) -> &'static str {
    match (ty, d, rb) {
        ("bf16", 64, 2) => "dash_coarse_bf16_d64_r2",
        ("bf16", 64, 4) => "dash_coarse_bf16_d64_r4",
        ("bf16", 64, _) => "dash_coarse_bf16_d64_r8",
        ("bf16", _, 2) => "dash_coarse_bf16_d128_r2",
        ("bf16", _, 4) => "dash_coarse_bf16_d128_r4",
        ("bf16", _, _) => "dash_coarse_bf16_d128_r8",
        (_, 64, 2) => "dash_coarse_f16_d64_r2",
        (_, 64, 4) => "dash_coarse_f16_d64_r4",
        (_, 64, _) => "dash_coarse_f16_d64_r8",
        (_, _, 2) => "dash_coarse_f16_d128_r2",
        (_, _, 4) => "dash_coarse_f16_d128_r4",
        (_, _, _) => "dash_coarse_f16_d128_r8",
    }
}

fn fine_name(ty: &str, d: usize, bn: usize) -> &'static str {
    match (ty, d, bn) {
        ("bf16", 64, 32) => "dash_fine_bf16_d64_bn32",
        ("bf16", 64, _) => "dash_fine_bf16_d64_bn64",
        ("bf16", _, 32) => "dash_fine_bf16_d128_bn32",
        ("bf16", _, _) => "dash_fine_bf16_d128_bn64",
        (_, 64, 32) => "dash_fine_f16_d64_bn32",
        (_, 64, _) => "dash_fine_f16_d64_bn64",
        (_, _, 32) => "dash_fine_f16_d128_bn32",
        (_, _, _) => "dash_fine_f16_d128_bn64",
    }
}
