// DashAttention backward (SPEC 4), CUDA. Correctness-first version ("v1"):
//   dash_bwd_prep : D_r = <dO, o> per (row, head).
//   dash_bwd_dq   : one CTA per (sequence, KV head, query row): recomputes the selection,
//                   accumulates dq (fine part + entmax/prior part) and stores, per row and
//                   selection unit, c_r = sum_j s_j H_j / sum_j s_j for dash_bwd_dkv.
//   dash_bwd_dkv  : one CTA per (sequence, KV head, key block j): owns dk, dv of the block's
//                   keys and d kbar_j; walks the query rows, keeps those that attend block j
//                   (local, or selected: x_j > 0 with the saved tau). No atomics: every
//                   accumulator has one owner, so results are bitwise deterministic.
// The pooled keys come from the forward's pool kernel (fp32 workspace [N, Hkv, nb, D]).
// All math in fp32. Offsets are 64-bit.

// Self-contained (no headers) so NVRTC compiles it without an include path.
typedef long long i64;
typedef unsigned short u16;
typedef unsigned int u32;
#define DA_INF (__int_as_float(0x7f800000))

// 16-bit storage types; conversions through PTX cvt (sm_80+).
struct f16_t { u16 x; };
struct bf16_t { u16 x; };
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(f16_t h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.x)); return f; }
__device__ __forceinline__ float to_f(bf16_t b) { return __int_as_float(((u32)b.x) << 16); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ f16_t from_f<f16_t>(float x) { f16_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.x) : "f"(x)); return h; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float x) { bf16_t h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.x) : "f"(x)); return h; }

// Element strides of a [N, L, H, D] tensor (D contiguous).
struct Strides4 {
    i64 n, l, h;
};
// Element strides of a [N, H, L] statistics tensor.
struct Strides3 {
    i64 n, h, l;
};

struct BwdParams {
    const void *q, *k, *v, *o, *dout;
    const float *lse, *tau;
    const float *kbar;         // [N, Hkv, nb, D] fp32 (workspace)
    const float *head_alpha;   // [Hq] or null
    void *dq, *dk, *dv, *dpooled;  // dpooled null unless caller passed pooled keys
    float *drow;               // [N, Hq, Lq] workspace
    float *crow;               // [N, Hq, Lq] workspace
    Strides4 sq, sk, sv, so, sdo, sdq, sdk, sdv, sdp;
    Strides3 slse, stau;
    i64 ha_stride;
    int n, lq, lk, hq, hkv, d, bs, nb, n_local, causal, per_head, group;
    float alpha, sigma, sigma_c;
};
// Must match src/cuda/backward.rs `BwdParams` (#[repr(C)]).
static_assert(sizeof(BwdParams) == 456, "BwdParams layout");

__device__ __forceinline__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < nw; ++w) t += red[w];
    __syncthreads();
    return t;
}

// Clamped to [1, 2] (NaN -> 1) exactly as the forward does: device values cannot be
// validated on the host, and forward and backward must compute the same function.
__device__ __forceinline__ float unit_alpha(const BwdParams &p, int h0) {
    return fminf(fmaxf(p.head_alpha ? p.head_alpha[(i64)h0 * p.ha_stride] : p.alpha, 1.f), 2.f);
}

// Candidate / local classification of block j for position t (SPEC 3.2).
// Returns 0: not attended by geometry, 1: local, 2: candidate.
__device__ __forceinline__ int block_kind(const BwdParams &p, i64 t, int j) {
    i64 c = t >= 0 ? t / p.bs : -((-t + p.bs - 1) / p.bs);
    if (p.causal) {
        if (t < 0 || j > c) return 0;
        if (j > c - p.n_local) return 1;
        return 2;
    }
    i64 dj = j - c;
    if (dj < 0) dj = -dj;
    return dj < p.n_local ? 1 : 2;
}

// beta_j (log prior) and s_j (entmax Jacobian weight) from z and tau; false when not selected.
__device__ __forceinline__ bool prior(float z, float tau, float alpha, float *beta, float *s) {
    if (alpha <= 1.f) {
        *beta = z - tau;
        *s = __expf(z - tau);
        return true;
    }
    float x = (alpha - 1.f) * z - tau;
    if (!(x > 0.f)) return false;
    *beta = __logf(x) / (alpha - 1.f);
    *s = alpha >= 2.f ? 1.f : __powf(x, (2.f - alpha) / (alpha - 1.f));
    return true;
}

template <typename T>
__device__ __forceinline__ void dash_bwd_prep(const BwdParams &p) {
    // grid (lq, hq, n), 32 threads
    int r = blockIdx.x, h = blockIdx.y, n = blockIdx.z;
    const T *o = (const T *)p.o + n * p.so.n + r * p.so.l + h * p.so.h;
    const T *dO = (const T *)p.dout + n * p.sdo.n + r * p.sdo.l + h * p.sdo.h;
    float acc = 0.f;
    for (int x = threadIdx.x; x < p.d; x += 32) acc += to_f(o[x]) * to_f(dO[x]);
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (threadIdx.x == 0) p.drow[((i64)n * p.hq + h) * p.lq + r] = acc;
}

// Dynamic shared memory layout of dash_bwd_dq (floats):
//   qs[G*D], dos[G*D], dq[G*D], U[D], W[D], z[nb], dl[bs], red[32]
template <typename T>
__device__ __forceinline__ void dash_bwd_dq(const BwdParams &p) {
    extern __shared__ float sm[];
    const int r = blockIdx.x, hk = blockIdx.y, n = blockIdx.z;
    const int G = p.group, D = p.d;
    float *qs = sm, *dos = qs + G * D, *dqs = dos + G * D, *U = dqs + G * D, *W = U + D, *z = W + D;
    float *dl = z + p.nb, *red = dl + p.bs;
    const i64 t = (i64)p.lk - p.lq + r;
    for (int e = threadIdx.x; e < G * D; e += blockDim.x) {
        int g = e / D, x = e % D, h = hk * G + g;
        qs[e] = to_f(((const T *)p.q)[n * p.sq.n + r * p.sq.l + h * p.sq.h + x]);
        dos[e] = to_f(((const T *)p.dout)[n * p.sdo.n + r * p.sdo.l + h * p.sdo.h + x]);
        dqs[e] = 0.f;
    }
    __syncthreads();
    const int hpu = p.per_head ? 1 : G;
    const float *kbar = p.kbar + ((i64)n * p.hkv + hk) * p.nb * D;
    for (int h0 = 0; h0 < G; h0 += hpu) {
        const int hq0 = hk * G + h0;
        const float alpha = unit_alpha(p, hq0);
        const float tau = p.tau[n * p.stau.n + hq0 * p.stau.h + r * p.stau.l];
        // Coarse scores of the candidate blocks (0 for others; kind recomputed below).
        for (int j = threadIdx.x; j < p.nb; j += blockDim.x) {
            float acc = 0.f;
            if (block_kind(p, t, j) == 2) {
                for (int g = h0; g < h0 + hpu; ++g)
                    for (int x = 0; x < D; ++x) acc += qs[g * D + x] * kbar[(i64)j * D + x];
                acc *= p.sigma_c / hpu;
            }
            z[j] = acc;
        }
        for (int x = threadIdx.x; x < D; x += blockDim.x) U[x] = W[x] = 0.f;
        __syncthreads();
        float S = 0.f, SH = 0.f;  // uniform across threads (computed from block sums)
        for (int j = 0; j < p.nb; ++j) {
            int kind = block_kind(p, t, j);
            if (kind == 0) continue;
            float beta = 0.f, s = 0.f;
            if (kind == 2 && !prior(z[j], tau, alpha, &beta, &s)) continue;
            float H = 0.f;
            int i0 = j * p.bs, i1 = min((j + 1) * p.bs, p.lk);
            if (p.causal) i1 = (int)min((i64)i1, t + 1);
            for (int g = h0; g < h0 + hpu; ++g) {
                const int h = hk * G + g;
                const float lse = p.lse[n * p.slse.n + h * p.slse.h + r * p.slse.l];
                if (lse == -DA_INF) continue;
                const float Dr = p.drow[((i64)n * p.hq + h) * p.lq + r];
                float hpart = 0.f;
                for (int i = i0 + threadIdx.x; i < i0 + p.bs; i += blockDim.x) {
                    float dli = 0.f;
                    if (i < i1) {
                        const T *kr = (const T *)p.k + n * p.sk.n + i * p.sk.l + hk * p.sk.h;
                        const T *vr = (const T *)p.v + n * p.sv.n + i * p.sv.l + hk * p.sv.h;
                        float qk = 0.f, dv = 0.f;
                        for (int x = 0; x < D; ++x) {
                            qk += qs[g * D + x] * to_f(kr[x]);
                            dv += dos[g * D + x] * to_f(vr[x]);
                        }
                        float raw = p.sigma * qk;
                        float pr = __expf(raw + beta - lse);
                        dli = pr * (dv - Dr);
                        if (kind == 2) hpart += __expf(raw - lse) * (dv - Dr);
                    }
                    dl[i - i0] = dli;
                }
                __syncthreads();
                for (int x = threadIdx.x; x < D; x += blockDim.x) {
                    float acc = 0.f;
                    for (int i = i0; i < i1; ++i)
                        acc += dl[i - i0] * to_f(((const T *)p.k)[n * p.sk.n + i * p.sk.l + hk * p.sk.h + x]);
                    dqs[g * D + x] += p.sigma * acc;
                }
                if (kind == 2) H += block_sum(hpart, red);
                __syncthreads();
            }
            if (kind == 2) {
                S += s;
                SH += s * H;
                for (int x = threadIdx.x; x < D; x += blockDim.x) {
                    U[x] += s * H * kbar[(i64)j * D + x];
                    W[x] += s * kbar[(i64)j * D + x];
                }
            }
        }
        __syncthreads();
        const float c = S > 0.f ? SH / S : 0.f;
        const float w = p.sigma_c / hpu;
        for (int e = threadIdx.x; e < hpu * D; e += blockDim.x) {
            int g = h0 + e / D, x = e % D;
            dqs[g * D + x] += w * (U[x] - c * W[x]);
        }
        if (threadIdx.x < hpu) p.crow[((i64)n * p.hq + hq0 + threadIdx.x) * p.lq + r] = c;
        __syncthreads();
    }
    for (int e = threadIdx.x; e < G * D; e += blockDim.x) {
        int g = e / D, x = e % D, h = hk * G + g;
        ((T *)p.dq)[n * p.sdq.n + r * p.sdq.l + h * p.sdq.h + x] = from_f<T>(dqs[e]);
    }
}

// Dynamic shared memory of dash_bwd_dkv (floats):
//   dk[bs*D], dv[bs*D], qs[G*D], dos[G*D], dkbar[D], red[32]
template <typename T>
__device__ __forceinline__ void dash_bwd_dkv(const BwdParams &p) {
    extern __shared__ float sm[];
    const int j = blockIdx.x, hk = blockIdx.y, n = blockIdx.z;
    const int G = p.group, D = p.d, bs = p.bs;
    float *dks = sm, *dvs = dks + bs * D, *qs = dvs + bs * D, *dos = qs + G * D, *dkbar = dos + G * D, *red = dkbar + D;
    for (int e = threadIdx.x; e < bs * D; e += blockDim.x) dks[e] = dvs[e] = 0.f;
    for (int x = threadIdx.x; x < D; x += blockDim.x) dkbar[x] = 0.f;
    const int i = j * bs + threadIdx.x;  // this thread's key (threads >= bs idle in key work)
    const bool own = threadIdx.x < bs && i < p.lk;
    const int hpu = p.per_head ? 1 : G;
    const float *kb = p.kbar + (((i64)n * p.hkv + hk) * p.nb + j) * D;
    // Rows that can attend block j: causal needs t >= j*bs.
    int r0 = 0;
    if (p.causal) r0 = (int)max((i64)0, (i64)j * bs - ((i64)p.lk - p.lq));
    __syncthreads();
    for (int r = r0; r < p.lq; ++r) {
        const i64 t = (i64)p.lk - p.lq + r;
        const int kind = block_kind(p, t, j);
        if (kind == 0) continue;
        for (int e = threadIdx.x; e < G * D; e += blockDim.x) {
            int g = e / D, x = e % D, h = hk * G + g;
            qs[e] = to_f(((const T *)p.q)[n * p.sq.n + r * p.sq.l + h * p.sq.h + x]);
            dos[e] = to_f(((const T *)p.dout)[n * p.sdo.n + r * p.sdo.l + h * p.sdo.h + x]);
        }
        __syncthreads();
        for (int h0 = 0; h0 < G; h0 += hpu) {
            const int hq0 = hk * G + h0;
            float beta = 0.f, s = 0.f;
            if (kind == 2) {
                float acc = 0.f;
                for (int e = threadIdx.x; e < hpu * D; e += blockDim.x) acc += qs[h0 * D + e] * kb[e % D];
                float zj = block_sum(acc, red) * (p.sigma_c / hpu);
                const float tau = p.tau[n * p.stau.n + hq0 * p.stau.h + r * p.stau.l];
                if (!prior(zj, tau, unit_alpha(p, hq0), &beta, &s)) continue;  // uniform across the CTA
            }
            float hpart = 0.f;
            for (int g = h0; g < h0 + hpu; ++g) {
                const int h = hk * G + g;
                const float lse = p.lse[n * p.slse.n + h * p.slse.h + r * p.slse.l];
                if (lse == -DA_INF) continue;
                const float Dr = p.drow[((i64)n * p.hq + h) * p.lq + r];
                if (own && (!p.causal || i <= t)) {
                    const T *kr = (const T *)p.k + n * p.sk.n + (i64)i * p.sk.l + hk * p.sk.h;
                    const T *vr = (const T *)p.v + n * p.sv.n + (i64)i * p.sv.l + hk * p.sv.h;
                    float qk = 0.f, dv = 0.f;
                    for (int x = 0; x < D; ++x) {
                        qk += qs[g * D + x] * to_f(kr[x]);
                        dv += dos[g * D + x] * to_f(vr[x]);
                    }
                    float raw = p.sigma * qk;
                    float pr = __expf(raw + beta - lse);
                    float dli = pr * (dv - Dr);
                    float *dkr = dks + threadIdx.x * D, *dvr = dvs + threadIdx.x * D;
                    for (int x = 0; x < D; ++x) {
                        dvr[x] += pr * dos[g * D + x];
                        dkr[x] += p.sigma * dli * qs[g * D + x];
                    }
                    if (kind == 2) hpart += __expf(raw - lse) * (dv - Dr);
                }
            }
            if (kind == 2) {
                float H = block_sum(hpart, red);
                const float c = p.crow[((i64)n * p.hq + hq0) * p.lq + r];
                const float w = s * (H - c) * (p.sigma_c / hpu);
                for (int x = threadIdx.x; x < D; x += blockDim.x) {
                    float qsx = 0.f;
                    for (int g = h0; g < h0 + hpu; ++g) qsx += qs[g * D + x];
                    dkbar[x] += w * qsx;
                }
            }
        }
        __syncthreads();
    }
    __syncthreads();
    const int len = min(bs, p.lk - j * bs);
    if (p.dpooled) {
        for (int x = threadIdx.x; x < D; x += blockDim.x)
            ((T *)p.dpooled)[n * p.sdp.n + (i64)j * p.sdp.l + hk * p.sdp.h + x] = from_f<T>(dkbar[x]);
    }
    for (int e = threadIdx.x; e < len * D; e += blockDim.x) {
        int ii = e / D, x = e % D;
        float dkv = dks[ii * D + x];
        if (!p.dpooled) dkv += dkbar[x] / len;
        i64 key = (i64)j * bs + ii;
        ((T *)p.dk)[n * p.sdk.n + key * p.sdk.l + hk * p.sdk.h + x] = from_f<T>(dkv);
        ((T *)p.dv)[n * p.sdv.n + key * p.sdv.l + hk * p.sdv.h + x] = from_f<T>(dvs[ii * D + x]);
    }
}

#define DASH_BWD_INSTANTIATE(T, NAME)                                              \
    extern "C" __global__ void dash_bwd_prep_##NAME(BwdParams p) { dash_bwd_prep<T>(p); } \
    extern "C" __global__ void dash_bwd_dq_##NAME(BwdParams p) { dash_bwd_dq<T>(p); }     \
    extern "C" __global__ void dash_bwd_dkv_##NAME(BwdParams p) { dash_bwd_dkv<T>(p); }

DASH_BWD_INSTANTIATE(f16_t, f16)
DASH_BWD_INSTANTIATE(bf16_t, bf16)
