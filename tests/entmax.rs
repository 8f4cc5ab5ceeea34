//! alpha-entmax properties (SPEC 3.3, 6).

mod common;
use common::Rng;
use dashattn::entmax;

fn sparsemax_reference(z: &[f64]) -> Vec<f64> {
    // Projection onto the simplex by bisection on tau (independent of the sort-based form).
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (mut lo, mut hi) = (max - 1.0, max);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let s: f64 = z.iter().map(|&x| (x - mid).max(0.0)).sum();
        if s >= 1.0 {
            lo = mid
        } else {
            hi = mid
        }
    }
    z.iter().map(|&x| (x - lo).max(0.0)).collect()
}

fn cases(rng: &mut Rng) -> Vec<Vec<f64>> {
    let mut v = vec![vec![0.3], vec![1.0, 1.0], vec![5.0, -5.0, 0.0], vec![0.0; 7]];
    for n in [2usize, 3, 10, 64, 257, 1000] {
        for scale in [0.1, 1.0, 4.0, 30.0] {
            v.push((0..n).map(|_| rng.normal() * scale).collect());
        }
    }
    v
}

const ALPHAS: [f64; 8] = [1.0, 1.01, 1.1, 1.3, 1.5, 1.7, 1.99, 2.0];

#[test]
fn sums_to_one_and_tau_in_bracket() {
    let mut rng = Rng::new(1);
    let mut worst = 0.0f64;
    for z in cases(&mut rng) {
        for alpha in ALPHAS {
            let p = entmax::probs(&z, alpha);
            let s: f64 = p.iter().sum();
            worst = worst.max((s - 1.0).abs());
            assert!((s - 1.0).abs() < 1e-6, "alpha {alpha} n {} sum {s}", z.len());
            assert!(p.iter().all(|&x| (0.0..=1.0 + 1e-12).contains(&x)));
            if alpha > 1.0 {
                let tau = entmax::threshold(&z, alpha);
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max) * (alpha - 1.0);
                let hi = m - (z.len() as f64).powf(1.0 - alpha);
                assert!(tau >= m - 1.0 - 1e-12 && tau <= hi + 1e-12, "tau {tau} outside [{}, {hi}]", m - 1.0);
            }
        }
    }
    eprintln!("largest |sum p - 1| = {worst:e}");
}

#[test]
fn exact_zeros_for_alpha_above_one() {
    let z: Vec<f64> = vec![3.0, 2.9, 0.0, -1.0, -4.0];
    for alpha in [1.3, 1.5, 2.0] {
        let p = entmax::probs(&z, alpha);
        assert_eq!(p[4], 0.0, "alpha {alpha}: {p:?}");
        assert!(p[0] > p[1] && p[1] > 0.0);
    }
    let p = entmax::probs(&z, 1.0);
    assert!(p.iter().all(|&x| x > 0.0));
}

#[test]
fn alpha_two_is_sparsemax() {
    let mut rng = Rng::new(2);
    for z in cases(&mut rng) {
        let p = entmax::probs(&z, 2.0);
        let r = sparsemax_reference(&z);
        for (a, b) in p.iter().zip(&r) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }
}

#[test]
fn alpha_one_is_softmax() {
    let mut rng = Rng::new(3);
    for z in cases(&mut rng) {
        let p = entmax::probs(&z, 1.0);
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = z.iter().map(|x| (x - m).exp()).sum();
        for (a, x) in p.iter().zip(&z) {
            assert!((a - (x - m).exp() / s).abs() < 1e-12);
        }
    }
}

#[test]
fn closed_forms_agree_with_general_solver() {
    // alpha = 1.5 uses a sort-based closed form; 1.5 +- tiny uses the Newton/bisection path.
    let mut rng = Rng::new(4);
    for z in cases(&mut rng) {
        let a = entmax::probs(&z, 1.5);
        let b = entmax::probs(&z, 1.5 + 1e-9);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
        let c = entmax::probs(&z, 2.0 - 1e-9);
        let d = entmax::probs(&z, 2.0);
        for (x, y) in c.iter().zip(&d) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
}

#[test]
fn vjp_matches_finite_differences() {
    let mut rng = Rng::new(5);
    for alpha in [1.0, 1.25, 1.5, 1.8, 2.0] {
        let z: Vec<f64> = (0..12).map(|_| rng.normal() * 2.0).collect();
        let h: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
        let tau = entmax::threshold(&z, alpha);
        let s: Vec<f64> = z.iter().map(|&x| entmax::jacobian_weight(x, tau, alpha)).collect();
        let mut dz = vec![0.0; z.len()];
        entmax::vjp(&s, &h, &mut dz);
        let f = |z: &[f64]| -> f64 { entmax::probs(z, alpha).iter().zip(&h).map(|(p, h)| p * h).sum() };
        for j in 0..z.len() {
            let e = 1e-6;
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp[j] += e;
            zm[j] -= e;
            let fd = (f(&zp) - f(&zm)) / (2.0 * e);
            assert!((fd - dz[j]).abs() < 1e-6, "alpha {alpha} j {j}: fd {fd} vjp {}", dz[j]);
        }
    }
}
