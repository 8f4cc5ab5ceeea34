// DashAttention decode over a paged KV cache (SPEC 5), CUDA. Correctness-first ("v1").
// Fixed grids (graph capturable: sequence lengths and page tables are read on the device).
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

#define DASH_DEC_INSTANTIATE(T, NAME)                                                                 \
    extern "C" __global__ void dash_pool_paged_##NAME(DecParams p) { pool_paged<T>(p); }               \
    extern "C" __global__ void __launch_bounds__(256) dash_dec_coarse_##NAME(DecParams p) { dec_coarse<T>(p); } \
    extern "C" __global__ void dash_dec_attend_##NAME(DecParams p) { dec_attend<T>(p); } \
    extern "C" __global__ void dash_merge_f32_##NAME(MergeParams p) { merge<float, T>(p); }            \
    extern "C" __global__ void dash_merge_##NAME(MergeParams p) { merge<T, T>(p); }

DASH_DEC_INSTANTIATE(f16_t, f16)
DASH_DEC_INSTANTIATE(bf16_t, bf16)
