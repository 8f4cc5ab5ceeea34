// Loader microbenchmark for the decode attention's K/V gather (issue 5): how fast can a
// persistent grid read scattered 64-token tiles of one KV head from a paged cache
// [pages][64 slots][Hkv][D] (bf16), the access pattern of the split-KV attention, with
//   ldgsts : cp.async 16 B a thread (the current loader), S stages;
//   bulk   : cp.async.bulk, one 256-byte row per copy, on an mbarrier, S stages;
//   tma    : cp.async.bulk.tensor.4d (box 64 x 1 x 64 x 1, 128B swizzle), S stages;
// and two work distributions: items of `per` tiles taken round-robin with the pipeline
// drained between items (the current kernel), or the CTA's tiles as one continuous
// pipeline (cross = 1). The consumer is a light smem read (the point is the loads).
// Build: nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a gather_bw.cu -o gather_bw
// (static cudart; the driver entry point is fetched at run time, no -lcuda).
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <random>
#include <algorithm>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)

constexpr int D = 128, HKV = 8, PS = 64, TK = 64;
constexpr int ROWB = D * 2;           // bytes of one K row of one head
constexpr int TILEB = TK * ROWB;      // 16 KB (K) per tile, same for V
constexpr int NT = 128;

struct Args {
    const uint16_t *k, *v;
    const int2 *tiles;  // (hk, page)
    int ntiles, per, cross;
    float *out;
    long long pstr, hstr, rstr;  // elements: page, head, row (slot) strides
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp16(uint32_t d, const void *s) { asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(s)); }
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void waitg() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
__device__ __forceinline__ void mb_init(uint64_t *b, int c) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(c)); }
__device__ __forceinline__ void mb_expect(uint64_t *b, int tx) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(tx) : "memory");
}
__device__ __forceinline__ void mb_wait(uint64_t *b, int par) {
    asm volatile(
        "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}\n" ::"r"(smem_u32(b)), "r"(par)
        : "memory");
}
__device__ __forceinline__ void bulk(uint32_t d, const void *s, int n, uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(d), "l"(s), "r"(n), "r"(smem_u32(b))
                 : "memory");
}
__device__ __forceinline__ void tma4(uint32_t d, const CUtensorMap *m, int c0, int c1, int c2, int c3, uint64_t *b) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(d),
                 "l"(m), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(b))
                 : "memory");
}

// This CTA's tiles: items blockIdx.x, + gridDim.x, ... of `per` tiles each; idx-th tile's
// global index (false past the list), and how many there are.
__device__ __forceinline__ bool tile_of(const Args &a, int idx, int &g) {
    const int nit = (a.ntiles + a.per - 1) / a.per;
    const int it = blockIdx.x + (idx / a.per) * gridDim.x;
    if (it >= nit) return false;
    g = it * a.per + idx % a.per;
    return g < a.ntiles;
}
__device__ __forceinline__ int cta_tiles(const Args &a) {
    const int nit = (a.ntiles + a.per - 1) / a.per;
    int n = 0;
    for (int it = blockIdx.x; it < nit; it += gridDim.x) n += min(a.per, a.ntiles - it * a.per);
    return n;
}
// The light consumer: reads a stage's K and V tiles (2 x TK rows of 16 chunks) from smem.
__device__ __forceinline__ void consume(const uint8_t *stage, float &acc) {
    const uint4 *kd = (const uint4 *)stage;
#pragma unroll 4
    for (int e = threadIdx.x; e < 2 * TK * 16; e += NT) {
        uint4 x = kd[e];
        acc += __uint_as_float(x.x & 0x3fffffff) * 1e-30f + __uint_as_float(x.w & 0x3fffffff) * 1e-30f;
    }
}

template <int S>
__global__ void __launch_bounds__(NT) k_ldgsts(Args a) {
    extern __shared__ __align__(1024) uint8_t sm[];
    float acc = 0.f;
    auto issue = [&](int g, int st) {
        int2 t = a.tiles[g];
        const uint16_t *kb = a.k + t.y * a.pstr + t.x * a.hstr, *vb = a.v + t.y * a.pstr + t.x * a.hstr;
        uint8_t *kd = sm + st * 2 * TILEB, *vd = kd + TILEB;
#pragma unroll
        for (int e = threadIdx.x; e < TK * 16; e += NT) {
            int r = e / 16, c = e % 16;
            int so = r * ROWB + ((c ^ (r & 7)) * 16);
            cp16(smem_u32(kd + so), kb + r * a.rstr + c * 8);
            cp16(smem_u32(vd + so), vb + r * a.rstr + c * 8);
        }
    };
    const int ntot = cta_tiles(a);
    int i = 0;
    while (i < ntot) {
        // segment: the whole list (cross) or one item
        int seg_end = a.cross ? ntot : min(ntot, (i / a.per + 1) * a.per);
        int g;
        for (int s = 0; s < S - 1; ++s) {
            if (i + s < seg_end && tile_of(a, i + s, g)) issue(g, (i + s) % S);
            commit();
        }
        for (; i < seg_end; ++i) {
            if (i + S - 1 < seg_end && tile_of(a, i + S - 1, g)) issue(g, (i + S - 1) % S);
            commit();
            waitg<S - 1>();
            __syncthreads();
            consume(sm + (i % S) * 2 * TILEB, acc);
            __syncthreads();
        }
        waitg<0>();
    }
    if (acc == 12345.f) a.out[blockIdx.x] = acc;
}

// bulk (MODE 0: 1-D row copies, padded rows) or tma (MODE 1: tensor copies, 128B swizzle).
template <int S, int MODE>
__global__ void __launch_bounds__(NT) k_async(Args a, const __grid_constant__ CUtensorMap mk, const __grid_constant__ CUtensorMap mv) {
    extern __shared__ __align__(1024) uint8_t smraw[];
    uint8_t *sm = (uint8_t *)(((uintptr_t)smraw + 1023) & ~(uintptr_t)1023);
    constexpr int RB = MODE == 0 ? ROWB + 16 : ROWB;  // padded row stride for bulk
    constexpr int SB = 2 * TK * RB;                  // stage bytes
    __shared__ uint64_t full[S];
    if (threadIdx.x == 0)
        for (int s = 0; s < S; ++s) mb_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    __syncthreads();
    float acc = 0.f;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    auto issue = [&](int g, int st) {  // warp 0
        int2 t = a.tiles[g];
        uint8_t *kd = sm + st * SB, *vd = kd + TK * RB;
        if (lane == 0) mb_expect(&full[st], 2 * TILEB);
        __syncwarp();
        if (MODE == 0) {
            const uint16_t *kb = a.k + t.y * a.pstr + t.x * a.hstr, *vb = a.v + t.y * a.pstr + t.x * a.hstr;
            if (a.rstr == D) {  // HND: the tile is contiguous
                if (lane == 0) {
                    bulk(smem_u32(kd), kb, TILEB, &full[st]);
                    bulk(smem_u32(vd), vb, TILEB, &full[st]);
                }
            } else {
                for (int r = lane; r < TK; r += 32) {
                    bulk(smem_u32(kd + r * RB), kb + r * a.rstr, ROWB, &full[st]);
                    bulk(smem_u32(vd + r * RB), vb + r * a.rstr, ROWB, &full[st]);
                }
            }
        } else if (lane == 0) {
            // box {64 d, 1 head, 64 slots, 1 page}: 8 KB, two halves of D each for K and V
            // NHD map dims {d, head, slot, page}; HND map dims {d, slot, head, page}
            const int c1 = a.rstr == D ? 0 : t.x, c2 = a.rstr == D ? t.x : 0;
            tma4(smem_u32(kd), &mk, 0, c1, c2, t.y, &full[st]);
            tma4(smem_u32(kd + TILEB / 2), &mk, 64, c1, c2, t.y, &full[st]);
            tma4(smem_u32(vd), &mv, 0, c1, c2, t.y, &full[st]);
            tma4(smem_u32(vd + TILEB / 2), &mv, 64, c1, c2, t.y, &full[st]);
        }
    };
    const int ntot = cta_tiles(a);
    int i = 0;
    while (i < ntot) {
        int seg_end = a.cross ? ntot : min(ntot, (i / a.per + 1) * a.per);
        int g;
        if (warp == 0)
            for (int s = 0; s < S - 1; ++s)
                if (i + s < seg_end && tile_of(a, i + s, g)) issue(g, (i + s) % S);
        for (; i < seg_end; ++i) {
            if (warp == 0 && i + S - 1 < seg_end && tile_of(a, i + S - 1, g)) issue(g, (i + S - 1) % S);
            const int st = i % S;
            mb_wait(&full[st], (i / S) & 1);
            consume(sm + st * SB, acc);
            __syncthreads();
        }
    }
    if (acc == 12345.f) a.out[blockIdx.x] = acc;
}

typedef CUresult (*EncodeFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                             const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

int main(int argc, char **argv) {
    int dev = 0;
    CK(cudaSetDevice(dev));
    cudaDeviceProp pr;
    CK(cudaGetDeviceProperties(&pr, dev));
    const int sms = pr.multiProcessorCount;
    printf("device %s, %d SMs, L2 %d MB\n", pr.name, sms, pr.l2CacheSize >> 20);
    const size_t P = 32768;  // pages: 2M tokens, K and V 4.3 GB each
    const size_t elems = P * PS * HKV * D;
    uint16_t *k, *v;
    CK(cudaMalloc(&k, elems * 2));
    CK(cudaMalloc(&v, elems * 2));
    CK(cudaMemset(k, 0x3c, elems * 2));
    CK(cudaMemset(v, 0x3c, elems * 2));
    float *out;
    CK(cudaMalloc(&out, 4096 * 4));
    // copy bandwidth
    {
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        size_t nb = (size_t)1 << 31;
        CK(cudaMemcpy(v, k, nb, cudaMemcpyDeviceToDevice));
        cudaEventRecord(e0);
        for (int r = 0; r < 5; ++r) CK(cudaMemcpy(v, k, nb, cudaMemcpyDeviceToDevice));
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        printf("copy: %.0f GB/s (read + write)\n", 5.0 * 2 * nb / (ms * 1e-3) / 1e9);
    }
    EncodeFn enc = nullptr;
    cudaDriverEntryPointQueryResult qr;
    CK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", (void **)&enc, cudaEnableDefault, &qr));
    CUtensorMap maps[2][2];  // [layout NHD, HND][k, v]
    for (int lay = 0; lay < 2; ++lay) {
        // NHD: {d, head (stride D), slot (stride HKV*D), page}; HND: {d, slot (stride D), head (stride PS*D), page}
        cuuint64_t dims[4] = {(cuuint64_t)D, (cuuint64_t)(lay ? PS : HKV), (cuuint64_t)(lay ? HKV : PS), (cuuint64_t)P};
        cuuint64_t str3[3] = {(cuuint64_t)D * 2, (cuuint64_t)(lay ? PS : HKV) * D * 2, (cuuint64_t)PS * HKV * D * 2};
        cuuint32_t box[4] = {64, lay ? 64u : 1u, lay ? 1u : 64u, 1}, es[4] = {1, 1, 1, 1};
        for (int w = 0; w < 2; ++w) {
            CUresult r = enc(&maps[lay][w], CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, w ? (void *)v : (void *)k, dims, str3, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
            if (r != CUDA_SUCCESS) {
                printf("encode failed %d\n", (int)r);
                return 1;
            }
        }
    }
    // cases: tiles per (sequence, KV head) row x rows; 16 distinct random sets rotate
    struct Case { const char *name; int rows, per_row; };
    std::vector<Case> cases = {{"b1 99.6%", 8, 8}, {"b1 95.9%", 8, 85}, {"b1 87.6%", 8, 254}, {"b1 75%", 8, 512}, {"b8 96%", 64, 85}, {"b64 96%", 512, 85}};
    const int NSET = 16;
    std::mt19937 rng(1234);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    struct Cfg { const char *name; int mode, S, cps, cross; };
    std::vector<Cfg> cfgs = {{"ldgsts S2 3/SM items", 0, 2, 3, 0}, {"ldgsts S2 3/SM flat", 0, 2, 3, 1}, {"ldgsts S3 2/SM flat", 0, 3, 2, 1},
                             {"ldgsts S4 1/SM flat", 0, 4, 1, 1},  {"ldgsts S6 1/SM flat", 0, 6, 1, 1}, {"bulk S2 3/SM flat", 1, 2, 3, 1},
                             {"bulk S3 2/SM flat", 1, 3, 2, 1},    {"bulk S6 1/SM flat", 1, 6, 1, 1},   {"tma S2 3/SM flat", 2, 2, 3, 1},
                             {"tma S3 2/SM flat", 2, 3, 2, 1},     {"tma S6 1/SM flat", 2, 6, 1, 1},    {"tma S3 2/SM items", 2, 3, 2, 0}};
    for (int lay = 0; lay < 2; ++lay)
    for (auto &c : cases) {
        const CUtensorMap &mk = maps[lay][0], &mv = maps[lay][1];
        const long long pstr = (long long)PS * HKV * D, hstr = lay ? (long long)PS * D : D, rstr = lay ? D : (long long)HKV * D;
        if (lay && c.rows > 64) continue;
        const int T = c.rows * c.per_row;
        std::vector<int2 *> sets;
        for (int s = 0; s < NSET; ++s) {
            std::vector<int2> h(T);
            for (int r = 0; r < c.rows; ++r) {
                int hk = r % HKV;
                for (int j = 0; j < c.per_row; ++j) h[r * c.per_row + j] = make_int2(hk, (int)(rng() % P));
            }
            int2 *d;
            CK(cudaMalloc(&d, T * sizeof(int2)));
            CK(cudaMemcpy(d, h.data(), T * sizeof(int2), cudaMemcpyHostToDevice));
            sets.push_back(d);
        }
        const double bytes = (double)T * 2 * TILEB;
        printf("\n%s %s: %d tiles, %.1f MB\n", lay ? "HND" : "NHD", c.name, T, bytes / 1e6);
        for (auto &f : cfgs) {
            const int grid_max = f.cps * sms;
            int per, grid;
            if (f.cross) {  // contiguous equal shares... via items of per tiles round-robin
                per = 1;
                grid = std::min(grid_max, T);
            } else {  // the current kernel: per = max(1, ceil(per_row / 64)) items
                per = std::max(1, (c.per_row + 63) / 64);
                grid = std::min(grid_max, (T + per - 1) / per);
            }
            Args a{k, v, nullptr, T, per, f.cross, out, pstr, hstr, rstr};
            auto launch = [&](int s) {
                a.tiles = sets[s];
                if (f.mode == 0) {
                    size_t smb = (size_t)f.S * 2 * TILEB;
                    if (f.S == 2) { cudaFuncSetAttribute(k_ldgsts<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, smb); k_ldgsts<2><<<grid, NT, smb>>>(a); }
                    if (f.S == 3) { cudaFuncSetAttribute(k_ldgsts<3>, cudaFuncAttributeMaxDynamicSharedMemorySize, smb); k_ldgsts<3><<<grid, NT, smb>>>(a); }
                    if (f.S == 4) { cudaFuncSetAttribute(k_ldgsts<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, smb); k_ldgsts<4><<<grid, NT, smb>>>(a); }
                    if (f.S == 6) { cudaFuncSetAttribute(k_ldgsts<6>, cudaFuncAttributeMaxDynamicSharedMemorySize, smb); k_ldgsts<6><<<grid, NT, smb>>>(a); }
                } else {
                    int RB = f.mode == 1 ? ROWB + 16 : ROWB;
                    size_t smb = (size_t)f.S * 2 * TK * RB + 1024;
#define L(SS, MM) if (f.S == SS && f.mode == MM + 1) { cudaFuncSetAttribute(k_async<SS, MM>, cudaFuncAttributeMaxDynamicSharedMemorySize, smb); k_async<SS, MM><<<grid, NT, smb>>>(a, mk, mv); }
                    L(2, 0) L(3, 0) L(6, 0) L(2, 1) L(3, 1) L(6, 1)
#undef L
                }
            };
            for (int s = 0; s < NSET; ++s) launch(s);
            CK(cudaDeviceSynchronize());
            CK(cudaGetLastError());
            const int REPS = 20;
            // back-to-back launches (a graph of NSET launches would hide launch gaps equally)
            cudaGraph_t gr;
            cudaGraphExec_t ge;
            cudaStream_t st;
            cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
            // plain stream launches in capture: use the legacy stream replaced by st
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int s = 0; s < NSET; ++s) {
                a.tiles = sets[s];
                if (f.mode == 0) {
                    size_t smb = (size_t)f.S * 2 * TILEB;
                    if (f.S == 2) k_ldgsts<2><<<grid, NT, smb, st>>>(a);
                    if (f.S == 3) k_ldgsts<3><<<grid, NT, smb, st>>>(a);
                    if (f.S == 4) k_ldgsts<4><<<grid, NT, smb, st>>>(a);
                    if (f.S == 6) k_ldgsts<6><<<grid, NT, smb, st>>>(a);
                } else {
                    int RB = f.mode == 1 ? ROWB + 16 : ROWB;
                    size_t smb = (size_t)f.S * 2 * TK * RB + 1024;
#define L(SS, MM) if (f.S == SS && f.mode == MM + 1) k_async<SS, MM><<<grid, NT, smb, st>>>(a, mk, mv);
                    L(2, 0) L(3, 0) L(6, 0) L(2, 1) L(3, 1) L(6, 1)
#undef L
                }
            }
            CK(cudaStreamEndCapture(st, &gr));
            CK(cudaGraphInstantiate(&ge, gr, 0));
            CK(cudaGraphLaunch(ge, st));
            CK(cudaStreamSynchronize(st));
            cudaEventRecord(e0, st);
            for (int r = 0; r < REPS; ++r) CK(cudaGraphLaunch(ge, st));
            cudaEventRecord(e1, st);
            CK(cudaEventSynchronize(e1));
            CK(cudaGetLastError());
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            double us = ms * 1e3 / (REPS * NSET);
            printf("  %-24s grid %4d per %3d: %8.2f us  %6.0f GB/s\n", f.name, grid, per, us, bytes / (us * 1e-6) / 1e9);
            cudaGraphExecDestroy(ge);
            cudaGraphDestroy(gr);
            cudaStreamDestroy(st);
        }
        for (auto d : sets) cudaFree(d);
    }
    return 0;
}
