// DashAttention forward kernels (SPEC 3) for bf16 / fp16 inputs, sm_80+.
//
// No CUDA headers: the generic helpers are in common.cuh, which nvcc includes and build.rs
// inlines into the source it embeds for NVRTC (no include path needed at run time). All
// element access is by raw 16-bit storage; tensor-core work is inline PTX (mma.sync
// m16n8k16, ldmatrix, cp.async).
//
// Three kernels per call, all on the caller's stream:
//  1. dash_pool_*:   kbar [N, Hkv, nb, D] fp32 in the workspace (mean of each block's keys,
//                    or the caller's pooled keys converted).
//  2. dash_coarse_*: per selection unit-row: z_j = sigma_c <qsel, kbar_j> over Cand(t),
//                    exact entmax threshold tau (fp32), written to the workspace and to the
//                    caller's tau; per fine tile the UNION of selected + local blocks as a
//                    bitmask (a few extra near-tie blocks may be marked: the fine kernel
//                    decides per row).
//  3. dash_fine_*:   FlashAttention-2 style, one CTA (4 warps, 64 "M-rows") per (tile of
//                    query rows, KV head, sequence). The M-rows are (row, head-of-group)
//                    pairs, so K/V of a block are loaded once for all G heads of the group.
//                    Per visited chunk: S = Q K^T (mma), per row coarse score z_j from an
//                    mma of Q with kbar_j split into bf16/fp16 hi+lo parts (fp32-accurate),
//                    group mean through shared memory, log-prior beta, masks, online
//                    softmax, O += P V (mma).

#include "common.cuh"

// Must match src/cuda/mod.rs `KernelParams` field for field (#[repr(C)]).
struct Params {
    const u16* q;
    const u16* k;
    const u16* v;
    u16* o;
    const u16* pooled;     // caller pooled keys or null
    const float* alpha;    // head alpha [Hq] or null
    float* lse;            // [N, Hq, Lq] or null
    float* tau_out;        // [N, Hq, Lq] or null
    float* kbar;           // ws: [N, Hkv, nb, D] fp32
    float* tau_ws;         // ws: [N, U, Lq] fp32 (U = Hkv per group, Hq per head)
    u32* mask;             // ws: [N, Hkv, ntiles, nbw]
    i64 q_sn, q_sl, q_sh;
    i64 k_sn, k_sl, k_sh;
    i64 v_sn, v_sl, v_sh;
    i64 o_sn, o_sl, o_sh;
    i64 p_sn, p_sb, p_sh;
    i64 lse_sn, lse_sh, lse_sl;
    i64 tau_sn, tau_sh, tau_sl;
    i64 alpha_s;
    int N, Lq, Lk, Hq, Hkv, G, D, nb, nbw, ntiles;
    int bs, n_local, causal, per_head;
    int rows_per_warp, rows_per_tile, tiles_per_coarse, nb_pad;
    int qkv_aligned16, o_aligned4, bs_log2, pad1;
    float alpha_default, scale, coarse_scale, pad2;
};

// ---------------------------------------------------------------------------------------
// helpers (the generic ones are in common.cuh)

__device__ __forceinline__ float head_alpha(const Params& p, int h) {
    float a = p.alpha ? p.alpha[(i64)h * p.alpha_s] : p.alpha_default;
    return fminf(fmaxf(a, 1.0f), 2.0f);
}

// Whether block j is a candidate (SPEC 3.2) for position t.
__device__ __forceinline__ bool is_cand(const Params& p, int t, int j) {
    if (p.causal) {
        if (t < 0) return false;
        return j <= (t >> p.bs_log2) - p.n_local;
    }
    int c = t >> p.bs_log2;  // arithmetic shift: floor division for negative t too
    int dj = j - c;
    return (dj < 0 ? -dj : dj) >= p.n_local;
}

// ---------------------------------------------------------------------------------------
// 1. pooled keys: grid (nb, Hkv, N), block >= D threads.

template <bool BF16> __device__ void pool_impl(const Params& p) {
    const int j = blockIdx.x, hk = blockIdx.y, n = blockIdx.z, d = threadIdx.x;
    if (d >= p.D) return;
    float r;
    if (p.pooled) {
        r = to_f32<BF16>(p.pooled[(i64)n * p.p_sn + (i64)j * p.p_sb + (i64)hk * p.p_sh + d]);
    } else {
        int i0 = j * p.bs;
        int cnt = min(p.bs, p.Lk - i0);
        const u16* kp = p.k + (i64)n * p.k_sn + (i64)i0 * p.k_sl + (i64)hk * p.k_sh + d;
        float s = 0.f;
        for (int i = 0; i < cnt; i++) s += to_f32<BF16>(kp[(i64)i * p.k_sl]);
        r = cnt > 0 ? s * frcp((float)cnt) : 0.f;
    }
    p.kbar[(((i64)n * p.Hkv + hk) * p.nb + j) * p.D + d] = r;
}

extern "C" __global__ void dash_pool_bf16(Params p) { pool_impl<true>(p); }
extern "C" __global__ void dash_pool_f16(Params p) { pool_impl<false>(p); }

// ---------------------------------------------------------------------------------------
// 2. coarse stage: grid (ceil(ntiles / tiles_per_coarse), Hkv, N), 256 threads.
//    Unit-rows of the CTA: tiles_per_coarse tiles x rows_per_tile rows x upr units, in
//    batches of 4 * RB (see coarse_impl).

// sum_j [s_j - tau]_+^k - 1 and its derivative over a warp's list of s values.
__device__ __forceinline__ void entmax_mass(const float* sv, int n, float k, int kind, float tau, float& f, float& df) {
    float a = 0.f, b = 0.f;
    for (int j = threadIdx.x & 31; j < n; j += 32) {
        float x = sv[j] - tau;
        if (x > 0.f) {
            if (kind == 2) { a += x * x; b += x; }          // alpha = 1.5 (k = 2)
            else if (kind == 1) { a += x; b += 1.f; }        // alpha = 2   (k = 1)
            else {
                float xk1 = exp2f((k - 1.f) * __log2f(x));
                a += xk1 * x;
                b += xk1;
            }
        }
    }
    a = warp_sum(a);
    b = warp_sum(b);
    f = a - 1.f;
    df = -k * b;
}

// Entmax threshold (alpha > 1) of a warp's list of s = (alpha - 1) z values (non-candidates
// -inf), given their max ms and candidate count cnt: safeguarded Newton from the left
// inside [ms - 1, ms - cnt^(1 - alpha)] with bisection when Newton is slow.
__device__ __forceinline__ float entmax_tau_s(const float* sv, int n, float ms, int cnt, float alpha) {
    const float am1 = alpha - 1.f, k = frcp(am1);
    const int kind = alpha == 1.5f ? 2 : (alpha == 2.f ? 1 : 0);
    float lo = ms - 1.f;
    float hi = ms - exp2f(-am1 * __log2f((float)cnt));  // n^(1 - alpha)
    if (!(hi > lo)) return lo;
    float flo, dflo;
    entmax_mass(sv, n, k, kind, lo, flo, dflo);
    for (int it = 0; it < 60; it++) {
        float tol = 2e-7f * fmaxf(1.f, fabsf(lo));
        if (flo <= 0.f || hi - lo <= tol || dflo == 0.f) break;
        float tn = lo - flo * frcp(dflo);
        float fprev = flo;
        bool progress = false;
        if (tn > lo && tn < hi) {
            float f, df;
            entmax_mass(sv, n, k, kind, tn, f, df);
            if (f >= 0.f) { lo = tn; flo = f; dflo = df; progress = f < 0.25f * fprev; }
            else hi = tn;
        } else if (!(tn < hi)) {
            hi = fminf(hi, tn);
        }
        if (!progress && hi - lo > tol) {
            float mid = 0.5f * (lo + hi);
            float f, df;
            entmax_mass(sv, n, k, kind, mid, f, df);
            if (f >= 0.f) { lo = mid; flo = f; dflo = df; }
            else hi = mid;
        }
    }
    // exact finish on the found support: one last Newton step from the left.
    if (flo > 0.f && dflo != 0.f) {
        float tn = lo - flo * frcp(dflo);
        if (tn > lo && tn <= hi) lo = tn;
    }
    return lo;
}

// Coarse CTA: 256 threads (8 warps), unit-rows in batches of URB = 4 * RB.
// Scores: a 2-D register tile per lane (RB rows x 4 blocks; lane = (lr, lb), rows lr + 4 i,
// blocks lb + 8 k), 8 warps x 32 blocks = 256 blocks per sweep, D in slices of 32.
// Threshold: per unit-row, the candidates within reach of the max (s > max s - 1) are
// compacted into a per-warp list (CAP entries) and solved there; the full row otherwise.
template <bool BF16, int D, int RB> __device__ void coarse_impl(const Params& p) {
    constexpr int NW = 8;
    constexpr int URB = 4 * RB;  // unit-rows per batch
    constexpr int QS = D + 4;    // padded fp32 row of sQ
    constexpr int DS = 32;       // d-slice of the kbar sweep
    constexpr int KS = DS + 4;   // padded row of sKb
    constexpr int SW = NW * 32;  // blocks per sweep
    constexpr int CAP = 256;     // compact list capacity per warp
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int nbp = p.nb_pad;
    float* sZ = (float*)smem_raw;            // URB x nbp
    float* sQ = sZ + URB * nbp;              // URB x QS
    float* sKb = sQ + URB * QS;              // SW x KS
    float* sCv = sKb + SW * KS;              // NW x CAP values
    int* sCi = (int*)(sCv + NW * CAP);       // NW x CAP block indices
    u32* sMask = (u32*)(sCi + NW * CAP);     // tiles_per_coarse x nbw

    const int hk = blockIdx.y, n = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int lr = lane >> 3, lb = lane & 7;
    const int G = p.G, upr = p.per_head ? G : 1;
    const int RT = p.rows_per_tile, URT = RT * upr;
    const int TPC = p.tiles_per_coarse;
    const int tile0 = blockIdx.x * TPC;
    const int total = TPC * URT;
    const float sc = p.coarse_scale;

    for (int i = tid; i < TPC * p.nbw; i += blockDim.x) sMask[i] = 0u;

    const float* kbar = p.kbar + ((i64)n * p.Hkv + hk) * p.nb * D;

    for (int b0 = 0; b0 < total; b0 += URB) {
        __syncthreads();
        // the batch's unit-rows: query vector (mean over the group for per-group)
        for (int idx = tid; idx < URB * D; idx += blockDim.x) {
            int i = idx / D, d = idx % D, u = b0 + i;
            int tl = u / URT, w = u % URT, rl = w / upr, g = w % upr;
            int r = (tile0 + tl) * RT + rl;
            float s = 0.f;
            if (u < total && tile0 + tl < p.ntiles && r < p.Lq) {
                const u16* qp = p.q + (i64)n * p.q_sn + (i64)r * p.q_sl + d;
                if (p.per_head) {
                    s = to_f32<BF16>(qp[(i64)(hk * G + g) * p.q_sh]);
                } else {
                    for (int gg = 0; gg < G; gg++) s += to_f32<BF16>(qp[(i64)(hk * G + gg) * p.q_sh]);
                    s *= frcp((float)G);
                }
            }
            sQ[i * QS + d] = s;
        }
        // how many blocks this batch needs scored
        int jend = 0;
        for (int i = 0; i < URB; i++) {
            int u = b0 + i;
            int tl = u / URT, rl = (u % URT) / upr;
            int r = (tile0 + tl) * RT + rl;
            if (u >= total || tile0 + tl >= p.ntiles || r >= p.Lq) continue;
            int t = p.Lk - p.Lq + r;
            int e = p.nb;
            if (p.causal) e = t < 0 ? 0 : max(0, (t >> p.bs_log2) - p.n_local + 1);
            jend = max(jend, e);
        }
        // (sweep, d-slice) steps; the next slice's kbar is loaded into registers while the
        // current one is consumed from shared memory.
        constexpr int NSL = D / DS;
        constexpr int PRE = SW * (DS / 4) / 256;  // float4 per thread per slice
        const int nsteps = ((jend + SW - 1) / SW) * NSL;
        float4 pre[PRE];
        auto gload = [&](int step) {
            const int jc = (step / NSL) * SW, d0 = (step % NSL) * DS;
#pragma unroll
            for (int r = 0; r < PRE; r++) {
                int idx = tid + r * 256;
                int jj = idx / (DS / 4), d4 = idx % (DS / 4);
                pre[r] = jc + jj < jend ? *(const float4*)(kbar + (i64)(jc + jj) * D + d0 + d4 * 4) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        };
        if (nsteps > 0) gload(0);
        float acc[RB][4];
        for (int step = 0; step < nsteps; step++) {
            const int jc = (step / NSL) * SW, d0 = (step % NSL) * DS;
            if (d0 == 0) {
#pragma unroll
                for (int i = 0; i < RB; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < PRE; r++) {
                int idx = tid + r * 256;
                *(float4*)(sKb + (idx / (DS / 4)) * KS + (idx % (DS / 4)) * 4) = pre[r];
            }
            __syncthreads();
            if (step + 1 < nsteps) gload(step + 1);
#pragma unroll
            for (int d4 = 0; d4 < DS / 4; d4++) {
                float4 kv[4];
#pragma unroll
                for (int k = 0; k < 4; k++) kv[k] = *(const float4*)(sKb + (warp * 32 + lb + 8 * k) * KS + d4 * 4);
#pragma unroll
                for (int i = 0; i < RB; i++) {
                    float4 qv = *(const float4*)(sQ + (lr + 4 * i) * QS + d0 + d4 * 4);
#pragma unroll
                    for (int k = 0; k < 4; k++) acc[i][k] += qv.x * kv[k].x + qv.y * kv[k].y + qv.z * kv[k].z + qv.w * kv[k].w;
                }
            }
            if (d0 + DS == D) {
#pragma unroll
                for (int i = 0; i < RB; i++) {
                    int ii = lr + 4 * i, u = b0 + ii;
                    int tl = u / URT, rl = (u % URT) / upr;
                    int r = (tile0 + tl) * RT + rl;
                    bool rv = u < total && tile0 + tl < p.ntiles && r < p.Lq;
                    int t = p.Lk - p.Lq + r;
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        int j = jc + warp * 32 + lb + 8 * k;
                        if (j < nbp) sZ[ii * nbp + j] = (rv && j < p.nb && is_cand(p, t, j)) ? acc[i][k] * sc : DA_NEG_INF;
                    }
                }
            }
        }
        __syncthreads();
        // threshold + union marks: warp w takes unit-rows w, w + 8, ...
        float* cv = sCv + warp * CAP;
        int* ci = sCi + warp * CAP;
#pragma unroll 1
        for (int ii = warp; ii < URB; ii += NW) {
            int u = b0 + ii;
            int tl = u / URT, w = u % URT, rl = w / upr, g = w % upr;
            int r = (tile0 + tl) * RT + rl;
            if (u >= total || tile0 + tl >= p.ntiles || r >= p.Lq) continue;
            int t = p.Lk - p.Lq + r;
            int h0 = hk * G + (p.per_head ? g : 0);
            float alpha = head_alpha(p, h0);
            float* z = sZ + ii * nbp;
            u32* mk = sMask + tl * p.nbw;
            float m = DA_NEG_INF;
            int cnt = 0;
            for (int j = lane; j < jend; j += 32) {
                float v = z[j];
                m = fmaxf(m, v);
                cnt += v > DA_NEG_INF;
            }
            m = warp_max(m);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
            float tau = DA_NEG_INF;
            if (m > DA_NEG_INF) {
                if (alpha <= 1.f) {
                    float s = 0.f;
                    for (int j = lane; j < jend; j += 32) s += exp2f((z[j] - m) * DA_LOG2E);
                    s = warp_sum(s);
                    tau = m + __log2f(s) * DA_LN2;
                    for (int j = lane; j < jend; j += 32)
                        if (z[j] > DA_NEG_INF) atomicOr(&mk[j >> 5], 1u << (j & 31));
                } else {
                    const float am1 = alpha - 1.f, ms = am1 * m;
                    const float cut = ms - 1.f - 2e-4f * (2.f + fabsf(ms));
                    // compact the candidates within reach of the max
                    int nc = 0;
                    for (int j0 = 0; j0 < jend; j0 += 32) {
                        int j = j0 + lane;
                        float sv = j < jend ? am1 * z[j] : DA_NEG_INF;
                        bool keep = sv > cut;
                        u32 bal = __ballot_sync(0xffffffffu, keep);
                        int pos = nc + __popc(bal & ((1u << lane) - 1u));
                        if (keep && pos < CAP) { cv[pos] = sv; ci[pos] = j; }
                        nc += __popc(bal);
                    }
                    __syncwarp();
                    if (nc <= CAP) {
                        tau = entmax_tau_s(cv, nc, ms, nc, alpha);
                        float margin = -1e-4f * (1.f + fabsf(tau));
                        for (int i = lane; i < nc; i += 32)
                            if (cv[i] - tau > margin) atomicOr(&mk[ci[i] >> 5], 1u << (ci[i] & 31));
                    } else {
                        for (int j = lane; j < jend; j += 32) z[j] *= am1;  // z -> s in place
                        __syncwarp();
                        tau = entmax_tau_s(z, jend, ms, cnt, alpha);
                        float margin = -1e-4f * (1.f + fabsf(tau));
                        for (int j = lane; j < jend; j += 32)
                            if (z[j] - tau > margin) atomicOr(&mk[j >> 5], 1u << (j & 31));
                    }
                    __syncwarp();
                }
            }
            // local blocks
            int jl0, jl1;
            if (p.causal) {
                if (t < 0) { jl0 = 0; jl1 = -1; }
                else { int c = t >> p.bs_log2; jl0 = max(0, c - p.n_local + 1); jl1 = min(c, p.nb - 1); }
            } else {
                int c = t >> p.bs_log2;
                jl0 = max(0, c - p.n_local + 1);
                jl1 = min(p.nb - 1, c + p.n_local - 1);
                if (p.n_local == 0) jl1 = jl0 - 1;
            }
            for (int j = jl0 + lane; j <= jl1; j += 32) atomicOr(&mk[j >> 5], 1u << (j & 31));
            if (lane == 0) {
                int U = p.per_head ? p.Hq : p.Hkv;
                int unit = p.per_head ? h0 : hk;
                p.tau_ws[((i64)n * U + unit) * p.Lq + r] = tau;
            }
            if (p.tau_out && lane < (p.per_head ? 1 : G)) {
                int h = h0 + lane;
                p.tau_out[(i64)n * p.tau_sn + (i64)h * p.tau_sh + (i64)r * p.tau_sl] = tau;
            }
        }
    }
    __syncthreads();
    for (int tl = 0; tl < TPC; tl++) {
        int tile = tile0 + tl;
        if (tile >= p.ntiles) break;
        u32* dst = p.mask + (((i64)n * p.Hkv + hk) * p.ntiles + tile) * p.nbw;
        for (int i = tid; i < p.nbw; i += blockDim.x) dst[i] = sMask[tl * p.nbw + i];
    }
}

#define DA_COARSE(T, BF, D, R)                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 1) dash_coarse_##T##_d##D##_r##R(Params p) { coarse_impl<BF, D, R>(p); }
DA_COARSE(bf16, true, 64, 2)
DA_COARSE(bf16, true, 64, 4)
DA_COARSE(bf16, true, 64, 8)
DA_COARSE(bf16, true, 128, 2)
DA_COARSE(bf16, true, 128, 4)
DA_COARSE(bf16, true, 128, 8)
DA_COARSE(f16, false, 64, 2)
DA_COARSE(f16, false, 64, 4)
DA_COARSE(f16, false, 64, 8)
DA_COARSE(f16, false, 128, 2)
DA_COARSE(f16, false, 128, 4)
DA_COARSE(f16, false, 128, 8)

// ---------------------------------------------------------------------------------------
// 3. fine stage: grid (ntiles, Hkv, N), 128 threads (4 warps x 16 M-rows).
//    M-row m: warp w = m / 16, mi = m % 16; query row r0 + w * RW + mi / G, head g = mi % G
//    (valid when mi < RW * G). Keys come in chunks of BN (BN divides the block size).


template <bool BF16, int D, int BN> __device__ void fine_impl(const Params& p) {
    constexpr int KST = D / 16;   // k-steps of Q K^T
    constexpr int NTS = BN / 8;   // n-tiles of S
    constexpr int NTO = D / 8;    // n-tiles of O
    constexpr int CH = D / 8;     // 16-byte chunks per row
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u16* sQ = (u16*)smem_raw;            // 64 x D
    u16* sK = sQ + 64 * D;               // 2 x BN x D
    u16* sV = sK + 2 * BN * D;           // 2 x BN x D
    float* sKb = (float*)(sV + 2 * BN * D);  // 2 x D
    float* sZ = sKb + 2 * D;             // 64
    u32* sMask = (u32*)(sZ + 64);        // nbw

    const int tile = gridDim.x - 1 - blockIdx.x;  // heavy (late causal) tiles first
    const int hk = blockIdx.y, n = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = p.G, RW = p.rows_per_warp, RT = p.rows_per_tile;
    const int r0 = tile * RT;
    const bool aligned = p.qkv_aligned16 != 0;
    const int nch = (p.Lk + BN - 1) / BN;
    const int bpc_log2 = p.bs_log2 - (BN == 64 ? 6 : 5);  // chunks per block = 1 << bpc_log2
    const int rlast = min(r0 + RT, p.Lq) - 1;
    const int tmax = p.Lk - p.Lq + rlast;
    const int tmin = p.Lk - p.Lq + r0;  // position of the tile's first row

    const u32* gmask = p.mask + (((i64)n * p.Hkv + hk) * p.ntiles + tile) * p.nbw;
    for (int i = tid; i < p.nbw; i += 128) sMask[i] = gmask[i];

    // Q tile
    for (int idx = tid; idx < 64 * CH; idx += 128) {
        int m = idx / CH, c = idx % CH;
        int w = m >> 4, mi = m & 15;
        int mg = small_div(mi, G);
        int rl = w * RW + mg, g = mi - mg * G;
        int r = r0 + rl;
        bool valid = mi < RW * G && r < p.Lq;
        const u16* src = p.q + (i64)n * p.q_sn + (i64)(valid ? r : 0) * p.q_sl + (i64)(hk * G + g) * p.q_sh + c * 8;
        load16(sQ + swz<D>(m, c), src, valid, aligned);
    }
    cp_commit();
    __syncthreads();

    auto next_chunk = [&](int ci) -> int {
        while (ci < nch) {
            if (p.causal && ci * BN > tmax) return -1;
            int j = ci >> bpc_log2;
            u32 wd = sMask[j >> 5] >> (j & 31);
            if (wd & 1u) return ci;
            if (wd == 0u) j = ((j >> 5) + 1) << 5;
            else j += __ffs(wd) - 1;
            ci = j << bpc_log2;
        }
        return -1;
    };
    // K/V chunk loader. Thread tid copies 16-byte chunk lc of rows lrow + RSTEP * it; the
    // swizzled chunk depends on row & 7 = lrow & 7 only, so every smem offset and global
    // pointer is a per-thread base plus a constant step (the fast, 16-byte aligned path).
    constexpr int RSTEP = 128 / CH;
    const int ldrow = tid / CH, lc = tid % CH;
    const u16* kthr = p.k + (i64)n * p.k_sn + (i64)hk * p.k_sh + (i64)ldrow * p.k_sl + lc * 8;
    const u16* vthr = p.v + (i64)n * p.v_sn + (i64)hk * p.v_sh + (i64)ldrow * p.v_sl + lc * 8;
    const i64 kstep = (i64)RSTEP * p.k_sl, vstep = (i64)RSTEP * p.v_sl;
    const u32 sK0 = smem_u32(sK + swz<D>(ldrow, lc)), sV0 = smem_u32(sV + swz<D>(ldrow, lc));
    const float* kbar_h = p.kbar + ((i64)n * p.Hkv + hk) * p.nb * D;
    auto load_kv = [&](int ci, int buf) {
        if (aligned) {
            const u16* kp = kthr + (i64)ci * BN * p.k_sl;
            const u16* vp = vthr + (i64)ci * BN * p.v_sl;
            const int i0 = ci * BN + ldrow;
#pragma unroll
            for (int it = 0; it < BN / RSTEP; it++) {
                bool valid = i0 + it * RSTEP < p.Lk;
                u32 so = (u32)((buf * BN * D + it * RSTEP * D) * 2);
                cp_async16(sK0 + so, valid ? (const void*)(kp + it * kstep) : (const void*)p.k, valid ? 16 : 0);
                cp_async16(sV0 + so, valid ? (const void*)(vp + it * vstep) : (const void*)p.v, valid ? 16 : 0);
            }
        } else {
            for (int idx = tid; idx < BN * CH; idx += 128) {
                int row = idx / CH, c = idx % CH;
                int i = ci * BN + row;
                bool valid = i < p.Lk;
                int ii = valid ? i : 0;
                load16(sK + buf * BN * D + swz<D>(row, c), p.k + (i64)n * p.k_sn + (i64)ii * p.k_sl + (i64)hk * p.k_sh + c * 8, valid, false);
                load16(sV + buf * BN * D + swz<D>(row, c), p.v + (i64)n * p.v_sn + (i64)ii * p.v_sl + (i64)hk * p.v_sh + c * 8, valid, false);
            }
        }
        int j = ci >> bpc_log2;
        if (tid < D / 4) cp_async16(smem_u32(sKb + buf * D + tid * 4), kbar_h + (i64)j * D + tid * 4, 16);
    };

    int ci = next_chunk(0);
    if (ci >= 0) load_kv(ci, 0);
    cp_commit();
    cp_wait<0>();
    __syncthreads();

    // Q fragments
    u32 qf[KST][4];
#pragma unroll
    for (int kk = 0; kk < KST; kk++) ldsm_x4(qf[kk], smem_u32(sQ + swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))));

    // per-row state (rows A = lane/4, B = lane/4 + 8 of this warp)
    int rt[2], rh[2], rbase[2];
    bool rvalid[2];
    float rtau[2], ram1[2], rinv[2];
    bool rone[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        int mi = (lane >> 2) + 8 * x;
        int mg = small_div(mi, G);
        int rl = warp * RW + mg, g = mi - mg * G;
        int r = r0 + rl;
        rvalid[x] = mi < RW * G && r < p.Lq;
        rt[x] = p.Lk - p.Lq + r;
        rh[x] = hk * G + g;
        rbase[x] = mi - g;  // first M-row of this row's group
        int h0 = p.per_head ? rh[x] : hk * G;
        float a = head_alpha(p, h0);
        rone[x] = a <= 1.f;
        ram1[x] = a - 1.f;
        rinv[x] = rone[x] ? 1.f : frcp(a - 1.f);
        int U = p.per_head ? p.Hq : p.Hkv;
        int unit = p.per_head ? rh[x] : hk;
        rtau[x] = rvalid[x] ? p.tau_ws[((i64)n * U + unit) * p.Lq + r] : DA_NEG_INF;
    }

    float oacc[NTO][4];
#pragma unroll
    for (int i = 0; i < NTO; i++) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.f;
    float mrow[2] = {DA_NEG_INF, DA_NEG_INF}, lrow[2] = {0.f, 0.f};
    const float sl2 = p.scale * DA_LOG2E;
    int buf = 0;

    while (ci >= 0) {
        int nxt = next_chunk(ci + 1);
        if (nxt >= 0) {
            load_kv(nxt, buf ^ 1);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();

        const u16* cK = sK + buf * BN * D;
        const u16* cV = sV + buf * BN * D;
        const float* cKb = sKb + buf * D;
        const int j = ci >> bpc_log2;

        // S = Q K^T
        float s[NTS][4];
#pragma unroll
        for (int i = 0; i < NTS; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KST; kk++) {
#pragma unroll
            for (int np = 0; np < NTS / 2; np++) {
                u32 b[4];
                ldsm_x4(b, smem_u32(cK + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
                mma16816<BF16>(s[2 * np], qf[kk], b[0], b[1]);
                mma16816<BF16>(s[2 * np + 1], qf[kk], b[2], b[3]);
            }
        }
        // coarse dot <q_m, kbar_j> with kbar split into hi + lo (columns 0 and 1)
        float zc[4] = {0.f, 0.f, 0.f, 0.f};
        {
            const int col = lane >> 2;
#pragma unroll
            for (int kk = 0; kk < KST; kk++) {
                u32 b0 = 0u, b1 = 0u;
                if (col < 2) {
                    int k0 = kk * 16 + (lane & 3) * 2;
                    float x0 = cKb[k0], x1 = cKb[k0 + 1], x8 = cKb[k0 + 8], x9 = cKb[k0 + 9];
                    u32 h0 = pack2<BF16>(x0, x1), h1 = pack2<BF16>(x8, x9);
                    if (col == 0) { b0 = h0; b1 = h1; }
                    else {
                        b0 = pack2<BF16>(x0 - lo_f32<BF16>(h0), x1 - hi_f32<BF16>(h0));
                        b1 = pack2<BF16>(x8 - lo_f32<BF16>(h1), x9 - hi_f32<BF16>(h1));
                    }
                }
                mma16816<BF16>(zc, qf[kk], b0, b1);
            }
        }
        float* zw = sZ + warp * 16;
        if ((lane & 3) == 0) {
            zw[lane >> 2] = zc[0] + zc[1];
            zw[(lane >> 2) + 8] = zc[2] + zc[3];
        }
        __syncwarp();
        float beta2[2];  // log2-domain prior of block j for rows A, B
#pragma unroll
        for (int x = 0; x < 2; x++) {
            float b = DA_NEG_INF;
            if (rvalid[x]) {
                int mi = (lane >> 2) + 8 * x;
                int t = rt[x];
                bool cand = is_cand(p, t, j);
                if (!cand) b = 0.f;  // local (or causal future: keys masked below)
                else if (rtau[x] > DA_NEG_INF) {
                    float dz;
                    if (p.per_head) dz = zw[mi];
                    else {
                        const float* zg = zw + rbase[x];
                        dz = 0.f;
                        for (int g = 0; g < G; g++) dz += zg[g];
                        dz *= frcp((float)G);
                    }
                    float z = dz * p.coarse_scale;
                    if (rone[x]) b = (z - rtau[x]) * DA_LOG2E;
                    else {
                        float xx = ram1[x] * z - rtau[x];
                        b = xx > 0.f ? __log2f(xx) * rinv[x] : DA_NEG_INF;
                    }
                }
            }
            beta2[x] = b;
        }
        __syncwarp();

        // logits (log2 domain), masks, online softmax
        const int kbase = ci * BN + (lane & 3) * 2;
        // masks only on chunks that cross Lk or the tile's causal diagonal (CTA-uniform)
        const bool edge = ci * BN + BN > p.Lk || (p.causal && ci * BN + BN - 1 > tmin);
#pragma unroll
        for (int x = 0; x < 2; x++) {
            float mx = DA_NEG_INF;
            const int t = rt[x];
#pragma unroll
            for (int nt = 0; nt < NTS; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int i = kbase + nt * 8 + e;
                    float v = fmaf(s[nt][2 * x + e], sl2, beta2[x]);
                    if (edge) v = (i < p.Lk && (!p.causal || i <= t)) ? v : DA_NEG_INF;
                    s[nt][2 * x + e] = v;
                    mx = fmaxf(mx, v);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mnew = fmaxf(mrow[x], mx);
            float muse = mnew == DA_NEG_INF ? 0.f : mnew;
            float corr = ex2(mrow[x] - muse);
            mrow[x] = mnew;
            float ls = 0.f;
#pragma unroll
            for (int nt = 0; nt < NTS; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float pe = ex2(s[nt][2 * x + e] - muse);
                    s[nt][2 * x + e] = pe;
                    ls += pe;
                }
            }
            lrow[x] = lrow[x] * corr + ls;
#pragma unroll
            for (int nt = 0; nt < NTO; nt++) {
                oacc[nt][2 * x] *= corr;
                oacc[nt][2 * x + 1] *= corr;
            }
        }
        // O += P V
#pragma unroll
        for (int k2 = 0; k2 < BN / 16; k2++) {
            u32 a[4];
            a[0] = pack2<BF16>(s[2 * k2][0], s[2 * k2][1]);
            a[1] = pack2<BF16>(s[2 * k2][2], s[2 * k2][3]);
            a[2] = pack2<BF16>(s[2 * k2 + 1][0], s[2 * k2 + 1][1]);
            a[3] = pack2<BF16>(s[2 * k2 + 1][2], s[2 * k2 + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                u32 b[4];
                ldsm_x4_t(b, smem_u32(cV + swz<D>(k2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4))));
                mma16816<BF16>(oacc[2 * dp], a, b[0], b[1]);
                mma16816<BF16>(oacc[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();
        ci = nxt;
        buf ^= 1;
    }

    // epilogue
#pragma unroll
    for (int x = 0; x < 2; x++) {
        float l = lrow[x];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (!rvalid[x]) continue;
        const int rr = rt[x] - (p.Lk - p.Lq);  // query row index
        float inv = l > 0.f ? frcp(l) : 0.f;
        u16* op = p.o + (i64)n * p.o_sn + (i64)rr * p.o_sl + (i64)rh[x] * p.o_sh;
#pragma unroll
        for (int nt = 0; nt < NTO; nt++) {
            int d = nt * 8 + (lane & 3) * 2;
            float v0 = oacc[nt][2 * x] * inv, v1 = oacc[nt][2 * x + 1] * inv;
            u32 w = pack2<BF16>(v0, v1);
            if (p.o_aligned4) *(u32*)(op + d) = w;
            else { op[d] = (u16)(w & 0xffffu); op[d + 1] = (u16)(w >> 16); }
        }
        if (p.lse && (lane & 3) == 0) {
            float lse = l > 0.f ? (mrow[x] + __log2f(l)) * DA_LN2 : DA_NEG_INF;
            p.lse[(i64)n * p.lse_sn + (i64)rh[x] * p.lse_sh + (i64)rr * p.lse_sl] = lse;
        }
    }
}

#define DA_FINE(T, BF, D, BN)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128, 1) dash_fine_##T##_d##D##_bn##BN(Params p) { fine_impl<BF, D, BN>(p); }
DA_FINE(bf16, true, 64, 32)
DA_FINE(bf16, true, 64, 64)
DA_FINE(bf16, true, 128, 32)
DA_FINE(bf16, true, 128, 64)
DA_FINE(f16, false, 64, 32)
DA_FINE(f16, false, 64, 64)
DA_FINE(f16, false, 128, 32)
DA_FINE(f16, false, 128, 64)
