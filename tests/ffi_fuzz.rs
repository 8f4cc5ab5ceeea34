//! Fuzz test of the C ABI: thousands of random descriptors, configs and pointers thrown at
//! every entry point through the extern "C" functions themselves.
//!
//! Each iteration builds a valid problem for one family (forward, backward, pooled-key
//! upkeep, decode) with random sizes, dtypes and strided layouts, then usually applies a
//! few random mutations (ranks, shapes incl. negative and huge, strides, dtypes incl.
//! invalid, NULL descriptors and data pointers, misaligned or unmappable pointers, aliased
//! outputs, config values, bad block-table entries and sequence lengths, workspaces).
//!
//! Buffers are real and guarded: every tensor whose descriptor could pass validation is
//! backed by an mmap'd buffer sized from the descriptor's own extent, placed against a
//! PROT_NONE guard page (and preceded by one), so an out-of-bounds read or write crashes
//! the test. Descriptors that cannot be backed (too large, overflowing) get a pointer
//! where `ptr + extent` overflows the address space, which the library must reject.
//!
//! Checks per call: no crash; the status is a known code and never DASHATTN_ERR_INTERNAL;
//! calls the contract says must fail do fail; unmutated valid problems succeed; on failure
//! a fresh non-empty message is set and every output buffer (and out_size) still holds its
//! poison pattern; inputs are never written; on success nothing outside an output's view is
//! written, outputs are finite where they must be, and a replay on contiguous copies of
//! the inputs gives bitwise the same outputs (strides are handled correctly).
//!
//! Longer runs: DASHATTN_FUZZ_SCALE=10 DASHATTN_FUZZ_SEED=7 cargo test --release --test ffi_fuzz

use std::ffi::c_void;
use std::ptr;

use dashattn::ffi::context::*;
use dashattn::ffi::error::*;
use dashattn::ffi::ops::*;
use dashattn::ffi::types::*;
use half::{bf16, f16};

/// Largest buffer the test backs with real memory.
const CAP_BYTES: usize = 2 << 20;
/// Largest element count the test backs (bounds the work of stride-0 broadcast tensors).
const CAP_NUMEL: u64 = 1 << 18;
const POISON: u8 = 0xA5;

// ---------------------------------------------------------------------------------------
// Deterministic PRNG (xorshift64*).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// Uniform integer in lo..=hi.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

// ---------------------------------------------------------------------------------------
// Guarded host buffers.

fn page_size() -> usize {
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// An mmap'd buffer: [guard page][body][guard page], data placed at the end of the body.
struct GBuf {
    base: *mut u8,
    map_len: usize,
    body: *mut u8,
    body_len: usize,
    data: *mut u8,
    len: usize,
}

impl GBuf {
    fn new(len: usize, align: usize) -> GBuf {
        let page = page_size();
        let align = align.max(1);
        let body_len = (len + align).div_ceil(page).max(1) * page;
        let map_len = body_len + 2 * page;
        unsafe {
            let base = libc::mmap(ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert!(base != libc::MAP_FAILED, "mmap failed");
            let base = base as *mut u8;
            assert_eq!(libc::mprotect(base as *mut c_void, page, libc::PROT_NONE), 0);
            assert_eq!(libc::mprotect(base.add(page + body_len) as *mut c_void, page, libc::PROT_NONE), 0);
            let body = base.add(page);
            let end = body as usize + body_len;
            let data = ((end - len) & !(align - 1)) as *mut u8;
            ptr::write_bytes(body, POISON, body_len);
            GBuf { base, map_len, body, body_len, data, len }
        }
    }
    fn body(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.body, self.body_len) }
    }
    fn data_off(&self) -> usize {
        self.data as usize - self.body as usize
    }
}

impl Drop for GBuf {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.base as *mut c_void, self.map_len);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tensor slots.

#[derive(Clone, Copy, Debug, PartialEq)]
enum PtrKind {
    Alloc,
    Null,
    Misaligned,
    High,
    Dangling,
    /// Same data pointer as another slot (only for outputs).
    Alias(usize),
}

#[derive(Clone, Debug)]
enum Fill {
    /// Random finite values of the descriptor's dtype everywhere in the buffer.
    Float,
    /// Logical i32 values (block table, sequence lengths), written through the view.
    I32(Vec<usize>, Vec<i32>),
    /// Logical f32 values (head_alpha), written through the view.
    F32(Vec<usize>, Vec<f32>),
    /// An output: poisoned.
    Out,
}

#[derive(Clone, Debug)]
struct Slot {
    name: &'static str,
    given: bool,
    required: bool,
    dtype: i32,
    rank: i32,
    shape: [i64; 6],
    strides: [i64; 6],
    ptr: PtrKind,
    fill: Fill,
}

impl Slot {
    fn is_out(&self) -> bool {
        matches!(self.fill, Fill::Out)
    }
}

fn esize(dtype: i32) -> usize {
    match dtype {
        DASHATTN_DTYPE_F16 | DASHATTN_DTYPE_BF16 => 2,
        DASHATTN_DTYPE_F32 | DASHATTN_DTYPE_I32 => 4,
        _ => 8, // f64 and invalid codes (conservative)
    }
}

fn dtype_valid(dtype: i32) -> bool {
    (0..=4).contains(&dtype)
}

/// What a descriptor describes, computed independently from the library (header contract).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Extent {
    /// Rank out of range or a negative shape/stride: must be rejected.
    Invalid,
    /// Element count or byte extent overflows (u64 or isize): must be rejected.
    Overflow,
    /// No elements: the data pointer may be anything.
    Empty,
    /// Bytes from data to the end of the last element; `backed` when the test allocates it.
    Bytes(usize, bool),
}

fn extent(s: &Slot) -> Extent {
    if s.rank < 1 || s.rank > 6 {
        return Extent::Invalid;
    }
    let r = s.rank as usize;
    if s.shape[..r].iter().any(|&x| x < 0) || s.strides[..r].iter().any(|&x| x < 0) {
        return Extent::Invalid;
    }
    let mut numel: u64 = 1;
    for &x in &s.shape[..r] {
        match numel.checked_mul(x as u64) {
            Some(v) => numel = v,
            None => return Extent::Overflow,
        }
    }
    if numel == 0 {
        return Extent::Empty;
    }
    let mut span: u64 = 1;
    for i in 0..r {
        let step = match (s.shape[i] as u64 - 1).checked_mul(s.strides[i] as u64) {
            Some(v) => v,
            None => return Extent::Overflow,
        };
        span = match span.checked_add(step) {
            Some(v) => v,
            None => return Extent::Overflow,
        };
    }
    let bytes = match span.checked_mul(esize(s.dtype) as u64) {
        Some(v) => v,
        None => return Extent::Overflow,
    };
    if bytes > isize::MAX as u64 {
        return Extent::Overflow;
    }
    Extent::Bytes(bytes as usize, bytes as usize <= CAP_BYTES && numel <= CAP_NUMEL)
}

/// Strides of a layout of `shape`: contiguous, padded, outer dims permuted, or (inputs)
/// broadcast along one outer dim; dims of extent 1 sometimes get arbitrary strides.
fn layout(rng: &mut Rng, shape: &[usize], is_out: bool) -> [i64; 6] {
    let r = shape.len();
    let mut st = [0i64; 6];
    let mode = rng.below(10);
    let mut order: Vec<usize> = (0..r).collect(); // outermost first; the last dim stays last
    if mode == 8 && r > 2 {
        for i in (1..r - 1).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    let mut acc: i64 = 1;
    for &i in order.iter().rev() {
        st[i] = acc;
        let pad = if mode == 6 || mode == 7 || (mode == 9 && is_out) { rng.range(0, 3) } else { 0 };
        acc = acc.wrapping_mul(shape[i].max(1) as i64).wrapping_add(pad);
    }
    if mode == 9 && !is_out && r > 1 {
        st[rng.below(r as u64 - 1) as usize] = 0;
    }
    for i in 0..r {
        if shape[i] == 1 && rng.chance(0.15) {
            st[i] = rng.pick(&[0, 3, 12345, i64::MAX / 2, i64::MAX]);
        }
    }
    // junk beyond the rank must be ignored
    for i in r..6 {
        st[i] = rng.pick(&[0, -1, i64::MIN, 7]);
    }
    st
}

fn mk(rng: &mut Rng, name: &'static str, dtype: i32, shape: &[usize], fill: Fill, required: bool, given_p: f64) -> Slot {
    let given = rng.chance(given_p);
    let is_out = matches!(fill, Fill::Out);
    let mut sh = [0i64; 6];
    for (i, &x) in shape.iter().enumerate() {
        sh[i] = x as i64;
    }
    for x in sh.iter_mut().skip(shape.len()) {
        *x = rng.pick(&[0, -1, i64::MAX, 5]);
    }
    Slot { name, given, required, dtype, rank: shape.len() as i32, shape: sh, strides: layout(rng, shape, is_out), ptr: PtrKind::Alloc, fill }
}

/// Calls f(linear index, element offset) for every element of the view (row-major).
fn for_each_elem(rank: usize, shape: &[i64; 6], strides: &[i64; 6], mut f: impl FnMut(usize, usize)) {
    let dims: Vec<usize> = (0..rank).map(|i| shape[i] as usize).collect();
    let n: usize = dims.iter().product();
    if n == 0 {
        return;
    }
    let mut idx = vec![0usize; rank];
    for lin in 0..n {
        let off: usize = (0..rank).map(|i| idx[i] * strides[i] as usize).sum();
        f(lin, off);
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
}

fn fill_float(rng: &mut Rng, buf: &GBuf, dtype: i32) {
    let n = buf.len / esize(dtype);
    unsafe {
        match dtype {
            DASHATTN_DTYPE_F32 => (0..n).for_each(|i| *(buf.data as *mut f32).add(i) = rng.normal() as f32),
            DASHATTN_DTYPE_F64 => (0..n).for_each(|i| *(buf.data as *mut f64).add(i) = rng.normal()),
            DASHATTN_DTYPE_F16 => (0..n).for_each(|i| *(buf.data as *mut f16).add(i) = f16::from_f64(rng.normal())),
            DASHATTN_DTYPE_BF16 => (0..n).for_each(|i| *(buf.data as *mut bf16).add(i) = bf16::from_f64(rng.normal())),
            _ => ptr::write_bytes(buf.data, 0, buf.len),
        }
    }
}

/// A materialised slot: its descriptor and backing memory.
struct Mat {
    desc: dashattn_tensor,
    buf: Option<GBuf>,
    /// The call must fail because of this descriptor.
    must_fail: bool,
    snapshot: Option<Vec<u8>>,
}

fn high_ptr(bytes: usize, align: usize) -> usize {
    let p = if bytes >= 2 * align { (usize::MAX - bytes / 2) & !(align - 1) } else { usize::MAX & !(align - 1) };
    assert!(p as u128 + bytes as u128 > usize::MAX as u128);
    p
}

/// Overwrites a few elements of a float buffer with NaN, +-inf or huge values.
fn sprinkle_specials(rng: &mut Rng, buf: &GBuf, dtype: i32) {
    let n = buf.len / esize(dtype);
    if n == 0 {
        return;
    }
    for _ in 0..rng.range(1, 4) {
        let i = rng.below(n as u64) as usize;
        let v = rng.pick(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e30, -1e30, 65504.0]);
        unsafe {
            match dtype {
                DASHATTN_DTYPE_F32 => *(buf.data as *mut f32).add(i) = v as f32,
                DASHATTN_DTYPE_F64 => *(buf.data as *mut f64).add(i) = v,
                DASHATTN_DTYPE_F16 => *(buf.data as *mut f16).add(i) = f16::from_f64(v),
                DASHATTN_DTYPE_BF16 => *(buf.data as *mut bf16).add(i) = bf16::from_f64(v),
                _ => {}
            }
        }
    }
}

fn materialize(rng: &mut Rng, slots: &[Slot], specials: bool) -> Vec<Mat> {
    let mut mats: Vec<Mat> = Vec::with_capacity(slots.len());
    for s in slots {
        let mut desc = dashattn_tensor { data: ptr::null_mut(), dtype: s.dtype, rank: s.rank, shape: s.shape, strides: s.strides };
        let mut must_fail = s.given && !dtype_valid(s.dtype);
        let mut buf = None;
        let al = esize(s.dtype);
        match extent(s) {
            Extent::Invalid | Extent::Overflow => {
                must_fail |= s.given;
                let b = GBuf::new(64, 8);
                desc.data = b.data as *mut c_void;
                buf = Some(b);
            }
            Extent::Empty => {
                desc.data = match s.ptr {
                    PtrKind::Null => ptr::null_mut(),
                    PtrKind::Dangling => 0x1000 as *mut c_void,
                    PtrKind::High => high_ptr(64, 8) as *mut c_void,
                    _ => {
                        // zero bytes right at the guard page: any access faults
                        let b = GBuf::new(0, 8);
                        let p = b.data as *mut c_void;
                        buf = Some(b);
                        p
                    }
                };
            }
            Extent::Bytes(bytes, backed) => {
                let kind = if !backed { PtrKind::High } else if s.ptr == PtrKind::Dangling { PtrKind::Alloc } else { s.ptr };
                match kind {
                    PtrKind::Null => {
                        must_fail |= s.given;
                        desc.data = ptr::null_mut();
                    }
                    PtrKind::High => {
                        must_fail |= s.given;
                        desc.data = high_ptr(bytes, al) as *mut c_void;
                    }
                    PtrKind::Misaligned => {
                        must_fail |= s.given;
                        let b = GBuf::new(bytes + 8, 8);
                        desc.data = unsafe { b.data.add(1) } as *mut c_void;
                        buf = Some(b);
                    }
                    _ => {
                        let b = GBuf::new(bytes, al);
                        match &s.fill {
                            Fill::Float => {
                                fill_float(rng, &b, s.dtype);
                                if specials && rng.chance(0.5) {
                                    sprinkle_specials(rng, &b, s.dtype);
                                }
                            }
                            Fill::I32(shape, vals) => {
                                unsafe { ptr::write_bytes(b.data, 0, b.len) };
                                if s.dtype == DASHATTN_DTYPE_I32 && s.rank as usize == shape.len() && (0..shape.len()).all(|i| s.shape[i] as usize == shape[i]) {
                                    for_each_elem(s.rank as usize, &s.shape, &s.strides, |lin, off| unsafe { *(b.data as *mut i32).add(off) = vals[lin] });
                                }
                            }
                            Fill::F32(shape, vals) => {
                                fill_float(rng, &b, s.dtype);
                                if s.dtype == DASHATTN_DTYPE_F32 && s.rank as usize == shape.len() && (0..shape.len()).all(|i| s.shape[i] as usize == shape[i]) {
                                    for_each_elem(s.rank as usize, &s.shape, &s.strides, |lin, off| unsafe { *(b.data as *mut f32).add(off) = vals[lin] });
                                }
                            }
                            Fill::Out => {}
                        }
                        desc.data = b.data as *mut c_void;
                        buf = Some(b);
                    }
                }
            }
        }
        mats.push(Mat { desc, buf, must_fail, snapshot: None });
    }
    // Aliased outputs: point at another given slot's (non-empty, backed) data.
    for (i, s) in slots.iter().enumerate() {
        if let PtrKind::Alias(j) = s.ptr {
            if j == i || !s.given || !slots[j].given {
                continue;
            }
            let (Extent::Bytes(mine, true), Extent::Bytes(theirs, true)) = (extent(s), extent(&slots[j])) else { continue };
            let Some(tb) = &mats[j].buf else { continue };
            if mats[j].desc.data != tb.data as *mut c_void || mine > theirs || esize(s.dtype) > esize(slots[j].dtype) || mats[i].must_fail {
                continue;
            }
            mats[i].desc.data = tb.data as *mut c_void;
            mats[i].buf = None;
            mats[i].must_fail = true; // an output overlapping another tensor
        }
    }
    for (m, s) in mats.iter_mut().zip(slots) {
        if !s.is_out() {
            m.snapshot = m.buf.as_ref().map(|b| b.body().to_vec());
        }
    }
    mats
}

// ---------------------------------------------------------------------------------------
// Config.

fn cfg_valid(c: &dashattn_config) -> bool {
    c.struct_size as usize == std::mem::size_of::<dashattn_config>()
        && matches!(c.block_size, 16 | 32 | 64 | 128)
        && c.n_local >= 0
        && c.n_local <= 1 << 20
        && (c.causal == 0 || c.causal == 1)
        && !(c.causal == 1 && c.n_local == 0)
        && (c.selection == 0 || c.selection == 1)
        && (c.precision == 0 || c.precision == 1)
        && (c.deterministic == 0 || c.deterministic == 1)
        && (1.0..=2.0).contains(&c.alpha)
        && c.scale.is_finite()
        && c.scale >= 0.0
        && c.coarse_scale.is_finite()
        && c.coarse_scale >= 0.0
}

fn base_cfg(rng: &mut Rng, bs: i32, causal: bool) -> dashattn_config {
    let mut c: dashattn_config = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { dashattn_config_default(&mut c) }, DASHATTN_SUCCESS);
    c.block_size = bs;
    c.causal = causal as i32;
    c.n_local = if causal { rng.range(1, 3) as i32 } else { rng.range(0, 3) as i32 };
    c.selection = rng.range(0, 1) as i32;
    c.precision = rng.range(0, 1) as i32;
    let u = 1.0 + rng.unit() as f32;
    c.alpha = rng.pick(&[1.0f32, 1.5, 2.0, 1.25, 1.8, u]);
    c.scale = if rng.chance(0.7) { 0.0 } else { rng.pick(&[0.1f32, 0.3, 1.0]) };
    c.coarse_scale = if rng.chance(0.7) { 0.0 } else { rng.pick(&[0.05f32, 0.3, 2.0]) };
    c.deterministic = rng.range(0, 1) as i32;
    c
}

fn mutate_cfg(rng: &mut Rng, c: &mut dashattn_config) {
    let size = std::mem::size_of::<dashattn_config>() as u32;
    match rng.below(10) {
        0 => c.struct_size = rng.pick(&[0, size - 4, size + 4, u32::MAX, 1]),
        1 => c.block_size = rng.pick(&[0, 8, 24, 48, 96, 256, -64, i32::MIN, i32::MAX, 16, 32, 64, 128]),
        2 => c.n_local = rng.pick(&[-1, 0, 1, 2, 5, 1 << 21, i32::MAX, i32::MIN]),
        3 => c.causal = rng.pick(&[-1, 0, 1, 2]),
        4 => c.selection = rng.pick(&[-1, 0, 1, 2, 99]),
        5 => c.precision = rng.pick(&[-1, 0, 1, 2]),
        6 => c.alpha = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 0.999, 1.0, 1.000_000_1, 2.0, 2.000_000_2, -1.5, f32::MIN_POSITIVE]),
        7 => c.scale = rng.pick(&[f32::NAN, -1.0, f32::INFINITY, 0.0, 1e-30, 1e30, -0.0]),
        8 => c.coarse_scale = rng.pick(&[f32::NAN, -1.0, f32::NEG_INFINITY, 0.0, 1e-30, 1e30]),
        _ => c.deterministic = rng.pick(&[-1, 0, 1, 2]),
    }
}

// ---------------------------------------------------------------------------------------
// Problem families.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Forward,
    Backward,
    Pool,
    Decode,
    /// dashattn_merge_states: no config, no workspace.
    Merge,
}

struct Problem {
    family: Family,
    cfg: dashattn_config,
    slots: Vec<Slot>,
}

const FLOATS: [i32; 4] = [DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F16, DASHATTN_DTYPE_BF16, DASHATTN_DTYPE_F64];

fn alphas(rng: &mut Rng, hq: usize) -> Vec<f32> {
    (0..hq)
        .map(|_| {
            let u = 1.0 + rng.unit() as f32;
            rng.pick(&[1.0f32, 2.0, 1.5, u])
        })
        .collect()
}

fn attn_problem(rng: &mut Rng, family: Family) -> Problem {
    let n = rng.pick(&[0usize, 1, 1, 2, 2, 3]);
    let bs = rng.pick(&[16i32, 32, 64, 128]);
    let lk = if rng.chance(0.1) { 0 } else { rng.range(1, 160) as usize };
    let lq = if rng.chance(0.4) { lk } else { rng.range(0, 70) as usize };
    let hkv = rng.range(1, 3) as usize;
    let hq = hkv * rng.range(1, 3) as usize;
    let d = rng.pick(&[1usize, 2, 3, 4, 7, 8, 16, 32, 64]);
    let dt = rng.pick(&FLOATS);
    let nb = lk.div_ceil(bs as usize);
    let stat = |rng: &mut Rng| rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F64]);
    let causal = rng.chance(0.75);
    let cfg = base_cfg(rng, bs, causal);
    let (qs, ks, ps, ss) = ([n, lq, hq, d], [n, lk, hkv, d], [n, nb, hkv, d], [n, hq, lq]);
    let use_pk = rng.chance(0.3);
    let ha = Fill::F32(vec![hq], alphas(rng, hq));
    let mut slots = vec![
        mk(rng, "q", dt, &qs, Fill::Float, true, 1.0),
        mk(rng, "k", dt, &ks, Fill::Float, true, 1.0),
        mk(rng, "v", dt, &ks, Fill::Float, true, 1.0),
        mk(rng, "pooled_k", dt, &ps, Fill::Float, false, if use_pk { 1.0 } else { 0.0 }),
        mk(rng, "head_alpha", DASHATTN_DTYPE_F32, &[hq], ha, false, 0.3),
    ];
    match family {
        Family::Forward => {
            let (s1, s2) = (stat(rng), stat(rng));
            slots.push(mk(rng, "o", dt, &qs, Fill::Out, true, 1.0));
            slots.push(mk(rng, "lse", s1, &ss, Fill::Out, false, 0.7));
            slots.push(mk(rng, "tau", s2, &ss, Fill::Out, false, 0.7));
        }
        _ => {
            let (s1, s2) = (stat(rng), stat(rng));
            slots.push(mk(rng, "o", dt, &qs, Fill::Float, true, 1.0));
            slots.push(mk(rng, "d_o", dt, &qs, Fill::Float, true, 1.0));
            slots.push(mk(rng, "lse", s1, &ss, Fill::Float, true, 1.0));
            slots.push(mk(rng, "tau", s2, &ss, Fill::Float, true, 1.0));
            slots.push(mk(rng, "dq", dt, &qs, Fill::Out, true, 1.0));
            slots.push(mk(rng, "dk", dt, &ks, Fill::Out, true, 1.0));
            slots.push(mk(rng, "dv", dt, &ks, Fill::Out, true, 1.0));
            slots.push(mk(rng, "d_pooled_k", dt, &ps, Fill::Out, false, if use_pk { 1.0 } else { 0.0 }));
        }
    }
    Problem { family, cfg, slots }
}

fn paged_problem(rng: &mut Rng, family: Family) -> Problem {
    let n = rng.pick(&[0usize, 1, 2, 3, 4]);
    let bs = rng.pick(&[16i32, 32, 64, 128]);
    let page = if rng.chance(0.5) { bs as usize * rng.pick(&[1usize, 2, 4]) } else { bs as usize / rng.pick(&[1usize, 2, 4, 8, 16]) };
    let hkv = rng.range(1, 3) as usize;
    let hq = hkv * rng.range(1, 3) as usize;
    let d = rng.pick(&[1usize, 2, 4, 8, 16, 64]);
    let dt = rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F16, DASHATTN_DTYPE_BF16, DASHATTN_DTYPE_F64]);
    let q_len = if rng.chance(0.8) { rng.range(1, 4) as usize } else { rng.range(1, 16) as usize };
    let max_len = (rng.range(1, 300) as usize).max(q_len);
    let max_pages = max_len.div_ceil(page) + rng.range(0, 1) as usize;
    let num_pages = n * max_pages + rng.range(0, 3) as usize;
    let slots_per_page = (page / bs as usize).max(1);
    let causal = family == Family::Decode || rng.chance(0.5);
    let cfg = base_cfg(rng, bs, causal);
    // pages: a permutation, so sequences never share one
    let mut perm: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..perm.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let table: Vec<i32> = (0..n * max_pages).map(|i| perm[i]).collect();
    let cap = (max_pages * page) as i64;
    let lens: Vec<i32> = (0..n).map(|_| rng.range(if family == Family::Decode { q_len as i64 } else { 0 }, cap) as i32).collect();
    let prev: Vec<i32> = lens.iter().map(|&l| if rng.chance(0.3) { 0 } else { rng.range(0, l as i64) as i32 }).collect();
    let cache = [num_pages, page, hkv, d];
    let pooled = [num_pages, slots_per_page, hkv, d];
    let mut slots = Vec::new();
    match family {
        Family::Pool => {
            slots.push(mk(rng, "k_cache", dt, &cache, Fill::Float, true, 1.0));
            slots.push(mk(rng, "pooled_cache", dt, &pooled, Fill::Out, true, 1.0));
            slots.push(mk(rng, "block_table", DASHATTN_DTYPE_I32, &[n, max_pages], Fill::I32(vec![n, max_pages], table), true, 1.0));
            slots.push(mk(rng, "prev_seq_lens", DASHATTN_DTYPE_I32, &[n], Fill::I32(vec![n], prev), true, 1.0));
            slots.push(mk(rng, "seq_lens", DASHATTN_DTYPE_I32, &[n], Fill::I32(vec![n], lens), true, 1.0));
        }
        _ => {
            let qs = [n, q_len, hq, d];
            let ha = Fill::F32(vec![hq], alphas(rng, hq));
            slots.push(mk(rng, "q", dt, &qs, Fill::Float, true, 1.0));
            slots.push(mk(rng, "k_cache", dt, &cache, Fill::Float, true, 1.0));
            slots.push(mk(rng, "v_cache", dt, &cache, Fill::Float, true, 1.0));
            slots.push(mk(rng, "pooled_cache", dt, &pooled, Fill::Float, true, 1.0));
            slots.push(mk(rng, "block_table", DASHATTN_DTYPE_I32, &[n, max_pages], Fill::I32(vec![n, max_pages], table), true, 1.0));
            slots.push(mk(rng, "seq_lens", DASHATTN_DTYPE_I32, &[n], Fill::I32(vec![n], lens), true, 1.0));
            slots.push(mk(rng, "head_alpha", DASHATTN_DTYPE_F32, &[hq], ha, false, 0.3));
            slots.push(mk(rng, "o", dt, &qs, Fill::Out, true, 1.0));
            let sdt = rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F64]);
            slots.push(mk(rng, "lse", sdt, &[n, hq, q_len], Fill::Out, false, 0.7));
        }
    }
    Problem { family, cfg, slots }
}

fn merge_problem(rng: &mut Rng) -> Problem {
    let s = rng.range(1, 4) as usize;
    let n = rng.pick(&[0usize, 1, 2, 3]);
    let l = rng.range(0, 20) as usize;
    let h = rng.range(1, 4) as usize;
    let d = rng.pick(&[1usize, 2, 8, 64, 300]);
    let dt = rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F16, DASHATTN_DTYPE_BF16, DASHATTN_DTYPE_F64]);
    let (s1, s2) = (rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F64]), rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F64]));
    let cfg = base_cfg(rng, 64, true); // unused by merge_states
    let slots = vec![
        mk(rng, "o_parts", dt, &[s, n, l, h, d], Fill::Float, true, 1.0),
        mk(rng, "lse_parts", s1, &[s, n, h, l], Fill::Float, true, 1.0),
        mk(rng, "o", dt, &[n, l, h, d], Fill::Out, true, 1.0),
        mk(rng, "lse", s2, &[n, h, l], Fill::Out, false, 0.7),
    ];
    Problem { family: Family::Merge, cfg, slots }
}

/// Applies 1-3 random mutations to the slots; returns whether the call must now fail for a
/// reason the descriptor check in `materialize` cannot see (a required tensor dropped).
fn mutate(rng: &mut Rng, p: &mut Problem) -> bool {
    let nslots = p.slots.len();
    for _ in 0..rng.range(1, 3) {
        let i = rng.below(nslots as u64) as usize;
        match rng.below(16) {
            0 => p.slots[i].given = !p.slots[i].given,
            1 => p.slots[i].dtype = rng.pick(&[-1, 0, 1, 2, 3, 4, 5, 99, i32::MIN, i32::MAX]),
            2 => p.slots[i].rank = rng.pick(&[-1, 0, 1, 2, 3, 4, 5, 6, 7, 100, i32::MIN]),
            3 | 4 => {
                let d = rng.below(6) as usize;
                let cur = p.slots[i].shape[d];
                p.slots[i].shape[d] = rng.pick(&[-1, -100, 0, 1, cur.saturating_add(1), cur.saturating_sub(1), 1 << 31, 1 << 40, 1 << 62, i64::MAX, i64::MIN]);
            }
            5 | 6 => {
                let d = rng.below(6) as usize;
                let cur = p.slots[i].strides[d];
                p.slots[i].strides[d] = rng.pick(&[-1, 0, 1, 2, cur.saturating_add(1), 1 << 40, 1 << 62, i64::MAX, i64::MIN]);
            }
            7 => p.slots[i].ptr = rng.pick(&[PtrKind::Null, PtrKind::Misaligned, PtrKind::High, PtrKind::Dangling]),
            8 => {
                // an output aliasing another tensor
                let outs: Vec<usize> = (0..nslots).filter(|&j| p.slots[j].is_out()).collect();
                let o = rng.pick(&outs);
                let t = rng.below(nslots as u64) as usize;
                p.slots[o].ptr = PtrKind::Alias(t);
            }
            9 => {
                // a consistent (valid) descriptor of a different shape: one dim off by one
                let s = &mut p.slots[i];
                if s.rank >= 1 && s.rank <= 6 {
                    let r = s.rank as usize;
                    let d = rng.below(r as u64) as usize;
                    s.shape[d] = (s.shape[d] + rng.pick(&[-1i64, 1, 2])).max(0);
                    let dims: Vec<usize> = s.shape[..r].iter().map(|&x| x.max(0) as usize).collect();
                    s.strides = layout(rng, &dims, s.is_out());
                }
            }
            10 => {
                // a valid descriptor of a different rank: flatten the last two dims
                let s = &mut p.slots[i];
                if s.rank >= 2 && s.rank <= 6 && s.shape[..s.rank as usize].iter().all(|&x| x >= 0) {
                    let r = s.rank as usize;
                    let mut dims: Vec<usize> = s.shape[..r].iter().map(|&x| x as usize).collect();
                    let last = dims.pop().unwrap();
                    *dims.last_mut().unwrap() *= last;
                    s.rank -= 1;
                    for (k, &x) in dims.iter().enumerate() {
                        s.shape[k] = x as i64;
                    }
                    s.strides = layout(rng, &dims, s.is_out());
                }
            }
            11 => {
                // swap two descriptors (dtype, rank, shape, strides), keeping the contents
                let j = rng.below(nslots as u64) as usize;
                let (a, b) = (p.slots[i].clone(), p.slots[j].clone());
                for (dst, src) in [(i, &b), (j, &a)] {
                    let d = &mut p.slots[dst];
                    d.dtype = src.dtype;
                    d.rank = src.rank;
                    d.shape = src.shape;
                    d.strides = src.strides;
                }
            }
            12 => {
                // outputs whose elements overlap (stride 0 on a dim of extent > 1)
                let s = &mut p.slots[i];
                if s.rank >= 1 && s.rank <= 6 {
                    let d = rng.below(s.rank as u64) as usize;
                    s.strides[d] = 0;
                }
            }
            13 => {
                // bad indices: block-table entries, sequence lengths
                for s in p.slots.iter_mut() {
                    if let Fill::I32(shape, vals) = &mut s.fill {
                        if !vals.is_empty() && rng.chance(0.5) {
                            let k = rng.below(vals.len() as u64) as usize;
                            vals[k] = if shape.len() == 2 { rng.pick(&[-1, i32::MAX, i32::MIN, 1 << 20, vals[k].wrapping_add(1000)]) } else { rng.pick(&[-1, 0, i32::MAX, i32::MIN, vals[k].wrapping_add(1), vals[k].wrapping_sub(1)]) };
                        }
                    }
                }
            }
            14 => {
                // bad per-head alpha values
                for s in p.slots.iter_mut() {
                    if let Fill::F32(_, vals) = &mut s.fill {
                        if !vals.is_empty() {
                            let k = rng.below(vals.len() as u64) as usize;
                            vals[k] = rng.pick(&[f32::NAN, 0.5, 2.5, f32::INFINITY, -1.0, 0.0]);
                        }
                    }
                }
            }
            _ => mutate_cfg(rng, &mut p.cfg),
        }
    }
    p.slots.iter().any(|s| s.required && !s.given)
}

// ---------------------------------------------------------------------------------------
// Calls.

/// Workspace argument: none, exact, larger, too small, misaligned, or NULL with a size.
struct Ws {
    buf: Option<GBuf>,
    ptr: *mut c_void,
    size: usize,
}

fn tensor_ptrs(slots: &[Slot], mats: &[Mat]) -> Vec<*const dashattn_tensor> {
    slots.iter().zip(mats).map(|(s, m)| if s.given { &m.desc as *const dashattn_tensor } else { ptr::null() }).collect()
}

unsafe fn ws_query(family: Family, ctx: *mut dashattn_context, cfg: *const dashattn_config, t: &[*const dashattn_tensor], out: *mut usize) -> i32 {
    match family {
        Family::Forward => dashattn_forward_workspace_size(ctx, cfg, t[0], t[1], t[2], t[3], out),
        Family::Backward => dashattn_backward_workspace_size(ctx, cfg, t[0], t[1], t[2], t[3], out),
        Family::Pool => dashattn_pool_keys_paged_workspace_size(ctx, cfg, t[0], t[1], t[2], t[4], out),
        Family::Decode => dashattn_decode_workspace_size(ctx, cfg, t[0], t[1], t[3], t[4], t[5], out),
        Family::Merge => unreachable!("merge_states has no workspace query"),
    }
}

unsafe fn op(family: Family, ctx: *mut dashattn_context, cfg: *const dashattn_config, t: &[*const dashattn_tensor], ws: *mut c_void, ws_size: usize) -> i32 {
    match family {
        Family::Forward => dashattn_forward(ctx, cfg, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], ws, ws_size),
        Family::Backward => dashattn_backward(ctx, cfg, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], ws, ws_size),
        Family::Pool => dashattn_pool_keys_paged(ctx, cfg, t[0], t[1], t[2], t[3], t[4], ws, ws_size),
        Family::Decode => dashattn_decode(ctx, cfg, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], ws, ws_size),
        Family::Merge => {
            let _ = (cfg, ws, ws_size);
            dashattn_merge_states(ctx, t[0], t[1], t[2], t[3])
        }
    }
}

fn sentinel() -> String {
    let mut o: dashattn_context_options = unsafe { std::mem::zeroed() };
    unsafe {
        dashattn_context_options_default(&mut o);
        o.struct_size = 12345;
        let mut c: *mut dashattn_context = ptr::null_mut();
        assert_ne!(dashattn_context_create(&o, &mut c), DASHATTN_SUCCESS);
    }
    last_message()
}

fn last_message() -> String {
    unsafe {
        let n = dashattn_last_error_message(ptr::null_mut(), 0);
        let mut buf = vec![0u8; n + 1];
        dashattn_last_error_message(buf.as_mut_ptr() as *mut _, buf.len());
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

struct Ctxs {
    real: Vec<*mut dashattn_context>,
    fake: Box<[u64; 32]>,
}

impl Ctxs {
    fn new() -> Ctxs {
        let mut real = Vec::new();
        for threads in [1, 3] {
            let mut o: dashattn_context_options = unsafe { std::mem::zeroed() };
            let mut c: *mut dashattn_context = ptr::null_mut();
            unsafe {
                assert_eq!(dashattn_context_options_default(&mut o), DASHATTN_SUCCESS);
                o.backend = DASHATTN_BACKEND_CPU;
                o.num_threads = threads;
                assert_eq!(dashattn_context_create(&o, &mut c), DASHATTN_SUCCESS);
            }
            real.push(c);
        }
        Ctxs { real, fake: Box::new([0u64; 32]) }
    }
}

impl Drop for Ctxs {
    fn drop(&mut self) {
        for &c in &self.real {
            unsafe { assert_eq!(dashattn_context_destroy(c), DASHATTN_SUCCESS) };
        }
    }
}

#[derive(Default, Debug)]
struct Stats {
    calls: usize,
    ok: usize,
    by_status: [usize; 16],
    replays: usize,
    failures: Vec<String>,
}

impl Stats {
    fn fail(&mut self, it: usize, what: String) {
        if self.failures.len() < 40 {
            self.failures.push(format!("iteration {it}: {what}"));
        }
    }
}

fn describe(p: &Problem, mats: &[Mat]) -> String {
    let mut s = format!("{:?} cfg {{bs {}, n_local {}, causal {}, sel {}, prec {}, alpha {}, scale {}, cscale {}, det {}, size {}}}", p.family, p.cfg.block_size, p.cfg.n_local, p.cfg.causal, p.cfg.selection, p.cfg.precision, p.cfg.alpha, p.cfg.scale, p.cfg.coarse_scale, p.cfg.deterministic, p.cfg.struct_size);
    for (sl, m) in p.slots.iter().zip(mats) {
        if !sl.given {
            s += &format!("\n    {}: NULL", sl.name);
            continue;
        }
        let r = sl.rank.clamp(0, 6) as usize;
        s += &format!("\n    {}: dtype {} rank {} shape {:?} strides {:?} ptr {:?} data {:p}", sl.name, sl.dtype, sl.rank, &sl.shape[..r], &sl.strides[..r], sl.ptr, m.desc.data);
        match &sl.fill {
            Fill::I32(_, v) => s += &format!(" values {:?}", &v[..v.len().min(24)]),
            Fill::F32(_, v) => s += &format!(" values {:?}", v),
            _ => {}
        }
    }
    s
}

/// Elements of an output view must be finite (o, gradients) or finite/-inf (lse, tau).
fn check_finite(sl: &Slot, m: &Mat) -> bool {
    let Some(b) = &m.buf else { return true };
    let stat = matches!(sl.name, "lse" | "tau");
    let mut ok = true;
    for_each_elem(sl.rank as usize, &sl.shape, &sl.strides, |_, off| {
        let v = unsafe {
            match sl.dtype {
                DASHATTN_DTYPE_F32 => *(b.data as *const f32).add(off) as f64,
                DASHATTN_DTYPE_F64 => *(b.data as *const f64).add(off),
                DASHATTN_DTYPE_F16 => (*(b.data as *const f16).add(off)).to_f64(),
                DASHATTN_DTYPE_BF16 => (*(b.data as *const bf16).add(off)).to_f64(),
                _ => 0.0,
            }
        };
        ok &= if stat { !v.is_nan() && v != f64::INFINITY } else { v.is_finite() };
    });
    ok
}

/// Runs one problem through its workspace query and its operation, with all the checks.
fn run_one(rng: &mut Rng, ctxs: &Ctxs, p: &mut Problem, it: usize, st: &mut Stats) {
    let mutated = rng.chance(0.6);
    let mut must_fail = if mutated { mutate(rng, p) } else { false };
    let ctx: *mut dashattn_context = match rng.below(40) {
        0 => {
            must_fail = true;
            ptr::null_mut()
        }
        1 => {
            must_fail = true;
            ctxs.fake.as_ptr() as *mut dashattn_context
        }
        _ => ctxs.real[rng.below(2) as usize],
    };
    let merge = p.family == Family::Merge;
    let cfg_null = !merge && rng.below(50) == 0;
    must_fail |= !merge && (cfg_null || !cfg_valid(&p.cfg));
    let cfg_ptr: *const dashattn_config = if cfg_null { ptr::null() } else { &p.cfg };
    // now and then non-finite input values: only robustness is checked then
    let specials = rng.chance(0.05);
    let mut mats = materialize(rng, &p.slots, specials);
    must_fail |= mats.iter().zip(&p.slots).any(|(m, s)| m.must_fail && s.given);
    let t = tensor_ptrs(&p.slots, &mats);
    let outs: Vec<usize> = (0..p.slots.len()).filter(|&i| p.slots[i].is_out()).collect();

    // --- the workspace query (descriptors only)
    let sent = sentinel();
    let poison_size = usize::from_ne_bytes([POISON; std::mem::size_of::<usize>()]);
    let mut ws_need = if merge { 0 } else { poison_size };
    let out_ptr: *mut usize = if rng.below(40) == 0 || merge { ptr::null_mut() } else { &mut ws_need };
    let qs = if merge { DASHATTN_ERR_UNSUPPORTED } else { unsafe { ws_query(p.family, ctx, cfg_ptr, &t, out_ptr) } };
    if !merge {
        st.calls += 1;
    }
    if !(0..=14).contains(&qs) {
        st.fail(it, format!("workspace query returned status {qs} ({}): {}\n  {}", status_str(qs), last_message(), describe(p, &mats)));
    }
    if merge {
        // no workspace query
    } else if qs != DASHATTN_SUCCESS {
        let msg = last_message();
        if msg.is_empty() || msg == sent {
            st.fail(it, format!("workspace query failed ({qs}) without a fresh message\n  {}", describe(p, &mats)));
        }
        if ws_need != poison_size {
            st.fail(it, format!("workspace query failed ({qs}) but wrote out_size\n  {}", describe(p, &mats)));
        }
    } else if out_ptr.is_null() {
        st.fail(it, format!("workspace query succeeded with out_size NULL\n  {}", describe(p, &mats)));
    }

    // --- the workspace argument
    let mut ws = Ws { buf: None, ptr: ptr::null_mut(), size: 0 };
    let have = qs == DASHATTN_SUCCESS;
    match if merge { 0 } else { rng.below(10) } {
        5..=7 if have => {
            let extra = rng.pick(&[0usize, 0, 1, 256, 4096]);
            let b = GBuf::new(ws_need + extra, 256);
            ws.ptr = b.data as *mut c_void;
            ws.size = ws_need + extra;
            ws.buf = Some(b);
        }
        8 if have && ws_need > 0 => {
            let b = GBuf::new(ws_need, 256);
            ws.ptr = b.data as *mut c_void;
            ws.size = ws_need - 1 - rng.below(ws_need.min(8) as u64) as usize;
            ws.buf = Some(b);
            must_fail = true;
        }
        9 => {
            if rng.chance(0.5) {
                let b = GBuf::new(ws_need.min(1 << 20) + 512, 256);
                ws.ptr = unsafe { b.data.add(rng.pick(&[1usize, 8, 64, 128])) } as *mut c_void;
                ws.size = ws_need.min(1 << 20);
                ws.buf = Some(b);
            } else {
                ws.size = rng.range(1, 4096) as usize;
            }
            must_fail = true;
        }
        _ => {}
    }

    // --- the operation
    for &o in &outs {
        if let Some(b) = &mats[o].buf {
            unsafe { ptr::write_bytes(b.body, POISON, b.body_len) };
        }
    }
    let sent = sentinel();
    let status = unsafe { op(p.family, ctx, cfg_ptr, &t, ws.ptr, ws.size) };
    st.calls += 1;
    if (0..16).contains(&status) {
        st.by_status[status as usize] += 1;
    }
    let ctx_info = || format!("{}\n    workspace {:p} size {} (query status {qs}, need {ws_need})", describe(p, &mats), ws.ptr, ws.size);
    if !(0..=14).contains(&status) {
        st.fail(it, format!("status {status} ({}): {}\n  {}", status_str(status), last_message(), ctx_info()));
    }
    // inputs are never written
    for (i, m) in mats.iter().enumerate() {
        if let (Some(snap), Some(b)) = (&m.snapshot, &m.buf) {
            if snap.as_slice() != b.body() {
                st.fail(it, format!("input {} was modified (status {status})\n  {}", p.slots[i].name, ctx_info()));
            }
        }
    }
    if status != DASHATTN_SUCCESS {
        let msg = last_message();
        if msg.is_empty() || msg == sent {
            st.fail(it, format!("status {status} without a fresh error message\n  {}", ctx_info()));
        }
        for &o in &outs {
            if let Some(b) = &mats[o].buf {
                if b.body().iter().any(|&x| x != POISON) {
                    st.fail(it, format!("status {status} ({msg}) but output {} was written\n  {}", p.slots[o].name, ctx_info()));
                }
            }
        }
        if !mutated && !must_fail {
            st.fail(it, format!("an unmutated valid problem was rejected: status {status}: {msg}\n  {}", ctx_info()));
        }
        return;
    }
    st.ok += 1;
    if must_fail {
        st.fail(it, format!("call succeeded although it must fail\n  {}", ctx_info()));
        return;
    }
    // nothing written outside the output views
    for &o in &outs {
        let (sl, m) = (&p.slots[o], &mats[o]);
        let Some(b) = &m.buf else { continue };
        if !sl.given {
            if b.body().iter().any(|&x| x != POISON) {
                st.fail(it, format!("output {} was not given but its buffer changed\n  {}", sl.name, ctx_info()));
            }
            continue;
        }
        let mut covered = vec![false; b.body_len];
        let es = esize(sl.dtype);
        let base = b.data_off();
        for_each_elem(sl.rank as usize, &sl.shape, &sl.strides, |_, off| {
            for x in 0..es {
                covered[base + off * es + x] = true;
            }
        });
        if b.body().iter().zip(&covered).any(|(&x, &c)| !c && x != POISON) {
            st.fail(it, format!("output {} was written outside its view\n  {}", sl.name, ctx_info()));
        }
        let sane = merge || (p.cfg.scale <= 10.0 && p.cfg.coarse_scale <= 10.0 && p.family != Family::Backward && p.family != Family::Pool);
        if sane && !specials && !check_finite(sl, m) {
            st.fail(it, format!("output {} holds NaN/inf\n  {}", sl.name, ctx_info()));
        }
    }
    // replay on contiguous copies: identical outputs
    if p.family == Family::Backward && p.cfg.deterministic == 0 {
        return;
    }
    replay(p, &mut mats, ctx, it, st);
}

fn status_str(s: i32) -> String {
    unsafe { std::ffi::CStr::from_ptr(dashattn_status_string(s)).to_string_lossy().into_owned() }
}

fn replay(p: &Problem, mats: &mut [Mat], ctx: *mut dashattn_context, it: usize, st: &mut Stats) {
    let mut descs: Vec<dashattn_tensor> = Vec::new();
    let mut bufs: Vec<Option<GBuf>> = Vec::new();
    for (sl, m) in p.slots.iter().zip(mats.iter()) {
        let mut d = m.desc;
        let mut nb = None;
        if sl.given && sl.rank >= 1 {
            let r = sl.rank as usize;
            let es = esize(sl.dtype);
            let numel: usize = sl.shape[..r].iter().map(|&x| x as usize).product();
            let mut acc = 1i64;
            for i in (0..r).rev() {
                d.strides[i] = acc;
                acc *= sl.shape[i].max(1);
            }
            if numel > 0 {
                let b = GBuf::new(numel * es, es);
                if !sl.is_out() {
                    let src = m.buf.as_ref().expect("a given non-empty input is backed").data;
                    for_each_elem(r, &sl.shape, &sl.strides, |lin, off| unsafe { ptr::copy_nonoverlapping(src.add(off * es), b.data.add(lin * es), es) });
                }
                d.data = b.data as *mut c_void;
                nb = Some(b);
            }
        }
        descs.push(d);
        bufs.push(nb);
    }
    let t: Vec<*const dashattn_tensor> = p.slots.iter().zip(&descs).map(|(s, d)| if s.given { d as *const _ } else { ptr::null() }).collect();
    let status = unsafe { op(p.family, ctx, &p.cfg, &t, ptr::null_mut(), 0) };
    st.replays += 1;
    let _ = it;
    if status != DASHATTN_SUCCESS {
        st.fail(it, format!("contiguous replay failed with {status}: {}\n  {}", last_message(), describe(p, mats)));
        return;
    }
    for (i, sl) in p.slots.iter().enumerate() {
        if !sl.is_out() || !sl.given {
            continue;
        }
        let (Some(orig), Some(rep)) = (&mats[i].buf, &bufs[i]) else { continue };
        let es = esize(sl.dtype);
        let mut diff = 0usize;
        for_each_elem(sl.rank as usize, &sl.shape, &sl.strides, |lin, off| unsafe {
            let a = std::slice::from_raw_parts(orig.data.add(off * es), es);
            let b = std::slice::from_raw_parts(rep.data.add(lin * es), es);
            if a != b {
                diff += 1;
            }
        });
        if diff > 0 {
            st.fail(it, format!("output {} differs from a replay on contiguous copies in {diff} elements\n  {}", sl.name, describe(p, mats)));
        }
    }
}

/// Longer or different runs: DASHATTN_FUZZ_SCALE multiplies the iteration counts and
/// DASHATTN_FUZZ_SEED is mixed into every seed (defaults 1 and 0: the CI configuration).
fn env_knobs() -> (usize, u64) {
    let scale = std::env::var("DASHATTN_FUZZ_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize);
    let seed = std::env::var("DASHATTN_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0u64);
    (scale.max(1), seed)
}

fn fuzz(family: Family, iterations: usize, seed: u64) {
    let (scale, extra_seed) = env_knobs();
    let (iterations, seed) = (iterations * scale, seed ^ extra_seed.wrapping_mul(0x9E37_79B9));
    let ctxs = Ctxs::new();
    let mut rng = Rng::new(seed);
    let mut st = Stats::default();
    let t0 = std::time::Instant::now();
    for it in 0..iterations {
        let mut p = match family {
            Family::Forward | Family::Backward => attn_problem(&mut rng, family),
            Family::Pool | Family::Decode => paged_problem(&mut rng, family),
            Family::Merge => merge_problem(&mut rng),
        };
        run_one(&mut rng, &ctxs, &mut p, it, &mut st);
    }
    eprintln!(
        "{family:?} (seed {seed}): {iterations} problems, {} calls in {:.2} s; {} succeeded, {} replays; statuses {:?}",
        st.calls,
        t0.elapsed().as_secs_f64(),
        st.ok,
        st.replays,
        st.by_status
    );
    if !st.failures.is_empty() {
        panic!("{} problem(s) found in {family:?}:\n{}", st.failures.len(), st.failures.join("\n"));
    }
    assert!(st.ok > iterations / 10, "too few successful calls ({}): the generator is off", st.ok);
}

#[test]
fn fuzz_forward() {
    fuzz(Family::Forward, 2500, 1);
}

#[test]
fn fuzz_backward() {
    fuzz(Family::Backward, 1500, 2);
}

#[test]
fn fuzz_pool_keys_paged() {
    fuzz(Family::Pool, 2500, 3);
}

#[test]
fn fuzz_decode() {
    fuzz(Family::Decode, 2500, 4);
}

#[test]
fn fuzz_merge_states() {
    fuzz(Family::Merge, 2000, 7);
}

/// The entry points without tensors: NULL out-pointers, bad options, messages.
#[test]
fn fuzz_small_entry_points() {
    let mut rng = Rng::new(5);
    unsafe {
        assert_eq!(dashattn_context_options_default(ptr::null_mut()), DASHATTN_ERR_NULL_POINTER);
        assert_eq!(dashattn_config_default(ptr::null_mut()), DASHATTN_ERR_NULL_POINTER);
        assert_eq!(dashattn_cuda_available(ptr::null_mut()), DASHATTN_ERR_NULL_POINTER);
        assert_eq!(dashattn_context_destroy(ptr::null_mut()), DASHATTN_SUCCESS);
        // On a machine with CUDA, creating a CUDA context is slow: only a few are real.
        let mut cuda_contexts = 0;
        for _ in 0..2000 {
            let mut o: dashattn_context_options = std::mem::zeroed();
            dashattn_context_options_default(&mut o);
            let valid_size = o.struct_size;
            match rng.below(5) {
                0 => o.struct_size = rng.pick(&[0, 1, valid_size - 4, valid_size + 4, u32::MAX]),
                1 => o.backend = rng.pick(&[-1, 0, 1, 2, 3, i32::MIN, i32::MAX]),
                2 => o.device = rng.pick(&[-1, 0, 1, 7, i32::MIN, i32::MAX]),
                3 => o.num_threads = rng.pick(&[-1, 0, 1, 2, 4096, 4097, i32::MIN, i32::MAX]),
                _ => {}
            }
            let valid = o.struct_size == valid_size
                && (0..=2).contains(&o.backend)
                && o.device >= 0
                && (0..=4096).contains(&o.num_threads);
            let poison = 0xA5A5_A5A5_A5A5_A5A5usize as *mut dashattn_context;
            let mut c = poison;
            let out: *mut *mut dashattn_context = if rng.below(20) == 0 { ptr::null_mut() } else { &mut c };
            // keep thread counts cheap: only create contexts that would use few threads
            if o.num_threads > 8 || (o.num_threads == 0 && rng.chance(0.9)) {
                o.num_threads = if valid { 1 } else { o.num_threads };
            }
            if cuda_contexts >= 2 && (o.backend == DASHATTN_BACKEND_CUDA || o.backend == DASHATTN_BACKEND_AUTO) {
                o.backend = DASHATTN_BACKEND_CPU;
            }
            let s = dashattn_context_create(if rng.below(30) == 0 { ptr::null() } else { &o }, out);
            assert!((0..=14).contains(&s), "context_create returned {s}");
            if s == DASHATTN_SUCCESS {
                assert!(!out.is_null() && c != poison);
                let mut b = -1;
                assert_eq!(dashattn_context_get_backend(c, &mut b), DASHATTN_SUCCESS);
                assert!(b == DASHATTN_BACKEND_CPU || b == DASHATTN_BACKEND_CUDA);
                cuda_contexts += (b == DASHATTN_BACKEND_CUDA) as usize;
                assert_eq!(dashattn_context_set_stream(c, rng.next() as usize as *mut c_void), DASHATTN_SUCCESS);
                assert_eq!(dashattn_context_destroy(c), DASHATTN_SUCCESS);
            } else {
                assert_eq!(c, poison, "context_create wrote *out_ctx on error {s}");
                assert!(dashattn_last_error_message(ptr::null_mut(), 0) > 0);
                if !out.is_null() && o.backend != DASHATTN_BACKEND_CUDA {
                    assert!(!valid, "valid options rejected with {s}: {}", last_message());
                }
            }
        }
        for s in [i32::MIN, -1, 0, 7, 15, 16, i32::MAX] {
            let p = dashattn_status_string(s);
            assert!(!p.is_null() && !std::ffi::CStr::from_ptr(p).to_bytes().is_empty());
        }
        // message buffer handling at every small capacity
        let sent = sentinel();
        for cap in 0..sent.len() + 3 {
            let mut buf = vec![b'x'; cap + 2];
            let n = dashattn_last_error_message(if cap == 0 && rng.chance(0.5) { ptr::null_mut() } else { buf.as_mut_ptr() as *mut _ }, cap);
            assert_eq!(n, sent.len());
            if cap > 0 {
                let k = (cap - 1).min(n);
                assert_eq!(&buf[..k], &sent.as_bytes()[..k]);
                assert_eq!(buf[k], 0);
                assert_eq!(buf[k + 1], b'x');
            } else {
                assert_eq!(buf[0], b'x');
            }
        }
    }
}

/// Packed layouts: q, k, v as views into one [N, L, P, H, D] buffer, and dq, dk, dv (or the
/// forward's o) as views into another, at random slots and element offsets. An output that
/// shares an element with another tensor must be refused; views that interleave without
/// sharing an element are accepted (same dtype/shape/strides: the library's exact test;
/// brute force here decides), and then give bitwise the results of separate buffers.
#[test]
fn fuzz_packed_layouts() {
    let ctxs = Ctxs::new();
    let ctx = ctxs.real[1];
    let (scale, extra_seed) = env_knobs();
    let mut rng = Rng::new(6 ^ extra_seed.wrapping_mul(0x9E37_79B9));
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut failures: Vec<String> = Vec::new();
    for it in 0..400 * scale {
        let n = rng.range(1, 2) as usize;
        let l = rng.range(1, 40) as usize;
        let h = rng.range(1, 2) as usize;
        let d = rng.pick(&[1usize, 2, 4, 8]);
        let p = rng.range(1, 4) as usize;
        let dt = rng.pick(&[DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F16, DASHATTN_DTYPE_F64]);
        let es = esize(dt);
        let backward = rng.chance(0.6);
        let bs = rng.pick(&[16, 32]);
        let mut cfg = base_cfg(&mut rng, bs, true);
        cfg.deterministic = 1;
        // strides of a [N, L, P, H, D] buffer viewed as [N, L, H, D]
        let strides4 = [(l * p * h * d) as i64, (p * h * d) as i64, d as i64, 1];
        let view_elems = (n - 1) * l * p * h * d + (l - 1) * p * h * d + (h - 1) * d + d;
        let buf_elems = view_elems + (p - 1) * h * d + 8;
        let offsets = |v: usize| -> Vec<usize> {
            let mut out = Vec::new();
            for a in 0..n {
                for b in 0..l {
                    for c in 0..h {
                        for x in 0..d {
                            out.push(v + a * strides4[0] as usize + b * strides4[1] as usize + c * strides4[2] as usize + x);
                        }
                    }
                }
            }
            out
        };
        // inputs: q, k, v in one packed buffer (inputs may share memory); maybe also o, d_o
        let qkv = GBuf::new(buf_elems * es, es);
        fill_float(&mut rng, &qkv, dt);
        let in_off: Vec<usize> = (0..3).map(|i| (i % p) * h * d).collect();
        // outputs: 1 (o) or 3 (dq, dk, dv) views into one buffer, at slot * H * D plus a
        // small element shift now and then
        let nout = if backward { 3 } else { 1 };
        let outb = GBuf::new(buf_elems * es, es);
        let out_off: Vec<usize> = (0..nout)
            .map(|_| {
                let base = rng.below(p as u64) as usize * h * d;
                if rng.chance(0.2) {
                    base + rng.below(4) as usize
                } else {
                    base
                }
            })
            .collect();
        // sometimes an output points into the inputs' buffer
        let out_in_qkv = rng.chance(0.1);
        // brute force: does an output share an element with another output or an input?
        let mut clash = false;
        for i in 0..nout {
            let mine: std::collections::HashSet<usize> = offsets(out_off[i]).into_iter().collect();
            for j in i + 1..nout {
                clash |= offsets(out_off[j]).iter().any(|x| mine.contains(x));
            }
            if out_in_qkv {
                for &o in &in_off {
                    clash |= offsets(o).iter().any(|x| mine.contains(x));
                }
            }
        }
        let mk_t = |base: *mut u8, off: usize, shape: [usize; 4]| dashattn_tensor {
            data: unsafe { base.add(off * es) } as *mut c_void,
            dtype: dt,
            rank: 4,
            shape: [shape[0] as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64, 0, 0],
            strides: [strides4[0], strides4[1], strides4[2], strides4[3], 0, 0],
        };
        let sh = [n, l, h, d];
        let (q, k, v) = (mk_t(qkv.data, in_off[0], sh), mk_t(qkv.data, in_off[1], sh), mk_t(qkv.data, in_off[2], sh));
        let obase = if out_in_qkv { qkv.data } else { outb.data };
        let outs: Vec<dashattn_tensor> = out_off.iter().map(|&o| mk_t(obase, o, sh)).collect();
        // separate, contiguous buffers for the same problem
        let contig = |t: &dashattn_tensor| -> (GBuf, dashattn_tensor) {
            let b = GBuf::new(n * l * h * d * es, es);
            for_each_elem(4, &t.shape, &t.strides, |lin, off| unsafe { ptr::copy_nonoverlapping((t.data as *const u8).add(off * es), b.data.add(lin * es), es) });
            let dsc = dashattn_tensor { data: b.data as *mut c_void, dtype: dt, rank: 4, shape: t.shape, strides: [(l * h * d) as i64, (h * d) as i64, d as i64, 1, 0, 0] };
            (b, dsc)
        };
        let (cq, cqd) = contig(&q);
        let (ck, ckd) = contig(&k);
        let (cv, cvd) = contig(&v);
        let qkv_before = qkv.body().to_vec();
        let sdt = DASHATTN_DTYPE_F32;
        let stat_t = |b: &GBuf| dashattn_tensor { data: b.data as *mut c_void, dtype: sdt, rank: 3, shape: [n as i64, h as i64, l as i64, 0, 0, 0], strides: [(h * l) as i64, l as i64, 1, 0, 0, 0] };
        let (lse, tau) = (GBuf::new(n * h * l * 4, 4), GBuf::new(n * h * l * 4, 4));
        let (lse_t, tau_t) = (stat_t(&lse), stat_t(&tau));
        let status;
        let mut refs: Vec<(GBuf, dashattn_tensor)> = Vec::new();
        unsafe {
            if backward {
                // o, d_o, lse, tau from a contiguous forward; then the packed backward
                let (o, od) = contig(&q);
                let (d_o, dod) = contig(&k);
                assert_eq!(dashattn_forward(ctx, &cfg, &cqd, &ckd, &cvd, ptr::null(), ptr::null(), &od, &lse_t, &tau_t, ptr::null_mut(), 0), DASHATTN_SUCCESS);
                status = dashattn_backward(ctx, &cfg, &q, &k, &v, ptr::null(), ptr::null(), &od, &dod, &lse_t, &tau_t, &outs[0], &outs[1], &outs[2], ptr::null(), ptr::null_mut(), 0);
                if status == DASHATTN_SUCCESS {
                    let g: Vec<(GBuf, dashattn_tensor)> = (0..3).map(|_| contig(&q)).collect();
                    assert_eq!(
                        dashattn_backward(ctx, &cfg, &cqd, &ckd, &cvd, ptr::null(), ptr::null(), &od, &dod, &lse_t, &tau_t, &g[0].1, &g[1].1, &g[2].1, ptr::null(), ptr::null_mut(), 0),
                        DASHATTN_SUCCESS
                    );
                    refs = g;
                }
                drop((o, d_o));
            } else {
                status = dashattn_forward(ctx, &cfg, &q, &k, &v, ptr::null(), ptr::null(), &outs[0], ptr::null(), ptr::null(), ptr::null_mut(), 0);
                if status == DASHATTN_SUCCESS {
                    let (b, od) = contig(&q);
                    assert_eq!(dashattn_forward(ctx, &cfg, &cqd, &ckd, &cvd, ptr::null(), ptr::null(), &od, ptr::null(), ptr::null(), ptr::null_mut(), 0), DASHATTN_SUCCESS);
                    refs.push((b, od));
                }
            }
        }
        let what = format!("iteration {it}: {} N={n} L={l} H={h} D={d} P={p} dtype {dt}, inputs at {in_off:?}, outputs at {out_off:?} in the {} buffer", if backward { "backward" } else { "forward" }, if out_in_qkv { "inputs'" } else { "outputs'" });
        if clash {
            refused += 1;
            if status == DASHATTN_SUCCESS {
                failures.push(format!("{what}: outputs share elements but the call succeeded"));
            } else if status != DASHATTN_ERR_INVALID_ARGUMENT {
                failures.push(format!("{what}: status {status} ({}), expected INVALID_ARGUMENT", last_message()));
            }
            if !out_in_qkv && outb.body().iter().any(|&x| x != POISON) {
                failures.push(format!("{what}: refused, but the output buffer was written"));
            }
            if qkv.body() != qkv_before.as_slice() {
                failures.push(format!("{what}: refused, but the inputs were written"));
            }
            continue;
        }
        if status != DASHATTN_SUCCESS {
            failures.push(format!("{what}: disjoint views refused with {status}: {}", last_message()));
            continue;
        }
        accepted += 1;
        if !out_in_qkv && qkv.body() != qkv_before.as_slice() {
            failures.push(format!("{what}: inputs were written"));
        }
        for (i, t) in outs.iter().enumerate() {
            let mut diff = 0;
            for_each_elem(4, &t.shape, &t.strides, |lin, off| unsafe {
                let a = std::slice::from_raw_parts((t.data as *const u8).add(off * es), es);
                let b = std::slice::from_raw_parts(refs[i].0.data.add(lin * es), es);
                diff += (a != b) as usize;
            });
            if diff > 0 {
                failures.push(format!("{what}: output {i} differs from separate buffers in {diff} elements"));
            }
        }
        drop((cq, ck, cv));
    }
    eprintln!("packed layouts: {accepted} accepted, {refused} refused");
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures[..failures.len().min(20)].join("\n"));
    assert!(accepted > 50 && refused > 50);
}
