//! Pieces shared by the CPU forward, backward and decode: block geometry (SPEC 3.2), the
//! coarse stage of one selection unit (SPEC 3.3), key/value access, scratch memory, and a
//! small work-sharing loop over both cores.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu::real::Real;
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
    let mut ds = vec![A::ZERO; qs.len()];
    for &j in cand {
        let kb = &pooled[j * d..(j + 1) * d];
        crate::cpu::real::dots(qs, kb, &mut ds);  // (dot of each head, four heads at a time)
        let mut acc = A::ZERO;
        for &x in &ds {
            acc += x;
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

/// A row of D elements at `p` as accumulation values: the storage itself when the two types
/// are one, else converted into `buf`.
///
/// # Safety
/// `p` must point to `buf.len()` readable elements that outlive the returned slice.
#[inline]
unsafe fn row_at<'a, A: Real, E: Elem>(p: *const E, buf: &'a mut [A]) -> &'a [A] {
    if std::any::TypeId::of::<A>() == std::any::TypeId::of::<E>() {
        std::slice::from_raw_parts(p as *const A, buf.len())
    } else {
        crate::cpu::real::load_row(p, buf);
        buf
    }
}

/// Keys ahead of the one in use whose rows attend asks the cache for: a (sequence, KV
/// head)'s rows lie Hkv * D elements apart, too far for the hardware prefetcher.
const PREFETCH_KEYS: usize = 8;

/// A cache hint for the `d` elements at p (x86-64; nothing elsewhere).
#[inline]
fn prefetch_row<E>(p: *const E, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = d * std::mem::size_of::<E>();
        let mut o = 0;
        while o < bytes {
            // SAFETY: a prefetch does not access memory (no fault on any address).
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((p as *const i8).wrapping_add(o)) };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, d);
}

/// Fine stage for the heads of one selection unit at position t (SPEC 3.4): for each head h
/// (query qs[h]) an online softmax over the keys of `blocks` (block, log-prior), each key's
/// and value's row read once for all the heads. Head h's normalised output goes to
/// out[h * D..(h + 1) * D] and its lse to lse[h] (-inf and a zero output when no key is
/// attended). Each head's arithmetic, in its order, is that of one head's softmax alone, so
/// the results do not depend on how many heads share the call. `row` holds D values, `st`
/// is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend<A: Real, E: Elem, K: KeyValues<E>>(
    geo: &Geometry,
    t: i64,
    qs: &[&[A]],
    kv: &K,
    blocks: &[(usize, A)],
    sigma: A,
    row: &mut [A],
    st: &mut Vec<A>,
    out: &mut [A],
    lse: &mut [A],
) {
    let (nh, d) = (qs.len(), row.len());
    st.clear();
    st.resize(4 * nh, A::ZERO);
    let (m, rest) = st.split_at_mut(nh);
    let (l, rest) = rest.split_at_mut(nh);
    let (p, sc) = rest.split_at_mut(nh);
    m.iter_mut().for_each(|x| *x = A::NEG_INF);
    out[..nh * d].iter_mut().for_each(|x| *x = A::ZERO);
    for (bi, &(j, beta)) in blocks.iter().enumerate() {
        let keys = geo.keys(j, t);
        // (the key PREFETCH_KEYS ahead: in this block, else at the start of the next one)
        let next = blocks.get(bi + 1).map_or(0..0, |&(jn, _)| geo.keys(jn, t));
        for i in keys.clone() {
            let ahead = i + PREFETCH_KEYS;
            let ahead = if ahead < keys.end { Some(ahead) } else { Some(next.start + (ahead - keys.end)).filter(|&x| x < next.end) };
            if let Some(x) = ahead {
                prefetch_row(kv.key(x), d);
                prefetch_row(kv.value(x), d);
            }
            let kr = unsafe { row_at(kv.key(i), row) };
            crate::cpu::real::dots(qs, kr, sc);
            for h in 0..nh {
                let s = sigma * sc[h] + beta;
                if s > m[h] {
                    let scale = (m[h] - s).exp();
                    l[h] *= scale;
                    out[h * d..(h + 1) * d].iter_mut().for_each(|x| *x *= scale);
                    m[h] = s;
                }
                p[h] = (s - m[h]).exp();
                l[h] += p[h];
            }
            let vr = unsafe { row_at(kv.value(i), row) };
            for h in 0..nh {
                crate::cpu::real::axpy(&mut out[h * d..(h + 1) * d], p[h], vr);
            }
        }
    }
    for h in 0..nh {
        lse[h] = if l[h] > A::ZERO {
            let inv = A::ONE / l[h];
            out[h * d..(h + 1) * d].iter_mut().for_each(|x| *x *= inv);
            m[h] + l[h].ln()
        } else {
            A::NEG_INF
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::real::{axpy, dot, load_row};

    /// Rows of a [L, D] buffer.
    struct Rows<E> {
        k: Vec<E>,
        v: Vec<E>,
        d: usize,
    }
    impl<E: Elem> KeyValues<E> for Rows<E> {
        fn key(&self, i: usize) -> *const E {
            self.k[i * self.d..].as_ptr()
        }
        fn value(&self, i: usize) -> *const E {
            self.v[i * self.d..].as_ptr()
        }
    }

    /// One head's online softmax, key by key (the form attend had before it took several
    /// heads): attend must give each head exactly these bits.
    fn one_head<A: Real, E: Elem, K: KeyValues<E>>(geo: &Geometry, t: i64, q: &[A], kv: &K, blocks: &[(usize, A)], sigma: A, out: &mut [A]) -> A {
        let (mut m, mut l) = (A::NEG_INF, A::ZERO);
        let mut row = vec![A::ZERO; q.len()];
        out.iter_mut().for_each(|x| *x = A::ZERO);
        for &(j, beta) in blocks {
            for i in geo.keys(j, t) {
                unsafe { load_row(kv.key(i), &mut row) };
                let s = sigma * dot(q, &row) + beta;
                if s > m {
                    let scale = (m - s).exp();
                    l *= scale;
                    out.iter_mut().for_each(|x| *x *= scale);
                    m = s;
                }
                let p = (s - m).exp();
                l += p;
                unsafe { load_row(kv.value(i), &mut row) };
                axpy(out, p, &row);
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

    fn check<A: Real, E: Elem>(seed: u64, nh: usize) {
        let (lk, d, bs) = (333usize, 66usize, 32usize);
        let mut x = seed;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let kv = Rows { k: (0..lk * d).map(|_| E::from_f64(rnd())).collect::<Vec<E>>(), v: (0..lk * d).map(|_| E::from_f64(rnd())).collect(), d };
        let qv: Vec<A> = (0..nh * d).map(|_| A::of(3.0 * rnd())).collect();
        let qs: Vec<&[A]> = (0..nh).map(|h| &qv[h * d..(h + 1) * d]).collect();
        let geo = Geometry::new(1, lk, bs, 1, true);
        let t = lk as i64 - 1;
        // blocks in no particular order, the partial last one local (log-prior 0)
        let blocks: Vec<(usize, A)> = vec![(7, A::of(-0.3)), (2, A::of(-1.7)), (0, A::of(-0.01)), (9, A::of(-4.0)), (10, A::ZERO)];
        let (mut row, mut st, mut out, mut lse) = (vec![A::ZERO; d], Vec::new(), vec![A::ZERO; nh * d], vec![A::ZERO; nh]);
        attend::<A, E, _>(&geo, t, &qs, &kv, &blocks, A::of(0.125), &mut row, &mut st, &mut out, &mut lse);
        let mut one = vec![A::ZERO; d];
        for h in 0..nh {
            let l1 = one_head::<A, E, _>(&geo, t, qs[h], &kv, &blocks, A::of(0.125), &mut one);
            assert_eq!(lse[h].f64().to_bits(), l1.f64().to_bits(), "lse of head {h}");
            for (a, b) in out[h * d..(h + 1) * d].iter().zip(&one) {
                assert_eq!(a.f64().to_bits(), b.f64().to_bits(), "o of head {h}");
            }
        }
        // no key attended: lse -inf, o zero
        attend::<A, E, _>(&geo, t, &qs, &kv, &[], A::of(0.125), &mut row, &mut st, &mut out, &mut lse);
        assert!(lse.iter().all(|&l| l == A::NEG_INF) && out.iter().all(|&o| o == A::ZERO));
    }

    #[test]
    fn coarse_scores_equal_one_dot_at_a_time_bitwise() {
        let d = 70;
        let pooled: Vec<f32> = (0..9 * d).map(|i| ((i * 7919 % 263) as f32 - 131.0) / 37.0).collect();
        for nh in [1, 4, 6] {
            let qv: Vec<f32> = (0..nh * d).map(|i| ((i * 104729 % 211) as f32 - 105.0) / 29.0).collect();
            let qs: Vec<&[f32]> = (0..nh).map(|h| &qv[h * d..(h + 1) * d]).collect();
            let cand = [8, 0, 3, 5];
            let mut z = Vec::new();
            coarse_scores(&cand, &qs, &pooled, d, 0.3, &mut z);
            for (zi, &j) in z.iter().zip(&cand) {
                let mut acc = 0f32;
                for q in &qs {
                    acc += dot(q, &pooled[j * d..(j + 1) * d]);
                }
                assert_eq!(zi.to_bits(), (acc as f64 * (0.3 / nh as f64)).to_bits(), "block {j}, {nh} heads");
            }
        }
    }

    #[test]
    fn attend_heads_together_equals_one_head_at_a_time_bitwise() {
        // (7 heads: dot4 once and three single dots; D 66: the dots' tails)
        for nh in [1, 4, 7] {
            check::<f32, f32>(0x9e3779b97f4a7c15, nh);
            check::<f64, f32>(0x2545f4914f6cdd1d, nh);
            check::<f64, f64>(0x369dea0f31a53f85, nh);
            check::<f32, half::bf16>(0xdb4f0b9175ae2165, nh);
            check::<f32, half::f16>(0x94d049bb133111eb, nh);
        }
    }
}
