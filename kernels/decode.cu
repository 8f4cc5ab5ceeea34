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
    int cb;  // v2 score kernel: candidate blocks per CTA
};
// Must match src/cuda/decode.rs `DecParams` (#[repr(C)]).
static_assert(sizeof(DecParams) == 360, "DecParams layout");

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
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

__device__ __forceinline__ int page_of(const DecParams &p, int b, i64 tok) {
    int pg = p.table[b * p.st_b + (tok / p.ps) * p.st_i];
    return (pg >= 0 && pg < p.num_pages) ? pg : -1;
}

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
__device__ __forceinline__ u32 smem_u32(const void *ptr) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(ptr));
    return r;
}
__device__ __forceinline__ void cp_async16(u32 dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
__device__ __forceinline__ uint4 ldg_stream(const void *ptr) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(ptr));
    return r;
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
template <typename T, int D, int RT>
__device__ __forceinline__ void dec_score(const DecParams &p) {
    constexpr int LPK = D / 8, KPW = 32 / LPK, U = 4, NW = 8;
    extern __shared__ float qs[];
    const int chunk = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
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
    const int len = seq_len(p, b);
    const i64 t = (i64)len - 1;  // the last row has the most candidates
    const int ncand = t >= 0 ? (int)max((i64)0, t / p.bs - p.n_local + 1) : 0;
    const int j0 = chunk * p.cb, j1 = min(ncand, j0 + p.cb);
    if (j0 >= j1) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, kg = lane / LPK, kl = lane % LPK;
    const T *pc = (const T *)p.pc + hk * p.sp.head + kl * 8;
    for (int lr0 = 0; lr0 < R; lr0 += RT) {
        float qf[RT][8];
#pragma unroll
        for (int rr = 0; rr < RT; ++rr)
#pragma unroll
            for (int e = 0; e < 8; ++e) qf[rr][e] = lr0 + rr < R ? qs[(lr0 + rr) * D + kl * 8 + e] : 0.f;
        i64 zrow[RT];
#pragma unroll
        for (int rr = 0; rr < RT; ++rr) zrow[rr] = lr0 + rr < R ? score_row(p, b, hk, lr0 + rr) * p.nbmax : -1;
        for (int jb = j0 + warp * KPW * U; jb < j1; jb += NW * KPW * U) {
            uint4 kv[U];
            bool ok[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                int j = jb + u * KPW + kg;
                ok[u] = false;
                kv[u] = make_uint4(0, 0, 0, 0);
                if (j < j1) {
                    i64 tok = (i64)j * p.bs;
                    int pg = page_of(p, b, tok);
                    if (pg >= 0) {
                        ok[u] = true;
                        kv[u] = ldg_stream(pc + pg * p.sp.page + ((tok % p.ps) / p.bs) * p.sp.slot);
                    }
                }
            }
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
}

// ---------------------------------------------------------------- v2 threshold + selection
// grid (q_len, units, N), block SEL_NT. z of the row's candidates stays in registers
// (SEL_C per thread, j = tid + i * SEL_NT; beyond that re-read from the workspace).
#define SEL_NT 256
#define SEL_C 8
// Sum of two doubles over the block; red has 2 * 2 * 32 slots (two buffers alternated by
// `par`, so one barrier per call suffices).
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
    for (int w = 0; w < SEL_NT / 32; ++w) {
        a += rb[w];
        c += rb[32 + w];
    }
}

template <typename T>
__device__ __forceinline__ void dec_select(const DecParams &p) {
    __shared__ float red[32];
    __shared__ double redd[128];
    __shared__ int wcnt[SEL_NT / 32];
    const int r = blockIdx.x, u = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int units = p.per_head ? p.hq : p.hkv;
    const int h0 = p.per_head ? u : u * p.group;
    const i64 ru = ((i64)b * units + u) * p.q_len + r;
    const int len = seq_len(p, b);
    const i64 t = (i64)len - p.q_len + r;
    const int ncand = t >= 0 ? (int)max((i64)0, t / p.bs - p.n_local + 1) : 0;
    const float alpha = fminf(fmaxf(p.head_alpha ? p.head_alpha[h0 * p.ha_stride] : p.alpha, 1.f), 2.f);
    const float *z = p.z + ru * p.nbmax;
    float zc[SEL_C];
    float mx = -DA_INF;
#pragma unroll
    for (int i = 0; i < SEL_C; ++i) {
        int j = tid + i * SEL_NT;
        zc[i] = j < ncand ? z[j] : -DA_INF;
        mx = fmaxf(mx, zc[i]);
    }
    for (int j = tid + SEL_C * SEL_NT; j < ncand; j += SEL_NT) mx = fmaxf(mx, z[j]);
    mx = block_max(mx, red);
    float tau = -DA_INF;
    const bool soft = alpha <= 1.f;
    const float am1 = alpha - 1.f;
    if (mx > -DA_INF) {
        if (soft) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < SEL_C; ++i) s += __expf(zc[i] - mx);
            for (int j = tid + SEL_C * SEL_NT; j < ncand; j += SEL_NT) s += __expf(z[j] - mx);
            tau = mx + logf(block_sum(s, red));
        } else {
            // g(tau) = ||(s - tau)_+||_k - 1, s = (alpha-1) z, k = 1/(alpha-1): convex and
            // decreasing, so Newton from tau0 = max s - 1 (g >= 0) rises monotonically to the
            // root; one term converges in one step. M = sum x^k, S1 = sum x^(k-1),
            // N = M^(1/k): step (N - 1) M / (N S1).
            const float k = 1.f / am1;
            const int kind = am1 == 1.f ? 1 : (am1 == 0.5f ? 2 : 0);
            double tt = (double)am1 * mx - 1.0;
            for (int it = 0; it < 40; ++it) {
                const float tf = (float)tt;
                double M = 0.0, S1 = 0.0;
                auto acc = [&](float zv) {
                    float x = am1 * zv - tf;
                    if (x > 0.f) {
                        float xk1 = kind == 1 ? 1.f : (kind == 2 ? x : powf(x, k - 1.f));
                        M += (double)(xk1 * x);
                        S1 += (double)xk1;
                    }
                };
#pragma unroll
                for (int i = 0; i < SEL_C; ++i) acc(zc[i]);
                for (int j = tid + SEL_C * SEL_NT; j < ncand; j += SEL_NT) acc(z[j]);
                block_sum2(M, S1, redd, it & 1);
                if (!(M > 0.0) || !(S1 > 0.0)) break;
                const double N = pow(M, (double)am1);
                if (!(N > 1.0)) break;
                const double dt = (N - 1.0) * M / (N * S1);
                tt += dt;
                if (!(dt > 1e-7 * fmax(1.0, fabs(tt)))) break;
            }
            tau = (float)tt;
        }
    }
    // Compaction: thread tid owns j = tid + i * SEL_NT; positions by (tid, i) order
    // (deterministic; the attention does not need increasing j).
    auto selx = [&](float zv, float &beta) -> bool {
        if (soft) {
            beta = zv - tau;
            return zv > -DA_INF;
        }
        float x = am1 * zv - tau;
        beta = x > 0.f ? logf(x) / am1 : 0.f;
        return x > 0.f;
    };
    int cnt = 0;
    if (mx > -DA_INF) {
        float bt;
#pragma unroll
        for (int i = 0; i < SEL_C; ++i) cnt += selx(zc[i], bt) ? 1 : 0;
        for (int j = tid + SEL_C * SEL_NT; j < ncand; j += SEL_NT) cnt += selx(z[j], bt) ? 1 : 0;
    }
    // Exclusive scan of cnt over the block.
    const int lane = tid & 31, warp = tid >> 5;
    int incl = cnt;
    for (int o = 1; o < 32; o <<= 1) {
        int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) wcnt[warp] = incl;
    __syncthreads();
    int pos = incl - cnt, total = 0;
    for (int w = 0; w < SEL_NT / 32; ++w) {
        if (w < warp) pos += wcnt[w];
        total += wcnt[w];
    }
    if (cnt > 0) {
        int *si = p.sel_idx + ru * p.nbmax;
        float *sb = p.sel_beta + ru * p.nbmax;
        float bt;
#pragma unroll
        for (int i = 0; i < SEL_C; ++i) {
            int j = tid + i * SEL_NT;
            if (j < ncand && selx(zc[i], bt)) {
                si[pos] = j;
                sb[pos] = bt;
                ++pos;
            }
        }
        for (int j = tid + SEL_C * SEL_NT; j < ncand; j += SEL_NT) {
            if (selx(z[j], bt)) {
                si[pos] = j;
                sb[pos] = bt;
                ++pos;
            }
        }
    }
    if (tid == 0) {
        p.sel_n[ru] = total;
        p.tau[ru] = tau;
    }
}

// ---------------------------------------------------------------- v2 split-KV attention
// grid (N*units, splits, q_len), block 128. Work of a CTA: its share of the row's blocks
// (selected + local) in tiles of TK = min(B, 64) keys. K and V tiles go global -> smem by
// cp.async (16 bytes a thread, double buffered), stored with the 16-byte chunk index
// XOR (key & 7) so that the per-key score reads and the per-dimension P*V reads are free
// of bank conflicts. Scores: a thread per (head, key); online softmax: a warp per head;
// P*V: a thread per (head, pair of dimensions), accumulators in registers.
// Dynamic smem: K[2][64][D], V[2][64][D] (T), q[hpu][D], sc[hpu][64], m, l, scale[hpu]
// (floats), ok[2][64] (int).
#define ATT_NT 128
template <typename T, int D>
__device__ __forceinline__ void dec_attn(const DecParams &p) {
    constexpr int CPK = D / 8, TKM = 64, TPT = 16 * D / 2 / ATT_NT;
    extern __shared__ uint4 smv[];
    uint4 *Ks = smv, *Vs = smv + 2 * TKM * CPK;
    float *q = (float *)(Vs + 2 * TKM * CPK);
    const int s = blockIdx.y, r = blockIdx.z, tid = threadIdx.x;
    const int units = p.per_head ? p.hq : p.hkv;
    const int b = blockIdx.x / units, u = blockIdx.x % units;
    const int hpu = p.per_head ? 1 : p.group;
    float *sc = q + hpu * D, *mrun = sc + hpu * TKM, *lrun = mrun + hpu, *sfac = lrun + hpu;
    int *okm = (int *)(sfac + hpu);
    const int h0 = p.per_head ? u : u * p.group;
    const int hk = h0 / p.group, bs = p.bs;
    const i64 ru = ((i64)b * units + u) * p.q_len + r;
    for (int e = tid; e < hpu * D; e += ATT_NT) {
        int g = e / D, x = e % D;
        q[e] = to_f(((const T *)p.q)[b * p.sq_n + r * p.sq_l + (h0 + g) * p.sq_h + x]);
    }
    for (int g = tid; g < hpu; g += ATT_NT) {
        mrun[g] = -DA_INF;
        lrun[g] = 0.f;
    }
    const int len = seq_len(p, b);
    const i64 t = (i64)len - p.q_len + r;
    const i64 c = t >= 0 ? t / bs : -1;
    const int first_local = (int)max((i64)0, c - p.n_local + 1);
    const int nsel = t >= 0 ? p.sel_n[ru] : 0;
    const int total = t >= 0 ? nsel + (int)(c - first_local + 1) : 0;
    const int per = (total + p.splits - 1) / p.splits;
    const int m0 = min(total, s * per), m1 = min(total, (s + 1) * per);
    const int TK = bs < TKM ? bs : TKM, npb = bs / TK;
    const int tt0 = m0 * npb, tt1 = m1 * npb;
    const i64 tend = min((i64)len, t + 1);  // keys [0, tend) may be attended
    // Tile tt: block m = tt / npb (selected list, then local blocks), keys i0 .. i0+cnt-1.
    auto tile = [&](int tt, float &beta, i64 &i0, int &cnt) {
        int m = tt / npb, sub = tt % npb, j;
        if (m < nsel) {
            j = p.sel_idx[ru * p.nbmax + m];
            beta = p.sel_beta[ru * p.nbmax + m];
        } else {
            j = first_local + (m - nsel);
            beta = 0.f;
        }
        i0 = (i64)j * bs + sub * TK;
        cnt = (int)max((i64)0, min((i64)TK, tend - i0));
    };
    auto issue = [&](int tt, int stage) {
        float beta;
        i64 i0;
        int cnt;
        tile(tt, beta, i0, cnt);
        uint4 *kd = Ks + stage * TKM * CPK, *vd = Vs + stage * TKM * CPK;
        for (int e = tid; e < TK * CPK; e += ATT_NT) {
            int ii = e / CPK, col = e % CPK;
            const T *ks = (const T *)p.kc, *vs = (const T *)p.vc;
            bool ok = false;
            if (ii < cnt) {
                int pg = page_of(p, b, i0 + ii);
                if (pg >= 0) {
                    i64 slot = (i0 + ii) % p.ps;
                    ks += pg * p.sk.page + slot * p.sk.slot + hk * p.sk.head + col * 8;
                    vs += pg * p.sv.page + slot * p.sv.slot + hk * p.sv.head + col * 8;
                    ok = true;
                }
            }
            int so = ii * CPK + (col ^ (ii & 7));
            cp_async16(smem_u32(kd + so), ks, ok ? 16 : 0);
            cp_async16(smem_u32(vd + so), vs, ok ? 16 : 0);
            if (col == 0) okm[stage * TKM + ii] = ok;
        }
        cp_commit();
    };
    float2 acc[TPT];
#pragma unroll
    for (int i = 0; i < TPT; ++i) acc[i] = make_float2(0.f, 0.f);
    const int ntask = hpu * D / 2;
    __syncthreads();
    if (tt0 < tt1) issue(tt0, 0);
    for (int tt = tt0; tt < tt1; ++tt) {
        const int stage = (tt - tt0) & 1;
        if (tt + 1 < tt1) {
            issue(tt + 1, stage ^ 1);
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        float beta;
        i64 i0;
        int cnt;
        tile(tt, beta, i0, cnt);
        const uint4 *kt = Ks + stage * TKM * CPK, *vt = Vs + stage * TKM * CPK;
        const int *okt = okm + stage * TKM;
        // Scores.
        for (int e = tid; e < hpu * TK; e += ATT_NT) {
            int g = e / TK, ii = e % TK;
            float v = -DA_INF;
            if (ii < cnt && okt[ii]) {
                const float *qg = q + g * D;
                float dot = 0.f;
#pragma unroll
                for (int col = 0; col < CPK; ++col) {
                    float kf[8];
                    unpack8<T>(kt[ii * CPK + (col ^ (ii & 7))], kf);
                    float4 qa = *(const float4 *)(qg + col * 8), qb = *(const float4 *)(qg + col * 8 + 4);
                    dot = fmaf(qa.x, kf[0], dot);
                    dot = fmaf(qa.y, kf[1], dot);
                    dot = fmaf(qa.z, kf[2], dot);
                    dot = fmaf(qa.w, kf[3], dot);
                    dot = fmaf(qb.x, kf[4], dot);
                    dot = fmaf(qb.y, kf[5], dot);
                    dot = fmaf(qb.z, kf[6], dot);
                    dot = fmaf(qb.w, kf[7], dot);
                }
                v = p.sigma * dot + beta;
            }
            sc[g * TKM + ii] = v;
        }
        __syncthreads();
        // Online softmax: a warp per head.
        for (int g = tid >> 5; g < hpu; g += ATT_NT / 32) {
            const int lane = tid & 31;
            float bm = -DA_INF;
            for (int ii = lane; ii < TK; ii += 32) bm = fmaxf(bm, sc[g * TKM + ii]);
            bm = warp_max(bm);
            const float mold = mrun[g], mnew = fmaxf(mold, bm);
            float ls = 0.f;
            for (int ii = lane; ii < TK; ii += 32) {
                float pv = mnew == -DA_INF ? 0.f : __expf(sc[g * TKM + ii] - mnew);
                sc[g * TKM + ii] = pv;
                ls += pv;
            }
            ls = warp_sum(ls);
            __syncwarp();
            if (lane == 0) {
                float f = mold == -DA_INF ? 0.f : __expf(mold - mnew);
                lrun[g] = lrun[g] * f + ls;
                mrun[g] = mnew;
                sfac[g] = f;
            }
        }
        __syncthreads();
        // acc = acc * scale + P V.
#pragma unroll
        for (int i = 0; i < TPT; ++i) {
            const int e = tid + i * ATT_NT;
            if (e < ntask) {
                const int g = e / (D / 2), x2 = e % (D / 2), col = x2 >> 2, w = x2 & 3;
                const float f = sfac[g];
                float ax = acc[i].x * f, ay = acc[i].y * f;
                const float *pg = sc + g * TKM;
                const u32 *vw = (const u32 *)vt;
                for (int ii = 0; ii < cnt; ++ii) {
                    float lo, hi;
                    unpack2<T>(vw[(ii * CPK + (col ^ (ii & 7))) * 4 + w], lo, hi);
                    const float pv = pg[ii];
                    ax = fmaf(pv, lo, ax);
                    ay = fmaf(pv, hi, ay);
                }
                acc[i] = make_float2(ax, ay);
            }
        }
        __syncthreads();
    }
    // Partial result of this split: normalised o and lse.
#pragma unroll
    for (int i = 0; i < TPT; ++i) {
        const int e = tid + i * ATT_NT;
        if (e < ntask) {
            const int g = e / (D / 2), x2 = e % (D / 2), h = h0 + g;
            const float l = lrun[g], inv = l > 0.f ? 1.f / l : 0.f;
            float2 *op = (float2 *)(p.o_part + ((((i64)s * p.n + b) * p.q_len + r) * p.hq + h) * D) + x2;
            *op = make_float2(acc[i].x * inv, acc[i].y * inv);
        }
    }
    for (int g = tid; g < hpu; g += ATT_NT) {
        const float l = lrun[g];
        p.lse_part[(((i64)s * p.n + b) * p.hq + h0 + g) * p.q_len + r] = l > 0.f ? mrun[g] + logf(l) : -DA_INF;
    }
}

#define DASH_DEC_INSTANTIATE(T, NAME)                                                                 \
    extern "C" __global__ void dash_pool_paged_##NAME(DecParams p) { pool_paged<T>(p); }               \
    extern "C" __global__ void __launch_bounds__(256) dash_dec_coarse_##NAME(DecParams p) { dec_coarse<T>(p); } \
    extern "C" __global__ void dash_dec_attend_##NAME(DecParams p) { dec_attend<T>(p); } \
    extern "C" __global__ void dash_merge_f32_##NAME(MergeParams p) { merge<float, T>(p); }            \
    extern "C" __global__ void dash_merge_##NAME(MergeParams p) { merge<T, T>(p); }                   \
    extern "C" __global__ void __launch_bounds__(256, 1) dash_dec_score_d64_##NAME(DecParams p) { dec_score<T, 64, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) dash_dec_score_d64_r4_##NAME(DecParams p) { dec_score<T, 64, 4>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) dash_dec_score_d128_##NAME(DecParams p) { dec_score<T, 128, 1>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) dash_dec_score_d128_r4_##NAME(DecParams p) { dec_score<T, 128, 4>(p); } \
    extern "C" __global__ void __launch_bounds__(SEL_NT) dash_dec_select_##NAME(DecParams p) { dec_select<T>(p); } \
    extern "C" __global__ void __launch_bounds__(ATT_NT, 1) dash_dec_attn_d64_##NAME(DecParams p) { dec_attn<T, 64>(p); } \
    extern "C" __global__ void __launch_bounds__(ATT_NT, 1) dash_dec_attn_d128_##NAME(DecParams p) { dec_attn<T, 128>(p); }

DASH_DEC_INSTANTIATE(f16_t, f16)
DASH_DEC_INSTANTIATE(bf16_t, bf16)
