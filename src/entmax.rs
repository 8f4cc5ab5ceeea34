//! alpha-entmax over a score vector: the exact threshold tau and the quantities the forward
//! and backward need (SPEC 3.3 and 4). One implementation, shared by every CPU path and the
//! tests. Always solved in f64: it is O(n log n) per row, cheap beside the fine stage.
//!
//! Convention: x_j = [(alpha - 1) z_j - tau]_+, p_j = x_j^(1/(alpha-1)), sum_j p_j = 1.
//! alpha = 1 is softmax with tau = logsumexp(z), alpha = 2 is sparsemax.

fn sorted_desc(s: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = s.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v
}

/// Sparsemax threshold of s (sum [s - tau]_+ = 1), sort-based closed form.
fn sparsemax_tau(s: &[f64]) -> f64 {
    let v = sorted_desc(s);
    let (mut cum, mut tau) = (0.0, v[0] - 1.0);
    for (k, &vk) in v.iter().enumerate() {
        cum += vk;
        let t = (cum - 1.0) / (k + 1) as f64;
        if vk > t {
            tau = t;
        } else {
            break;
        }
    }
    tau
}

/// 1.5-entmax threshold of s (sum [s - tau]_+^2 = 1), sort-based closed form
/// (Peters, Niculae and Martins, 2019).
fn entmax15_tau(s: &[f64]) -> f64 {
    let v = sorted_desc(s);
    let (mut sum, mut sumsq) = (0.0, 0.0);
    let mut tau = v[0] - 1.0;
    for (k, &vk) in v.iter().enumerate() {
        sum += vk;
        sumsq += vk * vk;
        let kk = (k + 1) as f64;
        let mean = sum / kk;
        let ss = sumsq / kk - mean * mean;
        let delta = (1.0 - kk * ss) / kk;
        if delta < 0.0 {
            break;
        }
        let t = mean - delta.sqrt();
        if t <= vk {
            tau = t;
        } else {
            break;
        }
    }
    tau
}

/// sum_j [s_j - tau]_+^k - 1 and its derivative in tau.
fn mass(s: &[f64], tau: f64, k: f64) -> (f64, f64) {
    let (mut f, mut df) = (-1.0, 0.0);
    for &sj in s {
        let x = sj - tau;
        if x > 0.0 {
            let xk1 = x.powf(k - 1.0);
            f += xk1 * x;
            df -= k * xk1;
        }
    }
    (f, df)
}

/// General alpha in (1, 2): safeguarded Newton inside the bracket
/// [max s - 1, max s - n^(1-alpha)]. The mass is convex and decreasing in tau, so Newton
/// steps from the left end stay left of the root; a bisection step each iteration bounds
/// the work when Newton is slow (alpha near 1: high powers).
fn general_tau(s: &[f64], alpha: f64) -> f64 {
    let k = 1.0 / (alpha - 1.0);
    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let n = s.len() as f64;
    let mut lo = max - 1.0;
    let mut hi = max - n.powf(1.0 - alpha);
    for _ in 0..200 {
        let (f, df) = mass(s, lo, k);
        if f <= 0.0 || df == 0.0 {
            return lo;
        }
        let newton = lo - f / df;
        if newton > lo && newton < hi {
            let (fn_, _) = mass(s, newton, k);
            if fn_ >= 0.0 {
                lo = newton;
            } else {
                hi = newton;
            }
        }
        let mid = 0.5 * (lo + hi);
        if !(mid > lo && mid < hi) {
            break;
        }
        let (fm, _) = mass(s, mid, k);
        if fm >= 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Both ends agree to the last bit (or f hit zero): take the one with less residual.
    let (flo, _) = mass(s, lo, k);
    let (fhi, _) = mass(s, hi, k);
    if flo.abs() <= fhi.abs() {
        lo
    } else {
        hi
    }
}

/// The entmax threshold tau of scores z (see the module docs for the convention).
/// Returns -inf for an empty z (no candidates).
pub fn threshold(z: &[f64], alpha: f64) -> f64 {
    if z.is_empty() {
        return f64::NEG_INFINITY;
    }
    if alpha <= 1.0 {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = z.iter().map(|&zj| (zj - m).exp()).sum();
        return m + s.ln();
    }
    let s: Vec<f64> = z.iter().map(|&zj| (alpha - 1.0) * zj).collect();
    if alpha >= 2.0 {
        sparsemax_tau(&s)
    } else if alpha == 1.5 {
        entmax15_tau(&s)
    } else {
        general_tau(&s, alpha)
    }
}

/// log p_j for score z_j, or None when the block is not selected (x_j <= 0).
#[inline]
pub fn log_prob(zj: f64, tau: f64, alpha: f64) -> Option<f64> {
    if alpha <= 1.0 {
        return Some(zj - tau);
    }
    let x = (alpha - 1.0) * zj - tau;
    if x > 0.0 {
        Some(x.ln() / (alpha - 1.0))
    } else {
        None
    }
}

/// s_j = p_j^(2 - alpha), the weight of the entmax Jacobian (SPEC 4), from z_j and tau;
/// 0 outside the support.
#[inline]
pub fn jacobian_weight(zj: f64, tau: f64, alpha: f64) -> f64 {
    if alpha <= 1.0 {
        (zj - tau).exp()
    } else {
        let x = (alpha - 1.0) * zj - tau;
        if x <= 0.0 {
            0.0
        } else if alpha >= 2.0 {
            1.0
        } else {
            x.powf((2.0 - alpha) / (alpha - 1.0))
        }
    }
}

/// The full probability vector (tests and diagnostics).
pub fn probs(z: &[f64], alpha: f64) -> Vec<f64> {
    let tau = threshold(z, alpha);
    z.iter().map(|&zj| log_prob(zj, tau, alpha).map_or(0.0, f64::exp)).collect()
}

/// Vector-Jacobian product over the support: dz_j = s_j (h_j - sum s h / sum s).
/// `s` holds jacobian_weight for each entry (0 outside the support).
pub fn vjp(s: &[f64], h: &[f64], dz: &mut [f64]) {
    let ss: f64 = s.iter().sum();
    let sh: f64 = s.iter().zip(h).map(|(a, b)| a * b).sum();
    let mean = if ss > 0.0 { sh / ss } else { 0.0 };
    for ((d, &sj), &hj) in dz.iter_mut().zip(s).zip(h) {
        *d = sj * (hj - mean);
    }
}
