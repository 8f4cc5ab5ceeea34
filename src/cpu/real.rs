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
