// DashAttention decode over a paged KV cache (SPEC 5), CUDA.
// Fixed grids (graph capturable: sequence lengths and page tables are read on the device).
// Fast path ("v2", D in {64, 128}, 16-byte aligned caches, <= 16 heads per unit):
//   dash_dec_score_*  : grid (chunks, Hkv, N): each CTA scores a slice of the candidate
//                       blocks' pooled keys (16-byte loads, a lane group per key) for every
//                       row / head sharing the KV head, z to the workspace.
//   dash_dec_select_* : one CTA per (sequence, unit, row): max, tau by Newton on
//                       ||(s - tau)_+||_k - 1 (convex: monotone from the left), compaction.
//   dash_dec_attn_*   : split-KV attention; K/V tiles via cp.async (double buffered,
//                       swizzled smem), then the same lse merge.
// Generic path ("v1", any D <= 256, any alignment):
//   dash_pool_paged_* : pooled keys of blocks completed between prev_seq_lens and seq_lens.
//   dash_dec_coarse_* : per (sequence, selection unit, row): z_j over the complete
//                       candidate blocks from the pooled cache, the entmax threshold tau
//                       (bisection, then exact finish on the support), and the compact
//                       list of selected blocks with their log-prior.
//   dash_dec_attend_* : split-KV attention: CTA (split, sequence x unit, row) takes an
//                       equal share of the row's blocks (selected + local), online softmax
//                       for the unit's heads, partial (o, lse) to the workspace.
//   dash_merge_*      : merges S partial (o, lse) by lse (also dashattn_merge_states).
// A block-table entry outside [0, num_pages) is never dereferenced (its keys are skipped).

// Generic helpers from common.cuh (build.rs inlines it for NVRTC: no include path).
#include "common.cuh"
#define DA_INF (__int_as_float(0x7f800000))
// Development timeline (scripts/microbench/decode_trace.cu builds this file with
// -DDASH_TRACE): thread 0 of a CTA stamps %globaltimer into dash_trace[slot][k]; compiled
// out otherwise.
#ifdef DASH_TRACE
__device__ unsigned long long dash_trace[8192][8];
#define DTRACE(slot, k)                                                       \
    do {                                                                      \
        if (threadIdx.x == 0) {                                               \
            unsigned long long t_;                                            \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_)::"memory"); \
            dash_trace[slot][k] = t_;                                         \
        }                                                                     \
    } while (0)
#define DTRACE_VAL(slot, k, v)                                       \
    do {                                                             \
        if (threadIdx.x == 0) dash_trace[slot][k] = (unsigned long long)(v); \
    } while (0)
#else
#define DTRACE(slot, k) \
    do {                \
        (void)(slot);   \
    } while (0)
#define DTRACE_VAL(slot, k, v) \
    do {                       \
        (void)(slot);          \
    } while (0)
#endif

// Trace slot of a select CTA (slots 4096..6143; the score's are 0..4095, the attention's
// 6144..8191).
__device__ __forceinline__ int sel_trace_slot() { return 4096 + ((blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) & 2047); }

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

struct CacheStrides {
    i64 page, slot, head;  // element strides of [num_pages, page_size|slots, Hkv, D]
};

struct DecParams {
    const void *q;
    i64 sq_n, sq_l, sq_h;
    const void *kc, *vc;
    void *pc;  // pooled cache (read by decode, written by pool_paged)
    CacheStrides sk, sv, sp;
    const int *table;
    i64 st_b, st_i;
    const int *seq_lens;
    i64 s_sl;
    const int *prev_lens;
    i64 s_prev;
    const float *head_alpha;
    i64 ha_stride;
    void *o;
    i64 so_n, so_l, so_h;
    float *z;         // ws [rows_total, nbmax]
    float *tau;       // ws [rows_total]
    int *sel_n;       // ws [rows_total]
    int *sel_idx;     // ws [rows_total, nbmax]
    float *sel_beta;  // ws [rows_total, nbmax]
    float *o_part;    // ws [splits, N, q_len, Hq, D]
    float *lse_part;  // ws [splits, N, Hq, q_len]
    int n, q_len, hq, hkv, d, bs, ps, num_pages, max_pages, nbmax, n_local, per_head, group, splits;
    float alpha, sigma, sigma_c;
    int cb;      // v2 score kernel: candidate blocks per CTA
    float *lse;  // v2: [N, Hq, q_len] output or null (v1 merges through MergeParams)
    i64 sl_n, sl_h, sl_l;
    int *cnt;  // ws [rows_total]: v2 per-row count of finished splits (the attention's merge)
    int *items;   // ws [rows_total * splits] 2 x int4: v2 attention work list (see write_item)
    int *nitems;  // ws [2]: its length (appended by select) and the attention's next-item
                  // counter, both zeroed by the score kernel
    int wchunk;   // v2: blocks per work item (at least; rows with > splits * wchunk blocks use more)
    int flags;    // v2: bit 0: select prefetches the K/V rows of the row's local blocks into L2;
                  // bit 1: q rows are 16-byte aligned (vector loads); bit 2: one merger CTA a
                  // (row, head) merges the splits (see dec_attn)
    // v2 attention: multipliers for x / d by fdiv (fast_div_m of q_len, units, group, ps)
    u32 m_qlen, m_units, m_group, m_ps;
};
// Must match src/cuda/decode.rs `DecParams` (#[repr(C)]).
static_assert(sizeof(DecParams) == 440, "DecParams layout");
// The attention's K/V tiles (min(B, 64) keys, starting at multiples of that) each lie in one
// page: one table entry a tile (the select then looks up each item's first tile's page).
__device__ __forceinline__ bool tiles_in_one_page(const DecParams &p) { return p.ps % min(p.bs, 64) == 0; }

// Block-wide reductions (blockDim a multiple of 32, <= 1024); every thread gets the result.
__device__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += red[w];
    __syncthreads();
    return t;
}
__device__ double block_sum_d(double v, double *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += red[w];
    __syncthreads();
    return t;
}
__device__ float block_max(float v, float *red) {
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = -DA_INF;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t = fmaxf(t, red[w]);
    __syncthreads();
    return t;
}

// seq_lens[b], or 0 (an empty sequence: o = 0, lse = -inf) when it lies outside
// [0, max_pages * page_size]: the host cannot range-check device memory, and a length past
// the block table would make every later index run past its buffer.
__device__ __forceinline__ int seq_len(const DecParams &p, int b) {
    int len = p.seq_lens[b * p.s_sl];
    return (len < 0 || (i64)len > (i64)p.max_pages * p.ps) ? 0 : len;
}

// Page of logical page index pi (= token / page_size) of sequence b, or -1 when the table
// entry is not a page.
__device__ __forceinline__ int page_at(const DecParams &p, int b, i64 pi) {
    int pg = p.table[b * p.st_b + pi * p.st_i];
    return (pg >= 0 && pg < p.num_pages) ? pg : -1;
}
__device__ __forceinline__ int page_of(const DecParams &p, int b, i64 tok) { return page_at(p, b, tok / p.ps); }

// ---------------------------------------------------------------- pooled-key upkeep
// grid (Hkv, N), block = D threads (rounded to 32).
template <typename T>
__device__ __forceinline__ void pool_paged(const DecParams &p) {
    const int hk = blockIdx.x, b = blockIdx.y, x = threadIdx.x;
    int len = p.seq_lens[b * p.s_sl], prev = p.prev_lens[b * p.s_prev];
    if (prev < 0 || prev > len || len > p.max_pages * p.ps) return;
    for (int j = prev / p.bs; j < len / p.bs; ++j) {
        i64 tok0 = (i64)j * p.bs;
        int dst = page_of(p, b, tok0);
        if (x >= p.d || dst < 0) continue;
        float acc = 0.f;
        for (int i = 0; i < p.bs; ++i) {
            int pg = page_of(p, b, tok0 + i);
            if (pg >= 0) acc += to_f(((const T *)p.kc)[pg * p.sk.page + ((tok0 + i) % p.ps) * p.sk.slot + hk * p.sk.head + x]);
        }
        ((T *)p.pc)[dst * p.sp.page + ((tok0 % p.ps) / p.bs) * p.sp.slot + hk * p.sp.head + x] = from_f<T>(acc / p.bs);
    }
}

// ---------------------------------------------------------------- coarse stage
// grid (q_len, units, N), block 256. Dynamic smem: q[hpu*D] floats.
template <typename T>
__device__ __forceinline__ void dec_coarse(const DecParams &p) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    __shared__ double redd[32];
    __shared__ int warp_cnt[32];
    const int r = blockIdx.x, u = blockIdx.y, b = blockIdx.z;
    const int units = p.per_head ? p.hq : p.hkv;
    const int hpu = p.per_head ? 1 : p.group;
    const int h0 = p.per_head ? u : u * p.group;  // first query head of the unit
    const int hk = h0 / p.group;
    const i64 ru = ((i64)b * units + u) * p.q_len + r;
    const int len = seq_len(p, b);
    const i64 t = (i64)len - p.q_len + r;
    const i64 c = t >= 0 ? t / p.bs : -1;
    const int ncand = (int)max((i64)0, c - p.n_local + 1);
    // Clamped to [1, 2] (NaN -> 1) as in the forward: device values cannot be validated.
    const float alpha = fminf(fmaxf(p.head_alpha ? p.head_alpha[h0 * p.ha_stride] : p.alpha, 1.f), 2.f);
    float *q = sm;
    for (int e = threadIdx.x; e < hpu * p.d; e += blockDim.x) {
        int g = e / p.d, x = e % p.d;
        q[e] = to_f(((const T *)p.q)[b * p.sq_n + r * p.sq_l + (h0 + g) * p.sq_h + x]);
    }
    __syncthreads();
    float *z = p.z + ru * p.nbmax;
    float mx = -DA_INF;
    for (int j = threadIdx.x; j < ncand; j += blockDim.x) {
        i64 tok = (i64)j * p.bs;
        int pg = page_of(p, b, tok);
        float acc = -DA_INF;
        if (pg >= 0) {
            const T *kb = (const T *)p.pc + pg * p.sp.page + ((tok % p.ps) / p.bs) * p.sp.slot + hk * p.sp.head;
            acc = 0.f;
            for (int x = 0; x < p.d; ++x) {
                float kx = to_f(kb[x]);
                for (int g = 0; g < hpu; ++g) acc += q[g * p.d + x] * kx;
            }
            acc *= p.sigma_c / hpu;
        }
        z[j] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = block_max(mx, red);  // also orders the z writes before the reads below
    float tau = -DA_INF;
    if (ncand > 0) {
        if (alpha <= 1.f) {
            float s = 0.f;
            for (int j = threadIdx.x; j < ncand; j += blockDim.x) s += __expf(z[j] - mx);
            tau = mx + logf(block_sum(s, red));
        } else {
            // s_j = (alpha-1) z_j; mass(tau) = sum [s_j - tau]_+^k - 1, k = 1/(alpha-1).
            const float am1 = alpha - 1.f, k = 1.f / am1;
            float lo = am1 * mx - 1.f, hi = am1 * mx - powf((float)ncand, -am1);
            for (int it = 0; it < 30; ++it) {
                float mid = 0.5f * (lo + hi), s = 0.f;
                for (int j = threadIdx.x; j < ncand; j += blockDim.x) {
                    float x = am1 * z[j] - mid;
                    if (x > 0.f) s += powf(x, k);
                }
                if (block_sum(s, red) >= 1.f) lo = mid; else hi = mid;
            }
            // Exact finish in f64 on the found side: Newton steps from the left (the mass
            // is convex and decreasing, so they stay left of the root and converge).
            double tt = lo;
            for (int it = 0; it < 3; ++it) {
                double f = 0.0, df = 0.0;
                for (int j = threadIdx.x; j < ncand; j += blockDim.x) {
                    double x = (double)am1 * z[j] - tt;
                    if (x > 0.0) {
                        double xk1 = pow(x, (double)k - 1.0);
                        f += xk1 * x;
                        df += k * xk1;
                    }
                }
                f = block_sum_d(f, redd) - 1.0;
                df = block_sum_d(df, redd);
                if (f <= 0.0 || df <= 0.0) break;
                tt += f / df;
            }
            tau = (float)tt;
        }
    }
    // Compact the selected blocks, in increasing j.
    int base = 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int j0 = 0; j0 < ncand; j0 += blockDim.x) {
        int j = j0 + threadIdx.x;
        float beta = 0.f;
        bool sel = false;
        if (j < ncand) {
            float zj = z[j];
            if (alpha <= 1.f) {
                sel = zj > -DA_INF;
                beta = zj - tau;
            } else {
                float x = (alpha - 1.f) * zj - tau;
                sel = x > 0.f;
                if (sel) beta = logf(x) / (alpha - 1.f);
            }
        }
        unsigned m = __ballot_sync(0xffffffffu, sel);
        if (lane == 0) warp_cnt[warp] = __popc(m);
        __syncthreads();
        int off = base;
        for (int w = 0; w < warp; ++w) off += warp_cnt[w];
        int total = 0;
        for (int w = 0; w < nw; ++w) total += warp_cnt[w];
        if (sel) {
            int pos = off + __popc(m & ((1u << lane) - 1u));
            p.sel_idx[ru * p.nbmax + pos] = j;
            p.sel_beta[ru * p.nbmax + pos] = beta;
        }
        base += total;
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        p.sel_n[ru] = base;
        p.tau[ru] = tau;
    }
}

// ---------------------------------------------------------------- split-KV attention
// grid (N*units, splits, q_len), block 128. Dynamic smem: koff[bs], voff[bs] (i64: element
// offsets of the block's key/value rows, -1 for keys not attended or on a bad page), then
// floats q[hpu*D], acc[hpu*D], sc[hpu*bs], m[hpu], l[hpu]. The offsets are resolved once per
// block so that the score and P*V loops issue independent loads (no page-table lookup
// in front of every K/V load).
template <typename T>
__device__ __forceinline__ void dec_attend(const DecParams &p) {
    extern __shared__ i64 smi[];
    __shared__ float red[32];
    const int s = blockIdx.y, r = blockIdx.z;
    const int units = p.per_head ? p.hq : p.hkv;
    const int b = blockIdx.x / units, u = blockIdx.x % units;
    const int hpu = p.per_head ? 1 : p.group;
    const int h0 = p.per_head ? u : u * p.group;
    const int hk = h0 / p.group, D = p.d, bs = p.bs;
    const i64 ru = ((i64)b * units + u) * p.q_len + r;
    i64 *koff = smi, *voff = smi + bs;
    float *q = (float *)(smi + 2 * bs), *acc = q + hpu * D, *sc = acc + hpu * D, *mrun = sc + hpu * bs, *lrun = mrun + hpu;
    for (int e = threadIdx.x; e < hpu * D; e += blockDim.x) {
        int g = e / D, x = e % D;
        q[e] = to_f(((const T *)p.q)[b * p.sq_n + r * p.sq_l + (h0 + g) * p.sq_h + x]);
        acc[e] = 0.f;
    }
    for (int g = threadIdx.x; g < hpu; g += blockDim.x) {
        mrun[g] = -DA_INF;
        lrun[g] = 0.f;
    }
    const int len = seq_len(p, b);
    const i64 t = (i64)len - p.q_len + r;
    const i64 c = t >= 0 ? t / p.bs : -1;
    const int first_local = (int)max((i64)0, c - p.n_local + 1);
    const int nsel = t >= 0 ? p.sel_n[ru] : 0;
    const int total = t >= 0 ? nsel + (int)(c - first_local + 1) : 0;
    const int per = (total + p.splits - 1) / p.splits;
    const int m0 = min(total, s * per), m1 = min(total, (s + 1) * per);
    __syncthreads();
    for (int m = m0; m < m1; ++m) {
        int j;
        float beta;
        if (m < nsel) {
            j = p.sel_idx[ru * p.nbmax + m];
            beta = p.sel_beta[ru * p.nbmax + m];
        } else {
            j = first_local + (m - nsel);
            beta = 0.f;
        }
        const i64 i0 = (i64)j * bs;
        const int cnt = (int)min((i64)bs, min((i64)len, t + 1) - i0);
        for (int ii = threadIdx.x; ii < bs; ii += blockDim.x) {
            i64 ko = -1, vo = -1;
            if (ii < cnt) {
                int pg = page_of(p, b, i0 + ii);
                if (pg >= 0) {
                    i64 slot = (i0 + ii) % p.ps;
                    ko = pg * p.sk.page + slot * p.sk.slot + hk * p.sk.head;
                    vo = pg * p.sv.page + slot * p.sv.slot + hk * p.sv.head;
                }
            }
            koff[ii] = ko;
            voff[ii] = vo;
        }
        __syncthreads();
        // Scores: thread per (head, key).
        for (int e = threadIdx.x; e < hpu * bs; e += blockDim.x) {
            int g = e / bs, ii = e % bs;
            float v = -DA_INF;
            if (koff[ii] >= 0) {
                const T *kr = (const T *)p.kc + koff[ii];
                float dot = 0.f;
#pragma unroll 8
                for (int x = 0; x < D; ++x) dot += q[g * D + x] * to_f(kr[x]);
                v = p.sigma * dot + beta;
            }
            sc[e] = v;
        }
        __syncthreads();
        // Online softmax update per head (one warp per head, round robin).
        for (int g = threadIdx.x >> 5; g < hpu; g += blockDim.x >> 5) {
            float bm = -DA_INF;
            for (int ii = threadIdx.x & 31; ii < bs; ii += 32) bm = fmaxf(bm, sc[g * bs + ii]);
            bm = warp_max(bm);
            float mnew = fmaxf(mrun[g], bm);
            float ls = 0.f;
            for (int ii = threadIdx.x & 31; ii < bs; ii += 32) {
                float pv = mnew == -DA_INF ? 0.f : __expf(sc[g * bs + ii] - mnew);
                sc[g * bs + ii] = pv;
                ls += pv;
            }
            ls = warp_sum(ls);
            __syncwarp();
            if ((threadIdx.x & 31) == 0) {
                float scale = mrun[g] == -DA_INF ? 0.f : __expf(mrun[g] - mnew);
                lrun[g] = lrun[g] * scale + ls;
                red[g & 31] = scale;
                mrun[g] = mnew;
            }
            __syncwarp();
            float scale = red[g & 31];
            for (int x = threadIdx.x & 31; x < D; x += 32) acc[g * D + x] *= scale;
        }
        __syncthreads();
        // acc += P V: thread per (head, dim).
        for (int e = threadIdx.x; e < hpu * D; e += blockDim.x) {
            int g = e / D, x = e % D;
            float a = 0.f;
#pragma unroll 8
            for (int ii = 0; ii < cnt; ++ii) {
                float pv = sc[g * bs + ii];
                i64 vo = voff[ii];
                if (pv != 0.f && vo >= 0) a += pv * to_f(((const T *)p.vc)[vo + x]);
            }
            acc[e] += a;
        }
        __syncthreads();
    }
    // Partial result: normalised o and lse of this split.
    for (int e = threadIdx.x; e < hpu * D; e += blockDim.x) {
        int g = e / D, x = e % D, h = h0 + g;
        float l = lrun[g];
        p.o_part[((((i64)s * p.n + b) * p.q_len + r) * p.hq + h) * D + x] = l > 0.f ? acc[e] / l : 0.f;
    }
    for (int g = threadIdx.x; g < hpu; g += blockDim.x) {
        int h = h0 + g;
        float l = lrun[g];
        p.lse_part[(((i64)s * p.n + b) * p.hq + h) * p.q_len + r] = l > 0.f ? mrun[g] + logf(l) : -DA_INF;
    }
}

// ---------------------------------------------------------------- merge
struct MergeParams {
    const void *o_parts;  // [S, N, L, H, D]
    i64 sp_s, sp_n, sp_l, sp_h;
    const float *lse_parts;  // [S, N, H, L]
    i64 sl_s, sl_n, sl_h, sl_l;
    void *o;  // [N, L, H, D]
    i64 so_n, so_l, so_h;
    float *lse;  // [N, H, L] or null
    i64 slo_n, slo_h, slo_l;
    int s, n, l, h, d;
};
static_assert(sizeof(MergeParams) == 168, "MergeParams layout");

// grid (H, L, N), block 128.
template <typename TI, typename TO>
__device__ __forceinline__ void merge(const MergeParams &p) {
    const int hh = blockIdx.x, r = blockIdx.y, b = blockIdx.z;
    float mx = -DA_INF;
    for (int s = 0; s < p.s; ++s) mx = fmaxf(mx, p.lse_parts[s * p.sl_s + b * p.sl_n + hh * p.sl_h + r * p.sl_l]);
    float tot = 0.f;
    if (mx > -DA_INF)
        for (int s = 0; s < p.s; ++s) tot += __expf(p.lse_parts[s * p.sl_s + b * p.sl_n + hh * p.sl_h + r * p.sl_l] - mx);
    const float lse = mx > -DA_INF ? mx + logf(tot) : -DA_INF;
    for (int x = threadIdx.x; x < p.d; x += blockDim.x) {
        float a = 0.f;
        if (mx > -DA_INF)
            for (int s = 0; s < p.s; ++s) {
                float w = __expf(p.lse_parts[s * p.sl_s + b * p.sl_n + hh * p.sl_h + r * p.sl_l] - lse);
                if (w > 0.f) a += w * to_f(((const TI *)p.o_parts)[s * p.sp_s + b * p.sp_n + r * p.sp_l + hh * p.sp_h + x]);
            }
        ((TO *)p.o)[b * p.so_n + r * p.so_l + hh * p.so_h + x] = from_f<TO>(a);
    }
    if (p.lse && threadIdx.x == 0) p.lse[b * p.slo_n + hh * p.slo_h + r * p.slo_l] = lse;
}

// ================================================================ fast path (v2)
__device__ __forceinline__ uint4 ldg_stream(const void *ptr) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(ptr));
    return r;
}
// Programmatic dependent launch (sm_90+; no-ops when the launch did not ask for it): the
// select and attention kernels are launched so that their CTAs can be scheduled while the
// previous kernel finishes; every thread waits (griddepcontrol.wait: the previous grid
// has completed and its memory is visible) before touching anything.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// L2 prefetch of the K and V rows (D 16-bit values each) of token slot `slot` of page pg,
// KV head hk: fire and forget (the attention's cp.async then hits L2).
__device__ __forceinline__ void prefetch_kv_row(const DecParams &p, int pg, i64 slot, int hk) {
    const char *kr = (const char *)p.kc + 2 * (pg * p.sk.page + slot * p.sk.slot + hk * p.sk.head);
    const char *vr = (const char *)p.vc + 2 * (pg * p.sv.page + slot * p.sv.slot + hk * p.sv.head);
    for (int o = 0; o < 2 * p.d; o += 128) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(kr + o));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(vr + o));
    }
}
// Two packed 16-bit values -> floats (lo = element 2i, hi = element 2i+1).
template <typename T> __device__ __forceinline__ void unpack2(u32 w, float &lo, float &hi);
template <> __device__ __forceinline__ void unpack2<bf16_t>(u32 w, float &lo, float &hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}
template <> __device__ __forceinline__ void unpack2<f16_t>(u32 w, float &lo, float &hi) {
    asm("{ .reg .f16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; }" : "=f"(lo), "=f"(hi) : "r"(w));
}
template <typename T> __device__ __forceinline__ void unpack8(uint4 v, float *f) {
    unpack2<T>(v.x, f[0], f[1]);
    unpack2<T>(v.y, f[2], f[3]);
    unpack2<T>(v.z, f[4], f[5]);
    unpack2<T>(v.w, f[6], f[7]);
}

// Row index (into z / tau / sel_*) of local row lr of KV head hk in sequence b for the
// score kernel: per head, lr = g * q_len + r (unit hk*G + g); per group, lr = r (unit hk).
__device__ __forceinline__ i64 score_row(const DecParams &p, int b, int hk, int lr) {
    if (p.per_head) {
        int g = lr / p.q_len, r = lr % p.q_len;
        return ((i64)b * p.hq + hk * p.group + g) * p.q_len + r;
    }
    return ((i64)b * p.hkv + hk) * p.q_len + lr;
}

// ---------------------------------------------------------------- v2 coarse scores
// grid (ceil(nbmax / cb), Hkv, N), block 256 (8 warps). Dynamic smem: q rows [R][D] floats,
// pre-scaled (sigma_c, and the 1/G group mean folded in), R = q_len (per group) or
// G * q_len (per head). A group of D/8 lanes holds one pooled key (16 bytes a lane); each
// lane group keeps U keys in flight. RT rows are scored per pass over the keys (RT = 1
// when R = 1, else 4: further row groups re-read the keys, from L2).
template <typename T, int D, int RT, bool PRE>
__device__ __forceinline__ void dec_score(const DecParams &p) {
    constexpr int LPK = D / 8, KPW = 32 / LPK, U = 4, NW = 8;
    constexpr int STEP = NW * KPW * U;  // keys per pass of the CTA
    extern __shared__ float qs[];
    const int tslot = (blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) & 4095;
    DTRACE(tslot, 0);
    pdl_trigger();
    const int chunk = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    if ((chunk | hk | b) == 0 && threadIdx.x < 2) p.nitems[threadIdx.x] = 0;  // (the select kernels append to the list)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, kg = lane / LPK, kl = lane % LPK;
    const int j0 = chunk * p.cb, jw = j0 + warp * KPW * U;
    // Block j's pooled key lives in the page of its first token: table entry (j / bpp) * ppb,
    // slot j % bpp (bpp = blocks per page when page_size >= B, ppb = pages per block when
    // page_size < B; the other is 1). 32-bit: j * B < seq_len < 2^31.
    const int bpp = max(1, p.ps / p.bs), ppb = max(1, p.bs / p.ps);
    // (all U table loads are issued before any is checked: validating each entry as it was
    // loaded made the compiler branch around every load and wait for it, U round trips)
    auto pages = [&](int jb, int jend, int *pgo) {
        const int *tb = p.table + b * p.st_b;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int j = jb + u * KPW + kg;
            pgo[u] = j < jend ? __ldg(tb + (i64)((j / bpp) * ppb) * p.st_i) : -1;
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (pgo[u] >= p.num_pages) pgo[u] = -1;
    };
    // The length and the first pass's page-table entries load before the q staging (the
    // entries for the chunk's blocks below nbmax, masked to the length after it arrives);
    // with PRE (a CTA of one pass: few sequences) also the first pass's pooled keys (16
    // more live registers across the staging: the many-CTA case keeps its occupancy).
    const int len = seq_len(p, b);
    int pg[U];
    pages(jw, min(j0 + p.cb, p.nbmax), pg);
    const T *pc = (const T *)p.pc + hk * p.sp.head + kl * 8;
    uint4 kv[U];
    if (PRE) {
#pragma unroll
        for (int u = 0; u < U; ++u) kv[u] = pg[u] >= 0 ? ldg_stream(pc + pg[u] * p.sp.page + ((jw + u * KPW + kg) % bpp) * p.sp.slot) : make_uint4(0, 0, 0, 0);
    }
    bool first = PRE;  // kv holds the first pass's keys
    const int G = p.group;
    const int R = p.per_head ? G * p.q_len : p.q_len;
    const float qscale = p.per_head ? p.sigma_c : p.sigma_c / G;
    for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
        int lr = e / D, x = e % D;
        const T *qb = (const T *)p.q + b * p.sq_n + (hk * G) * p.sq_h + x;
        float v;
        if (p.per_head) {
            int g = lr / p.q_len, r = lr % p.q_len;
            v = to_f(qb[r * p.sq_l + g * p.sq_h]);
        } else {
            v = 0.f;
            for (int g = 0; g < G; ++g) v += to_f(qb[lr * p.sq_l + g * p.sq_h]);
        }
        qs[e] = v * qscale;
    }
    __syncthreads();
    DTRACE(tslot, 1);
    const int t = len - 1;  // the last row has the most candidates
    const int ncand = t >= 0 ? max(0, t / p.bs - p.n_local + 1) : 0;
    const int j1 = min(ncand, j0 + p.cb);
    if (j0 >= j1) {
        DTRACE(tslot, 2);
        return;
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (jw + u * KPW + kg >= j1) pg[u] = -1;
    for (int lr0 = 0; lr0 < R; lr0 += RT) {
        float qf[RT][8];
#pragma unroll
        for (int rr = 0; rr < RT; ++rr)
#pragma unroll
            for (int e = 0; e < 8; ++e) qf[rr][e] = lr0 + rr < R ? qs[(lr0 + rr) * D + kl * 8 + e] : 0.f;
        i64 zrow[RT];
#pragma unroll
        for (int rr = 0; rr < RT; ++rr) zrow[rr] = lr0 + rr < R ? score_row(p, b, hk, lr0 + rr) * p.nbmax : -1;
        // Page-table entries of the next pass load while this one's keys are in flight.
        if (lr0 > 0) pages(jw, j1, pg);
        for (int jb = jw; jb < j1; jb += STEP) {
            bool ok[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                int j = jb + u * KPW + kg;
                ok[u] = pg[u] >= 0;
                if (!first) kv[u] = ok[u] ? ldg_stream(pc + pg[u] * p.sp.page + (j % bpp) * p.sp.slot) : make_uint4(0, 0, 0, 0);
            }
            first = false;
            pages(jb + STEP, j1, pg);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float kf[8];
                unpack8<T>(kv[u], kf);
                const int j = jb + u * KPW + kg;
#pragma unroll
                for (int rr = 0; rr < RT; ++rr) {
                    float a = 0.f;
#pragma unroll
                    for (int e = 0; e < 8; ++e) a = fmaf(qf[rr][e], kf[e], a);
#pragma unroll
                    for (int o = LPK / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                    if (kl == 0 && j < j1 && zrow[rr] >= 0) p.z[zrow[rr] + j] = ok[u] ? a : -DA_INF;
                }
            }
        }
    }
    DTRACE(tslot, 2);
}

// ---------------------------------------------------------------- v2 coarse scores, streamed
// The case of one row per KV head (per group, q_len 1) where dec_score's CTAs would make
// several passes (many sequences, or long contexts): a grid of one wave (the CTAs an SM
// holds, times the SMs) over all chunks of KPC candidate blocks of every (sequence, KV head),
// warp w taking a contiguous range of them. A chunk's pooled keys (2 KB, a lane 16 bytes of
// each of U keys, as in dec_score) go through a ring of S stages of the warp's own shared
// memory by cp.async, so S - 1 chunks are in flight a warp without registers to hold them
// (dec_score keeps its U keys a lane group in registers: 16 KB in flight a CTA, ~64 KB an SM;
// here (S - 1) x 16 KB a CTA, 128 KB an SM at S = 3 and 4 CTAs an SM). A lane reads back
// only the pieces it copied itself, so cp.async.wait_group orders copy and use (no barrier).
// Sequence lengths, page-table entries and q load per chunk as the warp's range reaches them
// (the next chunk's table entries one chunk ahead of their copies); z is bitwise
// dec_score's (same sums in the same order).
template <int N> __device__ __forceinline__ void cp_wait_mem() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
struct ScoreCursor {
    int b, hk, cc;  // sequence, KV head, chunk of the pair
};
template <typename T, int D, int S>
__device__ __forceinline__ void dec_score_ring(const DecParams &p) {
    constexpr int LPK = D / 8, KPW = 32 / LPK, U = 4, NW = 8, KPC = KPW * U;
    static_assert(S >= 2 && S <= 8, "ring stages");
    extern __shared__ uint4 ring[];  // [NW][S][U][32] 16-byte pieces
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, kg = lane / LPK, kl = lane % LPK;
    const int tslot = blockIdx.x & 4095;
    DTRACE(tslot, 0);
    pdl_trigger();
    if (blockIdx.x == 0 && threadIdx.x < 2) p.nitems[threadIdx.x] = 0;  // (the select kernels append to the list)
    const int cpp = (p.nbmax + KPC - 1) / KPC;  // chunks per (sequence, KV head)
    const i64 nch = (i64)p.n * p.hkv * cpp, nwg = (i64)gridDim.x * NW, wg = (i64)blockIdx.x * NW + warp;
    const int c0 = (int)(wg * nch / nwg), c1 = (int)((wg + 1) * nch / nwg);
    const int bpp = max(1, p.ps / p.bs), ppb = max(1, p.bs / p.ps);
    const u32 sbase = smem_u32(ring + warp * S * U * 32 + lane);
    auto advance = [&](ScoreCursor &c) {
        if (++c.cc == cpp) {
            c.cc = 0;
            if (++c.hk == p.hkv) {
                c.hk = 0;
                ++c.b;
            }
        }
    };
    // Candidates of sequence b (its last row has the most).
    auto ncand_of = [&](int b) {
        const int t = seq_len(p, b) - 1;
        return t >= 0 ? max(0, t / p.bs - p.n_local + 1) : 0;
    };
    // Table entries of chunk c's keys: pg[u] the page (-1: none), sl[u] the slot in it. All U
    // loads are issued unconditionally (clamped index) and checked after, so they overlap
    // (as in dec_score); one page per block (bpp = 1: the common layouts) needs no division.
    auto pages = [&](const ScoreCursor &c, int *pg, int *sl) {
        const int *tb = p.table + c.b * p.st_b;
        const int jb = c.cc * KPC + kg;
        if (bpp == 1) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                pg[u] = __ldg(tb + (i64)(min(jb + u * KPW, p.nbmax - 1) * ppb) * p.st_i);
                sl[u] = 0;
            }
        } else {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = min(jb + u * KPW, p.nbmax - 1);
                pg[u] = __ldg(tb + (i64)(j / bpp) * p.st_i);
                sl[u] = j % bpp;
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (pg[u] >= p.num_pages || jb + u * KPW >= p.nbmax) pg[u] = -1;
    };
    // Copies of chunk c into stage st; returns its bits: u (key in range: z written) and
    // 4 + u (page valid: z from the key, else -inf).
    auto issue = [&](const ScoreCursor &c, const int *pg, const int *sl, int ncand, int st) {
        u32 bits = 0;
        const T *pc = (const T *)p.pc + c.hk * p.sp.head + kl * 8;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = c.cc * KPC + u * KPW + kg;
            if (j < ncand) {
                bits |= 1u << u;
                if (pg[u] >= 0) {
                    bits |= 16u << u;
                    cp_async16(sbase + (st * U + u) * 32 * 16, pc + pg[u] * p.sp.page + sl[u] * p.sp.slot, 16);
                }
            }
        }
        return bits;
    };
    if (c0 >= c1) {
        DTRACE(tslot, 2);
        return;
    }
    ScoreCursor ci;  // the next chunk to copy
    {
        const int pair = c0 / cpp;
        ci.cc = c0 - pair * cpp;
        ci.hk = pair % p.hkv;
        ci.b = pair / p.hkv;
    }
    const ScoreCursor cstart = ci;
    u64 bits = 0;  // 8 bits a stage
    // Candidates of the sequence the copies have reached (reloaded when it changes).
    int ncb = ci.b, nc = ncand_of(ci.b);
    // Prologue: the table entries of the first S - 1 chunks load at once, then their copies.
    {
        int pgp[S - 1][U], slp[S - 1][U];
        ScoreCursor cp[S - 1];
#pragma unroll
        for (int s = 0; s < S - 1; ++s) {
            cp[s] = ci;
            if (c0 + s < c1) pages(ci, pgp[s], slp[s]);
            advance(ci);
        }
#pragma unroll
        for (int s = 0; s < S - 1; ++s) {
            if (c0 + s < c1) {
                if (cp[s].b != ncb) {
                    ncb = cp[s].b;
                    nc = ncand_of(ncb);
                }
                bits |= (u64)issue(cp[s], pgp[s], slp[s], nc, s) << (8 * s);
            }
            cp_commit();
        }
    }
    int pgn[U], sln[U];  // chunk ci's table entries
    if (c0 + S - 1 < c1) pages(ci, pgn, sln);
    ScoreCursor cc = cstart;  // the chunk to score
    int qb = -1, qh = -1;
    float qf[8];
    const float qscale = p.sigma_c / p.group;
    DTRACE(tslot, 1);
    int st = 0;  // stage of chunk c
    for (int c = c0; c < c1; ++c) {
        {
            const int sn = st == 0 ? S - 1 : st - 1;  // stage of chunk c + S - 1
            if (c + S - 1 < c1) {
                if (ci.b != ncb) {
                    ncb = ci.b;
                    nc = ncand_of(ncb);
                }
                bits = (bits & ~(0xffull << (8 * sn))) | (u64)issue(ci, pgn, sln, nc, sn) << (8 * sn);
            }
            cp_commit();
            advance(ci);
            if (c + S < c1) pages(ci, pgn, sln);
        }
        if (cc.b != qb || cc.hk != qh) {  // q of this (sequence, KV head): the group's mean
            qb = cc.b;
            qh = cc.hk;
            const u16 *q0 = (const u16 *)p.q + qb * p.sq_n + (qh * p.group) * p.sq_h + kl * 8;
#pragma unroll
            for (int e = 0; e < 8; ++e) qf[e] = 0.f;
            for (int g = 0; g < p.group; ++g) {
                const u16 *qr = q0 + g * p.sq_h;
                u16 h[8];
                if (p.flags & 2) {
                    const uint4 v = *(const uint4 *)qr;
                    h[0] = v.x; h[1] = v.x >> 16; h[2] = v.y; h[3] = v.y >> 16;
                    h[4] = v.z; h[5] = v.z >> 16; h[6] = v.w; h[7] = v.w >> 16;
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) h[e] = qr[e];
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) qf[e] += to_f(T{h[e]});
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) qf[e] *= qscale;
        }
        cp_wait_mem<S - 1>();  // chunk c's copies (this lane's) have landed
        const u32 cb = (u32)(bits >> (8 * st)) & 0xff;
        const i64 zrow = ((i64)cc.b * p.hkv + cc.hk) * p.nbmax;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            uint4 kv;
            asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(kv.x), "=r"(kv.y), "=r"(kv.z), "=r"(kv.w) : "r"(sbase + (st * U + u) * 32 * 16));
            float kf[8];
            unpack8<T>(kv, kf);
            float a = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) a = fmaf(qf[e], kf[e], a);
#pragma unroll
            for (int o = LPK / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
            const int j = cc.cc * KPC + u * KPW + kg;
            if (kl == 0 && (cb >> u & 1)) p.z[zrow + j] = (cb >> (4 + u) & 1) ? a : -DA_INF;
        }
        advance(cc);
        st = st == S - 1 ? 0 : st + 1;
    }
    DTRACE(tslot, 2);
}

// ---------------------------------------------------------------- v2 threshold + selection
// Sum of two doubles over the block (NT threads); red has 2 * 2 * 32 slots (two buffers
// alternated by `par`, so one barrier per call suffices).
template <int NT>
__device__ __forceinline__ void block_sum2(double &a, double &c, double *red, int par) {
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        c += __shfl_xor_sync(0xffffffffu, c, o);
    }
    double *rb = red + par * 64;
    if ((threadIdx.x & 31) == 0) {
        rb[threadIdx.x >> 5] = a;
        rb[32 + (threadIdx.x >> 5)] = c;
    }
    __syncthreads();
    a = 0.0;
    c = 0.0;
    for (int w = 0; w < NT / 32; ++w) {
        a += rb[w];
        c += rb[32 + w];
    }
}

// Max over the block (NT threads, a multiple of 128) with one barrier; red: NT / 32 floats,
// 16-byte aligned, not written again before another barrier.
template <int NT>
__device__ __forceinline__ float block_max1(float v, float *red) {
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = -DA_INF;
#pragma unroll
    for (int w4 = 0; w4 < NT / 128; ++w4) {
        const float4 x = ((const float4 *)red)[w4];
        t = fmaxf(t, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)));
    }
    return t;
}

// Exclusive prefix (pos) and total of cnt over the block (NT threads); wc: NT/32 ints.
template <int NT>
__device__ __forceinline__ void block_scan(int cnt, int *wc, int &pos, int &total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int incl = cnt;
    for (int o = 1; o < 32; o <<= 1) {
        int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    __syncthreads();  // wc may still be read by an earlier scan
    if (lane == 31) wc[warp] = incl;
    __syncthreads();
    pos = incl - cnt;
    total = 0;
    for (int w = 0; w < NT / 32; ++w) {
        if (w < warp) pos += wc[w];
        total += wc[w];
    }
}
// Work item i of row ru (nit items of `per` blocks; nsel selected blocks; the sequence's
// length; the item's first block jf, its log-prior bf and the page of its first tile pg0, or
// -2 when tiles may span pages): two int4, (row, split | nsplit << 16, per, nsel) and (len,
// jf, bf, pg0).
// A row's nblk blocks (selected + local) in work items of per = max(wchunk, ceil(nblk /
// splits)) blocks: the number of items (dec_select cuts them, merge_head counts them).
__device__ __forceinline__ int row_items(const DecParams &p, int nblk, int &per) {
    per = max(p.wchunk, (nblk + p.splits - 1) / p.splits);
    return (nblk + per - 1) / per;
}

__device__ __forceinline__ void write_item(const DecParams &p, int slot, i64 ru, int i, int nit, int per, int nsel, int len, int jf, float bf, int pg0) {
    ((int4 *)p.items)[2 * slot] = make_int4((int)ru, i | (nit << 16), per, nsel);
    ((int4 *)p.items)[2 * slot + 1] = make_int4(len, jf, __float_as_int(bf), pg0);
}

// Shared-memory scratch of select_row (the caller's arrays): red [32] floats, redd [128]
// doubles (also 256 floats), wcnt [NT / 32] ints.
struct SelSmem {
    float *red;
    double *redd;
    int *wcnt;
};

// Sums over the block (NT threads) of a[j], q[j], k[j] for j < P; every thread gets them.
// The 2P floats are reduce-scattered within the warp (each level sends half of the values
// held and keeps the other half: 2P - 1 + log2(32 / 2P) shuffles instead of 10P), the ints
// go through redux; rb: 2 * 3 * P * (NT / 32) floats, alternated by `par` so one barrier
// per call suffices.
#ifndef DASH_SEL_P
#define DASH_SEL_P 4
#endif
template <int NT, int P>
__device__ __forceinline__ void block_sum_pts(float (&a)[P], float (&q)[P], int (&k)[P], float *rb, int par) {
    constexpr int NW = NT / 32, V = 2 * P, LB = 32 / V;  // LB lanes share a value after the scatter
    static_assert((P == 4 || P == 8) && NW % 4 == 0, "block_sum_pts: P 4 or 8, NT a multiple of 128");
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float v[V];
#pragma unroll
    for (int j = 0; j < P; ++j) {
        v[j] = a[j];
        v[P + j] = q[j];
    }
#pragma unroll
    for (int lvl = 0, m = V / 2, bit = 16; m >= 1; ++lvl, m /= 2, bit /= 2) {
        const bool up = lane & bit;
#pragma unroll
        for (int i = 0; i < m; ++i) {
            const float send = up ? v[i] : v[i + m], keep = up ? v[i + m] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, bit);
        }
    }
#pragma unroll
    for (int o = LB / 2; o >= 1; o /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    // lane l now holds value l / LB (value j: a[j], P + j: q[j])
#pragma unroll
    for (int j = 0; j < P; ++j) k[j] = __reduce_add_sync(0xffffffffu, k[j]);
    float *r = rb + par * 3 * P * NW;
    if (lane % LB == 0) r[(lane / LB) * NW + w] = v[0];
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < P; ++j) r[(V + j) * NW + w] = __int_as_float(k[j]);
    }
    __syncthreads();
    // Lane j < 3P of every warp sums quantity j over the NW warps; then every lane takes the
    // 3P sums by shuffles (NW / 4 + 3P loads and shuffles a lane, not 3P * NW / 4 loads).
    float fs = 0.f;
    int is = 0;
    if (lane < 3 * P) {
#pragma unroll
        for (int w4 = 0; w4 < NW / 4; ++w4) {
            const float4 x = ((const float4 *)(r + lane * NW))[w4];
            fs += (x.x + x.y) + (x.z + x.w);
            is += (__float_as_int(x.x) + __float_as_int(x.y)) + (__float_as_int(x.z) + __float_as_int(x.w));
        }
    }
    const float mine = lane < V ? fs : __int_as_float(is);
#pragma unroll
    for (int j = 0; j < 3 * P; ++j) {
        const float x = __shfl_sync(0xffffffffu, mine, j);
        if (j < P) a[j] = x;
        else if (j < V) q[j - P] = x;
        else k[j - V] = __float_as_int(x);
    }
}

// The entmax threshold and the selected blocks of one row, by a whole CTA of NT threads
// (every thread calls it; it ends with a block scan, and every thread gets `total` and
// `tau`). z: the row's ncand candidate scores (C per thread in registers, j = tid + i * NT;
// beyond that re-read). With s = (alpha-1) z, x = s - max s and t = tau - max s in [-1, 0),
// tau solves g(t) = sum (x - t)_+^(1/(alpha-1)) - 1 = 0 (convex, decreasing):
//   alpha = 2 or 1.5: exact, by brackets [lo, hi] with g(lo) >= 0 >= g(hi), from
//     [-1, -(1/n)^(alpha-1)] (the max term alone makes g(-1) >= 0; n terms of at most
//     (-t)^(1/(alpha-1)) make g <= 0 there). Each round sums k, A = sum (x - p) and
//     Q = sum (x - p)^2 over {x > p} at P points p_0 = lo < ... < p_{P-1} = hi in one pass and
//     one block reduction, so g at every point is known (A - 1, Q - 1: no cancellation).
//     With p_i the last point where g >= 0: if no x lies in (p_i, p_{i+1}] (equal counts) g is
//     one piece there and its closed-form root is tau (exact); otherwise the next bracket
//     is [max(p_i, Newton step from p_i), min(p_{i+1}, the piece's root)] (Newton from the
//     left never passes the root of a convex g; for alpha = 1.5 the piece's quadratic lies
//     above g, so its root is an upper bound; for alpha = 2 it is the Newton step). The step
//     for 1.5 is Newton on ||(x - p)_+||_2 - 1 (N = sqrt Q: p + (N - 1) N / A), flatter than
//     on Q - 1. Host simulation (2048 Gaussian scores, support 20-130): ~3 rounds for P = 4,
//     against 5-9 rounds of two barriers each for one point a round (measured on the
//     decode bench: 1.4 / 2 / 3.5 / 3.9 rounds at 99.9 / 99.6 / 96.5 / 88% sparsity).
//   other alpha in (1, 2): Newton on ||(x - t)_+||_k - 1 (k = 1/(alpha-1)), monotone from
//     the left, in double.
//   alpha = 1: logsumexp, every candidate selected.
// Then each thread selects its own candidates: begin(total, pos) gets the list length and
// the thread's first position (every thread calls it once), put(pos, j, beta) each selected
// block's position in the row's list (deterministic: (thread, i) order of the candidates;
// the attention does not need increasing j) and its log-prior.
template <int NT, int C, class Begin, class Put>
__device__ __forceinline__ void select_row(const float *z, int ncand, float alpha, const SelSmem &sm, Begin begin, Put put, int &total, float &tau) {
    const int tid = threadIdx.x;
    float zc[C];
    float mx = -DA_INF;
#pragma unroll
    for (int i = 0; i < C; ++i) {
        int j = tid + i * NT;
        zc[i] = j < ncand ? z[j] : -DA_INF;
        mx = fmaxf(mx, zc[i]);
    }
    for (int j = tid + C * NT; j < ncand; j += NT) mx = fmaxf(mx, z[j]);
    mx = block_max1<NT>(mx, sm.red);  // (sm.red's next writer, block_sum, starts with a barrier)
    const int tslot = sel_trace_slot();
    DTRACE(tslot, 4);
    const bool soft = alpha <= 1.f;
    const float am1 = alpha - 1.f, smx = am1 * mx;
    float t = -1.f;  // entmax: tau - max s
    tau = -DA_INF;
    if (mx > -DA_INF) {
        if (soft) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < C; ++i) s += __expf(zc[i] - mx);
            for (int j = tid + C * NT; j < ncand; j += NT) s += __expf(z[j] - mx);
            tau = mx + logf(block_sum(s, sm.red));
        } else if (am1 == 1.f || am1 == 0.5f) {
            constexpr int P = DASH_SEL_P;
            const bool sparsemax = am1 == 1.f;
            float *rb = (float *)sm.redd;
            float lo = -1.f, hi = sparsemax ? -1.f / (float)ncand : -rsqrtf((float)ncand);
            int it = 0;
            for (; it < 32; ++it) {
                float pt[P], A[P], Q[P];
                int K[P];
#pragma unroll
                for (int j = 0; j < P; ++j) {
                    pt[j] = j == P - 1 ? hi : fmaf(hi - lo, (float)j * (1.f / (P - 1)), lo);
                    A[j] = Q[j] = 0.f;
                    K[j] = 0;
                }
                auto acc = [&](float x) {
#pragma unroll
                    for (int j = 0; j < P; ++j) {
                        const float d = x - pt[j];
                        if (d > 0.f) {
                            A[j] += d;
                            Q[j] = fmaf(d, d, Q[j]);
                            K[j] += 1;
                        }
                    }
                };
#pragma unroll
                for (int i = 0; i < C; ++i) acc(am1 * zc[i] - smx);
                for (int j = tid + C * NT; j < ncand; j += NT) acc(am1 * z[j] - smx);
                block_sum_pts<NT, P>(A, Q, K, rb, it & 1);
                // the last point with g >= 0 (registers only: no runtime-indexed arrays)
                float pp = pt[0], a = A[0], q = Q[0], pn = pt[1];
                int k = K[0], kn = K[1];
#pragma unroll
                for (int j = 1; j < P; ++j)
                    if ((sparsemax ? A[j] : Q[j]) >= 1.f) {
                        pp = pt[j];
                        a = A[j];
                        q = Q[j];
                        k = K[j];
                        pn = j + 1 < P ? pt[j + 1] : hi;
                        kn = j + 1 < P ? K[j + 1] : -1;
                    }
                // the piece's root: sparsemax p + (A - 1) / k; 1.5: k u^2 - 2 A u + Q - 1 = 0,
                // smaller root u = (Q - 1) / (A + sqrt(A^2 - k (Q - 1)))
                float tc;
                if (sparsemax) {
                    tc = k > 0 ? pp + (a - 1.f) / (float)k : pp;
                } else {
                    const float disc = fmaf(a, a, -(float)k * (q - 1.f));
                    tc = disc >= 0.f ? pp + (q - 1.f) / (a + sqrtf(disc)) : pn;
                }
                if (kn < 0 || k == kn) {  // no x in (p_i, p_{i+1}]: one piece, tc is the root
                    t = tc;
                    break;
                }
                float tn = tc;
                if (!sparsemax) {
                    const float N = sqrtf(q);
                    tn = a > 0.f ? pp + (N - 1.f) * N / a : pp;
                }
                const float nlo = fmaxf(pp, tn), nhi = sparsemax ? pn : fminf(pn, tc);
                t = nlo;
                if (!(nhi > nlo)) break;  // the bracket is one float wide
                lo = nlo;
                hi = nhi;
            }
            DTRACE_VAL(tslot, 5, it + 1);
            tau = smx + t;
        } else {
            const float k = 1.f / am1;
            double tt = -1.0;
            for (int it = 0; it < 40; ++it) {
                const float tf = (float)tt;
                double M = 0.0, S1 = 0.0;
                auto acc = [&](float zv) {
                    const float x = am1 * zv - smx - tf;
                    if (x > 0.f) {
                        const float xk1 = powf(x, k - 1.f);
                        M += (double)(xk1 * x);
                        S1 += (double)xk1;
                    }
                };
#pragma unroll
                for (int i = 0; i < C; ++i) acc(zc[i]);
                for (int j = tid + C * NT; j < ncand; j += NT) acc(z[j]);
                block_sum2<NT>(M, S1, sm.redd, it & 1);
                if (!(M > 0.0) || !(S1 > 0.0)) break;
                // N = M^(1/k) = M^(alpha-1); step (N - 1) M / (N S1)
                const double N = exp2(log2(M) * (double)am1);
                if (!(N > 1.0)) break;
                const double dt = (N - 1.0) * M / (N * S1);
                tt += dt;
                if (!(dt > 1e-7 * fmax(1.0, fabs(tt)))) break;
            }
            t = (float)tt;
            tau = smx + t;
        }
    }
    DTRACE(tslot, 7);
    // Compaction: thread tid owns j = tid + i * NT; positions by (tid, i) order.
    // (softmax: every finite candidate, beta = z - lse; entmax: x = s - max s - t > 0, beta =
    // log(x) / (alpha - 1), computed only for the selected)
    const float inv_am1 = soft ? 0.f : 1.f / am1;
    auto sel = [&](float zv) -> bool { return soft ? zv > -DA_INF : am1 * zv - smx > t; };
    auto beta = [&](float zv) -> float { return soft ? zv - tau : logf(am1 * zv - smx - t) * inv_am1; };
    int cnt = 0, pos;
    if (mx > -DA_INF) {
#pragma unroll
        for (int i = 0; i < C; ++i) cnt += sel(zc[i]) ? 1 : 0;
        for (int j = tid + C * NT; j < ncand; j += NT) cnt += sel(z[j]) ? 1 : 0;
    }
    block_scan<NT>(cnt, sm.wcnt, pos, total);
    begin(total, pos);
    if (cnt > 0) {
#pragma unroll
        for (int i = 0; i < C; ++i) {
            const int j = tid + i * NT;
            if (j < ncand && sel(zc[i])) put(pos++, j, beta(zc[i]));
        }
        for (int j = tid + C * NT; j < ncand; j += NT)
            if (sel(z[j])) put(pos++, j, beta(z[j]));
    }
}

// grid (q_len, units, N), block SEL_NT: select_row for row (b, unit, r), the selected list
// and log-priors to the workspace, then the row's attention work items ((row, split,
// nsplit, per, nsel), chunks of max(wchunk, blocks / splits) blocks) appended to the device
// work list with one atomicAdd (list order does not affect results); the row's merge
// counter zeroed; o = 0 / lse = -inf for rows with nothing to attend.
#define SEL_NT 256
#define SEL_C 8
template <typename T>
__device__ __forceinline__ void dec_select(const DecParams &p) {
    __shared__ __align__(16) float red[32];
    // block_sum2: 128 doubles; block_sum_pts: 2 * 3 * P * (NT / 32) floats
    __shared__ __align__(16) double redd[3 * DASH_SEL_P * (SEL_NT / 32) > 128 ? 3 * DASH_SEL_P * (SEL_NT / 32) : 128];
    __shared__ int wcnt[SEL_NT / 32];
    // Before the wait (with programmatic dependent launch this overlaps the score kernel):
    // only inputs (lengths, alpha, page table, K/V) and this call's own counter, which
    // nothing before the attention kernel touches.
    const int r = blockIdx.x, u = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int tslot = sel_trace_slot();
    DTRACE(tslot, 0);
    const int units = p.per_head ? p.hq : p.hkv;
    const int h0 = p.per_head ? u : u * p.group;
    const int hk = h0 / p.group;
    const i64 ru = ((i64)b * units + u) * p.q_len + r;
    const int len = seq_len(p, b);
    const i64 t = (i64)len - p.q_len + r;
    const int ncand = t >= 0 ? (int)max((i64)0, t / p.bs - p.n_local + 1) : 0;
    const float alpha = fminf(fmaxf(p.head_alpha ? p.head_alpha[h0 * p.ha_stride] : p.alpha, 1.f), 2.f);
    if (tid == 0) p.cnt[ru] = 0;  // the attention's finished-split counter of this row
    // L2 prefetch of the local blocks' K/V while the score kernel runs (once per KV head
    // and sequence: the last row of the first unit of the KV head; the other rows' local
    // keys are a subset or nearby). The selected blocks' K/V are known only after the
    // solve (prefetching them there made this kernel spill registers).
    if ((p.flags & 1) && t >= 0 && r == p.q_len - 1 && h0 % p.group == 0) {
        const i64 k0 = (i64)ncand * p.bs, k1 = min((i64)len, t + 1);
        for (i64 k = k0 + tid; k < k1; k += SEL_NT) {
            const int pg = page_of(p, b, k);
            if (pg >= 0) prefetch_kv_row(p, pg, k % p.ps, hk);
        }
    }
    pdl_wait();  // the score kernel's z (and nitems = 0) are visible after this
    DTRACE(tslot, 1);
    pdl_trigger();
    int *si = p.sel_idx + ru * p.nbmax;
    float *sb = p.sel_beta + ru * p.nbmax;
    const SelSmem sm{red, redd, wcnt};
    // Attention work items of this row: its blocks (selected, then local) in chunks of
    // `per`; their order in the list does not matter (each item's result and the row's
    // merge are order-independent). The first selected block of each item (position a
    // multiple of per) also goes into the item (firsts[item]). Once the list length is known
    // (begin) thread 0 reserves the row's items (its atomic overlaps the list writes).
    __shared__ int2 firsts[64];
    __shared__ int ibase;
    const int nloc = t >= 0 ? (int)(t / p.bs - max((i64)0, t / p.bs - p.n_local + 1) + 1) : 0;
    int total, per = 1, nit = 0, ib = 0, fi = 0, nf = 0;
    float tau;
    select_row<SEL_NT, SEL_C>(p.z + ru * p.nbmax, ncand, alpha, sm, [&](int tot, int pos0) {
        const int nblk = tot + nloc;
        nit = row_items(p, nblk, per);
        if (tid == 0 && nit > 0) ib = atomicAdd(p.nitems, nit);
        fi = (pos0 + per - 1) / per;  // this thread's next item start: fi * per
        nf = fi * per;
    }, [&](int pos, int j, float beta) {
        si[pos] = j;
        sb[pos] = beta;
        if (pos == nf) {
            firsts[fi++] = make_int2(j, __float_as_int(beta));
            nf += per;
        }
    }, total, tau);
    DTRACE(tslot, 2);
    if (tid == 0) {
        p.sel_n[ru] = total;
        p.tau[ru] = tau;
        ibase = ib;
    }
    if (nit == 0) {  // nothing attended: o = 0, lse = -inf
        T *ob = (T *)p.o + b * p.so_n + r * p.so_l;
        const int hpu = p.per_head ? 1 : p.group;
        for (int e = tid; e < hpu * p.d; e += SEL_NT) ob[(h0 + e / p.d) * p.so_h + e % p.d] = from_f<T>(0.f);
        if (p.lse)
            for (int g = tid; g < hpu; g += SEL_NT) p.lse[b * p.sl_n + (h0 + g) * p.sl_h + r * p.sl_l] = -DA_INF;
        return;
    }
    // nit <= splits <= 64 <= SEL_NT: thread i writes item i.
    __syncthreads();  // the firsts, ibase
    // Each item's first block and, when a tile lies in one page (as the attention's loader
    // checks), its first tile's page (the items' slots were reserved at begin).
    const int first_local = (int)max((i64)0, t / p.bs - p.n_local + 1);
    const bool one_page = tiles_in_one_page(p);
    int2 f = make_int2(0, 0);
    int pg0 = -2;
    if (tid < nit) {
        const int m0 = tid * per;
        f = m0 < total ? firsts[tid] : make_int2(first_local + m0 - total, 0);
        if (one_page) pg0 = page_at(p, b, f.x * p.bs / p.ps);  // (token positions fit 32 bits)
    }
    if (tid < nit) write_item(p, ibase + tid, ru, tid, nit, per, total, len, f.x, __int_as_float(f.y), pg0);
    DTRACE(tslot, 3);
}

// ---------------------------------------------------------------- v2 split-KV attention
// Persistent grid (about 3 CTAs per SM), block 128 (4 warps); CTA i takes work item i of
// the list dec_select built, then items past the grid from a counter (dec_attn), whichever
// CTA is free first: item (row, s) is the s-th chunk of `per`
// blocks of the row's selected + local blocks, processed in tiles of TK = min(B, 64) keys. K and V tiles go global ->
// smem by cp.async (16 bytes a thread, double buffered), rows stored with the 16-byte
// chunk index XOR (key & 7) (conflict-free ldmatrix). Tensor cores (mma.sync m16n8k16):
// the unit's heads are the M rows (zero-padded to 16), warp w takes keys [16w, 16w+16) of
// every tile with its own online-softmax state (log2 domain, P rounded to T for P V as in
// the forward); the 4 warp states merge in smem at the end. Then, fused merge: a split
// with work writes its partial (o, lse) to the workspace; the last one to finish (a
// per-row counter, zeroed by dec_select every call) merges all partials in split order
// (deterministic) into o / lse. A row whose work fits one split writes o directly.
// Dynamic smem: K[2][64][D], V[2][64][D], Q[16][D] (T), ok[2][64] (int), misc.
#define ATT_NT 128
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<bf16_t>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ u32 pack2<f16_t>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <typename T> __device__ __forceinline__ void mma16816(float *c, const u32 *a, u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma16816<bf16_t>(float *c, const u32 *a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<f16_t>(float *c, const u32 *a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float ldcg(const float *ptr) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(ptr));
    return v;
}
__device__ __forceinline__ float4 ldcg4(const float *ptr) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(ptr));
    return v;
}

// x / d for 0 <= x < 2^31 and 1 <= d < 2^31 by a multiply-high and a shift (Granlund and
// Montgomery: l = ceil(log2 d), m = ceil(2^(31 + l) / d) < 2^32, x / d = umulhi(x, m) >>
// (l - 1); d = 1 has m = 0). m comes with the parameters (src/cuda/decode.rs `fast_div_m`,
// constant bank: no register): the attention's per-item and per-tile index math divided by
// the runtime q_len, units, group and page_size (~25 instructions and a MUFU each), 6-11% of
// its instructions at batch 64 (ncu, docs/cuda-notes.md, twelfth session).
__device__ __forceinline__ int fdiv(int x, u32 m, int d) { return m == 0 ? x : (int)(__umulhi((u32)x, m) >> (31 - __clz((u32)d - 1))); }

// K and V of one tile (keys [i0, i0 + cnt), cnt <= TK <= 64) of KV head hk of sequence b
// into smem (swizzled rows, cp.async 16 bytes a thread and chunk, zero-filled past cnt or
// on a bad page; okt[ii] = key ii is valid), committed as one group. one_page (the tile in
// one page): one table entry and constant address steps. Otherwise per key: sm_90+ loads
// the tile's page-table entries first, all at once; sm_80 one in front of each copy.
template <typename T, int D, int NT>
__device__ __forceinline__ void load_kv_tile(const DecParams &p, int b, int hk, int i0, int cnt, int TK, bool one_page, int pgh, u16 *kd,
                                             u16 *vd, int *okt) {
    constexpr int CPK = D / 8, RPP = NT / CPK;  // 16-byte chunks per key; keys per pass
    static_assert(RPP % 8 == 0, "the swizzle repeats every 8 rows");
    if (one_page) {
        // The tile lies in one page (page_size a multiple of TK, tiles start at multiples of
        // TK): one table entry (pgh when >= -1: looked up by the select kernel), then constant
        // strides (thread: key ii0 + k * RPP, chunk col).
        const int pi = fdiv(i0, p.m_ps, p.ps), r0 = i0 - pi * p.ps;
        const int pg = cnt > 0 ? (pgh >= -1 ? pgh : page_at(p, b, pi)) : -1;
        // Every source address lies in the page (or in page 0 when there is none: ii < TK <=
        // page_size); keys past cnt copy 0 bytes (zero fill). Pointer steps, 32-bit sizes: a
        // few instructions a copy (this code runs once per CTA at batch 1, where its
        // instruction fetch is on the critical path).
        const int ii0 = threadIdx.x / CPK, col = threadIdx.x % CPK;
        const char *ks = (const char *)p.kc, *vs = (const char *)p.vc;
        if (pg >= 0) {
            ks += 2 * (pg * p.sk.page + (i64)(r0 + ii0) * p.sk.slot + hk * p.sk.head + col * 8);
            vs += 2 * (pg * p.sv.page + (i64)(r0 + ii0) * p.sv.slot + hk * p.sv.head + col * 8);
        }
        const i64 kst = 2 * RPP * p.sk.slot, vst = 2 * RPP * p.sv.slot;
        const int nok = pg >= 0 ? cnt : 0;  // keys [0, nok) are copied
        const u32 kdst = smem_u32(kd + swz<D>(ii0, col)), vdst = smem_u32(vd + swz<D>(ii0, col));
#pragma unroll
        for (int k = 0; k < 64 / RPP; ++k) {
            const int ii = ii0 + k * RPP;
            if (ii < TK) {
                const int sz = ii < nok ? 16 : 0;
                cp_async16(kdst + 2 * k * RPP * D, ks, sz);
                cp_async16(vdst + 2 * k * RPP * D, vs, sz);
                if (col == 0) okt[ii] = sz;
            }
            ks += kst;
            vs += vst;
        }
        cp_commit();
        return;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    // sm_80: the per-copy table lookup (the batched one below spills 8 bytes there, under
    // the attention kernel's 3-CTAs-per-SM register cap).
    for (int e = threadIdx.x; e < TK * CPK; e += NT) {
        const int ii = e / CPK, col = e % CPK;
        const T *ks = (const T *)p.kc, *vs = (const T *)p.vc;
        bool ok = false;
        if (ii < cnt) {
            const int pg = page_of(p, b, i0 + ii);
            if (pg >= 0) {
                const i64 slot = (i0 + ii) % p.ps;
                ks += pg * p.sk.page + slot * p.sk.slot + hk * p.sk.head + col * 8;
                vs += pg * p.sv.page + slot * p.sv.slot + hk * p.sv.head + col * 8;
                ok = true;
            }
        }
        const int so = swz<D>(ii, col);
        cp_async16(smem_u32(kd + so), ks, ok ? 16 : 0);
        cp_async16(smem_u32(vd + so), vs, ok ? 16 : 0);
        if (col == 0) okt[ii] = ok;
    }
#else
    constexpr int EPT = 64 * CPK / NT;
    const int pi0 = fdiv(i0, p.m_ps, p.ps);
    const int r0 = i0 - pi0 * p.ps;
    int pg[EPT], sl[EPT];
#pragma unroll
    for (int k = 0; k < EPT; ++k) {
        const int ii = (threadIdx.x + k * NT) / CPK;
        const int q = fdiv(r0 + ii, p.m_ps, p.ps);
        sl[k] = r0 + ii - q * p.ps;
        pg[k] = ii < cnt ? __ldg(p.table + b * p.st_b + (i64)(pi0 + q) * p.st_i) : -1;
    }
#pragma unroll
    for (int k = 0; k < EPT; ++k)  // (checked after all loads are issued, as in the score)
        if (pg[k] >= p.num_pages) pg[k] = -1;
#pragma unroll
    for (int k = 0; k < EPT; ++k) {
        const int e = threadIdx.x + k * NT, ii = e / CPK, col = e % CPK;
        if (ii < TK) {
            const T *ks = (const T *)p.kc, *vs = (const T *)p.vc;
            const bool ok = pg[k] >= 0;
            if (ok) {
                ks += pg[k] * p.sk.page + sl[k] * p.sk.slot + hk * p.sk.head + col * 8;
                vs += pg[k] * p.sv.page + sl[k] * p.sv.slot + hk * p.sv.head + col * 8;
            }
            const int so = swz<D>(ii, col);
            cp_async16(smem_u32(kd + so), ks, ok ? 16 : 0);
            cp_async16(smem_u32(vd + so), vs, ok ? 16 : 0);
            if (col == 0) okt[ii] = ok;
        }
    }
#endif
    cp_commit();
}

// One K/V tile of the split-KV attention for the calling warp (keys [kw, kw + 16) of the
// tile in smem): S = Q K^T on tensor cores (the unit's heads are the 16 M rows), + the
// block's log-prior, online softmax in the log2 domain (P rounded to T for P V, as in the
// forward), O += P V. Keys >= cnt or on a bad page (okt = 0) are masked. Warp-uniform.
template <typename T, int D>
__device__ __forceinline__ void attn_tile(const u16 *sQ, const u16 *cK, const u16 *cV, const int *okt, int cnt, float beta, float sl2, int kw,
                                          int lane, float (&oacc)[D / 8][4], float (&mrow)[2], float (&lrow)[2]) {
    constexpr int KST = D / 16, NTO = D / 8;
    float sacc[2][4];
#pragma unroll
    for (int i = 0; i < 2; i++) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KST; kk++) {
        u32 bb[4], qf[4];  // Q fragments re-read from smem (keeps registers for O)
        ldsm_x4(qf, smem_u32(sQ + swz<D>(lane & 15, kk * 2 + (lane >> 4))));
        ldsm_x4(bb, smem_u32(cK + swz<D>(kw + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
        mma16816<T>(sacc[0], qf, bb[0], bb[1]);
        mma16816<T>(sacc[1], qf, bb[2], bb[3]);
    }
    const float b2 = beta * DA_LOG2E;
    bool kv[2][2];
#pragma unroll
    for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int ii = kw + nt * 8 + (lane & 3) * 2 + e;
            kv[nt][e] = ii < cnt && okt[ii] != 0;
        }
#pragma unroll
    for (int x = 0; x < 2; x++) {
        float mx = -DA_INF;
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float v = kv[nt][e] ? fmaf(sacc[nt][2 * x + e], sl2, b2) : -DA_INF;
                sacc[nt][2 * x + e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(mrow[x], mx);
        const float muse = mnew == -DA_INF ? 0.f : mnew;
        const float corr = ex2(mrow[x] - muse);
        mrow[x] = mnew;
        float ls = 0.f;
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float pe = ex2(sacc[nt][2 * x + e] - muse);
                sacc[nt][2 * x + e] = pe;
                ls += pe;
            }
        lrow[x] = lrow[x] * corr + ls;
#pragma unroll
        for (int nt = 0; nt < NTO; nt++) {
            oacc[nt][2 * x] *= corr;
            oacc[nt][2 * x + 1] *= corr;
        }
    }
    u32 a[4];
    a[0] = pack2<T>(sacc[0][0], sacc[0][1]);
    a[1] = pack2<T>(sacc[0][2], sacc[0][3]);
    a[2] = pack2<T>(sacc[1][0], sacc[1][1]);
    a[3] = pack2<T>(sacc[1][2], sacc[1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; dp++) {
        u32 bb[4];
        ldsm_x4_t(bb, smem_u32(cV + swz<D>(kw + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4))));
        mma16816<T>(oacc[2 * dp], a, bb[0], bb[1]);
        mma16816<T>(oacc[2 * dp + 1], a, bb[2], bb[3]);
    }
}

// Merges the 4 warps' online-softmax states (rows = heads; m in log2 units) of a CTA:
// warp states to wo [4][16][D] / wm, wl [4][16]; then per head g < hpu, mw[g*4 + w] =
// 2^(m_w - M) / L (0 when empty) and mw[64 + g] = lse (natural log). Ends with a barrier.
template <int D>
__device__ __forceinline__ void merge_warp_states(const float (&oacc)[D / 8][4], const float (&mrow)[2], const float (&lrow)[2], float *wo, float *wm,
                                                  float *wl, float *mw, int hpu, int warp, int lane) {
    constexpr int NTO = D / 8;
    const int tid = threadIdx.x;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        float l = lrow[x];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int row = (lane >> 2) + 8 * x;
        if ((lane & 3) == 0) {
            wm[warp * 16 + row] = mrow[x];
            wl[warp * 16 + row] = l;
        }
        if (row < hpu) {
#pragma unroll
            for (int nt = 0; nt < NTO; nt++) {
                int d = nt * 8 + (lane & 3) * 2;
                *(float2 *)(wo + (warp * 16 + row) * D + d) = make_float2(oacc[nt][2 * x], oacc[nt][2 * x + 1]);
            }
        }
    }
    __syncthreads();
    // Per head: M = max_w m_w, L = sum_w l_w 2^(m_w - M), o = sum_w o_w 2^(m_w - M) / L;
    // mw[g*4 + w] = 2^(m_w - M) / L (0 when empty), mw[64 + g] = lse (natural log).
    if (tid < hpu) {
        const int g = tid;
        float M = -DA_INF;
        for (int w = 0; w < 4; ++w) M = fmaxf(M, wm[w * 16 + g]);
        float L = 0.f, f[4];
        for (int w = 0; w < 4; ++w) {
            f[w] = M == -DA_INF ? 0.f : ex2(wm[w * 16 + g] - M);
            L += wl[w * 16 + g] * f[w];
        }
        for (int w = 0; w < 4; ++w) mw[g * 4 + w] = L > 0.f ? f[w] / L : 0.f;
        mw[64 + g] = L > 0.f ? (M + __log2f(L)) * DA_LN2 : -DA_INF;
    }
    __syncthreads();
}

// Q rows of the unit (heads h0 .. h0 + hpu - 1 of query row r; rows >= hpu zero): loads
// into registers (QPT a thread), then the stores to sQ, so that a caller can issue other
// loads in between.
#define Q_PER_THREAD(D) (16 * (D) / 8 / ATT_NT)  // 16-byte chunks of the 16 x D tile a thread
template <typename T, int D>
__device__ __forceinline__ void load_q_regs(const DecParams &p, uint4 (&qv)[Q_PER_THREAD(D)], int b, int r, int h0, int hpu) {
#pragma unroll
    for (int k = 0; k < Q_PER_THREAD(D); ++k) {
        const int e = threadIdx.x + k * ATT_NT, g = e / (D / 8), c = e % (D / 8);
        const u16 *qp = (const u16 *)p.q + b * p.sq_n + r * p.sq_l + (h0 + g) * p.sq_h + c * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (g < hpu) {
            if (p.flags & 2) {  // q rows 16-byte aligned
                v = *(const uint4 *)qp;
            } else {
                u16 h[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) h[i] = qp[i];
                v = make_uint4(h[0] | (u32)h[1] << 16, h[2] | (u32)h[3] << 16, h[4] | (u32)h[5] << 16, h[6] | (u32)h[7] << 16);
            }
        }
        qv[k] = v;
    }
}
template <int D>
__device__ __forceinline__ void store_q_regs(u16 *sQ, const uint4 (&qv)[Q_PER_THREAD(D)]) {
#pragma unroll
    for (int k = 0; k < Q_PER_THREAD(D); ++k) {
        const int e = threadIdx.x + k * ATT_NT, g = e / (D / 8), c = e % (D / 8);
        *(uint4 *)(sQ + swz<D>(g, c)) = qv[k];
    }
}

// One work item of the split-KV attention: list positions [m0, m1) of row ru's blocks (its
// nsel selected blocks from the workspace list, then its local blocks; position m0's block
// jf and log-prior bf come with the item, so the first tile's copies wait only on the page
// table), split s of nsplit, in tiles of TK = min(B, 64) keys; the unit's Q rows load to sQ
// while the first tile's copies are issued. A row with one split writes o / lse directly;
// otherwise the split writes its partial and the last split of the row to finish (counter
// p.cnt[ru], zeroed by dec_select) merges all partials in split order (deterministic
// whichever CTA it is). Called by every thread; ends with a barrier.
// Four consecutive outputs (o rows have no alignment guarantee: scalar stores).
template <typename T> __device__ __forceinline__ void store4(T *od, float4 v) {
    od[0] = from_f<T>(v.x);
    od[1] = from_f<T>(v.y);
    od[2] = from_f<T>(v.z);
    od[3] = from_f<T>(v.w);
}

// Work item i's descriptor (the two int4 of write_item).
__device__ __forceinline__ void load_item(const DecParams &p, int i, int4 &a, int4 &b) {
    a = ((const int4 *)p.items)[2 * i];
    b = ((const int4 *)p.items)[2 * i + 1];
}

// The next item (index nxt, descriptor na / nb when loaded ahead) to flag[1] / snext for
// dec_attn (thread 0).
__device__ __forceinline__ void next_item(const DecParams &p, int *flag, int4 *snext, int nxt, int nitems, int4 na, int4 nb, bool loaded) {
    if (!loaded && nxt < nitems) load_item(p, nxt, na, nb);
    flag[1] = nxt;
    snext[0] = na;
    snext[1] = nb;
}

template <typename T, int D>
__device__ __forceinline__ void attn_item(const DecParams &p, u16 *sK, u16 *sV, u16 *sQ, int *okm, float *wm, float *wl, float *mw, int *flag,
                                          int ru, int b, int r, int h0, int hk, int hpu, int len, int s, int nsplit, int m0, int m1, int nsel, int jf, float bf,
                                          int pg0, int *ej, float *eb, int *ep, int nxt, int nitems, int4 *snext, bool mm) {
    constexpr int TKM = 64, NTO = D / 8;
    float *wo = (float *)sK;  // [4][16][D] after the item's tiles (reuses K/V)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int bs = p.bs;  // 16, 32, 64 or 128 (src/params.rs)
    const int TK = bs < TKM ? bs : TKM, lgnpb = bs > TKM ? 1 : 0;  // tiles a block: 1 << lgnpb
    const int lgbs = 31 - __clz(bs);
    const float sl2 = p.sigma * DA_LOG2E;
    const int kw = warp * 16;  // this warp's keys in a tile
    // (token positions fit 32 bits: seq_lens are int32)
    const int t = len - p.q_len + r;  // >= 0: rows with t < 0 have no work
    const int c = t >> lgbs;
    const int first_local = max(0, c - p.n_local + 1);
    const int tt0 = m0 << lgnpb, tt1 = m1 << lgnpb;
    const int tend = min(len, t + 1);  // keys [0, tend) may be attended
    T *ob = (T *)p.o + b * p.so_n + r * p.so_l;
    const bool one_page = p.ps % TK == 0;  // (= tiles_in_one_page(p), TK = min(B, 64); this form keeps the measured code)
    // Positions m0 + 1 .. m0 + ne - 1 of the item: block, log-prior and (tiles in one page)
    // the page of its first tile, read once per item into ej / eb / ep (loaded while the
    // first tile's copies are in flight), so that later tiles' copies wait on no table
    // lookup (two dependent round trips a tile before). Positions past ENT look up as before.
    constexpr int ENT = 64;
    const int ne = min(m1 - m0, ENT);
    // A block's tiles share its first tile's page (B 128 with pages of a multiple of 128).
    // sm_80: the second tile looks its page up as before (this spilled 4 bytes there at D 64).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    const bool blk_in_page = false;
#else
    const bool blk_in_page = p.ps % bs == 0;
#endif
    auto listed = [&](int m, int &j, float &beta) {  // list position m: a selected or a local block
        if (m < nsel) {
            j = p.sel_idx[(i64)ru * p.nbmax + m];
            beta = p.sel_beta[(i64)ru * p.nbmax + m];
        } else {
            j = first_local + (m - nsel);
            beta = 0.f;
        }
    };
    auto tile = [&](int tt, float &beta, int &i0, int &cnt, int &pgh) {
        int m = tt >> lgnpb, sub = tt & lgnpb, j;  // (npb - 1 = lgnpb: npb is 1 or 2)
        const int q = m - m0;
        pgh = -2;
        if (q == 0) {
            j = jf;
            beta = bf;
            if (sub == 0 || blk_in_page) pgh = pg0;
        } else if (q < ENT) {
            j = ej[q];
            beta = eb[q];
            if (sub == 0 || blk_in_page) pgh = ep[q];
        } else {
            listed(m, j, beta);
        }
        i0 = j * bs + sub * TK;
        cnt = max(0, min(TK, tend - i0));
    };
    auto issue = [&](int tt, int stage) {
        float beta;
        int i0, cnt, pgh;
        tile(tt, beta, i0, cnt, pgh);
        load_kv_tile<T, D, ATT_NT>(p, b, hk, i0, cnt, TK, one_page, pgh, sK + stage * TKM * D, sV + stage * TKM * D, okm + stage * TKM);
    };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    // sm_80: Q straight to smem, then the first tile (holding Q in registers across the
    // issue spilled there)
    for (int e = tid; e < 16 * D; e += ATT_NT) {
        const int g = e / D, x = e % D;
        sQ[swz<D>(g, x >> 3) + (x & 7)] = g < hpu ? ((const u16 *)p.q)[b * p.sq_n + r * p.sq_l + (h0 + g) * p.sq_h + x] : (u16)0;
    }
#else
    uint4 qv[Q_PER_THREAD(D)];
    load_q_regs<T, D>(p, qv, b, r, h0, hpu);
#endif
    const int tslot = 6144 + (blockIdx.x & 2047);
    float oacc[NTO][4];
#pragma unroll
    for (int i = 0; i < NTO; i++) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.f;
    float mrow[2] = {-DA_INF, -DA_INF}, lrow[2] = {0.f, 0.f};
    // Step k issues tile tt0 + k (one issue site: the loader's code once in the kernel) and
    // computes tile tt0 + k - 1 (double buffered: stage = tile index & 1).
    for (int k = 0, nt = tt1 - tt0; k <= nt; ++k) {
        if (k < nt) issue(tt0 + k, k & 1);
        if (k == 0) {
#if !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900)
            store_q_regs<D>(sQ, qv);  // visible after the next barrier
#endif
            if (ne > 1) {  // (block-uniform)
                if (tid >= 1 && tid < ne) {
                    int j;
                    float beta;
                    listed(m0 + tid, j, beta);
                    ej[tid] = j;
                    eb[tid] = beta;
                    // (j * bs < len: in the table; token positions fit 32 bits)
                    ep[tid] = one_page ? page_at(p, b, fdiv(j * bs, p.m_ps, p.ps)) : -2;
                }
                __syncthreads();  // the entries (and sQ) visible
            }
            DTRACE(tslot, 2);
            continue;
        }
        const int tt = tt0 + k - 1, stage = (k - 1) & 1;
        if (k < nt)
            cp_wait<1>();
        else
            cp_wait<0>();
        __syncthreads();  // tile tt (and sQ) visible
        if (tt == tt0) DTRACE(tslot, 3);
        float beta;
        int i0, cnt, pgh;
        tile(tt, beta, i0, cnt, pgh);
        if (kw < cnt)  // warp-uniform
            attn_tile<T, D>(sQ, sK + stage * TKM * D, sV + stage * TKM * D, okm + stage * TKM, cnt, beta, sl2, kw, lane, oacc, mrow, lrow);
        __syncthreads();
    }
    DTRACE(tslot, 4);
    // The next item's descriptor (thread 0 took its index at the item's start) loads now and
    // goes to snext at the end, so that the next item's start waits on no global load
    // (sm_80: at the item's end, as before; holding it here spilled 20-40 bytes there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    constexpr bool DASH_NEXT_PF = false;
#else
    constexpr bool DASH_NEXT_PF = true;
#endif
    merge_warp_states<D>(oacc, mrow, lrow, wo, wm, wl, mw, hpu, warp, lane);
    int4 na = make_int4(0, 0, 0, 0), nb = na;
    if (DASH_NEXT_PF && tid == 0 && nxt >= 0 && nxt < nitems) load_item(p, nxt, na, nb);
    const bool single = nsplit == 1;
    float *opart = p.o_part + (((i64)s * p.n + b) * p.q_len + r) * p.hq * D;
    // (rolled, a float4 a step: at batch 1 this runs once a CTA from a cold instruction
    // cache, so the code's length is on the critical path; docs/cuda-notes.md, fifth session)
#pragma unroll 1
    for (int e = tid; e < hpu * D / 4; e += ATT_NT) {
        const int g = e / (D / 4), x = (e % (D / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const float4 a = *(const float4 *)(wo + (w * 16 + g) * D + x);
            const float f = mw[g * 4 + w];
            v.x = fmaf(a.x, f, v.x);
            v.y = fmaf(a.y, f, v.y);
            v.z = fmaf(a.z, f, v.z);
            v.w = fmaf(a.w, f, v.w);
        }
        if (single) {
            store4<T>(ob + (h0 + g) * p.so_h + x, v);
        } else {
            *(float4 *)(opart + (h0 + g) * D + x) = v;
        }
    }
    if (single) {
        if (p.lse)
            for (int g = tid; g < hpu; g += ATT_NT) p.lse[b * p.sl_n + (h0 + g) * p.sl_h + r * p.sl_l] = mw[64 + g];
        if (tid == 0 && nxt >= 0) next_item(p, flag, snext, nxt, nitems, na, nb, DASH_NEXT_PF);
        __syncthreads();  // smem reuse by the caller; flag[1], snext visible
        return;
    }
    for (int g = tid; g < hpu; g += ATT_NT) p.lse_part[(((i64)s * p.n + b) * p.hq + h0 + g) * p.q_len + r] = mw[64 + g];
    __threadfence();
    __syncthreads();
    DTRACE(tslot, 5);
    // (mm: a merger task merges this row (dec_attn); the split only counts itself)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if (mm) {  // (sm_80: mergers only without the counter, so no next item)
        if (tid == 0) atomicAdd(p.cnt + ru, 1);
        return;
    }
#endif
    if (tid == 0) {
        const int c = atomicAdd(p.cnt + ru, 1);
        flag[0] = !mm && c == nsplit - 1;
    }
    __syncthreads();
    DTRACE(tslot, 6);
    if (flag[0]) {
        __threadfence();
        // The last split merges: o = sum_sp w_sp o_sp, w_sp = exp(lse_sp - lse) (split order:
        // deterministic). Each thread's first MB partials (one float4 of one head each) load
        // before the lse values, so both round trips overlap; further ones in batches of MB.
        constexpr int MB = 16;  // (8: 7 dependent rounds for 49 partials; docs/cuda-notes.md, sixth session)
        const float *o0 = p.o_part + ((i64)b * p.q_len + r) * p.hq * D + h0 * D;
        const i64 sstride = (i64)p.n * p.q_len * p.hq * D;
        const int nv = hpu * D / 4;
        float4 pre[MB];
        {
            const int e = min(tid, nv - 1);  // (threads past nv: loads in the unit, unused)
            const float *op = o0 + (e / (D / 4)) * D + (e % (D / 4)) * 4;
#pragma unroll
            for (int k = 0; k < MB; ++k) pre[k] = k < nsplit ? ldcg4(op + k * sstride) : make_float4(0.f, 0.f, 0.f, 0.f);  // (k >= nsplit: weight 0)
        }
        // (no division: nsplit <= 64 lanes of two warps a head)
        for (int g = tid >> 6, sp = tid & 63; g < hpu; g += ATT_NT / 64)
            if (sp < nsplit) mw[g * 64 + sp] = ldcg(p.lse_part + (((i64)sp * p.n + b) * p.hq + h0 + g) * p.q_len + r);
        __syncthreads();
        for (int g = warp; g < hpu; g += ATT_NT / 32) {  // a warp per head (nsplit <= 64)
            const float l0 = lane < nsplit ? mw[g * 64 + lane] : -DA_INF, l1 = lane + 32 < nsplit ? mw[g * 64 + lane + 32] : -DA_INF;
            const float mx = warp_max(fmaxf(l0, l1));
            const float sum = mx > -DA_INF ? warp_sum(__expf(l0 - mx) + __expf(l1 - mx)) : 0.f;
            const float lse = mx > -DA_INF ? mx + logf(sum) : -DA_INF;
            if (lane < nsplit) mw[g * 64 + lane] = lse > -DA_INF ? __expf(l0 - lse) : 0.f;
            if (lane + 32 < nsplit) mw[g * 64 + lane + 32] = lse > -DA_INF ? __expf(l1 - lse) : 0.f;
            if (lane == 0 && p.lse) p.lse[b * p.sl_n + (h0 + g) * p.sl_h + r * p.sl_l] = lse;
        }
        __syncthreads();
#pragma unroll 1
        for (int e = tid; e < nv; e += ATT_NT) {
            const int g = e / (D / 4), x = (e % (D / 4)) * 4;
            const float *op = o0 + g * D + x;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
            for (int sp0 = 0; sp0 < nsplit; sp0 += MB) {
                float4 a[MB];
#pragma unroll
                for (int k = 0; k < MB; ++k)
                    a[k] = sp0 == 0 && e == tid ? pre[k] : sp0 + k < nsplit ? ldcg4(op + (sp0 + k) * sstride) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                for (int k = 0; k < MB; ++k) {
                    const float w = sp0 + k < nsplit ? mw[g * 64 + sp0 + k] : 0.f;
                    v.x = fmaf(w, a[k].x, v.x);
                    v.y = fmaf(w, a[k].y, v.y);
                    v.z = fmaf(w, a[k].z, v.z);
                    v.w = fmaf(w, a[k].w, v.w);
                }
            }
            store4<T>(ob + (h0 + g) * p.so_h + x, v);
        }
        if (tid == 0) p.cnt[ru] = 0;
        DTRACE(tslot, 7);
    }
    if (tid == 0 && nxt >= 0) next_item(p, flag, snext, nxt, nitems, na, nb, DASH_NEXT_PF);
    __syncthreads();  // smem reuse by the caller; flag[1], snext visible
}

// Shared memory of dec_attn (dynamic): K, V [2][64][D] and Q [16][D] (T), ok
// [2][64] ints, warp m / l [4][16] each, weights [16][64], flag[0] (last split) and flag[1] (next item).
#define DEC_SMEM_LAYOUT(D)                                                                        \
    extern __shared__ uint4 smv[];                                                                 \
    u16 *sK = (u16 *)smv, *sV = sK + 2 * 64 * D, *sQ = sV + 2 * 64 * D;                            \
    int *okm = (int *)(sQ + 16 * D);                          /* [2][64] */                        \
    float *wm = (float *)(okm + 2 * 64), *wl = wm + 4 * 16;  /* [4][16] each */                   \
    float *mw = wl + 4 * 16;                                  /* weights [16][64] */               \
    int *flag = (int *)(mw + 16 * 64);                        /* [4] */                            \
    int4 *snext = (int4 *)(flag + 4);                         /* the next item [2] */              \
    int *ej = (int *)(snext + 2), *ep = ej + 64;              /* item entries [64] each */         \
    float *eb = (float *)(ep + 64);

__device__ __forceinline__ int ld_acquire(const int *ptr) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(ptr) : "memory");
    return v;
}

// Merger CTA m (dec_attn with mergers) merges head m % hpu of row m / hpu: the row's
// splits (work items) are recomputed from its list length as dec_select cut them; with
// more than one, thread 0 polls the row's count of finished splits at the L2 until all are
// in. Then one round of loads: the partials (D floats each, <= 64) go to shared memory by
// cp.async (no registers held: 64 values a thread in registers spilled), every warp loads
// the splits' lse (two lanes a split). Thread x < D sums element x in split order (the
// same values as the last split's merge: o and lse do not depend on which path ran).
template <typename T, int D>
__device__ __forceinline__ void merge_head(const DecParams &p, int m, int hpu, int units, float *buf) {
    const int tid = threadIdx.x, lane = tid & 31;
    // (plain divisions: sharing the item path's fdiv shifts held one more register across the
    // items and spilled it)
    const int ru = m / hpu, g = m - ru * hpu;
    const int rq = ru / p.q_len, r = ru - rq * p.q_len, b = rq / units, u = rq - b * units;
    const int h = (p.per_head ? u : u * p.group) + g;
    // (dec_select's cut of the row's selected + local blocks)
    const int t = seq_len(p, b) - p.q_len + r;
    const int nloc = t >= 0 ? t / p.bs - max(0, t / p.bs - p.n_local + 1) + 1 : 0;
    int per;
    const int ns = row_items(p, (t >= 0 ? __ldcg(p.sel_n + ru) : 0) + nloc, per);
    if (ns <= 1) return;  // (one item writes o itself; none: the select wrote o)
    if (tid == 0)
        while (ld_acquire(p.cnt + ru) < ns) {
        }
    __syncthreads();  // (thread 0's acquire orders every thread's loads below)
    DTRACE(6144 + (blockIdx.x & 2047), 6);
    const i64 lstride = (i64)p.n * p.hq * p.q_len, sstride = (i64)p.n * p.q_len * p.hq * D;
    const float *op = p.o_part + (((i64)b * p.q_len + r) * p.hq + h) * D;
    constexpr int CPR = D / 4;  // 16-byte pieces a partial
    for (int e = tid; e < ns * CPR; e += ATT_NT) {
        const int k = e / CPR, c = e % CPR;
        cp_async16(smem_u32(buf + k * D + c * 4), op + k * sstride + c * 4, 16);
    }
    cp_commit();
    const float *lp = p.lse_part + ((i64)b * p.hq + h) * p.q_len + r;
    const float l0 = lane < ns ? ldcg(lp + lane * lstride) : -DA_INF, l1 = lane + 32 < ns ? ldcg(lp + (lane + 32) * lstride) : -DA_INF;
    const float mx = warp_max(fmaxf(l0, l1));
    const float sum = mx > -DA_INF ? warp_sum(__expf(l0 - mx) + __expf(l1 - mx)) : 0.f;
    const float lse = mx > -DA_INF ? mx + logf(sum) : -DA_INF;
    const float w0 = lse > -DA_INF ? __expf(l0 - lse) : 0.f, w1 = lse > -DA_INF ? __expf(l1 - lse) : 0.f;
    cp_wait_mem<0>();
    __syncthreads();  // the partials in shared memory
    float acc = 0.f;
    const int x = tid < D ? tid : D - 1;
    for (int k = 0; k < ns; ++k) {  // (warp-uniform trip count)
        const float w = __shfl_sync(0xffffffffu, k < 32 ? w0 : w1, k & 31);
        acc = fmaf(w, buf[k * D + x], acc);
    }
    if (tid < D) ((T *)p.o)[b * p.so_n + r * p.so_l + h * p.so_h + x] = from_f<T>(acc);
    if (tid == 0 && p.lse) p.lse[b * p.sl_n + h * p.sl_h + r * p.sl_l] = lse;
    DTRACE(6144 + (blockIdx.x & 2047), 7);
}

template <typename T, int D, bool MG>
__device__ __forceinline__ void dec_attn(const DecParams &p) {
    DEC_SMEM_LAYOUT(D)
    const int units = p.per_head ? p.hq : p.hkv;
    const int hpu = p.per_head ? 1 : p.group;
    DTRACE(6144 + (blockIdx.x & 2047), 0);
    pdl_wait();
    DTRACE(6144 + (blockIdx.x & 2047), 1);
    // The count and this CTA's first item load together (the list has >= gridDim.x slots).
    // Items past the grid go to whichever CTA finishes first: each CTA takes the next index
    // from p.nitems[1] when it starts an item (the atomic's latency hides behind the item).
    // Taking them in turns (item i to CTA i mod grid) left the CTAs' last items ending
    // 75..188 us into a batch-8 step at 87% (rows of 179..324 blocks).
    const int4 *items = (const int4 *)p.items;
    //
    // Mergers (MG and flags bit 2, set by the host for at most 2 x SMs (row, head) pairs): one
    // merger task a (row, head) merges the rows of several splits. Each split writes its
    // partial and counts itself without waiting for the count; the merger polls the count
    // and loads all partials at once. Otherwise the last split to finish merges (a fence, the
    // count's round trip and rounds of 16 partials after the row's last tile). The merger
    // tasks are the indices nitems .. nitems + nmerge - 1 after the items: with all of them
    // within the grid, CTA i takes index i; otherwise indices past the grid come from the
    // counter, which hands out every item before any merger. So a merger waits only on items
    // that are already running or that CTAs of lower index hold, which the GPU schedules no
    // later than it (the assumption of decoupled look-back scans).
    const int nitems = *p.nitems;
    const int lgbs = 31 - __clz(p.bs);
    // (MG: the kernel with merger tasks; without, the code is the last-split merge alone,
    // which measured 1.5-2.3 us faster at batch 8 / 64 and 99.9% than one kernel for both)
    // (the host launches the MG kernel exactly when flags bit 2 is set.) sm_80: merger CTAs
    // only when the items and the mergers fit the grid (else the last split merges), and
    // the host sets bit 2 only up to 64 pairs (the counter's merger tasks spilled 4 bytes
    // there at D 64).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    constexpr bool CNT = false;
#else
    constexpr bool CNT = MG;
#endif
    const int nmerge = MG ? p.n * units * p.q_len * hpu : 0;
    const bool mm = MG && (CNT || nitems + nmerge <= (int)gridDim.x);
    const int ntask = nitems + (CNT ? nmerge : 0);
    const bool more = ntask > (int)gridDim.x;
    int it = blockIdx.x;
    int4 ia = items[2 * it], ib = items[2 * it + 1];
    if (MG && !CNT && it >= nitems) {
        if (mm && it - nitems < nmerge) merge_head<T, D>(p, it - nitems, hpu, units, (float *)sK);
        return;
    }
    while (it < nitems) {
        int nxt = -1;  // (thread 0's)
        if (more && threadIdx.x == 0) nxt = (int)gridDim.x + atomicAdd(p.nitems + 1, 1);
        // (row, split | nsplit << 16, per, nsel), (seq_len, first block, its log-prior, -)
        const int ru = ia.x, s = ia.y & 0xffff, nsplit = ia.y >> 16, per = ia.z, nsel = ia.w;
        const int rq = fdiv(ru, p.m_qlen, p.q_len), r = ru - rq * p.q_len, b = fdiv(rq, p.m_units, units), u = rq - b * units;
        const int h0 = p.per_head ? u : u * p.group, hk = p.per_head ? fdiv(u, p.m_group, p.group) : u;
        const int len = ib.x;
        const int c = (len - p.q_len + r) >> lgbs;
        const int total = nsel + (c - max(0, c - p.n_local + 1) + 1);
        attn_item<T, D>(p, sK, sV, sQ, okm, wm, wl, mw, flag, ru, b, r, h0, hk, hpu, len, s, nsplit, s * per, min(total, (s + 1) * per), nsel, ib.y,
                        __int_as_float(ib.z), ib.w, ej, eb, ep, nxt, nitems, snext, mm);
        if (!more) break;
        // (written by thread 0 before attn_item's last barrier; the next writes come after
        // the next item's barriers)
        it = flag[1];
        ia = snext[0];
        ib = snext[1];
    }
    // Then merger tasks (indices past the items), until the counter runs past them. (The
    // task index is recovered, not held across the items: one more live register there
    // spilled. A CTA that ran items without the counter has no merger task; with the
    // counter, its next index is in flag[1].)
    if (!CNT) return;
    const int ntask_ = nitems + p.n * units * p.q_len * hpu;  // (= ntask, recomputed)
    it = blockIdx.x >= nitems ? (int)blockIdx.x : more ? flag[1] : ntask_;
    __syncthreads();  // (flag[1] read before a merger task writes it: merge_head may return at once)
    while (it < ntask_) {
        int nxt = -1;
        if (more && threadIdx.x == 0) nxt = (int)gridDim.x + atomicAdd(p.nitems + 1, 1);
        merge_head<T, D>(p, it - nitems, hpu, units, (float *)sK);
        if (!more) break;
        if (threadIdx.x == 0) flag[1] = nxt;
        __syncthreads();  // (smem reuse; flag[1] visible)
        it = flag[1];
        __syncthreads();  // (flag[1] read before the next task writes it)
    }
}

#define DASH_DEC_INSTANTIATE(T, NAME)                                                                 \
    extern "C" __global__ void dash_pool_paged_##NAME(DecParams p) { pool_paged<T>(p); }               \
    extern "C" __global__ void __launch_bounds__(256) dash_dec_coarse_##NAME(DecParams p) { dec_coarse<T>(p); } \
    extern "C" __global__ void dash_dec_attend_##NAME(DecParams p) { dec_attend<T>(p); } \
    extern "C" __global__ void dash_merge_f32_##NAME(MergeParams p) { merge<float, T>(p); }            \
    extern "C" __global__ void dash_merge_##NAME(MergeParams p) { merge<T, T>(p); }                   \
    extern "C" __global__ void __launch_bounds__(256, 3) dash_dec_score_d64_##NAME(DecParams p) { dec_score<T, 64, 1, false>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 4) dash_dec_score_d64_pre_##NAME(DecParams p) { dec_score<T, 64, 1, true>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) dash_dec_score_d64_r4_##NAME(DecParams p) { dec_score<T, 64, 4, false>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 3) dash_dec_score_d128_##NAME(DecParams p) { dec_score<T, 128, 1, false>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 4) dash_dec_score_d128_pre_##NAME(DecParams p) { dec_score<T, 128, 1, true>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 2) dash_dec_score_d128_r4_##NAME(DecParams p) { dec_score<T, 128, 4, false>(p); } \
    extern "C" __global__ void __launch_bounds__(256) dash_dec_score_d64_ring_##NAME(DecParams p) { dec_score_ring<T, 64, 3>(p); } \
    extern "C" __global__ void __launch_bounds__(256) dash_dec_score_d128_ring_##NAME(DecParams p) { dec_score_ring<T, 128, 3>(p); } \
    extern "C" __global__ void __launch_bounds__(SEL_NT) dash_dec_select_##NAME(DecParams p) { dec_select<T>(p); } \
    extern "C" __global__ void __launch_bounds__(ATT_NT, 3) dash_dec_attn_d64_##NAME(DecParams p) { dec_attn<T, 64, false>(p); } \
    extern "C" __global__ void __launch_bounds__(ATT_NT, 3) dash_dec_attn_d128_##NAME(DecParams p) { dec_attn<T, 128, false>(p); } \
    extern "C" __global__ void __launch_bounds__(ATT_NT, 3) dash_dec_attn_d64_m_##NAME(DecParams p) { dec_attn<T, 64, true>(p); } \
    extern "C" __global__ void __launch_bounds__(ATT_NT, 3) dash_dec_attn_d128_m_##NAME(DecParams p) { dec_attn<T, 128, true>(p); }

DASH_DEC_INSTANTIATE(f16_t, f16)
DASH_DEC_INSTANTIATE(bf16_t, bf16)
