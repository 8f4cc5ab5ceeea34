// Shared device helpers of kernels/forward.cu and kernels/backward.cu: 16-bit storage
// conversions, cp.async, ldmatrix, mma.sync m16n8k16 (bf16 / f16, fp32 accumulate), fast
// approximations and warp reductions. No CUDA headers: nvcc includes this file; build.rs
// inlines it into the sources it embeds for NVRTC, so each module still compiles standalone.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define DA_NEG_INF (__int_as_float(0xff800000))
#define DA_POS_INF (__int_as_float(0x7f800000))
#define DA_LOG2E 1.4426950408889634f
#define DA_LN2 0.6931471805599453f


__device__ __forceinline__ float bf16_to_f32(u16 x) { return __uint_as_float(((u32)x) << 16); }
__device__ __forceinline__ float f16_to_f32(u16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
template <bool BF16> __device__ __forceinline__ float to_f32(u16 x) { return BF16 ? bf16_to_f32(x) : f16_to_f32(x); }

// Packs (lo, hi) into one 32-bit register: lo in bits 0..15.
template <bool BF16> __device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <bool BF16> __device__ __forceinline__ float lo_f32(u32 x) { return to_f32<BF16>((u16)(x & 0xffffu)); }
template <bool BF16> __device__ __forceinline__ float hi_f32(u32 x) { return to_f32<BF16>((u16)(x >> 16)); }

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <bool BF16> __device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    if (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// 16 bytes (8 elements) global -> shared. Rows that are not 16-byte aligned (arbitrary
// element strides) take the synchronous 2-byte path; src_valid = false zero-fills.
__device__ __forceinline__ void load16(u16* dst, const u16* src, bool valid, bool aligned) {
    if (aligned) {
        cp_async16(smem_u32(dst), src, valid ? 16 : 0);  // src is always a valid address
    } else {
        u32 w[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 lo = valid ? (u32)src[2 * i] : 0u;
            u32 hi = valid ? (u32)src[2 * i + 1] : 0u;
            w[i] = lo | (hi << 16);
        }
        *(uint4*)dst = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// 1 / x (rcp.approx.ftz: ~1 ulp; no IEEE slow-path call)
__device__ __forceinline__ float frcp(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 2^x (ex2.approx.ftz: ~2 ulp, 2^-inf = 0), for the softmax
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// a / b for small non-negative ints (a < 2^20, b <= 2^10) without the integer-division call:
// (a + 0.5) / b lies at least 1 / (2b) away from an integer, far above the float error.
__device__ __forceinline__ int small_div(int a, int b) { return (int)(((float)a + 0.5f) * frcp((float)b)); }

__device__ __forceinline__ int floor_div(int a, int b) {
    int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// element offset of 16-byte chunk `chunk` of row `row` in a D-wide bf16/f16 tile (XOR
// swizzle: conflict-free ldmatrix)
template <int D> __device__ __forceinline__ int swz(int row, int chunk) { return row * D + ((chunk ^ (row & 7)) << 3); }
