//! The accumulation type of the CPU backend: f32 (default) or f64 (reference mode).

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::dtype::Elem;

pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    fn load<E: Elem>(e: E) -> Self;
    fn store<E: Elem>(self) -> E;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
}

macro_rules! real_impl {
    ($t:ty, $load:ident, $store:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            #[inline]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn load<E: Elem>(e: E) -> Self {
                e.$load()
            }
            #[inline]
            fn store<E: Elem>(self) -> E {
                E::$store(self)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
        }
    };
}
real_impl!(f32, to_f32, from_f32);
real_impl!(f64, to_f64, from_f64);

/// Dot product of two equally long slices.
#[inline]
pub fn dot<A: Real>(a: &[A], b: &[A]) -> A {
    // Four partial sums: lets the compiler vectorise without reassociating one chain.
    let mut s = [A::ZERO; 4];
    let n4 = a.len() / 4 * 4;
    let mut i = 0;
    while i < n4 {
        s[0] += a[i] * b[i];
        s[1] += a[i + 1] * b[i + 1];
        s[2] += a[i + 2] * b[i + 2];
        s[3] += a[i + 3] * b[i + 3];
        i += 4;
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    while i < a.len() {
        t += a[i] * b[i];
        i += 1;
    }
    t
}

/// dot(q[h], b) for four q[h] at once: the same partial sums in the same order as four dot
/// calls (so the same bits), in four independent chains instead of one.
#[inline]
pub fn dot4<A: Real>(q: [&[A]; 4], b: &[A]) -> [A; 4] {
    let n = b.len();
    let (q0, q1, q2, q3) = (&q[0][..n], &q[1][..n], &q[2][..n], &q[3][..n]);
    let mut s = [[A::ZERO; 4]; 4];
    let n4 = n / 4 * 4;
    let mut i = 0;
    while i < n4 {
        for k in 0..4 {
            let bk = b[i + k];
            s[0][k] += q0[i + k] * bk;
            s[1][k] += q1[i + k] * bk;
            s[2][k] += q2[i + k] * bk;
            s[3][k] += q3[i + k] * bk;
        }
        i += 4;
    }
    let mut t = [A::ZERO; 4];
    for h in 0..4 {
        t[h] = (s[h][0] + s[h][1]) + (s[h][2] + s[h][3]);
    }
    while i < n {
        t[0] += q0[i] * b[i];
        t[1] += q1[i] * b[i];
        t[2] += q2[i] * b[i];
        t[3] += q3[i] * b[i];
        i += 1;
    }
    t
}

/// dot(q[h], b) for every q[h] into out[h] (four at a time by dot4; the same bits as dot).
#[inline]
pub fn dots<A: Real>(q: &[&[A]], b: &[A], out: &mut [A]) {
    let mut h = 0;
    while h + 4 <= q.len() {
        out[h..h + 4].copy_from_slice(&dot4([q[h], q[h + 1], q[h + 2], q[h + 3]], b));
        h += 4;
    }
    for (o, qh) in out[h..q.len()].iter_mut().zip(&q[h..]) {
        *o = dot(qh, b);
    }
}

/// y += a * x
#[inline]
pub fn axpy<A: Real>(y: &mut [A], a: A, x: &[A]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Loads `d` contiguous storage elements into an accumulation-type row.
///
/// # Safety
/// `p` must point to `out.len()` readable elements.
#[inline]
pub unsafe fn load_row<A: Real, E: Elem>(p: *const E, out: &mut [A]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = A::load(*p.add(i));
    }
}
