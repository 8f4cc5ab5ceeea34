//! Training-style check through the C ABI: a few steps of gradient descent on a toy
//! objective give the same loss curve on the GPU (bf16) and the CPU (f32). Skips cleanly
//! (reported) without a GPU.

mod common;
use common::*;
use dashattn::cuda::util::DeviceBuffer;
use dashattn::ffi::context::*;
use dashattn::ffi::ops::*;
use dashattn::ffi::types::*;
use half::bf16;
use std::ffi::c_void;

fn desc(ptr: u64, dtype: i32, shape: &[usize]) -> dashattn_tensor {
    let mut t = dashattn_tensor { data: ptr as *mut c_void, dtype, rank: shape.len() as i32, shape: [0; 6], strides: [0; 6] };
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        t.shape[i] = shape[i] as i64;
        t.strides[i] = acc;
        acc *= shape[i] as i64;
    }
    t
}

/// Where the tensors of one run live: host vectors (CPU) or device copies (CUDA).
trait Store {
    /// A copy of `v` in the run's attention dtype; returns (pointer, dtype).
    fn put(&mut self, v: &[f32]) -> (u64, i32);
    /// A zeroed f32 buffer of `n` elements (lse, tau).
    fn stat(&mut self, n: usize) -> u64;
    fn get(&mut self, ptr: u64, out: &mut [f32]);
}

struct Host(Vec<Vec<f32>>);
impl Store for Host {
    fn put(&mut self, v: &[f32]) -> (u64, i32) {
        self.0.push(v.to_vec());
        (self.0.last_mut().unwrap().as_mut_ptr() as u64, DASHATTN_DTYPE_F32)
    }
    fn stat(&mut self, n: usize) -> u64 {
        self.put(&vec![0.0; n]).0
    }
    fn get(&mut self, ptr: u64, out: &mut [f32]) {
        out.copy_from_slice(unsafe { std::slice::from_raw_parts(ptr as *const f32, out.len()) });
    }
}

struct Dev<'a>(&'a dashattn::cuda::CudaDevice, Vec<DeviceBuffer<'a>>);
impl Store for Dev<'_> {
    fn put(&mut self, v: &[f32]) -> (u64, i32) {
        let b: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
        self.1.push(DeviceBuffer::from_slice(self.0, &b).unwrap());
        (self.1.last().unwrap().ptr, DASHATTN_DTYPE_BF16)
    }
    fn stat(&mut self, n: usize) -> u64 {
        self.1.push(DeviceBuffer::from_slice(self.0, &vec![0f32; n]).unwrap());
        self.1.last().unwrap().ptr
    }
    fn get(&mut self, ptr: u64, out: &mut [f32]) {
        let b = self.1.iter().find(|b| b.ptr == ptr).unwrap();
        let mut h = vec![0u16; out.len()];
        b.download(&mut h).unwrap();
        for (o, x) in out.iter_mut().zip(h) {
            *o = bf16::from_bits(x).to_f32();
        }
    }
}

/// Loss 0.5 ||o - target||^2 after each of `steps` SGD steps on q, k, v.
fn loss_curve(ctx: *mut dashattn_context, st: &mut dyn Store, p: &Problem, target: &[f32], steps: usize, lr: f32) -> Vec<f64> {
    let mut cfg = unsafe { std::mem::zeroed::<dashattn_config>() };
    assert_eq!(unsafe { dashattn_config_default(&mut cfg) }, DASHATTN_SUCCESS);
    cfg.block_size = 32;
    let (qs, ks, ss) = (p.q_shape(), p.k_shape(), [p.n, p.hq, p.lq]);
    let (mut q, mut k, mut v) = (p.q.clone(), p.k.clone(), p.v.clone());
    let mut curve = Vec::new();
    for _ in 0..=steps {
        let (qp, dt) = st.put(&q);
        let (kp, _) = st.put(&k);
        let (vp, _) = st.put(&v);
        let (op, _) = st.put(&vec![0.0; q.len()]);
        let (lp, tp) = (st.stat(p.n * p.hq * p.lq), st.stat(p.n * p.hq * p.lq));
        let (tq, tk, tv, to) = (desc(qp, dt, &qs), desc(kp, dt, &ks), desc(vp, dt, &ks), desc(op, dt, &qs));
        let (tl, tt) = (desc(lp, DASHATTN_DTYPE_F32, &ss), desc(tp, DASHATTN_DTYPE_F32, &ss));
        let null = std::ptr::null();
        let s = unsafe { dashattn_forward(ctx, &cfg, &tq, &tk, &tv, null, null, &to, &tl, &tt, std::ptr::null_mut(), 0) };
        assert_eq!(s, DASHATTN_SUCCESS);
        let mut o = vec![0f32; q.len()];
        st.get(op, &mut o);
        let loss: f64 = o.iter().zip(target).map(|(a, b)| 0.5 * ((a - b) as f64).powi(2)).sum();
        curve.push(loss);
        if curve.len() > steps {
            break;
        }
        let d_o: Vec<f32> = o.iter().zip(target).map(|(a, b)| a - b).collect();
        let (dop, _) = st.put(&d_o);
        let (gq, _) = st.put(&vec![0.0; q.len()]);
        let (gk, _) = st.put(&vec![0.0; k.len()]);
        let (gv, _) = st.put(&vec![0.0; v.len()]);
        let (tdo, tgq, tgk, tgv) = (desc(dop, dt, &qs), desc(gq, dt, &qs), desc(gk, dt, &ks), desc(gv, dt, &ks));
        let s = unsafe { dashattn_backward(ctx, &cfg, &tq, &tk, &tv, null, null, &to, &tdo, &tl, &tt, &tgq, &tgk, &tgv, null, std::ptr::null_mut(), 0) };
        assert_eq!(s, DASHATTN_SUCCESS);
        let mut g = vec![0f32; q.len()];
        st.get(gq, &mut g);
        q.iter_mut().zip(&g).for_each(|(x, d)| *x -= lr * d);
        let mut g = vec![0f32; k.len()];
        st.get(gk, &mut g);
        k.iter_mut().zip(&g).for_each(|(x, d)| *x -= lr * d);
        st.get(gv, &mut g);
        v.iter_mut().zip(&g).for_each(|(x, d)| *x -= lr * d);
    }
    curve
}

#[test]
fn gpu_and_cpu_loss_curves_agree() {
    let mut opts = unsafe { std::mem::zeroed::<dashattn_context_options>() };
    assert_eq!(unsafe { dashattn_context_options_default(&mut opts) }, DASHATTN_SUCCESS);
    opts.backend = DASHATTN_BACKEND_CPU;
    let mut cpu: *mut dashattn_context = std::ptr::null_mut();
    assert_eq!(unsafe { dashattn_context_create(&opts, &mut cpu) }, DASHATTN_SUCCESS);
    let mut rng = Rng::new(7);
    // Inputs on the bf16 grid so both sides start from identical values.
    let round = |v: Vec<f32>| v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let mut p = Problem::random(&mut rng, 1, 256, 256, 4, 2, 64, 32);
    p.q = round(p.q);
    p.k = round(p.k);
    p.v = round(p.v);
    let target = round(rng.normals(p.q.len(), 0.5));
    let (steps, lr) = (6, 0.02);
    let c = loss_curve(cpu, &mut Host(Vec::new()), &p, &target, steps, lr);
    eprintln!("loss curve CPU (f32): {c:?}");
    assert!(c.windows(2).all(|w| w[1] < w[0]), "the CPU loss must go down every step: {c:?}");
    unsafe { dashattn_context_destroy(cpu) };

    opts.backend = DASHATTN_BACKEND_CUDA;
    let mut gpu: *mut dashattn_context = std::ptr::null_mut();
    if unsafe { dashattn_context_create(&opts, &mut gpu) } != DASHATTN_SUCCESS {
        eprintln!("skipped (GPU part): no CUDA device");
        return;
    }
    // Device buffers come from a second context on the same device (same primary context).
    let ctx = dashattn::Context::new(&dashattn::Options { backend: DASHATTN_BACKEND_CUDA, ..dashattn::Options::default() }).unwrap();
    let g = loss_curve(gpu, &mut Dev(dashattn::cuda::util::device(&ctx).unwrap(), Vec::new()), &p, &target, steps, lr);
    eprintln!("loss curve GPU (bf16): {g:?}");
    for (a, b) in c.iter().zip(&g) {
        assert!((a - b).abs() <= 2e-2 * a.abs().max(1e-6), "CPU {a} vs GPU {b}");
    }
    unsafe { dashattn_context_destroy(gpu) };
}
