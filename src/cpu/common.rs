//! Pieces shared by the CPU forward, backward and decode: block geometry (SPEC 3.2), the
//! coarse stage of one selection unit (SPEC 3.3), key/value access, scratch memory, and a
//! small work-sharing loop over both cores.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu::real::{dot, Real};
use crate::dtype::Elem;
use crate::entmax;
use crate::error::{bail, Result};
use crate::params::{bytes_of, Tensor, Workspace, WORKSPACE_ALIGN};

/// Block geometry of one sequence: which blocks are candidates and local for a query
/// position, and which keys of a block it attends.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub lq: usize,
    pub lk: usize,
    pub nb: usize,
    pub bs: usize,
    pub n_local: usize,
    pub causal: bool,
}

impl Geometry {
    pub fn new(lq: usize, lk: usize, bs: usize, n_local: usize, causal: bool) -> Geometry {
        Geometry { lq, lk, nb: lk.div_ceil(bs), bs, n_local, causal }
    }

    /// Absolute position of query row r (bottom-right alignment).
    #[inline]
    pub fn position(&self, r: usize) -> i64 {
        self.lk as i64 - self.lq as i64 + r as i64
    }

    /// Fills the candidate and local block lists of position t, each in increasing order.
    pub fn blocks(&self, t: i64, cand: &mut Vec<usize>, local: &mut Vec<usize>) {
        cand.clear();
        local.clear();
        let nl = self.n_local as i64;
        let c = t.div_euclid(self.bs as i64);
        if self.causal {
            if t < 0 {
                return;
            }
            let first_local = (c - nl + 1).max(0);
            cand.extend(0..first_local as usize);
            local.extend(first_local as usize..=c as usize);
        } else {
            for j in 0..self.nb {
                if (j as i64 - c).abs() < nl {
                    local.push(j);
                } else {
                    cand.push(j);
                }
            }
        }
    }

    /// Keys of block j attended from position t.
    #[inline]
    pub fn keys(&self, j: usize, t: i64) -> Range<usize> {
        let start = j * self.bs;
        let mut end = ((j + 1) * self.bs).min(self.lk);
        if self.causal {
            end = end.min((t + 1).max(0) as usize);
        }
        start..end.max(start)
    }

    /// Number of keys present in block j.
    #[inline]
    pub fn block_len(&self, j: usize) -> usize {
        ((j + 1) * self.bs).min(self.lk) - j * self.bs
    }
}

/// Read access to the keys and values of one (sequence, KV head).
pub trait KeyValues<E: Elem>: Sync {
    /// Pointer to the D elements of key i.
    fn key(&self, i: usize) -> *const E;
    /// Pointer to the D elements of value i.
    fn value(&self, i: usize) -> *const E;
}

/// Keys and values of a strided [N, L, H, D] pair of tensors, at fixed (n, h).
pub struct StridedKv<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub n: usize,
    pub h: usize,
}

impl<E: Elem> KeyValues<E> for StridedKv<'_> {
    #[inline]
    fn key(&self, i: usize) -> *const E {
        self.k.ptr_at::<E>(&[self.n, i, self.h, 0])
    }
    #[inline]
    fn value(&self, i: usize) -> *const E {
        self.v.ptr_at::<E>(&[self.n, i, self.h, 0])
    }
}

/// Coarse scores of one selection unit (SPEC 3.3): z_j = sigma_c * mean over the unit's
/// heads of <q_h, kbar_j>, for each candidate j. `pooled` is [nb, D] of this KV head.
pub fn coarse_scores<A: Real>(cand: &[usize], qs: &[&[A]], pooled: &[A], d: usize, sigma_c: f64, z: &mut Vec<f64>) {
    z.clear();
    let inv = sigma_c / qs.len() as f64;
    for &j in cand {
        let kb = &pooled[j * d..(j + 1) * d];
        let mut acc = A::ZERO;
        for q in qs {
            acc += dot(q, kb);
        }
        z.push(acc.f64() * inv);
    }
}

/// The coarse stage of one selection unit: scores, entmax threshold, and the selected
/// blocks with their log-prior beta_j. Returns tau.
pub fn select_blocks<A: Real>(
    cand: &[usize],
    qs: &[&[A]],
    pooled: &[A],
    d: usize,
    sigma_c: f64,
    alpha: f64,
    z: &mut Vec<f64>,
    selected: &mut Vec<(usize, A)>,
) -> f64 {
    coarse_scores(cand, qs, pooled, d, sigma_c, z);
    let tau = entmax::threshold(z, alpha);
    selected.clear();
    for (idx, &j) in cand.iter().enumerate() {
        if let Some(beta) = entmax::log_prob(z[idx], tau, alpha) {
            selected.push((j, A::of(beta)));
        }
    }
    tau
}

/// Fine stage for one head at position t (SPEC 3.4): online softmax over the keys of
/// `blocks` (block, log-prior). Writes the normalised output into `out` and returns lse
/// (-inf and a zero output when no key is attended).
#[allow(clippy::too_many_arguments)]
pub fn attend<A: Real, E: Elem, K: KeyValues<E>>(
    geo: &Geometry,
    t: i64,
    q: &[A],
    kv: &K,
    blocks: &[(usize, A)],
    sigma: A,
    row: &mut [A],
    out: &mut [A],
) -> A {
    let mut m = A::NEG_INF;
    let mut l = A::ZERO;
    out.iter_mut().for_each(|x| *x = A::ZERO);
    for &(j, beta) in blocks {
        for i in geo.keys(j, t) {
            unsafe { crate::cpu::real::load_row(kv.key(i), row) };
            let s = sigma * dot(q, row) + beta;
            if s > m {
                let scale = (m - s).exp();
                l *= scale;
                out.iter_mut().for_each(|x| *x *= scale);
                m = s;
            }
            let p = (s - m).exp();
            l += p;
            unsafe { crate::cpu::real::load_row(kv.value(i), row) };
            crate::cpu::real::axpy(out, p, row);
        }
    }
    if l > A::ZERO {
        let inv = A::ONE / l;
        out.iter_mut().for_each(|x| *x *= inv);
        m + l.ln()
    } else {
        A::NEG_INF
    }
}

/// Mean of `count` keys (fetched by `key`) into `out`.
pub fn mean_pool<A: Real, E: Elem>(count: usize, key: impl Fn(usize) -> *const E, row: &mut [A], out: &mut [A]) {
    out.iter_mut().for_each(|x| *x = A::ZERO);
    for i in 0..count {
        unsafe { crate::cpu::real::load_row(key(i), row) };
        crate::cpu::real::axpy(out, A::ONE, row);
    }
    let inv = A::ONE / A::of(count as f64);
    out.iter_mut().for_each(|x| *x *= inv);
}

/// Writes a per-row statistic (lse or tau) in the tensor's dtype (f32 or f64).
#[inline]
pub unsafe fn store_stat(t: &Tensor, idx: &[usize], v: f64) {
    match t.dtype {
        crate::dtype::DType::F64 => *t.ptr_at::<f64>(idx) = v,
        _ => *t.ptr_at::<f32>(idx) = v as f32,
    }
}

/// Reads a per-row statistic (lse or tau).
#[inline]
pub fn load_stat(t: &Tensor, idx: &[usize]) -> f64 {
    unsafe {
        match t.dtype {
            crate::dtype::DType::F64 => *t.ptr_at::<f64>(idx),
            _ => *t.ptr_at::<f32>(idx) as f64,
        }
    }
}

/// Per query head alpha: the head_alpha tensor (validated to [1, 2]) or the config value.
pub fn head_alphas(head_alpha: Option<&Tensor>, alpha: f32, hq: usize) -> Result<Vec<f64>> {
    match head_alpha {
        None => Ok(vec![alpha as f64; hq]),
        Some(t) => (0..hq)
            .map(|h| {
                let a = unsafe { *t.ptr_at::<f32>(&[h]) };
                if !(1.0..=2.0).contains(&a) {
                    bail!(InvalidArgument, "head_alpha[{h}] = {a} (alpha must lie in [1, 2])");
                }
                Ok(a as f64)
            })
            .collect(),
    }
}

/// Runs f(0..n) on up to `threads` scoped threads, handing out indices one at a time.
pub fn parallel_for(threads: usize, n: usize, f: impl Fn(usize) + Sync) {
    if threads <= 1 || n <= 1 {
        (0..n).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
}

/// A raw pointer that may cross threads: every worker writes disjoint elements.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the Send wrapper, not the raw field).
    #[inline]
    pub fn get(&self) -> *mut T {
        self.0
    }
}

/// Accumulation-type scratch buffers carved from the caller's workspace, or owned when the
/// caller passed none.
pub struct Scratch {
    owned: Vec<u64>,
    base: usize,
    len: usize,
    used: usize,
}

impl Scratch {
    /// Bytes a list of buffers of `counts` elements of `elem` bytes needs (each 256-aligned).
    pub fn bytes(counts: &[usize], elem: usize) -> Result<usize> {
        counts.iter().try_fold(0usize, |acc, &c| {
            let b = bytes_of(&[c, elem], "workspace")?;
            let b = b.checked_add(WORKSPACE_ALIGN - 1).map(|x| x / WORKSPACE_ALIGN * WORKSPACE_ALIGN);
            b.and_then(|b| acc.checked_add(b)).ok_or_else(|| crate::error::Error::Overflow("workspace size overflows".into()))
        })
    }

    pub fn new(ws: Workspace, need: usize) -> Result<Scratch> {
        ws.check(need)?;
        if ws.ptr != 0 {
            Ok(Scratch { owned: Vec::new(), base: ws.ptr, len: ws.len, used: 0 })
        } else {
            let mut owned: Vec<u64> = Vec::new();
            owned.try_reserve_exact(need / 8 + WORKSPACE_ALIGN / 8).map_err(|_| crate::error::Error::OutOfMemory(format!("could not allocate {need} bytes of scratch")))?;
            owned.resize(need / 8 + WORKSPACE_ALIGN / 8, 0);
            let p = owned.as_mut_ptr() as usize;
            let base = p.next_multiple_of(WORKSPACE_ALIGN);
            let len = owned.len() * 8 - (base - p);
            Ok(Scratch { owned, base, len, used: 0 })
        }
    }

    /// The next zeroed buffer of `count` elements.
    pub fn take<A: Real>(&mut self, count: usize) -> &'static mut [A] {
        let bytes = count * std::mem::size_of::<A>();
        let start = self.base + self.used;
        assert!(self.used + bytes <= self.len, "scratch overrun: sizing bug");
        self.used += bytes.next_multiple_of(WORKSPACE_ALIGN);
        // SAFETY: in bounds (asserted), aligned to 256, disjoint from earlier takes; the
        // memory outlives its use because the Scratch lives for the whole call.
        let s = unsafe { std::slice::from_raw_parts_mut(start as *mut A, count) };
        s.iter_mut().for_each(|x| *x = A::ZERO);
        let _ = &self.owned;
        s
    }
}
