// DashAttention backward (SPEC 4) for bf16 / fp16 inputs, sm_80+. Kernels v2:
// tensor-core (mma.sync m16n8k16) tiles, sparse in both directions, no atomics on
// gradients (bitwise deterministic run to run).
//
// Shared helpers come from common.cuh (build.rs inlines it for NVRTC: no include path).
//
// Launch order, all on the caller's stream (src/cuda/backward.rs):
//  0. dash_pool_*      (kernels/forward.cu): kbar [N, Hkv, nb, D] fp32, the forward's values;
//     dash_bwd_split_* : kbar as packed bf16/f16 hi + lo pairs (for the selection scan).
//  1. dash_bwd_prep_*  : D_r = <dO_r, o_r> per (sequence, head, row) -> drow.
//  2. dash_bwd_select_*: one CTA per (query tile, KV head, sequence); the tile is the
//                        forward's: 64 "M-rows" = (row, head-of-group) pairs, 4 warps x 16.
//                        Coarse score z_j of every candidate block (mma with kbar split into
//                        hi + lo parts), the exact per-row selection from the saved tau; the
//                        union of selected + local blocks per warp (wmask) and per tile (mask).
//  3. dash_bwd_dq_*    : one warp per CTA, owning one quarter (16 M-rows) of a tile, over
//                        its own union's key chunks: S = Q K^T, P (with prior), dP = dO V^T,
//                        dS = P (dP - D), dq += dS K; per selected block
//                        H_j = sum_i exp(sigma qk_i - lse) (dP_i - D) (no division by p_j),
//                        dq += (sigma_c / hpu) s_j H_j kbar_j, W += s_j kbar_j, S += s_j;
//                        at the end c = sum_j s_j H_j / S (-> crow), dq -= (sigma_c / hpu) c W.
//  4. dash_bwd_transpose: mask [tile][block words] -> maskt [block][tile words] (ballots),
//                        i.e. per key block the list of query tiles that attend it.
//  5. dash_bwd_dkv_*   : one CTA per (key block, KV head, sequence) owns dK, dV of the
//                        block's keys and d kbar_j; it visits only the tiles of maskt[j]:
//                        S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q (mma),
//                        H_j per row, d kbar_j += (sigma_c / hpu) s_j (H_j - c) q_unit.
//                        Mean pooling backward folds d kbar_j / |block| into dK (or writes
//                        d pooled keys when the caller gave pooled keys).
// Every accumulator has one owner, so results do not depend on scheduling.

#include "common.cuh"

// Must match src/cuda/backward.rs `BwdParams` field for field (#[repr(C)]).
struct BwdParams {
    const u16 *q, *k, *v, *o, *dout;
    const float *lse, *tau;   // caller's forward state, [N, Hq, Lq] strided
    const float *kbar;        // ws [N, Hkv, nb, D] fp32
    const float *alpha;       // head alpha [Hq] or null
    u16 *dq, *dk, *dv, *dpooled;  // dpooled: null unless the caller passed pooled keys
    float *drow;              // ws [N, Hq, Lq]
    float *crow;              // ws [N, Hq, Lq]
    u32 *kbhl;                // ws [N, Hkv, nb, 2, D / 2]    kbar as packed hi / lo pairs
    u32 *mask;                // ws [N, Hkv, ntiles, nbw]     tile union (selected + local)
    u32 *wmask;               // ws [N, Hkv, ntiles, 4, nbw]  per warp (16 M-rows)
    u32 *maskt;               // ws [N, Hkv, nb, ntw]
    i64 q_sn, q_sl, q_sh;
    i64 k_sn, k_sl, k_sh;
    i64 v_sn, v_sl, v_sh;
    i64 o_sn, o_sl, o_sh;
    i64 do_sn, do_sl, do_sh;
    i64 dq_sn, dq_sl, dq_sh;
    i64 dk_sn, dk_sl, dk_sh;
    i64 dv_sn, dv_sl, dv_sh;
    i64 dp_sn, dp_sb, dp_sh;
    i64 lse_sn, lse_sh, lse_sl;
    i64 tau_sn, tau_sh, tau_sl;
    i64 alpha_s;
    int N, Lq, Lk, Hq, Hkv, G, D, nb, nbw, ntiles, ntw;
    int bs, bs_log2, n_local, causal, per_head, rows_per_warp, rows_per_tile, aligned16, pad0;
    float alpha_default, scale, coarse_scale, pad;
};
static_assert(sizeof(BwdParams) == 520, "BwdParams layout");

// ---------------------------------------------------------------------------------------
// helpers (the generic ones are in common.cuh)

__device__ __forceinline__ void cp_async4(u32 dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ float unit_alpha(const BwdParams& p, int h) {
    float a = p.alpha ? p.alpha[(i64)h * p.alpha_s] : p.alpha_default;
    return fminf(fmaxf(a, 1.0f), 2.0f);  // NaN -> 1, as the forward
}

// Block kind for position t (SPEC 3.2): 0 not attended (geometry), 1 local, 2 candidate.
__device__ __forceinline__ int block_kind(const BwdParams& p, int t, int j) {
    int c = t >> p.bs_log2;  // floor division (arithmetic shift) for negative t too
    if (p.causal) {
        if (t < 0 || j > c) return 0;
        return j > c - p.n_local ? 1 : 2;
    }
    int dj = j - c;
    return (dj < 0 ? -dj : dj) < p.n_local ? 1 : 2;
}

// One M-row of a query tile (the forward's layout): warp w = m / 16, mi = m % 16 is the
// (row w * RW + mi / G, head mi % G) pair; valid when mi < RW * G and the row exists.
struct MRow {
    int r, h, t, mbase;
    bool valid;
};
__device__ __forceinline__ MRow mrow(const BwdParams& p, int tile, int hk, int m) {
    MRow x;
    int w = m >> 4, mi = m & 15;
    int mg = small_div(mi, p.G);
    int g = mi - mg * p.G;
    x.r = tile * p.rows_per_tile + w * p.rows_per_warp + mg;
    x.valid = mi < p.rows_per_warp * p.G && x.r < p.Lq;
    x.t = p.Lk - p.Lq + x.r;
    x.h = hk * p.G + g;
    x.mbase = m - g;
    return x;
}

// Per-row selection constants: alpha of the row's selection unit.
struct Sel {
    float tau, am1, inv, sexp;  // sexp = (2 - alpha) / (alpha - 1)
    int kind;                   // 0: alpha = 1 (softmax), 1: 1 < alpha < 2, 2: alpha = 2, 3: alpha = 1.5
};
__device__ __forceinline__ Sel make_sel(float alpha, float tau) {
    Sel s;
    s.tau = tau;
    s.am1 = alpha - 1.f;
    s.inv = alpha <= 1.f ? 1.f : frcp(alpha - 1.f);
    s.sexp = (2.f - alpha) * s.inv;
    s.kind = alpha <= 1.f ? 0 : (alpha >= 2.f ? 2 : (alpha == 1.5f ? 3 : 1));
    return s;
}
// Log2-domain prior beta2 and Jacobian weight s of a candidate block with coarse score z;
// false when the block is not selected (x <= 0).
__device__ __forceinline__ bool prior(const Sel& s, float z, float& beta2, float& w) {
    if (s.kind == 0) {
        beta2 = (z - s.tau) * DA_LOG2E;
        w = ex2(beta2);
        return true;
    }
    float x = s.am1 * z - s.tau;
    if (!(x > 0.f)) return false;
    float l2 = __log2f(x);
    beta2 = l2 * s.inv;
    w = s.kind == 2 ? 1.f : (s.kind == 3 ? x : ex2(l2 * s.sexp));
    return true;
}

// Coarse dot products of a warp's 16 M-rows with up to 4 pooled keys ("slots"), one mma per
// 16 dimensions. Column 2b holds the bf16/f16 "hi" part of slot b's key, column 2b + 1 the
// "lo" residual, so hi + lo is fp32-accurate. The lane's B column is col = lane / 4; `kb`
// points at the key of ITS slot col / 2 (null: zeros). On return zc[0] + zc[1] is
// <q_A, kbar_slot> and zc[2] + zc[3] is <q_B, kbar_slot> with A = lane / 4, B = A + 8,
// slot = lane % 4. A block j always sits in slot j % 4, and every kernel here goes through
// this code, so the select, dq and dkv kernels make bitwise-identical selection decisions.
template <bool BF16, int D> __device__ __forceinline__ void zdot_b(const float* kb, int kk, u32& b0, u32& b1) {
    const int lane = threadIdx.x & 31;
    const int k0 = kk * 16 + (lane & 3) * 2;
    float x0 = 0.f, x1 = 0.f, x8 = 0.f, x9 = 0.f;
    if (kb) x0 = kb[k0], x1 = kb[k0 + 1], x8 = kb[k0 + 8], x9 = kb[k0 + 9];
    u32 h0 = pack2<BF16>(x0, x1), h1 = pack2<BF16>(x8, x9);
    b0 = h0;
    b1 = h1;
    if ((lane >> 2) & 1) {
        b0 = pack2<BF16>(x0 - lo_f32<BF16>(h0), x1 - hi_f32<BF16>(h0));
        b1 = pack2<BF16>(x8 - lo_f32<BF16>(h1), x9 - hi_f32<BF16>(h1));
    }
}
// The same B fragment values, precomputed (dash_bwd_split, with the same conversions) and
// staged in shared memory as one key = [hi pairs D/2, 4 pad][lo pairs D/2, 4 pad] words, so
// the 8 (slot, part) columns of a warp read 8 different bank quads. null: zeros.
template <int D> __device__ __forceinline__ void zdot_b2(const u32* kb2, int kk, u32& b0, u32& b1) {
    const int lane = threadIdx.x & 31;
    b0 = b1 = 0u;
    if (kb2) {
        const u32* w = kb2 + ((lane >> 2) & 1) * (D / 2 + 4) + kk * 8 + (lane & 3);
        b0 = w[0];
        b1 = w[4];
    }
}
// A fragments read from the swizzled tile sQ (rows m0 .. m0 + 15)
template <bool BF16, int D> __device__ __forceinline__ void zdot_s(const u16* sQ, int m0, const float* kb, float* zc) {
    const int lane = threadIdx.x & 31;
    zc[0] = zc[1] = zc[2] = zc[3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        u32 b0, b1, a[4];
        zdot_b<BF16, D>(kb, kk, b0, b1);
        ldsm_x4(a, smem_u32(sQ + swz<D>(m0 + (lane & 15), kk * 2 + (lane >> 4))));
        mma16816<BF16>(zc, a, b0, b1);
    }
}
// A fragments held in registers, pre-split keys
template <bool BF16, int D> __device__ __forceinline__ void zdot_r2(const u32 (*qf)[4], const u32* kb2, float* zc) {
    zc[0] = zc[1] = zc[2] = zc[3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        u32 b0, b1;
        zdot_b2<D>(kb2, kk, b0, b1);
        mma16816<BF16>(zc, qf[kk], b0, b1);
    }
}

// kbar fp32 -> packed hi / lo pairs (the conversions of zdot_b): grid (nb, Hkv, N), D / 2
// threads, thread i converts the pair (2i, 2i + 1).
template <bool BF16> __device__ void split_impl(const BwdParams& p) {
    const int j = blockIdx.x, hk = blockIdx.y, n = blockIdx.z, i = threadIdx.x;
    if (2 * i >= p.D) return;
    const i64 key = ((i64)n * p.Hkv + hk) * p.nb + j;
    const float* kb = p.kbar + key * p.D;
    float x0 = kb[2 * i], x1 = kb[2 * i + 1];
    u32 h = pack2<BF16>(x0, x1);
    u32 l = pack2<BF16>(x0 - lo_f32<BF16>(h), x1 - hi_f32<BF16>(h));
    p.kbhl[key * p.D + i] = h;
    p.kbhl[key * p.D + p.D / 2 + i] = l;
}
extern "C" __global__ void dash_bwd_split_bf16(BwdParams p) { split_impl<true>(p); }
extern "C" __global__ void dash_bwd_split_f16(BwdParams p) { split_impl<false>(p); }

// Unit coarse score of M-row `mi` (0..15 within the warp) for column `col` from the warp's
// per-head partial scores zs[16][ZS]: the group mean for per-group selection (same order
// and operations as kernels/forward.cu's fine stage), times sigma_c.
// mb = the warp-local index of the group's first M-row.
template <int ZS> __device__ __forceinline__ float unit_z(const BwdParams& p, const float* zs, int mi, int mb, int col) {
    float dz;
    if (p.per_head) dz = zs[mi * ZS + col];
    else {
        dz = 0.f;
        for (int g = 0; g < p.G; g++) dz += zs[(mb + g) * ZS + col];
        dz *= frcp((float)p.G);
    }
    return dz * p.coarse_scale;
}

// ---------------------------------------------------------------------------------------
// 1. D_r = <dO_r, o_r>: one warp per (row, head); grid (ceil(Lq * Hq / 8), N), 256 threads.

template <bool BF16> __device__ void prep_impl(const BwdParams& p) {
    const int n = blockIdx.y, lane = threadIdx.x & 31;
    const i64 idx = (i64)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (idx >= (i64)p.Lq * p.Hq) return;
    const int r = (int)(idx / p.Hq), h = (int)(idx % p.Hq);
    const u16* o = p.o + (i64)n * p.o_sn + (i64)r * p.o_sl + (i64)h * p.o_sh;
    const u16* d = p.dout + (i64)n * p.do_sn + (i64)r * p.do_sl + (i64)h * p.do_sh;
    float acc = 0.f;
    for (int x = lane; x < p.D; x += 32) acc += to_f32<BF16>(o[x]) * to_f32<BF16>(d[x]);
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) p.drow[((i64)n * p.Hq + h) * p.Lq + r] = acc;
}
extern "C" __global__ void __launch_bounds__(256) dash_bwd_prep_bf16(BwdParams p) { prep_impl<true>(p); }
extern "C" __global__ void __launch_bounds__(256) dash_bwd_prep_f16(BwdParams p) { prep_impl<false>(p); }

// ---------------------------------------------------------------------------------------
// 2. selection: grid (ntiles, Hkv, N), 128 threads (4 warps x 16 M-rows, the forward's tile).
//    Coarse scores of every candidate block (A fragments in registers, pre-split pooled keys
//    staged SB blocks at a time), the exact per-row selection from the saved tau, and per warp the
//    union of its rows' selected + local blocks -> wmask [N, Hkv, ntiles, 4, nbw]; the
//    tile's union -> mask [N, Hkv, ntiles, nbw]. Small register footprint, so many CTAs per
//    SM hide the latency of this O(L^2 / B) scan. Shared memory (bytes):
//    sQ 64 x D x 2, sKs 2 x SB x (D + 8) x 4, sZ 4 x 16 x (SB + 4) x 4, sMaskW 4 x nbw x 4.

template <bool BF16, int D> __device__ void select_impl(const BwdParams& p) {
    constexpr int KST = D / 16, CH = D / 8, SB = 16, KS = D + 8, ZS = SB + 4;  // strides (words): staged key, z row
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u16* sQ = (u16*)smem_raw;
    u32* sKs = (u32*)(sQ + 64 * D);  // SB keys x KS u32 (pre-split pairs, padded) per buffer
    float* sZ = (float*)(sKs + 2 * SB * KS);
    u32* sMaskW = (u32*)(sZ + 4 * 16 * ZS);

    const int tile = gridDim.x - 1 - blockIdx.x;
    const int hk = blockIdx.y, n = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = p.G, RT = p.rows_per_tile;
    const int rlast = min(tile * RT + RT, p.Lq) - 1;
    const int tmax = p.Lk - p.Lq + rlast;
    const u32* kbhl_h = p.kbhl + ((i64)n * p.Hkv + hk) * p.nb * D;
    float* zs = sZ + warp * 16 * ZS;
    u32* myMask = sMaskW + warp * p.nbw;
    for (int i = tid; i < 4 * p.nbw; i += 128) sMaskW[i] = 0u;

    for (int idx = tid; idx < 64 * CH; idx += 128) {
        int m = idx / CH, c = idx % CH;
        MRow x = mrow(p, tile, hk, m);
        load16(sQ + swz<D>(m, c), p.q + (i64)n * p.q_sn + (i64)(x.valid ? x.r : 0) * p.q_sl + (i64)x.h * p.q_sh + c * 8, x.valid, p.aligned16 != 0);
    }
    cp_commit();
    MRow rx[2];
    bool live[2];
    Sel sel[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        rx[x] = mrow(p, tile, hk, warp * 16 + (lane >> 2) + 8 * x);
        float lse = DA_NEG_INF, tau = 0.f;
        int h0 = p.per_head ? rx[x].h : hk * G;
        if (rx[x].valid) {
            lse = p.lse[(i64)n * p.lse_sn + (i64)rx[x].h * p.lse_sh + (i64)rx[x].r * p.lse_sl];
            tau = p.tau[(i64)n * p.tau_sn + (i64)h0 * p.tau_sh + (i64)rx[x].r * p.tau_sl];
        }
        live[x] = rx[x].valid && lse > DA_NEG_INF;
        sel[x] = make_sel(unit_alpha(p, h0), tau);
    }
    cp_wait<0>();
    __syncthreads();
    u32 qf[KST][4];
#pragma unroll
    for (int kk = 0; kk < KST; kk++) ldsm_x4(qf[kk], smem_u32(sQ + swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))));

    int jend = p.nb;
    if (p.causal) jend = tmax < 0 ? 0 : min(p.nb, max(0, (tmax >> p.bs_log2) - p.n_local + 1));
    const int nst = (jend + SB - 1) / SB;
    auto stage = [&](int st, int buf) {
        for (int i = tid; i < SB * D / 4; i += 128) {
            int jj = i / (D / 4), c4 = i % (D / 4);
            int j = st * SB + jj;
            int dst = c4 * 4 + (c4 >= D / 8 ? 4 : 0);  // lo half after a 4-word pad
            cp_async16(smem_u32(sKs + (buf * SB + jj) * KS + dst), kbhl_h + (i64)min(j, p.nb - 1) * D + c4 * 4, j < jend ? 16 : 0);
        }
    };
    if (nst > 0) stage(0, 0);
    cp_commit();
    for (int st = 0; st < nst; st++) {
        const int buf = st & 1;
        if (st + 1 < nst) {
            stage(st + 1, buf ^ 1);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        // SB / 4 independent slot groups: z of 16 M-rows x SB blocks
#pragma unroll
        for (int g4 = 0; g4 < SB / 4; g4++) {
            float zc[4];
            zdot_r2<BF16, D>(qf, sKs + (buf * SB + g4 * 4 + ((lane >> 2) >> 1)) * KS, zc);
            zs[(lane >> 2) * ZS + g4 * 4 + (lane & 3)] = zc[0] + zc[1];
            zs[((lane >> 2) + 8) * ZS + g4 * 4 + (lane & 3)] = zc[2] + zc[3];
        }
        __syncwarp();
#pragma unroll
        for (int g4 = 0; g4 < SB / 4; g4++) {
            const int j = st * SB + g4 * 4 + (lane & 3);
#pragma unroll
            for (int x = 0; x < 2; x++) {
                if (!live[x] || j >= jend || block_kind(p, rx[x].t, j) != 2) continue;
                int mi = (lane >> 2) + 8 * x;
                float z = unit_z<ZS>(p, zs, mi, rx[x].mbase & 15, g4 * 4 + (lane & 3));
                float b2, w;
                if (prior(sel[x], z, b2, w)) atomicOr(&myMask[j >> 5], 1u << (j & 31));
            }
        }
        __syncwarp();
        __syncthreads();  // this stage's buffer is restaged two stages later
    }
    // local blocks of each warp's rows
    {
        int wt0 = 1 << 30, wt1 = -(1 << 30);
#pragma unroll
        for (int x = 0; x < 2; x++)
            if (live[x]) wt0 = min(wt0, rx[x].t), wt1 = max(wt1, rx[x].t);
        for (int o = 16; o > 0; o >>= 1) {
            wt0 = min(wt0, __shfl_xor_sync(0xffffffffu, wt0, o));
            wt1 = max(wt1, __shfl_xor_sync(0xffffffffu, wt1, o));
        }
        if (lane == 0 && wt0 <= wt1) {
            int lo = max(0, (wt0 >> p.bs_log2) - p.n_local + 1);
            int hi = min(p.nb - 1, p.causal ? (wt1 >> p.bs_log2) : (wt1 >> p.bs_log2) + p.n_local - 1);
            for (int j = lo; j <= hi; j++) myMask[j >> 5] |= 1u << (j & 31);
        }
    }
    __syncthreads();
    const i64 t_idx = ((i64)n * p.Hkv + hk) * p.ntiles + tile;
    u32* gw = p.wmask + t_idx * 4 * p.nbw;
    u32* gm = p.mask + t_idx * p.nbw;
    for (int i = tid; i < p.nbw; i += 128) {
        u32 a = sMaskW[i], b = sMaskW[p.nbw + i], c = sMaskW[2 * p.nbw + i], d = sMaskW[3 * p.nbw + i];
        gw[i] = a;
        gw[p.nbw + i] = b;
        gw[2 * p.nbw + i] = c;
        gw[3 * p.nbw + i] = d;
        gm[i] = a | b | c | d;
    }
}
extern "C" __global__ void __launch_bounds__(128) dash_bwd_select_bf16_d64(BwdParams p) { select_impl<true, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) dash_bwd_select_bf16_d128(BwdParams p) { select_impl<true, 128>(p); }
extern "C" __global__ void __launch_bounds__(128) dash_bwd_select_f16_d64(BwdParams p) { select_impl<false, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) dash_bwd_select_f16_d128(BwdParams p) { select_impl<false, 128>(p); }

// ---------------------------------------------------------------------------------------
// 3. dq: grid (4 ntiles, Hkv, N), one warp per CTA: the warp owns one quarter of a tile
//    (16 M-rows, the forward's warp tile) and walks only its own union (wmask), so no warp
//    waits at a barrier for blocks it does not attend. Shared memory (bytes):
//    sQ,sO 16 x D x 2 each (Q, dO rows)
//    sW    16 x (D + 4) x 4 (W per M-row)
//    sK,sV 2 x BN x D x 2 each
//    sKb   2 x 4 x D fp32  (pooled keys: 4 slots per buffer)
//    sZ    16 x 4 fp32, sH 16 fp32, sMaskW nbw u32

template <bool BF16, int D, int BN> __device__ void dq_impl(const BwdParams& p) {
    constexpr int KST = D / 16, NTS = BN / 8, NTO = D / 8, CH = D / 8;
    constexpr int WS = D + 4;  // row stride of W (fp32)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u16* sQ = (u16*)smem_raw;                 // 16 x D
    u16* sO = sQ + 16 * D;                    // 16 x D (dO)
    float* sW = (float*)(sO + 16 * D);        // 16 x WS
    u16* sK = (u16*)(sW + 16 * WS);           // 2 x BN x D
    u16* sV = sK + 2 * BN * D;                // 2 x BN x D
    float* sKb = (float*)(sV + 2 * BN * D);   // 2 x 4 x D
    float* sZ = sKb + 8 * D;                  // 16 x 4
    float* sH = sZ + 64;                      // 16
    u32* sMaskW = (u32*)(sH + 16);            // nbw

    const int qb = gridDim.x - 1 - blockIdx.x;  // heavy (late causal) tiles first
    const int tile = qb >> 2, quarter = qb & 3, mq = quarter * 16;
    const int hk = blockIdx.y, n = blockIdx.z;
    const int tid = threadIdx.x, lane = tid;  // one warp
    const int G = p.G, RT = p.rows_per_tile;
    const bool aligned = p.aligned16 != 0;
    const int r0 = tile * RT + quarter * p.rows_per_warp;  // this quarter's rows
    if (r0 >= p.Lq) return;
    const int rlast = min(r0 + p.rows_per_warp, p.Lq) - 1;
    const int tmax = p.Lk - p.Lq + rlast, tmin = p.Lk - p.Lq + r0;
    const int hpu = p.per_head ? 1 : G;
    const float* kbar_h = p.kbar + ((i64)n * p.Hkv + hk) * p.nb * D;
    float* zs = sZ;
    float* hs = sH;

    u32* myMask = sMaskW;
    {
        const i64 t_idx = ((i64)n * p.Hkv + hk) * p.ntiles + tile;
        for (int i = tid; i < p.nbw; i += 32) sMaskW[i] = p.wmask[(t_idx * 4 + quarter) * p.nbw + i];
    }
    for (int i = tid; i < 8 * D; i += 32) sKb[i] = 0.f;

    // Q and dO rows of the quarter
    for (int idx = tid; idx < 16 * CH; idx += 32) {
        int m = idx / CH, c = idx % CH;
        MRow x = mrow(p, tile, hk, mq + m);
        int rr = x.valid ? x.r : 0;
        load16(sQ + swz<D>(m, c), p.q + (i64)n * p.q_sn + (i64)rr * p.q_sl + (i64)x.h * p.q_sh + c * 8, x.valid, aligned);
        load16(sO + swz<D>(m, c), p.dout + (i64)n * p.do_sn + (i64)rr * p.do_sl + (i64)x.h * p.do_sh + c * 8, x.valid, aligned);
    }
    cp_commit();

    // per-row state: rows A = lane / 4, B = A + 8 of this warp
    MRow rx[2];  // rx.valid: the M-row exists (its dq is written)
    bool live[2];  // ... and attends at least one key (finite lse)
    Sel sel[2];
    float lse2[2], Dm[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        rx[x] = mrow(p, tile, hk, mq + (lane >> 2) + 8 * x);
        float lse = DA_NEG_INF, tau = 0.f, dr = 0.f;
        int h0 = p.per_head ? rx[x].h : hk * G;
        if (rx[x].valid) {
            lse = p.lse[(i64)n * p.lse_sn + (i64)rx[x].h * p.lse_sh + (i64)rx[x].r * p.lse_sl];
            tau = p.tau[(i64)n * p.tau_sn + (i64)h0 * p.tau_sh + (i64)rx[x].r * p.tau_sl];
            dr = p.drow[((i64)n * p.Hq + rx[x].h) * p.Lq + rx[x].r];
        }
        live[x] = rx[x].valid && lse > DA_NEG_INF;
        lse2[x] = live[x] ? lse * DA_LOG2E : DA_POS_INF;
        Dm[x] = live[x] ? dr : 0.f;
        sel[x] = make_sel(unit_alpha(p, h0), tau);
    }

    cp_wait<0>();
    __syncthreads();
    // Q and dO fragments are read from shared memory per use (registers go to dq)

    // W = sum_j s_j kbar_j and S = sum_j s_j per row accumulate over the visited selected
    // blocks; W lives in shared memory at this thread's own fragment positions (rows A / B
    // of the warp, columns nt * 8 + (lane % 4) * 2 + {0, 1}), so no two threads share a word.
    float* wA = sW + (lane >> 2) * WS + (lane & 3) * 2;
    float* wB = wA + 8 * WS;
#pragma unroll
    for (int nt = 0; nt < NTO; nt++) {
        *(float2*)(wA + nt * 8) = make_float2(0.f, 0.f);
        *(float2*)(wB + nt * 8) = make_float2(0.f, 0.f);
    }
    float Ssum[2] = {0.f, 0.f};
    __syncthreads();

    // ---- b) fine stage over the union's key chunks
    const int nch = (p.Lk + BN - 1) / BN;
    const int bpc_log2 = p.bs_log2 - (BN == 64 ? 6 : 5);
    auto next_chunk = [&](int ci) -> int {
        while (ci < nch) {
            if (p.causal && ci * BN > tmax) return -1;
            int j = ci >> bpc_log2;
            u32 wd = myMask[j >> 5] >> (j & 31);
            if (wd & 1u) return ci;
            if (wd == 0u) j = ((j >> 5) + 1) << 5;
            else j += __ffs(wd) - 1;
            ci = j << bpc_log2;
        }
        return -1;
    };
    // K/V chunk loader: lane copies 16-byte chunk lc of rows ldrow + RSTEP * it. RSTEP < 8,
    // so the swizzled offset is computed per row.
    constexpr int RSTEP = 32 / CH;
    const int ldrow = tid / CH, lc = tid % CH;
    const u16* kthr = p.k + (i64)n * p.k_sn + (i64)hk * p.k_sh + (i64)ldrow * p.k_sl + lc * 8;
    const u16* vthr = p.v + (i64)n * p.v_sn + (i64)hk * p.v_sh + (i64)ldrow * p.v_sl + lc * 8;
    const i64 kstep = (i64)RSTEP * p.k_sl, vstep = (i64)RSTEP * p.v_sl;
    const u32 sKbase = smem_u32(sK), sVbase = smem_u32(sV);
    auto load_kv = [&](int ci, int buf) {
        if (aligned) {
            const u16* kp = kthr + (i64)ci * BN * p.k_sl;
            const u16* vp = vthr + (i64)ci * BN * p.v_sl;
            const int i0 = ci * BN + ldrow;
#pragma unroll
            for (int it = 0; it < BN / RSTEP; it++) {
                bool valid = i0 + it * RSTEP < p.Lk;
                u32 so = (u32)((buf * BN * D + swz<D>(ldrow + it * RSTEP, lc)) * 2);
                cp_async16(sKbase + so, valid ? (const void*)(kp + it * kstep) : (const void*)p.k, valid ? 16 : 0);
                cp_async16(sVbase + so, valid ? (const void*)(vp + it * vstep) : (const void*)p.v, valid ? 16 : 0);
            }
        } else {
            for (int idx = tid; idx < BN * CH; idx += 32) {
                int row = idx / CH, c = idx % CH;
                int i = ci * BN + row;
                bool valid = i < p.Lk;
                int ii = valid ? i : 0;
                load16(sK + buf * BN * D + swz<D>(row, c), p.k + (i64)n * p.k_sn + (i64)ii * p.k_sl + (i64)hk * p.k_sh + c * 8, valid, false);
                load16(sV + buf * BN * D + swz<D>(row, c), p.v + (i64)n * p.v_sn + (i64)ii * p.v_sl + (i64)hk * p.v_sh + c * 8, valid, false);
            }
        }
        int j = ci >> bpc_log2;
        for (int i = tid; i < D / 4; i += 32) cp_async16(smem_u32(sKb + buf * 4 * D + (j & 3) * D + i * 4), kbar_h + (i64)j * D + i * 4, 16);
    };

    float acc[NTO][4];
#pragma unroll
    for (int i = 0; i < NTO; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float Hacc[2] = {0.f, 0.f}, SH[2] = {0.f, 0.f};
    int jprev = -1;  // block whose prior (beta2, sw, cand) is current
    float beta2[2] = {0.f, 0.f}, sw[2] = {0.f, 0.f};
    bool cand[2] = {false, false};
    const float sl2 = p.scale * DA_LOG2E;
    const float wprior = p.coarse_scale / (float)hpu;
    const float wprior_q = wprior / p.scale;  // prior terms enter acc, which is scaled by sigma at the end

    int ci = next_chunk(0);
    if (ci >= 0) load_kv(ci, 0);
    cp_commit();
    int buf = 0;
    while (ci >= 0) {
        const int nxt = next_chunk(ci + 1);
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
        const float* kb4 = sKb + buf * 4 * D;
        const int j = ci >> bpc_log2;
        {

        // S = Q K^T and dP = dO V^T
        float s[NTS][4], dp[NTS][4];
#pragma unroll
        for (int i = 0; i < NTS; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KST; kk++) {
            u32 qf[4], of[4];
            ldsm_x4(qf, smem_u32(sQ + swz<D>(lane & 15, kk * 2 + (lane >> 4))));
            ldsm_x4(of, smem_u32(sO + swz<D>(lane & 15, kk * 2 + (lane >> 4))));
#pragma unroll
            for (int np = 0; np < NTS / 2; np++) {
                u32 b[4];
                ldsm_x4(b, smem_u32(cK + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
                mma16816<BF16>(s[2 * np], qf, b[0], b[1]);
                mma16816<BF16>(s[2 * np + 1], qf, b[2], b[3]);
                ldsm_x4(b, smem_u32(cV + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
                mma16816<BF16>(dp[2 * np], of, b[0], b[1]);
                mma16816<BF16>(dp[2 * np + 1], of, b[2], b[3]);
            }
        }
        // coarse score of block j for each row (same arithmetic as the scan), once per block
        if (j != jprev) {
        jprev = j;
        float zc[4];
        zdot_s<BF16, D>(sQ, 0, kb4 + ((lane >> 2) >> 1) * D, zc);
        zs[(lane >> 2) * 4 + (lane & 3)] = zc[0] + zc[1];
        zs[((lane >> 2) + 8) * 4 + (lane & 3)] = zc[2] + zc[3];
        __syncwarp();
#pragma unroll
        for (int x = 0; x < 2; x++) {
            beta2[x] = DA_NEG_INF;
            sw[x] = 0.f;
            cand[x] = false;
            if (!live[x]) continue;
            int kind = block_kind(p, rx[x].t, j);
            if (kind == 1) beta2[x] = 0.f;
            else if (kind == 2) {
                int mi = (lane >> 2) + 8 * x;
                float z = unit_z<4>(p, zs, mi, rx[x].mbase & 15, j & 3);
                float b2, w;
                if (prior(sel[x], z, b2, w)) {
                    beta2[x] = b2;
                    sw[x] = w;
                    cand[x] = true;
                }
            }
        }
        __syncwarp();
        // W += s_j kbar_j, S += s_j
        if (__any_sync(0xffffffffu, cand[0] || cand[1])) {
            Ssum[0] += sw[0];
            Ssum[1] += sw[1];
            const float* kb = kb4 + (j & 3) * D + (lane & 3) * 2;
#pragma unroll 4
            for (int nt = 0; nt < NTO; nt++) {
                float2 kv = *(const float2*)(kb + nt * 8);
                float2 a = *(float2*)(wA + nt * 8), c = *(float2*)(wB + nt * 8);
                *(float2*)(wA + nt * 8) = make_float2(a.x + sw[0] * kv.x, a.y + sw[0] * kv.y);
                *(float2*)(wB + nt * 8) = make_float2(c.x + sw[1] * kv.x, c.y + sw[1] * kv.y);
            }
        }
        }

        const int kbase = ci * BN + (lane & 3) * 2;
        const bool edge = ci * BN + BN > p.Lk || (p.causal && ci * BN + BN - 1 > tmin);
#pragma unroll
        for (int x = 0; x < 2; x++) {
            const int t = rx[x].t;
            float hpart = 0.f;
#pragma unroll
            for (int nt = 0; nt < NTS; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int i = kbase + nt * 8 + e;
                    float sv = s[nt][2 * x + e] * sl2;
                    bool ok = !edge || (i < p.Lk && (!p.causal || i <= t));
                    float pr = ok ? ex2(sv + beta2[x] - lse2[x]) : 0.f;
                    float g = dp[nt][2 * x + e] - Dm[x];
                    if (cand[x]) hpart += (ok ? ex2(sv - lse2[x]) : 0.f) * g;
                    s[nt][2 * x + e] = pr * g;  // dS
                }
            }
            Hacc[x] += hpart;
        }
        // dq += dS K
#pragma unroll
        for (int k2 = 0; k2 < BN / 16; k2++) {
            u32 a[4];
            a[0] = pack2<BF16>(s[2 * k2][0], s[2 * k2][1]);
            a[1] = pack2<BF16>(s[2 * k2][2], s[2 * k2][3]);
            a[2] = pack2<BF16>(s[2 * k2 + 1][0], s[2 * k2 + 1][1]);
            a[3] = pack2<BF16>(s[2 * k2 + 1][2], s[2 * k2 + 1][3]);
#pragma unroll
            for (int dpp = 0; dpp < D / 16; dpp++) {
                u32 b[4];
                ldsm_x4_t(b, smem_u32(cK + swz<D>(k2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dpp * 2 + (lane >> 4))));
                mma16816<BF16>(acc[2 * dpp], a, b[0], b[1]);
                mma16816<BF16>(acc[2 * dpp + 1], a, b[2], b[3]);
            }
        }
        // end of block j in the visit order: finish H_j and its dq term
        if (nxt < 0 || (nxt >> bpc_log2) != j) {
#pragma unroll
            for (int x = 0; x < 2; x++) {
                Hacc[x] += __shfl_xor_sync(0xffffffffu, Hacc[x], 1);
                Hacc[x] += __shfl_xor_sync(0xffffffffu, Hacc[x], 2);
            }
            if ((lane & 3) == 0) {
                hs[lane >> 2] = Hacc[0];
                hs[(lane >> 2) + 8] = Hacc[1];
            }
            __syncwarp();
            if (__any_sync(0xffffffffu, cand[0] || cand[1])) {
                float cf[2];
#pragma unroll
                for (int x = 0; x < 2; x++) {
                    cf[x] = 0.f;
                    if (!cand[x]) continue;
                    int mi = (lane >> 2) + 8 * x;
                    float Hu;
                    if (p.per_head) Hu = hs[mi];
                    else {
                        int mb = rx[x].mbase & 15;
                        Hu = 0.f;
                        for (int g = 0; g < G; g++) Hu += hs[mb + g];
                    }
                    SH[x] += sw[x] * Hu;
                    cf[x] = wprior_q * sw[x] * Hu;
                }
                const float* kb = kb4 + (j & 3) * D + (lane & 3) * 2;
#pragma unroll
                for (int nt = 0; nt < NTO; nt++) {
                    float2 kv = *(const float2*)(kb + nt * 8);
                    acc[nt][0] += cf[0] * kv.x;
                    acc[nt][1] += cf[0] * kv.y;
                    acc[nt][2] += cf[1] * kv.x;
                    acc[nt][3] += cf[1] * kv.y;
                }
            }
            Hacc[0] = Hacc[1] = 0.f;
            __syncwarp();
        }
        }  // this warp's chunk
        __syncthreads();
        ci = nxt;
        buf ^= 1;
    }

    // epilogue: dq = sigma acc - (sigma_c / hpu) c W; crow = c
#pragma unroll
    for (int x = 0; x < 2; x++) {
        if (!rx[x].valid) continue;
        const float c = Ssum[x] > 0.f ? SH[x] / Ssum[x] : 0.f;
        const float wc = wprior * c;
        const int m = (lane >> 2) + 8 * x;  // row of sW
        u16* dqp = p.dq + (i64)n * p.dq_sn + (i64)rx[x].r * p.dq_sl + (i64)rx[x].h * p.dq_sh;
#pragma unroll
        for (int nt = 0; nt < NTO; nt++) {
            int d = nt * 8 + (lane & 3) * 2;
            const float* wa = sW + m * WS + d;
            float v0 = acc[nt][2 * x] * p.scale - wc * wa[0];
            float v1 = acc[nt][2 * x + 1] * p.scale - wc * wa[1];
            u32 w = pack2<BF16>(v0, v1);
            dqp[d] = (u16)(w & 0xffffu);
            dqp[d + 1] = (u16)(w >> 16);
        }
        if ((lane & 3) == 0) p.crow[((i64)n * p.Hq + rx[x].h) * p.Lq + rx[x].r] = c;
    }
}

#define DA_BWD_DQ(T, BF, D, BN) \
    extern "C" __global__ void __launch_bounds__(32, 1) dash_bwd_dq_##T##_d##D##_bn##BN(BwdParams p) { dq_impl<BF, D, BN>(p); }
DA_BWD_DQ(bf16, true, 64, 64)
DA_BWD_DQ(bf16, true, 64, 32)
DA_BWD_DQ(bf16, true, 128, 32)
DA_BWD_DQ(f16, false, 64, 64)
DA_BWD_DQ(f16, false, 64, 32)
DA_BWD_DQ(f16, false, 128, 32)

// ---------------------------------------------------------------------------------------
// 4. mask [N, Hkv, ntiles, nbw] -> maskt [N, Hkv, nb, ntw]: grid (ntw, nbw, N * Hkv), one
//    warp; lane l reads tile 32 x + l's word y, then 32 ballots transpose the 32 x 32 bits.

extern "C" __global__ void __launch_bounds__(32) dash_bwd_transpose(BwdParams p) {
    const int tw = blockIdx.x, bw = blockIdx.y, nh = blockIdx.z, lane = threadIdx.x;
    const int tile = tw * 32 + lane;
    u32 word = tile < p.ntiles ? p.mask[((i64)nh * p.ntiles + tile) * p.nbw + bw] : 0u;
    u32 mine = 0u;
#pragma unroll
    for (int b = 0; b < 32; b++) {
        u32 bits = __ballot_sync(0xffffffffu, (word >> b) & 1u);
        if (lane == b) mine = bits;
    }
    const int j = bw * 32 + lane;
    if (j < p.nb) p.maskt[((i64)nh * p.nb + j) * p.ntw + tw] = mine;
}

// ---------------------------------------------------------------------------------------
// 5. dK, dV, d kbar: grid (nb, Hkv, N), NW = B / 16 warps (warp w owns keys 16 w .. 16 w + 15
//    of the block). Shared memory (bytes):
//    sK, sV   B x D x 2 each
//    sQ, sO   2 buffers x 64 x D x 2 each
//    sKb      4 x D fp32
//    stats    64 x {lse2, Dm, beta2, s, c, z, H, dz} fp32 + 64 t (int) + NW x 64 H parts

template <bool BF16, int D, int NW> __device__ void dkv_impl(const BwdParams& p) {
    constexpr int B = NW * 16, KST = D / 16, NTO = D / 8, CH = D / 8, NT = NW * 32;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u16* sK = (u16*)smem_raw;        // B x D
    u16* sV = sK + B * D;            // B x D
    u16* sQ = sV + B * D;            // 2 x 64 x D
    u16* sO = sQ + 2 * 64 * D;       // 2 x 64 x D
    float* sKb = (float*)(sO + 2 * 64 * D);  // 4 x D
    float* sLse2 = sKb + 4 * D;
    float* sDm = sLse2 + 64;
    float* sBeta2 = sDm + 64;
    float* sS = sBeta2 + 64;
    float* sC = sS + 64;
    float* sZh = sC + 64;
    float* sHm = sZh + 64;
    float* sDz = sHm + 64;
    int* sT = (int*)(sDz + 64);
    float* sHp = (float*)(sT + 64);  // NW x 64
    float* sZw = sHp + NW * 64;      // 4 x 64 (zdot4 partials, per warp slot)
    int* sAct = (int*)(sZw + 4 * 64); // 4 quarter flags
    float* sRaw = (float*)(sAct + 4);  // 2 buffers x {lse, D_r, c, tau} x 64 (prefetched)

    const int j = blockIdx.x, hk = blockIdx.y, n = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = p.G;
    const bool aligned = p.aligned16 != 0;
    const int hpu = p.per_head ? 1 : G;
    const int key0 = j * p.bs;
    const int len = min(p.bs, p.Lk - key0);
    const u32* tw = p.maskt + (((i64)n * p.Hkv + hk) * p.nb + j) * p.ntw;

    // K, V of the block, kbar_j in slot j & 3 of sKb (other slots zero)
    for (int idx = tid; idx < B * CH; idx += NT) {
        int row = idx / CH, c = idx % CH;
        int i = key0 + row;
        bool valid = row < len;
        int ii = valid ? i : 0;
        load16(sK + swz<D>(row, c), p.k + (i64)n * p.k_sn + (i64)ii * p.k_sl + (i64)hk * p.k_sh + c * 8, valid, aligned);
        load16(sV + swz<D>(row, c), p.v + (i64)n * p.v_sn + (i64)ii * p.v_sl + (i64)hk * p.v_sh + c * 8, valid, aligned);
    }
    const float* kbj = p.kbar + (((i64)n * p.Hkv + hk) * p.nb + j) * D;
    for (int i = tid; i < 4 * D; i += NT) sKb[i] = (i / D == (j & 3)) ? kbj[i % D] : 0.f;

    auto next_tile = [&](int t0) -> int {
        int w = t0 >> 5;
        if (w >= p.ntw) return -1;
        u32 bits = tw[w] & (0xffffffffu << (t0 & 31));
        while (bits == 0u) {
            if (++w >= p.ntw) return -1;
            bits = tw[w];
        }
        return (w << 5) + __ffs(bits) - 1;
    };
    auto load_tile = [&](int tile, int buf) {
        if (tid < 64) {  // the rows' saved statistics, prefetched with the tile
            MRow x = mrow(p, tile, hk, tid);
            float* raw = sRaw + buf * 256;
            if (x.valid) {
                int h0 = p.per_head ? x.h : hk * G;
                i64 st = ((i64)n * p.Hq + x.h) * p.Lq + x.r;
                cp_async4(smem_u32(raw + tid), p.lse + (i64)n * p.lse_sn + (i64)x.h * p.lse_sh + (i64)x.r * p.lse_sl);
                cp_async4(smem_u32(raw + 64 + tid), p.drow + st);
                cp_async4(smem_u32(raw + 128 + tid), p.crow + st);
                cp_async4(smem_u32(raw + 192 + tid), p.tau + (i64)n * p.tau_sn + (i64)h0 * p.tau_sh + (i64)x.r * p.tau_sl);
            } else {
                raw[tid] = DA_NEG_INF;
                raw[64 + tid] = raw[128 + tid] = raw[192 + tid] = 0.f;
            }
        }
        for (int idx = tid; idx < 64 * CH; idx += NT) {
            int m = idx / CH, c = idx % CH;
            MRow x = mrow(p, tile, hk, m);
            int rr = x.valid ? x.r : 0;
            load16(sQ + buf * 64 * D + swz<D>(m, c), p.q + (i64)n * p.q_sn + (i64)rr * p.q_sl + (i64)x.h * p.q_sh + c * 8, x.valid, aligned);
            load16(sO + buf * 64 * D + swz<D>(m, c), p.dout + (i64)n * p.do_sn + (i64)rr * p.do_sl + (i64)x.h * p.do_sh + c * 8, x.valid, aligned);
        }
    };

    float dk[NTO][4], dv[NTO][4];
#pragma unroll
    for (int i = 0; i < NTO; i++) dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.f;
    float dkb[(D + NT - 1) / NT];
#pragma unroll
    for (int i = 0; i < (D + NT - 1) / NT; i++) dkb[i] = 0.f;
    const float sl2 = p.scale * DA_LOG2E;
    const float wprior = p.coarse_scale / (float)hpu;
    const int kw = warp * 16;  // this warp's first key (block-local)

    int tile = next_tile(0);
    if (tile >= 0) load_tile(tile, 0);
    cp_commit();
    int buf = 0;
    while (tile >= 0) {
        const int nxt = next_tile(tile + 1);
        if (nxt >= 0) {
            load_tile(nxt, buf ^ 1);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        // per-row statistics of the tile
        __syncthreads();  // the tile's prefetched rows and statistics are visible
        const float* raw = sRaw + buf * 256;
        if (tid < 64) {
            MRow x = mrow(p, tile, hk, tid);
            float lse = raw[tid], dr = raw[64 + tid], c = raw[128 + tid];
            bool v = x.valid && lse > DA_NEG_INF;
            sLse2[tid] = v ? lse * DA_LOG2E : DA_POS_INF;
            sDm[tid] = v ? dr : 0.f;
            sC[tid] = c;
            sT[tid] = v ? x.t : -1;
        }
        __syncthreads();
        const u16* cQ = sQ + buf * 64 * D;
        const u16* cO = sO + buf * 64 * D;
        // coarse scores of block j for the tile's 64 M-rows (per head), then per unit
        for (int mt = warp; mt < 4; mt += NW) {
            float zc[4];
            zdot_s<BF16, D>(cQ, mt * 16, sKb + ((lane >> 2) >> 1) * D, zc);
            float* zw = sZw + mt * 64;
            zw[(lane >> 2) * 4 + (lane & 3)] = zc[0] + zc[1];
            zw[((lane >> 2) + 8) * 4 + (lane & 3)] = zc[2] + zc[3];
        }
        __syncthreads();
        if (tid < 64) {
            const int m = tid, mt = m >> 4, mi = m & 15;
            MRow x = mrow(p, tile, hk, m);
            float b2 = DA_NEG_INF, w = 0.f;
            if (sLse2[m] < DA_POS_INF) {  // a live M-row
                int kind = block_kind(p, x.t, j);
                if (kind == 1) b2 = 0.f;
                else if (kind == 2) {
                    int h0 = p.per_head ? x.h : hk * G;
                    Sel sl = make_sel(unit_alpha(p, h0), raw[192 + tid]);
                    float z = unit_z<4>(p, sZw + mt * 64, mi, x.mbase & 15, j & 3);
                    float bb, ww;
                    if (prior(sl, z, bb, ww)) {
                        b2 = bb;
                        w = ww;
                    }
                }
            }
            sBeta2[m] = b2;
            sS[m] = w;
            // quarters (16 M-rows = one forward warp tile) with any row attending block j
            u32 act = __ballot_sync(0xffffffffu, b2 > DA_NEG_INF);
            if (lane == 0) {
                sAct[2 * warp] = (act & 0xffffu) != 0u;
                sAct[2 * warp + 1] = (act >> 16) != 0u;
            }
        }
        __syncthreads();

        // quarters of 16 M-rows; those where no row attends block j are skipped
#pragma unroll 1
        for (int qt = 0; qt < 4; qt++) {
            const int m0 = qt * 16;
            if (!sAct[qt]) {
                if (lane < 16) sHp[warp * 64 + m0 + lane] = 0.f;
                continue;
            }
            float s[2][4], dp[2][4];
#pragma unroll
            for (int i = 0; i < 2; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
#pragma unroll 4
            for (int kk = 0; kk < KST; kk++) {
                u32 ak[4], av[4], b[4];
                ldsm_x4(ak, smem_u32(sK + swz<D>(kw + (lane & 15), kk * 2 + (lane >> 4))));
                ldsm_x4(av, smem_u32(sV + swz<D>(kw + (lane & 15), kk * 2 + (lane >> 4))));
                const int row = m0 + (lane & 7) + ((lane >> 4) << 3), ch = kk * 2 + ((lane >> 3) & 1);
                ldsm_x4(b, smem_u32(cQ + swz<D>(row, ch)));
                mma16816<BF16>(s[0], ak, b[0], b[1]);
                mma16816<BF16>(s[1], ak, b[2], b[3]);
                ldsm_x4(b, smem_u32(cO + swz<D>(row, ch)));
                mma16816<BF16>(dp[0], av, b[0], b[1]);
                mma16816<BF16>(dp[1], av, b[2], b[3]);
            }
            // P^T, dS^T, and the column (M-row) sums of exp(sigma qk - lse) (dP - D)
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int m = m0 + nt * 8 + (lane & 3) * 2 + e;
                    const float l2 = sLse2[m], b2 = sBeta2[m], dm = sDm[m];
                    const int t = sT[m];
                    const bool cnd = sS[m] > 0.f;
                    float hsum = 0.f;
#pragma unroll
                    for (int y = 0; y < 2; y++) {  // key rows lane / 4 and lane / 4 + 8
                        const int kl = kw + (lane >> 2) + 8 * y;
                        const int i = key0 + kl;
                        const bool ok = kl < len && (!p.causal || i <= t);
                        const float sv = s[nt][2 * y + e] * sl2;
                        const float pr = ok ? ex2(sv + b2 - l2) : 0.f;
                        const float g = dp[nt][2 * y + e] - dm;
                        if (cnd && ok) hsum += ex2(sv - l2) * g;
                        s[nt][2 * y + e] = pr;       // P^T
                        dp[nt][2 * y + e] = pr * g;  // dS^T
                    }
                    float h = hsum;
                    h += __shfl_xor_sync(0xffffffffu, h, 4);
                    h += __shfl_xor_sync(0xffffffffu, h, 8);
                    h += __shfl_xor_sync(0xffffffffu, h, 16);
                    if (lane < 4) sHp[warp * 64 + m0 + nt * 8 + lane * 2 + e] = h;
                }
            }
            // dV += P^T dO, dK += dS^T Q (k = the quarter's 16 M-rows)
            u32 ap[4], as[4];
            ap[0] = pack2<BF16>(s[0][0], s[0][1]);
            ap[1] = pack2<BF16>(s[0][2], s[0][3]);
            ap[2] = pack2<BF16>(s[1][0], s[1][1]);
            ap[3] = pack2<BF16>(s[1][2], s[1][3]);
            as[0] = pack2<BF16>(dp[0][0], dp[0][1]);
            as[1] = pack2<BF16>(dp[0][2], dp[0][3]);
            as[2] = pack2<BF16>(dp[1][0], dp[1][1]);
            as[3] = pack2<BF16>(dp[1][2], dp[1][3]);
#pragma unroll
            for (int dpp = 0; dpp < D / 16; dpp++) {
                u32 b[4];
                const int row = m0 + (lane & 7) + (((lane >> 3) & 1) << 3), ch = dpp * 2 + (lane >> 4);
                ldsm_x4_t(b, smem_u32(cO + swz<D>(row, ch)));
                mma16816<BF16>(dv[2 * dpp], ap, b[0], b[1]);
                mma16816<BF16>(dv[2 * dpp + 1], ap, b[2], b[3]);
                ldsm_x4_t(b, smem_u32(cQ + swz<D>(row, ch)));
                mma16816<BF16>(dk[2 * dpp], as, b[0], b[1]);
                mma16816<BF16>(dk[2 * dpp + 1], as, b[2], b[3]);
            }
        }
        __syncthreads();
        // H_j per M-row, per unit, and the d kbar_j coefficient
        if (tid < 64) {
            float h = 0.f;
            for (int w = 0; w < NW; w++) h += sHp[w * 64 + tid];
            sHm[tid] = h;
        }
        __syncthreads();
        if (tid < 64) {
            const int m = tid;
            float dz = 0.f;
            if (sS[m] > 0.f) {
                float Hu;
                if (p.per_head) Hu = sHm[m];
                else {
                    MRow x = mrow(p, tile, hk, m);
                    Hu = 0.f;
                    for (int g = 0; g < G; g++) Hu += sHm[x.mbase + g];
                }
                dz = wprior * sS[m] * (Hu - sC[m]);
            }
            sDz[m] = dz;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < (D + NT - 1) / NT; i++) {
            const int d = tid + i * NT;
            if (d < D) {
                float a = dkb[i];
                for (int m = 0; m < 64; m++) {
                    float dz = sDz[m];
                    if (dz != 0.f) a += dz * to_f32<BF16>(cQ[swz<D>(m, d >> 3) + (d & 7)]);
                }
                dkb[i] = a;
            }
        }
        __syncthreads();  // buffers of this tile are reloaded two tiles later
        tile = nxt;
        buf ^= 1;
    }
    cp_wait<0>();

    // epilogue: d kbar_j -> shared (reuse sQ area as fp32), then dK = sigma acc + dkbar / len
    float* sDkb = (float*)sQ;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < (D + NT - 1) / NT; i++) {
        const int d = tid + i * NT;
        if (d < D) sDkb[d] = dkb[i];
    }
    __syncthreads();
    if (p.dpooled) {
        for (int d = tid; d < D; d += NT) {
            float v = sDkb[d];
            u32 w = pack2<BF16>(v, 0.f);
            p.dpooled[(i64)n * p.dp_sn + (i64)j * p.dp_sb + (i64)hk * p.dp_sh + d] = (u16)(w & 0xffffu);
        }
    }
    const float inv_len = len > 0 ? 1.f / (float)len : 0.f;
#pragma unroll
    for (int y = 0; y < 2; y++) {
        const int kl = kw + (lane >> 2) + 8 * y;
        if (kl >= len) continue;
        const i64 key = key0 + kl;
        u16* dkp = p.dk + (i64)n * p.dk_sn + key * p.dk_sl + (i64)hk * p.dk_sh;
        u16* dvp = p.dv + (i64)n * p.dv_sn + key * p.dv_sl + (i64)hk * p.dv_sh;
#pragma unroll
        for (int nt = 0; nt < NTO; nt++) {
            int d = nt * 8 + (lane & 3) * 2;
            float k0 = dk[nt][2 * y] * p.scale, k1 = dk[nt][2 * y + 1] * p.scale;
            if (!p.dpooled) {
                k0 += sDkb[d] * inv_len;
                k1 += sDkb[d + 1] * inv_len;
            }
            u32 wk = pack2<BF16>(k0, k1), wv = pack2<BF16>(dv[nt][2 * y], dv[nt][2 * y + 1]);
            dkp[d] = (u16)(wk & 0xffffu);
            dkp[d + 1] = (u16)(wk >> 16);
            dvp[d] = (u16)(wv & 0xffffu);
            dvp[d + 1] = (u16)(wv >> 16);
        }
    }
}

#define DA_BWD_DKV(T, BF, D, NW) \
    extern "C" __global__ void __launch_bounds__(NW * 32, 1) dash_bwd_dkv_##T##_d##D##_b##NW(BwdParams p) { dkv_impl<BF, D, NW>(p); }
DA_BWD_DKV(bf16, true, 64, 2)
DA_BWD_DKV(bf16, true, 64, 4)
DA_BWD_DKV(bf16, true, 64, 8)
DA_BWD_DKV(bf16, true, 128, 2)
DA_BWD_DKV(bf16, true, 128, 4)
DA_BWD_DKV(bf16, true, 128, 8)
DA_BWD_DKV(f16, false, 64, 2)
DA_BWD_DKV(f16, false, 64, 4)
DA_BWD_DKV(f16, false, 64, 8)
DA_BWD_DKV(f16, false, 128, 2)
DA_BWD_DKV(f16, false, 128, 4)
DA_BWD_DKV(f16, false, 128, 8)
