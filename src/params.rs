//! Validated, typed Rust view of a call: tensors with checked shapes/strides/dtypes and the
//! attention config. The FFI layer converts C descriptors into these; backends trust them.

use crate::dtype::DType;
use crate::error::{bail, Error, Result};
use crate::ffi::types::*;

pub const MAX_RANK: usize = DASHATTN_MAX_RANK;
/// Largest head dimension any backend accepts.
pub const MAX_HEAD_DIM: usize = 256;
/// Largest number of query tokens per sequence in one decode call.
pub const MAX_DECODE_QLEN: usize = 16;
/// Required alignment of a caller-provided workspace.
pub const WORKSPACE_ALIGN: usize = 256;

/// A validated strided tensor view (shape and element strides, all non-negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub ptr: usize,
    pub dtype: DType,
    pub rank: usize,
    pub shape: [usize; MAX_RANK],
    pub strides: [usize; MAX_RANK],
}

impl Tensor {
    /// Validates a C descriptor: non-null, dtype and rank in range, non-negative shape and
    /// strides, byte extent without overflow, non-null aligned data when non-empty.
    ///
    /// # Safety
    /// `t` must be NULL or point to a readable dashattn_tensor.
    pub unsafe fn from_ffi(name: &str, t: *const dashattn_tensor) -> Result<Tensor> {
        if t.is_null() {
            bail!(NullPointer, "{name} is NULL");
        }
        let raw = std::ptr::read_unaligned(t);
        Tensor::from_raw(name, &raw)
    }

    /// Like from_ffi but NULL means "not given".
    ///
    /// # Safety
    /// As from_ffi.
    pub unsafe fn from_ffi_opt(name: &str, t: *const dashattn_tensor) -> Result<Option<Tensor>> {
        if t.is_null() {
            Ok(None)
        } else {
            Tensor::from_ffi(name, t).map(Some)
        }
    }

    pub fn from_raw(name: &str, raw: &dashattn_tensor) -> Result<Tensor> {
        let dtype = DType::from_raw(name, raw.dtype)?;
        if raw.rank < 1 || raw.rank as usize > MAX_RANK {
            bail!(InvalidShape, "{name}.rank = {} (must be 1..={MAX_RANK})", raw.rank);
        }
        let rank = raw.rank as usize;
        let mut shape = [0usize; MAX_RANK];
        let mut strides = [0usize; MAX_RANK];
        for i in 0..rank {
            if raw.shape[i] < 0 {
                bail!(InvalidShape, "{name}.shape[{i}] = {} is negative", raw.shape[i]);
            }
            if raw.strides[i] < 0 {
                bail!(InvalidStride, "{name}.strides[{i}] = {} is negative", raw.strides[i]);
            }
            shape[i] = usize::try_from(raw.shape[i])
                .map_err(|_| Error::Overflow(format!("{name}.shape[{i}] does not fit in size_t")))?;
            strides[i] = usize::try_from(raw.strides[i])
                .map_err(|_| Error::Overflow(format!("{name}.strides[{i}] does not fit in size_t")))?;
        }
        let t = Tensor { ptr: raw.data as usize, dtype, rank, shape, strides };
        let bytes = t.byte_extent(name)?;
        if t.numel_checked(name)? > 0 {
            if t.ptr == 0 {
                bail!(NullPointer, "{name}.data is NULL but the tensor has elements");
            }
            if !t.ptr.is_multiple_of(dtype.size()) {
                bail!(Misaligned, "{name}.data is not aligned to its {}-byte elements", dtype.size());
            }
            if t.ptr.checked_add(bytes).is_none() || bytes > isize::MAX as usize {
                bail!(Overflow, "{name} spans {bytes} bytes past its data pointer");
            }
        }
        Ok(t)
    }

    /// A contiguous row-major view of host memory (used by Rust callers and tests).
    pub fn contiguous(ptr: *const u8, dtype: DType, shape: &[usize]) -> Tensor {
        assert!(!shape.is_empty() && shape.len() <= MAX_RANK);
        let mut s = [0usize; MAX_RANK];
        let mut st = [0usize; MAX_RANK];
        let mut acc = 1usize;
        for i in (0..shape.len()).rev() {
            s[i] = shape[i];
            st[i] = acc;
            acc *= shape[i].max(1);
        }
        Tensor { ptr: ptr as usize, dtype, rank: shape.len(), shape: s, strides: st }
    }

    pub fn dims(&self) -> &[usize] {
        &self.shape[..self.rank]
    }

    fn numel_checked(&self, name: &str) -> Result<usize> {
        self.dims().iter().try_fold(1usize, |a, &s| a.checked_mul(s)).ok_or_else(|| {
            Error::Overflow(format!("{name}: element count of shape {:?} overflows", self.dims()))
        })
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// Bytes from the data pointer to the end of the last element (0 when empty).
    pub fn byte_extent(&self, name: &str) -> Result<usize> {
        if self.numel_checked(name)? == 0 {
            return Ok(0);
        }
        let ovf = || Error::Overflow(format!("{name}: byte extent of shape {:?} strides {:?} overflows", self.dims(), &self.strides[..self.rank]));
        let mut span = 1usize;
        for i in 0..self.rank {
            let step = (self.shape[i] - 1).checked_mul(self.strides[i]).ok_or_else(ovf)?;
            span = span.checked_add(step).ok_or_else(ovf)?;
        }
        span.checked_mul(self.dtype.size()).ok_or_else(ovf)
    }

    pub fn expect_dtype(&self, name: &str, allowed: &[DType]) -> Result<()> {
        if !allowed.contains(&self.dtype) {
            let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
            bail!(InvalidDtype, "{name}.dtype is {}, expected one of {:?}", self.dtype.name(), names);
        }
        Ok(())
    }

    pub fn expect_same_dtype(&self, name: &str, other: &Tensor, other_name: &str) -> Result<()> {
        if self.dtype != other.dtype {
            bail!(InvalidDtype, "{name}.dtype is {} but {other_name}.dtype is {}", self.dtype.name(), other.dtype.name());
        }
        Ok(())
    }

    pub fn expect_rank(&self, name: &str, rank: usize, layout: &str) -> Result<()> {
        if self.rank != rank {
            bail!(InvalidShape, "{name} has rank {}, expected {rank} ({layout})", self.rank);
        }
        Ok(())
    }

    pub fn expect_shape(&self, name: &str, shape: &[usize], layout: &str) -> Result<()> {
        self.expect_rank(name, shape.len(), layout)?;
        if self.dims() != shape {
            bail!(InvalidShape, "{name} has shape {:?}, expected {:?} ({layout})", self.dims(), shape);
        }
        Ok(())
    }

    /// The last dimension must be contiguous (stride 1) unless it has extent <= 1.
    pub fn expect_inner_contiguous(&self, name: &str) -> Result<()> {
        let last = self.rank - 1;
        if self.shape[last] > 1 && self.strides[last] != 1 {
            bail!(InvalidStride, "{name}.strides[{last}] = {} (the last dimension must be contiguous)", self.strides[last]);
        }
        Ok(())
    }

    /// Outputs must not alias themselves: sorted by stride, each dimension must step past
    /// the whole extent of the smaller ones.
    pub fn expect_non_overlapping(&self, name: &str) -> Result<()> {
        let mut dims: Vec<(usize, usize)> =
            (0..self.rank).filter(|&i| self.shape[i] > 1).map(|i| (self.strides[i], self.shape[i])).collect();
        dims.sort();
        let mut need = 1usize;
        for (stride, extent) in dims {
            if stride < need {
                bail!(InvalidStride, "{name} is an output whose strides {:?} make elements overlap", &self.strides[..self.rank]);
            }
            need = stride.saturating_mul(extent);
        }
        Ok(())
    }

    /// Element offset of a multi-index (rank must match).
    #[inline]
    pub fn offset(&self, idx: &[usize]) -> usize {
        let mut o = 0;
        for (i, &x) in idx.iter().enumerate() {
            o += x * self.strides[i];
        }
        o
    }

    #[inline]
    pub fn ptr_at<T>(&self, idx: &[usize]) -> *mut T {
        (self.ptr as *mut T).wrapping_add(self.offset(idx))
    }

    /// Whether two tensors may share an element. Disjoint byte ranges never do; two views
    /// with the same dtype, shape and strides (e.g. dq, dk, dv inside one packed dqkv
    /// buffer) are checked exactly; anything else with intersecting ranges counts as
    /// overlapping.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        let (a0, a1) = (self.ptr, self.ptr + self.byte_extent("").unwrap_or(0));
        let (b0, b1) = (other.ptr, other.ptr + other.byte_extent("").unwrap_or(0));
        if !(a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1) {
            return false;
        }
        let same_layout = self.dtype == other.dtype && self.dims() == other.dims() && self.strides[..self.rank] == other.strides[..other.rank];
        let es = self.dtype.size();
        let delta = b0 as i128 - a0 as i128;
        if !same_layout || delta % es as i128 != 0 {
            return true;
        }
        // Is delta (in elements) = sum_k c_k * stride_k with |c_k| < shape_k? Dimensions by
        // decreasing stride; at each, only floor and ceil of the quotient can work.
        let mut dims: Vec<(i128, i128)> = (0..self.rank).filter(|&k| self.shape[k] > 1).map(|k| (self.strides[k] as i128, self.shape[k] as i128)).collect();
        dims.sort_by_key(|x| std::cmp::Reverse(x.0));
        fn reach(rem: i128, dims: &[(i128, i128)]) -> bool {
            match dims.split_first() {
                None => rem == 0,
                Some((&(s, n), rest)) => {
                    if s == 0 {
                        return reach(rem, rest);
                    }
                    let f = rem.div_euclid(s);
                    [f, f + 1].iter().any(|&c| c.abs() < n && reach(rem - c * s, rest))
                }
            }
        }
        reach(delta / es as i128, &dims)
    }
}

/// Selection granularity (SPEC 3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    PerGroup,
    PerHead,
}

/// Accumulation precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

/// A validated attention config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub block_size: usize,
    pub n_local: usize,
    pub causal: bool,
    pub selection: Selection,
    pub precision: Precision,
    pub alpha: f32,
    pub scale: f32,
    pub coarse_scale: f32,
    pub deterministic: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            block_size: 64,
            n_local: 1,
            causal: true,
            selection: Selection::PerGroup,
            precision: Precision::F32,
            alpha: 1.5,
            scale: 0.0,
            coarse_scale: 0.0,
            deterministic: true,
        }
    }
}

pub fn default_ffi_config() -> dashattn_config {
    dashattn_config {
        struct_size: std::mem::size_of::<dashattn_config>() as u32,
        block_size: 64,
        n_local: 1,
        causal: 1,
        selection: DASHATTN_SELECT_PER_GROUP,
        precision: DASHATTN_PRECISION_DEFAULT,
        alpha: 1.5,
        scale: 0.0,
        coarse_scale: 0.0,
        deterministic: 1,
    }
}

fn flag(name: &str, v: i32) -> Result<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => bail!(InvalidConfig, "{name} = {v} (must be 0 or 1)"),
    }
}

impl Config {
    pub fn from_ffi(c: &dashattn_config) -> Result<Config> {
        let want = std::mem::size_of::<dashattn_config>() as u32;
        if c.struct_size != want {
            bail!(InvalidConfig, "config.struct_size = {} (this library expects {want}; use dashattn_config_default)", c.struct_size);
        }
        let cfg = Config {
            block_size: match c.block_size {
                16 | 32 | 64 | 128 => c.block_size as usize,
                b => bail!(InvalidConfig, "config.block_size = {b} (must be 16, 32, 64 or 128)"),
            },
            n_local: usize::try_from(c.n_local)
                .map_err(|_| Error::InvalidConfig(format!("config.n_local = {} is negative", c.n_local)))?,
            causal: flag("config.causal", c.causal)?,
            selection: match c.selection {
                DASHATTN_SELECT_PER_GROUP => Selection::PerGroup,
                DASHATTN_SELECT_PER_HEAD => Selection::PerHead,
                s => bail!(InvalidConfig, "config.selection = {s} is not a DASHATTN_SELECT_* value"),
            },
            precision: match c.precision {
                DASHATTN_PRECISION_DEFAULT => Precision::F32,
                DASHATTN_PRECISION_F64 => Precision::F64,
                p => bail!(InvalidConfig, "config.precision = {p} is not a DASHATTN_PRECISION_* value"),
            },
            alpha: c.alpha,
            scale: c.scale,
            coarse_scale: c.coarse_scale,
            deterministic: flag("config.deterministic", c.deterministic)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.block_size, 16 | 32 | 64 | 128) {
            bail!(InvalidConfig, "config.block_size = {} (must be 16, 32, 64 or 128)", self.block_size);
        }
        if self.causal && self.n_local == 0 {
            bail!(InvalidConfig, "config.n_local = 0 with causal = 1 (causal attention needs the diagonal block: n_local >= 1)");
        }
        if self.n_local > 1 << 20 {
            bail!(InvalidConfig, "config.n_local = {} is unreasonably large", self.n_local);
        }
        if !(1.0..=2.0).contains(&self.alpha) {
            bail!(InvalidConfig, "config.alpha = {} (alpha must lie in [1, 2])", self.alpha);
        }
        if !self.scale.is_finite() || self.scale < 0.0 {
            bail!(InvalidConfig, "config.scale = {} (must be finite and >= 0; 0 means 1/sqrt(D))", self.scale);
        }
        if !self.coarse_scale.is_finite() || self.coarse_scale < 0.0 {
            bail!(InvalidConfig, "config.coarse_scale = {} (must be finite and >= 0; 0 means the fine scale)", self.coarse_scale);
        }
        Ok(())
    }

    /// (sigma, sigma_c) for head dimension d.
    pub fn scales(&self, d: usize) -> (f64, f64) {
        let s = if self.scale > 0.0 { self.scale as f64 } else { 1.0 / (d as f64).sqrt() };
        let sc = if self.coarse_scale > 0.0 { self.coarse_scale as f64 } else { s };
        (s, sc)
    }
}

/// Problem dimensions shared by forward and backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub n: usize,
    pub lq: usize,
    pub lk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    /// Number of key blocks, ceil(lk / B).
    pub nb: usize,
    /// G = hq / hkv.
    pub group: usize,
}

const QL: &str = "[N, Lq, Hq, D]";
const KL: &str = "[N, Lk, Hkv, D]";
const PL: &str = "[N, ceil(Lk/B), Hkv, D]";
const SL: &str = "[N, Hq, Lq], f32 (f64 on the CPU backend)";
/// Per-row statistics (lse, tau) are f32; the CPU backend also takes f64 for reference runs.
const STAT_DTYPES: &[DType] = &[DType::F32, DType::F64];

fn attn_in(name: &str, t: &Tensor) -> Result<()> {
    t.expect_dtype(name, &[DType::F32, DType::F16, DType::BF16, DType::F64])?;
    t.expect_inner_contiguous(name)
}

fn attn_out(name: &str, t: &Tensor, like: &Tensor, like_name: &str) -> Result<()> {
    if t.dims() != like.dims() {
        bail!(InvalidShape, "{name} has shape {:?}, expected {:?} (the shape of {like_name})", t.dims(), like.dims());
    }
    t.expect_same_dtype(name, like, like_name)?;
    t.expect_inner_contiguous(name)?;
    t.expect_non_overlapping(name)
}

fn stat_out(name: &str, t: &Tensor, d: &AttnDims) -> Result<()> {
    t.expect_dtype(name, STAT_DTYPES)?;
    t.expect_shape(name, &[d.n, d.hq, d.lq], SL)?;
    t.expect_non_overlapping(name)
}

fn stat_in(name: &str, t: &Tensor, d: &AttnDims) -> Result<()> {
    t.expect_dtype(name, STAT_DTYPES)?;
    t.expect_shape(name, &[d.n, d.hq, d.lq], SL)
}

pub fn check_head_alpha(t: &Tensor, hq: usize) -> Result<()> {
    t.expect_dtype("head_alpha", &[DType::F32])?;
    t.expect_shape("head_alpha", &[hq], "[Hq], f32")
}

fn check_heads(hq: usize, hkv: usize, d: usize) -> Result<()> {
    if hkv == 0 || hq == 0 {
        bail!(InvalidShape, "head counts must be positive (Hq = {hq}, Hkv = {hkv})");
    }
    if !hq.is_multiple_of(hkv) {
        bail!(InvalidShape, "Hq = {hq} is not a multiple of Hkv = {hkv}");
    }
    if d == 0 || d > MAX_HEAD_DIM {
        bail!(InvalidShape, "head dimension D = {d} (must be 1..={MAX_HEAD_DIM})");
    }
    Ok(())
}

/// Dimensions from the inputs of forward/backward (q, k, v and optional pooled keys).
pub fn attn_dims(cfg: &Config, q: &Tensor, k: &Tensor, v: &Tensor, pooled: Option<&Tensor>) -> Result<AttnDims> {
    q.expect_rank("q", 4, QL)?;
    k.expect_rank("k", 4, KL)?;
    v.expect_rank("v", 4, KL)?;
    attn_in("q", q)?;
    attn_in("k", k)?;
    attn_in("v", v)?;
    k.expect_same_dtype("k", q, "q")?;
    v.expect_same_dtype("v", q, "q")?;
    let [n, lq, hq, d] = [q.shape[0], q.shape[1], q.shape[2], q.shape[3]];
    let [kn, lk, hkv, kd] = [k.shape[0], k.shape[1], k.shape[2], k.shape[3]];
    if kn != n || kd != d {
        bail!(InvalidShape, "k has shape {:?}, expected [N={n}, Lk, Hkv, D={d}] {KL}", k.dims());
    }
    v.expect_shape("v", k.dims(), KL)?;
    check_heads(hq, hkv, d)?;
    let nb = lk.div_ceil(cfg.block_size);
    if let Some(p) = pooled {
        p.expect_shape("pooled_k", &[n, nb, hkv, d], PL)?;
        attn_in("pooled_k", p)?;
        p.expect_same_dtype("pooled_k", q, "q")?;
    }
    Ok(AttnDims { n, lq, lk, hq, hkv, d, nb, group: hq / hkv })
}

/// Tensors of a forward call.
#[derive(Clone, Copy, Debug)]
pub struct ForwardArgs {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub pooled_k: Option<Tensor>,
    pub head_alpha: Option<Tensor>,
    pub o: Tensor,
    pub lse: Option<Tensor>,
    pub tau: Option<Tensor>,
}

fn no_alias(outs: &[(&str, &Tensor)], ins: &[(&str, &Tensor)]) -> Result<()> {
    for (i, (on, o)) in outs.iter().enumerate() {
        for (n2, t) in ins.iter().chain(outs[i + 1..].iter()) {
            if o.overlaps(t) {
                bail!(InvalidArgument, "output {on} overlaps {n2} in memory");
            }
        }
    }
    Ok(())
}

impl ForwardArgs {
    pub fn validate(&self, cfg: &Config) -> Result<AttnDims> {
        let d = attn_dims(cfg, &self.q, &self.k, &self.v, self.pooled_k.as_ref())?;
        if let Some(a) = &self.head_alpha {
            check_head_alpha(a, d.hq)?;
        }
        attn_out("o", &self.o, &self.q, "q")?;
        if let Some(t) = &self.lse {
            stat_out("lse", t, &d)?;
        }
        if let Some(t) = &self.tau {
            stat_out("tau", t, &d)?;
        }
        let mut outs = vec![("o", &self.o)];
        outs.extend(self.lse.as_ref().map(|t| ("lse", t)));
        outs.extend(self.tau.as_ref().map(|t| ("tau", t)));
        let mut ins = vec![("q", &self.q), ("k", &self.k), ("v", &self.v)];
        ins.extend(self.pooled_k.as_ref().map(|t| ("pooled_k", t)));
        ins.extend(self.head_alpha.as_ref().map(|t| ("head_alpha", t)));
        no_alias(&outs, &ins)?;
        Ok(d)
    }
}

/// Tensors of a backward call.
#[derive(Clone, Copy, Debug)]
pub struct BackwardArgs {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub pooled_k: Option<Tensor>,
    pub head_alpha: Option<Tensor>,
    pub o: Tensor,
    pub d_o: Tensor,
    pub lse: Tensor,
    pub tau: Tensor,
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub d_pooled_k: Option<Tensor>,
}

impl BackwardArgs {
    pub fn validate(&self, cfg: &Config) -> Result<AttnDims> {
        let d = attn_dims(cfg, &self.q, &self.k, &self.v, self.pooled_k.as_ref())?;
        if let Some(a) = &self.head_alpha {
            check_head_alpha(a, d.hq)?;
        }
        self.o.expect_shape("o", self.q.dims(), QL)?;
        attn_in("o", &self.o)?;
        self.o.expect_same_dtype("o", &self.q, "q")?;
        self.d_o.expect_shape("d_o", self.q.dims(), QL)?;
        attn_in("d_o", &self.d_o)?;
        self.d_o.expect_same_dtype("d_o", &self.q, "q")?;
        stat_in("lse", &self.lse, &d)?;
        stat_in("tau", &self.tau, &d)?;
        attn_out("dq", &self.dq, &self.q, "q")?;
        attn_out("dk", &self.dk, &self.k, "k")?;
        attn_out("dv", &self.dv, &self.v, "v")?;
        match (&self.pooled_k, &self.d_pooled_k) {
            (Some(p), Some(dp)) => attn_out("d_pooled_k", dp, p, "pooled_k")?,
            (Some(_), None) => bail!(NullPointer, "d_pooled_k is NULL but pooled_k was given (its gradient is returned there)"),
            (None, Some(_)) => bail!(InvalidArgument, "d_pooled_k was given without pooled_k"),
            (None, None) => {}
        }
        let mut outs = vec![("dq", &self.dq), ("dk", &self.dk), ("dv", &self.dv)];
        outs.extend(self.d_pooled_k.as_ref().map(|t| ("d_pooled_k", t)));
        let mut ins = vec![("q", &self.q), ("k", &self.k), ("v", &self.v), ("o", &self.o), ("d_o", &self.d_o), ("lse", &self.lse), ("tau", &self.tau)];
        ins.extend(self.pooled_k.as_ref().map(|t| ("pooled_k", t)));
        ins.extend(self.head_alpha.as_ref().map(|t| ("head_alpha", t)));
        no_alias(&outs, &ins)?;
        Ok(d)
    }
}

/// Dimensions of a paged cache call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedDims {
    pub n: usize,
    pub num_pages: usize,
    pub page_size: usize,
    pub hkv: usize,
    pub d: usize,
    pub max_pages: usize,
    /// Pooled-key slots per page: max(1, page_size / B).
    pub slots: usize,
}

const CL: &str = "[num_pages, page_size, Hkv, D]";

/// Validates the paged K cache, pooled-key cache, block table and seq_lens layout.
pub fn paged_dims(cfg: &Config, k_cache: &Tensor, pooled_cache: &Tensor, block_table: &Tensor, seq_lens: &Tensor) -> Result<PagedDims> {
    k_cache.expect_rank("k_cache", 4, CL)?;
    attn_in("k_cache", k_cache)?;
    let [num_pages, page_size, hkv, d] = [k_cache.shape[0], k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]];
    if page_size == 0 {
        bail!(InvalidShape, "k_cache page_size is 0");
    }
    if page_size % cfg.block_size != 0 && !cfg.block_size.is_multiple_of(page_size) {
        bail!(InvalidShape, "page_size = {page_size} is incompatible with block_size = {} (one must divide the other)", cfg.block_size);
    }
    if hkv == 0 || d == 0 || d > MAX_HEAD_DIM {
        bail!(InvalidShape, "k_cache has shape {:?}: Hkv must be > 0 and D in 1..={MAX_HEAD_DIM}", k_cache.dims());
    }
    let slots = (page_size / cfg.block_size).max(1);
    pooled_cache.expect_rank("pooled_cache", 4, "[num_pages, max(1, page_size/B), Hkv, D]")?;
    attn_in("pooled_cache", pooled_cache)?;
    pooled_cache.expect_same_dtype("pooled_cache", k_cache, "k_cache")?;
    pooled_cache.expect_shape("pooled_cache", &[num_pages, slots, hkv, d], "[num_pages, max(1, page_size/B), Hkv, D]")?;
    block_table.expect_dtype("block_table", &[DType::I32])?;
    block_table.expect_rank("block_table", 2, "[N, max_pages], i32")?;
    let [n, max_pages] = [block_table.shape[0], block_table.shape[1]];
    seq_lens.expect_dtype("seq_lens", &[DType::I32])?;
    seq_lens.expect_shape("seq_lens", &[n], "[N], i32")?;
    if n > i32::MAX as usize {
        bail!(InvalidShape, "block_table has N = {n} sequences (at most INT32_MAX)");
    }
    if max_pages.checked_mul(page_size).is_none_or(|t| t > i32::MAX as usize) {
        bail!(Overflow, "max_pages * page_size = {max_pages} * {page_size} exceeds INT32_MAX tokens");
    }
    Ok(PagedDims { n, num_pages, page_size, hkv, d, max_pages, slots })
}

/// Tensors of a decode call.
#[derive(Clone, Copy, Debug)]
pub struct DecodeArgs {
    pub q: Tensor,
    pub k_cache: Tensor,
    pub v_cache: Tensor,
    pub pooled_cache: Tensor,
    pub block_table: Tensor,
    pub seq_lens: Tensor,
    pub head_alpha: Option<Tensor>,
    pub o: Tensor,
    pub lse: Option<Tensor>,
}

/// Decode dimensions: the paged layout plus the query shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeDims {
    pub paged: PagedDims,
    pub q_len: usize,
    pub hq: usize,
    pub group: usize,
}

pub fn decode_dims(cfg: &Config, q: &Tensor, k_cache: &Tensor, pooled_cache: &Tensor, block_table: &Tensor, seq_lens: &Tensor) -> Result<DecodeDims> {
    let p = paged_dims(cfg, k_cache, pooled_cache, block_table, seq_lens)?;
    q.expect_rank("q", 4, "[N, q_len, Hq, D]")?;
    attn_in("q", q)?;
    q.expect_same_dtype("q", k_cache, "k_cache")?;
    let [n, q_len, hq, d] = [q.shape[0], q.shape[1], q.shape[2], q.shape[3]];
    if n != p.n || d != p.d {
        bail!(InvalidShape, "q has shape {:?}, expected [N={}, q_len, Hq, D={}] (N from block_table, D from k_cache)", q.dims(), p.n, p.d);
    }
    if q_len == 0 || q_len > MAX_DECODE_QLEN {
        bail!(InvalidShape, "q_len = {q_len} (must be 1..={MAX_DECODE_QLEN})");
    }
    check_heads(hq, p.hkv, d)?;
    if !cfg.causal {
        bail!(InvalidConfig, "decode is causal: config.causal must be 1");
    }
    Ok(DecodeDims { paged: p, q_len, hq, group: hq / p.hkv })
}

impl DecodeArgs {
    pub fn validate(&self, cfg: &Config) -> Result<DecodeDims> {
        let d = decode_dims(cfg, &self.q, &self.k_cache, &self.pooled_cache, &self.block_table, &self.seq_lens)?;
        attn_in("v_cache", &self.v_cache)?;
        self.v_cache.expect_same_dtype("v_cache", &self.k_cache, "k_cache")?;
        self.v_cache.expect_shape("v_cache", self.k_cache.dims(), CL)?;
        if let Some(a) = &self.head_alpha {
            check_head_alpha(a, d.hq)?;
        }
        attn_out("o", &self.o, &self.q, "q")?;
        if let Some(l) = &self.lse {
            l.expect_dtype("lse", STAT_DTYPES)?;
            l.expect_shape("lse", &[d.paged.n, d.hq, d.q_len], "[N, Hq, q_len], f32")?;
            l.expect_non_overlapping("lse")?;
        }
        let mut outs = vec![("o", &self.o)];
        outs.extend(self.lse.as_ref().map(|t| ("lse", t)));
        let mut ins = vec![("q", &self.q), ("k_cache", &self.k_cache), ("v_cache", &self.v_cache), ("pooled_cache", &self.pooled_cache), ("block_table", &self.block_table), ("seq_lens", &self.seq_lens)];
        ins.extend(self.head_alpha.as_ref().map(|t| ("head_alpha", t)));
        no_alias(&outs, &ins)?;
        Ok(d)
    }
}

/// Tensors of a pool_keys_paged call.
#[derive(Clone, Copy, Debug)]
pub struct PoolPagedArgs {
    pub k_cache: Tensor,
    pub pooled_cache: Tensor,
    pub block_table: Tensor,
    pub prev_seq_lens: Tensor,
    pub seq_lens: Tensor,
}

impl PoolPagedArgs {
    pub fn validate(&self, cfg: &Config) -> Result<PagedDims> {
        let d = paged_dims(cfg, &self.k_cache, &self.pooled_cache, &self.block_table, &self.seq_lens)?;
        self.prev_seq_lens.expect_dtype("prev_seq_lens", &[DType::I32])?;
        self.prev_seq_lens.expect_shape("prev_seq_lens", &[d.n], "[N], i32")?;
        self.pooled_cache.expect_non_overlapping("pooled_cache")?;
        no_alias(
            &[("pooled_cache", &self.pooled_cache)],
            &[("k_cache", &self.k_cache), ("block_table", &self.block_table), ("prev_seq_lens", &self.prev_seq_lens), ("seq_lens", &self.seq_lens)],
        )?;
        Ok(d)
    }
}

/// A caller-provided workspace (ptr 0 and len 0: the library manages its own memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workspace {
    pub ptr: usize,
    pub len: usize,
}

impl Workspace {
    pub fn none() -> Workspace {
        Workspace { ptr: 0, len: 0 }
    }
    pub fn check(&self, need: usize) -> Result<()> {
        if self.ptr == 0 {
            if self.len != 0 {
                bail!(NullPointer, "workspace is NULL but workspace_size = {}", self.len);
            }
            return Ok(());
        }
        if !self.ptr.is_multiple_of(WORKSPACE_ALIGN) {
            bail!(Misaligned, "workspace must be {WORKSPACE_ALIGN}-byte aligned");
        }
        if self.len < need {
            bail!(WorkspaceTooSmall, "workspace_size = {} but this call needs {need} bytes", self.len);
        }
        Ok(())
    }
}

/// Checked size arithmetic for workspace queries.
pub fn bytes_of(parts: &[usize], what: &str) -> Result<usize> {
    parts
        .iter()
        .try_fold(1usize, |a, &p| a.checked_mul(p))
        .ok_or_else(|| Error::Overflow(format!("{what}: byte count overflows")))
}

/// Tensors of a merge_states call: S partial results of the same queries over disjoint key
/// sets, combined by their lse.
#[derive(Clone, Copy, Debug)]
pub struct MergeArgs {
    /// [S, N, L, H, D]
    pub o_parts: Tensor,
    /// [S, N, H, L], f32 (f64 on the CPU backend)
    pub lse_parts: Tensor,
    /// [N, L, H, D]
    pub o: Tensor,
    /// [N, H, L], optional
    pub lse: Option<Tensor>,
}

/// (S, N, L, H, D) of a merge.
pub type MergeDims = [usize; 5];

impl MergeArgs {
    pub fn validate(&self) -> Result<MergeDims> {
        self.o_parts.expect_rank("o_parts", 5, "[S, N, L, H, D]")?;
        attn_in("o_parts", &self.o_parts)?;
        let s = self.o_parts.shape;
        let dims = [s[0], s[1], s[2], s[3], s[4]];
        if dims[0] == 0 {
            bail!(InvalidShape, "o_parts has S = 0 parts");
        }
        self.lse_parts.expect_dtype("lse_parts", STAT_DTYPES)?;
        self.lse_parts.expect_shape("lse_parts", &[s[0], s[1], s[3], s[2]], "[S, N, H, L]")?;
        self.o.expect_same_dtype("o", &self.o_parts, "o_parts")?;
        self.o.expect_shape("o", &[s[1], s[2], s[3], s[4]], "[N, L, H, D]")?;
        self.o.expect_inner_contiguous("o")?;
        self.o.expect_non_overlapping("o")?;
        let mut outs = vec![("o", &self.o)];
        if let Some(l) = &self.lse {
            l.expect_dtype("lse", STAT_DTYPES)?;
            l.expect_shape("lse", &[s[1], s[3], s[2]], "[N, H, L]")?;
            l.expect_non_overlapping("lse")?;
            outs.push(("lse", l));
        }
        no_alias(&outs, &[("o_parts", &self.o_parts), ("lse_parts", &self.lse_parts)])?;
        Ok(dims)
    }
}
