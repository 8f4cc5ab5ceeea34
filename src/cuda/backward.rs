//! CUDA backward (SPEC 4), kernels/backward.cu: pooled keys (the forward's pool kernel),
//! D_r = <dO, o>, dq per query row, then dk/dv/d kbar per key block — each accumulator
//! with a single owner, so the result is bitwise deterministic (no atomics).

use cudarc::driver::sys;

use super::forward::KernelParams;
use super::launch::{launch, s3, DeviceScratch, Layout};
use super::CudaDevice;
use crate::dtype::DType;
use crate::error::{bail, Result};
use crate::params::{AttnDims, BackwardArgs, Config, Selection, Workspace};

/// Mirror of `struct BwdParams` in kernels/backward.cu.
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
    head_alpha: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    dpooled: u64,
    drow: u64,
    crow: u64,
    sq: [i64; 3],
    sk: [i64; 3],
    sv: [i64; 3],
    so: [i64; 3],
    sdo: [i64; 3],
    sdq: [i64; 3],
    sdk: [i64; 3],
    sdv: [i64; 3],
    sdp: [i64; 3],
    slse: [i64; 3],
    stau: [i64; 3],
    ha_stride: i64,
    n: i32,
    lq: i32,
    lk: i32,
    hq: i32,
    hkv: i32,
    d: i32,
    bs: i32,
    nb: i32,
    n_local: i32,
    causal: i32,
    per_head: i32,
    group: i32,
    alpha: f32,
    sigma: f32,
    sigma_c: f32,
}

const _: () = assert!(std::mem::size_of::<BwdParams>() == 456);

fn layout(dims: &AttnDims) -> Result<Layout> {
    let b = |parts: &[usize]| crate::params::bytes_of(parts, "CUDA backward workspace");
    Layout::new(&[b(&[dims.n, dims.hkv, dims.nb, dims.d, 4])?, b(&[dims.n, dims.hq, dims.lq, 4])?, b(&[dims.n, dims.hq, dims.lq, 4])?])
}

fn smem(cfg: &Config, dims: &AttnDims) -> (usize, usize) {
    let (g, d, bs) = (dims.group, dims.d, cfg.block_size);
    ((3 * g * d + 2 * d + dims.nb + bs + 32) * 4, (2 * bs * d + 2 * g * d + d + 32) * 4)
}

fn check_supported(dev: &CudaDevice, cfg: &Config, dims: &AttnDims, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        bail!(Unsupported, "the CUDA backward takes bf16 or f16 tensors, not {}", dtype.name());
    }
    if dims.lq >= 1 << 30 || dims.lk >= 1 << 30 || dims.hq > 65535 || dims.n > 65535 {
        bail!(Unsupported, "the CUDA backward needs Lq, Lk < 2^30 and N, Hq <= 65535");
    }
    let (a, b) = smem(cfg, dims);
    let optin = dev.props.smem_optin.max(48 * 1024) as usize;
    if a.max(b) > optin {
        bail!(Unsupported, "the CUDA backward needs {} bytes of shared memory for D = {}, G = {}, B = {}, nb = {}; this device allows {optin}", a.max(b), dims.d, dims.group, cfg.block_size, dims.nb);
    }
    Ok(())
}

pub fn workspace_size(dev: &CudaDevice, cfg: &Config, dims: &AttnDims, dtype: DType) -> Result<usize> {
    check_supported(dev, cfg, dims, dtype)?;
    Ok(layout(dims)?.total)
}

pub fn backward(dev: &CudaDevice, stream: usize, cfg: &Config, dims: &AttnDims, a: &BackwardArgs, ws: Workspace) -> Result<()> {
    check_supported(dev, cfg, dims, a.q.dtype)?;
    let lay = layout(dims)?;
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
    let sfx = if a.q.dtype == DType::BF16 { "bf16" } else { "f16" };
    let (sigma, sigma_c) = cfg.scales(dims.d);

    // Pooled keys (fp32) with the forward's pool kernel: same values the forward used.
    if dims.nb > 0 {
        let z3 = [0i64; 3];
        let pp = KernelParams {
            k: a.k.ptr as u64,
            pooled: a.pooled_k.map_or(0, |t| t.ptr as u64),
            kbar,
            k_s: s3(&a.k),
            p_s: a.pooled_k.as_ref().map_or(z3, s3),
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
        let f = kern.function(if sfx == "bf16" { "dash_pool_bf16" } else { "dash_pool_f16" })?;
        unsafe { launch(f, (dims.nb, dims.hkv, dims.n), dims.d, 0, stream, &pp, "cuLaunchKernel(dash_pool)")? };
    }
    let z3 = [0i64; 3];
    let p = BwdParams {
        q: a.q.ptr as u64,
        k: a.k.ptr as u64,
        v: a.v.ptr as u64,
        o: a.o.ptr as u64,
        dout: a.d_o.ptr as u64,
        lse: a.lse.ptr as u64,
        tau: a.tau.ptr as u64,
        kbar,
        head_alpha: a.head_alpha.map_or(0, |t| t.ptr as u64),
        dq: a.dq.ptr as u64,
        dk: a.dk.ptr as u64,
        dv: a.dv.ptr as u64,
        dpooled: a.d_pooled_k.map_or(0, |t| t.ptr as u64),
        drow: base + lay.offsets[1] as u64,
        crow: base + lay.offsets[2] as u64,
        sq: s3(&a.q),
        sk: s3(&a.k),
        sv: s3(&a.v),
        so: s3(&a.o),
        sdo: s3(&a.d_o),
        sdq: s3(&a.dq),
        sdk: s3(&a.dk),
        sdv: s3(&a.dv),
        sdp: a.d_pooled_k.as_ref().map_or(z3, s3),
        slse: s3(&a.lse),
        stau: s3(&a.tau),
        ha_stride: a.head_alpha.map_or(0, |t| t.strides[0] as i64),
        n: dims.n as i32,
        lq: dims.lq as i32,
        lk: dims.lk as i32,
        hq: dims.hq as i32,
        hkv: dims.hkv as i32,
        d: dims.d as i32,
        bs: cfg.block_size as i32,
        nb: dims.nb as i32,
        n_local: cfg.n_local.min(1 << 30) as i32,
        causal: cfg.causal as i32,
        per_head: (cfg.selection == Selection::PerHead) as i32,
        group: dims.group as i32,
        alpha: cfg.alpha,
        sigma: sigma as f32,
        sigma_c: sigma_c as f32,
    };
    let (smem_dq, smem_dkv) = smem(cfg, dims);
    unsafe {
        if dims.lq > 0 {
            let f = kern.function(if sfx == "bf16" { "dash_bwd_prep_bf16" } else { "dash_bwd_prep_f16" })?;
            launch(f, (dims.lq, dims.hq, dims.n), 32, 0, stream, &p, "cuLaunchKernel(dash_bwd_prep)")?;
            let f = kern.function(if sfx == "bf16" { "dash_bwd_dq_bf16" } else { "dash_bwd_dq_f16" })?;
            launch(f, (dims.lq, dims.hkv, dims.n), 128, smem_dq, stream, &p, "cuLaunchKernel(dash_bwd_dq)")?;
        }
        if dims.nb > 0 {
            let f = kern.function(if sfx == "bf16" { "dash_bwd_dkv_bf16" } else { "dash_bwd_dkv_f16" })?;
            launch(f, (dims.nb, dims.hkv, dims.n), cfg.block_size.max(32), smem_dkv, stream, &p, "cuLaunchKernel(dash_bwd_dkv)")?;
        }
    }
    Ok(())
}
