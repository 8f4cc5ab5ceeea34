/* engine.c: a small llama.cpp-shaped inference loop over dashattn's C API.
 *
 * The program owns what an inference engine owns:
 *   - a paged KV cache, K and V [num_pages, page_size, Hkv, D] (f32, or f16 kept as uint16_t
 *     with manual conversion), whose pages are handed out to sequences in shuffled order;
 *   - a pooled-key cache [num_pages, max(1, page_size / B), Hkv, D] sharing the page table;
 *   - a block table [N, max_pages] (int32) and the sequence lengths.
 *
 * It runs a prefill of every prompt (dashattn_forward on the contiguous prompt, then the
 * prompt's K/V are copied into the pages and dashattn_pool_keys_paged pools the complete
 * blocks, prev_seq_lens = 0), then a loop of batched decode steps: append the new token's
 * K/V, dashattn_pool_keys_paged with prev = len - 1, dashattn_decode for all sequences (of
 * different lengths) at once.
 *
 * CPU or GPU: when the context comes up on the CUDA backend, the library takes device
 * pointers. The program then loads the CUDA driver API at run time (dlopen of libcuda.so.1:
 * no link-time CUDA dependency, no CUDA headers), keeps its host caches as the place where
 * the "model" writes K/V rows, and mirrors them in device memory: after each append only the
 * new rows, q and the changed lengths are copied to the device, pooling and decode run on
 * device pointers, and o comes back. The CUDA kernels take f16/bf16 only, so the GPU path
 * always uses the f16 storage of --f16. Without CUDA (or without libcuda.so.1) everything
 * stays in host memory on the CPU backend.
 *
 * It prints tokens/s, and the fraction of candidate blocks the entmax stage selected. That
 * fraction is derived outside the timed region, in C, from the pooled-key cache (on the GPU
 * path, the newly pooled keys are copied back for it, untimed): the coarse score
 * z_j = sigma_c * mean_g <q_g, kbar_j> and the alpha-entmax threshold tau (solved here
 * by bisection) give Sel = { j : (alpha - 1) z_j > tau }. On the checked steps the
 * library's own tau (from a dashattn_forward with the tau output) is used as well and the
 * two selections are compared.
 *
 * Check: on the checked steps, every sequence's decode output is compared with
 * dashattn_forward on the same keys laid out contiguously (gathered back from the host pages).
 * The forward always runs on the CPU backend (a second context on the GPU path); with f16 it
 * gets pooled_k = the cache's pooled keys (on the GPU path copied back from the device).
 * The program exits with status 1 when the max abs difference exceeds 1e-4 (f32) or
 * 2e-3 (f16), or when anything is NaN.
 *
 * The K/V/Q data are synthetic: keys carry a per-block "topic" vector so that blocks differ
 * and entmax has something to select; queries lean towards the topic of one earlier block.
 */
#define _POSIX_C_SOURCE 200112L

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dashattn.h"

/* ------------------------------------------------------------------------------------ */
/* Options                                                                              */

typedef struct {
    int n_seq;        /* sequences in the batch */
    int hq, hkv, d;   /* heads and head dimension */
    int block;        /* coarse block size B */
    int page;         /* page size (tokens) */
    int prompt;       /* prompt length of sequence 0; sequence b gets prompt + b * stagger */
    int stagger;
    int steps;        /* decode steps */
    int f16;          /* store K/V/Q in f16 */
    int threads;      /* CPU threads (0 = all) */
    int backend;      /* DASHATTN_BACKEND_* */
    int n_local;
    int check_every;  /* verify every k-th step (and the last); 0 = last step only */
    float alpha;
    unsigned long seed;
} opts_t;

static void usage(const char *argv0) {
    printf("usage: %s [options]\n"
           "  --seqs N        sequences in the batch (default 4)\n"
           "  --hq N          query heads (default 8)\n"
           "  --hkv N         key/value heads (default 2)\n"
           "  --d N           head dimension (default 64)\n"
           "  --block N       coarse block size B: 16, 32, 64, 128 (default 64)\n"
           "  --page N        KV page size in tokens (default 32; a multiple or divisor of B)\n"
           "  --prompt N      prompt length of sequence 0 (default 1024)\n"
           "  --stagger N     sequence b's prompt is prompt + b * stagger (default 61)\n"
           "  --steps N       decode steps (default 256)\n"
           "  --alpha X       entmax alpha in [1, 2] (default 1.5)\n"
           "  --n-local N     local blocks (default 1)\n"
           "  --f16           keep Q/K/V and the caches in f16 (default f32; always on with CUDA)\n"
           "  --threads N     CPU worker threads, 0 = all cores (default 0)\n"
           "  --backend B     auto | cpu | cuda (default auto: CUDA when a driver and device exist)\n"
           "  --check-every N also verify every N-th decode step (default 0: last step only)\n"
           "  --seed N        RNG seed (default 1)\n",
           argv0);
}

static int parse_int(const char *s, int *out) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < -2147483647L || v > 2147483647L) return 0;
    *out = (int)v;
    return 1;
}

static int parse_opts(int argc, char **argv, opts_t *o) {
    int i;
    o->n_seq = 4; o->hq = 8; o->hkv = 2; o->d = 64; o->block = 64; o->page = 32;
    o->prompt = 1024; o->stagger = 61; o->steps = 256; o->f16 = 0; o->threads = 0;
    o->backend = DASHATTN_BACKEND_AUTO; o->n_local = 1; o->check_every = 0;
    o->alpha = 1.5f; o->seed = 1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
        int *target = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(argv[0]); exit(0); }
        if (!strcmp(a, "--f16")) { o->f16 = 1; continue; }
        if (!strcmp(a, "--seqs")) target = &o->n_seq;
        else if (!strcmp(a, "--hq")) target = &o->hq;
        else if (!strcmp(a, "--hkv")) target = &o->hkv;
        else if (!strcmp(a, "--d")) target = &o->d;
        else if (!strcmp(a, "--block")) target = &o->block;
        else if (!strcmp(a, "--page")) target = &o->page;
        else if (!strcmp(a, "--prompt")) target = &o->prompt;
        else if (!strcmp(a, "--stagger")) target = &o->stagger;
        else if (!strcmp(a, "--steps")) target = &o->steps;
        else if (!strcmp(a, "--threads")) target = &o->threads;
        else if (!strcmp(a, "--n-local")) target = &o->n_local;
        else if (!strcmp(a, "--check-every")) target = &o->check_every;
        if (target) {
            if (!v || !parse_int(v, target)) { fprintf(stderr, "bad value for %s\n", a); return 0; }
            i++;
            continue;
        }
        if (!strcmp(a, "--alpha") && v) { o->alpha = (float)atof(v); i++; continue; }
        if (!strcmp(a, "--seed") && v) { o->seed = strtoul(v, NULL, 10); i++; continue; }
        if (!strcmp(a, "--backend") && v) {
            if (!strcmp(v, "auto")) o->backend = DASHATTN_BACKEND_AUTO;
            else if (!strcmp(v, "cpu")) o->backend = DASHATTN_BACKEND_CPU;
            else if (!strcmp(v, "cuda")) o->backend = DASHATTN_BACKEND_CUDA;
            else { fprintf(stderr, "bad backend %s\n", v); return 0; }
            i++;
            continue;
        }
        fprintf(stderr, "unknown option %s (try --help)\n", a);
        return 0;
    }
    if (o->n_seq < 1 || o->hq < 1 || o->hkv < 1 || o->hq % o->hkv || o->d < 1 || o->page < 1 ||
        o->prompt < 1 || o->stagger < 0 || o->steps < 1 || o->n_local < 1 || o->check_every < 0) {
        fprintf(stderr, "invalid sizes (need seqs, hq, hkv, d, page, prompt, steps, n-local >= 1 "
                        "and hq a multiple of hkv)\n");
        return 0;
    }
    /* Block size, page compatibility, alpha and D limits are left to the library to
     * validate (its error message is printed if they are wrong), except for the CUDA
     * kernels' D and B, checked once the backend is known (cuda_supports). */
    return 1;
}

/* ------------------------------------------------------------------------------------ */
/* Small utilities                                                                      */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory (%zu bytes)\n", n); exit(2); }
    return p;
}

static void *xcalloc(size_t n, size_t s) {
    void *p = calloc(n ? n : 1, s ? s : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

/* splitmix64 / xorshift-style deterministic RNG. */
static uint64_t rng_state;
static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(void) { return (double)(rng_u64() >> 11) * (1.0 / 9007199254740992.0); }
static float rng_normal(void) {
    double u = rng_uniform(), v = rng_uniform();
    if (u < 1e-300) u = 1e-300;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* IEEE half <-> float, round to nearest even. */
static uint16_t f32_to_f16(float f) {
    uint32_t x, sign, exp, man, h, rem;
    int e;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    exp = (x >> 23) & 0xffu;
    man = x & 0x7fffffu;
    if (exp == 0xffu) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0u));
    e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        int shift;
        uint32_t mid;
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        shift = 14 - e;
        h = man >> shift;
        rem = man & ((1u << shift) - 1u);
        mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    h = sign | ((uint32_t)e << 10) | (man >> 13);
    rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry rounds into the exponent */
    return (uint16_t)h;
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16, exp = ((uint32_t)h >> 10) & 0x1fu,
             man = (uint32_t)h & 0x3ffu, x;
    float f;
    if (exp == 0) {
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) x = sign | 0x7f800000u | (man << 13);
    else x = sign | ((exp + 112u) << 23) | (man << 13);
    memcpy(&f, &x, 4);
    return f;
}

/* Element access for buffers in the storage dtype (f32 or f16). */
static int g_f16;
static size_t esize(void) { return g_f16 ? 2 : 4; }
static void st(void *buf, size_t i, float v) {
    if (g_f16) ((uint16_t *)buf)[i] = f32_to_f16(v);
    else ((float *)buf)[i] = v;
}
static float ld(const void *buf, size_t i) {
    return g_f16 ? f16_to_f32(((const uint16_t *)buf)[i]) : ((const float *)buf)[i];
}
static int32_t storage_dtype(void) { return g_f16 ? DASHATTN_DTYPE_F16 : DASHATTN_DTYPE_F32; }

/* A contiguous row-major descriptor. */
static dashattn_tensor tensor(void *data, int32_t dtype, int rank, const int64_t *shape) {
    dashattn_tensor t;
    int i;
    int64_t s = 1;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = rank;
    for (i = rank - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.strides[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
    return t;
}
static dashattn_tensor tensor4(void *data, int32_t dtype, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t s[4];
    s[0] = a; s[1] = b; s[2] = c; s[3] = d;
    return tensor(data, dtype, 4, s);
}
static dashattn_tensor tensor3(void *data, int32_t dtype, int64_t a, int64_t b, int64_t c) {
    int64_t s[3];
    s[0] = a; s[1] = b; s[2] = c;
    return tensor(data, dtype, 3, s);
}
static dashattn_tensor tensor2(void *data, int32_t dtype, int64_t a, int64_t b) {
    int64_t s[2];
    s[0] = a; s[1] = b;
    return tensor(data, dtype, 2, s);
}
static dashattn_tensor tensor1(void *data, int32_t dtype, int64_t a) { return tensor(data, dtype, 1, &a); }

static void check(dashattn_status st_, const char *what) {
    char msg[512];
    if (st_ == DASHATTN_SUCCESS) return;
    dashattn_last_error_message(msg, sizeof msg);
    fprintf(stderr, "%s failed: %s (%d): %s\n", what, dashattn_status_string(st_), (int)st_, msg);
    exit(1);
}

/* alpha-entmax threshold of scores z (n > 0), by bisection on the mass:
 * sum_j [(alpha-1) z_j - tau]_+^(1/(alpha-1)) = 1. alpha = 1: logsumexp. */
static double entmax_tau(const double *z, int n, double alpha) {
    double mx = z[0], lo, hi;
    int i, it;
    for (i = 1; i < n; i++) if (z[i] > mx) mx = z[i];
    if (alpha <= 1.0) {
        double s = 0.0;
        for (i = 0; i < n; i++) s += exp(z[i] - mx);
        return mx + log(s);
    }
    mx *= alpha - 1.0;
    lo = mx - 1.0;
    hi = mx - pow((double)n, 1.0 - alpha);
    for (it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi), mass = 0.0;
        if (!(mid > lo && mid < hi)) break;
        for (i = 0; i < n; i++) {
            double x = (alpha - 1.0) * z[i] - mid;
            if (x > 0.0) mass += pow(x, 1.0 / (alpha - 1.0));
        }
        if (mass >= 1.0) lo = mid; else hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* ------------------------------------------------------------------------------------ */
/* CUDA driver API, loaded at run time                                                  */
/*
 * With the CUDA backend, tensor data handed to the library must be device memory. The
 * program allocates and copies it through the CUDA driver API, loaded with dlopen so that it
 * neither links against CUDA nor needs its headers: the few types and entry points used are
 * declared here as cuda.h declares them (64-bit platforms). The library binds the device's
 * primary context for its own calls; the program makes the same context current for its
 * allocations and copies.                                                               */

typedef int CUresult; /* CUDA_SUCCESS = 0 */
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef unsigned long long CUdeviceptr;

static struct {
    void *lib;
    CUdevice dev;
    CUcontext ctx;
    CUresult (*Init)(unsigned int flags);
    CUresult (*DeviceGet)(CUdevice *dev, int ordinal);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
    CUresult (*DevicePrimaryCtxRelease)(CUdevice dev);
    CUresult (*CtxPushCurrent)(CUcontext ctx);
    CUresult (*CtxPopCurrent)(CUcontext *ctx);
    CUresult (*CtxSynchronize)(void);
    CUresult (*MemAlloc)(CUdeviceptr *dptr, size_t bytes);
    CUresult (*MemFree)(CUdeviceptr dptr);
    CUresult (*MemcpyHtoD)(CUdeviceptr dst, const void *src, size_t bytes);
    CUresult (*MemcpyDtoH)(void *dst, CUdeviceptr src, size_t bytes);
    CUresult (*GetErrorName)(CUresult r, const char **name); /* optional: messages only */
} cu;

/* 1 when the tensors handed to the library (e->ctx) live in device memory. */
static int g_gpu;

static const char *cu_error_name(CUresult r) {
    const char *name = NULL;
    if (!cu.GetErrorName || cu.GetErrorName(r, &name) != 0 || !name) return "unknown CUDA error";
    return name;
}

static void cu_check(CUresult r, const char *what) {
    if (r == 0) return;
    fprintf(stderr, "%s failed: %s (%d)\n", what, cu_error_name(r), (int)r);
    exit(1);
}

/* Resolves one driver entry point into a function pointer (memcpy: ISO C has no cast from
 * void * to a function pointer). */
static int cu_sym(void *fn, size_t fn_size, const char *name) {
    void *p = dlsym(cu.lib, name);
    if (!p || fn_size != sizeof p) return 0;
    memcpy(fn, &p, sizeof p);
    return 1;
}

/* Loads libcuda.so.1 and makes device `ordinal`'s primary context current on this thread.
 * Returns 1, or 0 with the reason in `why` (and nothing left loaded). */
static int cuda_open(int ordinal, char *why, size_t why_size) {
#define CU_SYM(field, name)                                                             \
    if (!cu_sym(&cu.field, sizeof cu.field, name)) {                                    \
        snprintf(why, why_size, "libcuda.so.1 has no %s", name);                        \
        goto fail;                                                                      \
    }
#define CU_TRY(call, name)                                                              \
    if ((r = (call)) != 0) {                                                            \
        snprintf(why, why_size, "%s failed: %s (%d)", name, cu_error_name(r), (int)r);  \
        goto fail;                                                                      \
    }
    CUresult r;
    int retained = 0;
    memset(&cu, 0, sizeof cu);
    cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cu.lib) {
        const char *err = dlerror();
        snprintf(why, why_size, "cannot load libcuda.so.1 (%s)", err ? err : "dlopen failed");
        return 0;
    }
    cu_sym(&cu.GetErrorName, sizeof cu.GetErrorName, "cuGetErrorName");
    CU_SYM(Init, "cuInit");
    CU_SYM(DeviceGet, "cuDeviceGet");
    CU_SYM(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    CU_SYM(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    CU_SYM(CtxPushCurrent, "cuCtxPushCurrent_v2");
    CU_SYM(CtxPopCurrent, "cuCtxPopCurrent_v2");
    CU_SYM(CtxSynchronize, "cuCtxSynchronize");
    CU_SYM(MemAlloc, "cuMemAlloc_v2");
    CU_SYM(MemFree, "cuMemFree_v2");
    CU_SYM(MemcpyHtoD, "cuMemcpyHtoD_v2");
    CU_SYM(MemcpyDtoH, "cuMemcpyDtoH_v2");
    CU_TRY(cu.Init(0), "cuInit");
    CU_TRY(cu.DeviceGet(&cu.dev, ordinal), "cuDeviceGet");
    CU_TRY(cu.DevicePrimaryCtxRetain(&cu.ctx, cu.dev), "cuDevicePrimaryCtxRetain");
    retained = 1;
    CU_TRY(cu.CtxPushCurrent(cu.ctx), "cuCtxPushCurrent");
    return 1;
fail:
    if (retained) cu.DevicePrimaryCtxRelease(cu.dev);
    dlclose(cu.lib);
    memset(&cu, 0, sizeof cu);
    return 0;
#undef CU_SYM
#undef CU_TRY
}

static void cuda_close(void) {
    CUcontext old;
    if (!cu.lib) return;
    cu_check(cu.CtxPopCurrent(&old), "cuCtxPopCurrent");
    cu_check(cu.DevicePrimaryCtxRelease(cu.dev), "cuDevicePrimaryCtxRelease");
    dlclose(cu.lib);
    memset(&cu, 0, sizeof cu);
}

/* Device mirrors of host buffers. On the CPU path (g_gpu = 0) there is no device memory:
 * dev_alloc returns 0 and the copies do nothing, so the same code serves both paths. */
static CUdeviceptr dev_alloc(size_t bytes) {
    CUdeviceptr p = 0;
    if (g_gpu) cu_check(cu.MemAlloc(&p, bytes ? bytes : 1), "cuMemAlloc");
    return p;
}
static void dev_free(CUdeviceptr p) {
    if (g_gpu && p) cu_check(cu.MemFree(p), "cuMemFree");
}
/* Bytes [off, off + n) of a host buffer to the same range of its device copy. */
static void push(CUdeviceptr dev, const void *host, size_t off, size_t n) {
    if (g_gpu && n) cu_check(cu.MemcpyHtoD(dev + off, (const char *)host + off, n), "cuMemcpyHtoD");
}
/* Bytes [off, off + n) of a device buffer back to the same range of its host copy. */
static void pull(void *host, CUdeviceptr dev, size_t off, size_t n) {
    if (g_gpu && n) cu_check(cu.MemcpyDtoH((char *)host + off, dev + off, n), "cuMemcpyDtoH");
}
/* Waits for the library's launches (they are asynchronous on CUDA), so that timings are real. */
static void dev_sync(void) {
    if (g_gpu) cu_check(cu.CtxSynchronize(), "cuCtxSynchronize");
}
/* The pointer to hand the library: the device copy on the GPU path, else the host buffer. */
static void *lib_ptr(void *host, CUdeviceptr dev) { return g_gpu ? (void *)(uintptr_t)dev : host; }

/* The CUDA kernels' limits (the forward's are the tightest): f16/bf16 only (the caller
 * switches to f16), D 64 or 128, B 32, 64 or 128, GQA groups of at most 16 heads. */
static int cuda_supports(const opts_t *o) {
    int g = o->hq / o->hkv;
    if ((o->d == 64 || o->d == 128) && (o->block == 32 || o->block == 64 || o->block == 128) && g <= 16)
        return 1;
    fprintf(stderr, "the CUDA backend supports head dimension 64 or 128, block size 32, 64 or 128 "
                    "and Hq/Hkv <= 16; got --d %d --block %d (Hq/Hkv = %d). Use those sizes, or "
                    "--backend cpu\n", o->d, o->block, g);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* The engine                                                                           */

typedef struct {
    opts_t o;
    dashattn_context *ctx;     /* runs prefill, pooling and decode (CPU or CUDA) */
    dashattn_context *ref_ctx; /* CPU context of the reference forward (ctx itself on the CPU) */
    dashattn_config cfg;
    int num_pages, max_pages, slots;
    size_t row;          /* Hkv * D elements: one token of K or V */
    void *k_cache, *v_cache, *pooled;
    int32_t *table;      /* [N, max_pages] */
    int32_t *lens;       /* [N] current lengths */
    int32_t *prev;       /* [N] lengths before the last append */
    /* Device copies of the above on the GPU path (0 on the CPU path). */
    CUdeviceptr d_k, d_v, d_pooled, d_table, d_lens, d_prev;
    int *max_len;        /* [N] prompt + steps */
    float *topics;       /* [N, max_blocks, Hkv, D] */
    int max_blocks;
    /* selection statistics */
    double cand_blocks, sel_blocks, local_blocks, ctx_keys, read_keys;
} engine_t;

static float *topic(engine_t *e, int b, int blk, int h) {
    return e->topics + (((size_t)b * e->max_blocks + blk) * e->o.hkv + h) * e->o.d;
}

/* Element index of token `pos` of sequence b, KV head h, component 0, in the K/V cache. */
static size_t cache_index(const engine_t *e, int b, int pos, int h) {
    int page = e->table[(size_t)b * e->max_pages + pos / e->o.page];
    return (((size_t)page * e->o.page + (size_t)(pos % e->o.page)) * e->o.hkv + h) * e->o.d;
}

/* Element index of the pooled key of block j of sequence b, KV head h (SPEC 5). */
static size_t pooled_index(const engine_t *e, int b, int j, int h) {
    long tok = (long)j * e->o.block;
    int page = e->table[(size_t)b * e->max_pages + tok / e->o.page];
    int slot = (int)((tok % e->o.page) / e->o.block);
    return (((size_t)page * e->slots + slot) * e->o.hkv + h) * e->o.d;
}

/* Synthetic K/V of one token: noise plus the block's topic (keys only). */
static void gen_kv(engine_t *e, int b, int pos, float *k, float *v) {
    int h, x, d = e->o.d;
    for (h = 0; h < e->o.hkv; h++) {
        const float *t = topic(e, b, pos / e->o.block, h);
        for (x = 0; x < d; x++) {
            k[h * d + x] = rng_normal() + t[x];
            v[h * d + x] = rng_normal();
        }
    }
}

/* Synthetic query of one token at position pos: noise plus a quarter of the topic of a random
 * earlier block (the same block for all heads of a group). */
static void gen_q(engine_t *e, int b, int pos, float *q) {
    int g = e->o.hq / e->o.hkv, h, x, d = e->o.d;
    for (h = 0; h < e->o.hkv; h++) {
        int blk = (int)(rng_u64() % (uint64_t)(pos / e->o.block + 1));
        const float *t = topic(e, b, blk, h);
        int gi;
        for (gi = 0; gi < g; gi++)
            for (x = 0; x < d; x++) q[((size_t)h * g + gi) * d + x] = rng_normal() + 0.25f * t[x];
    }
}

static void append_token(engine_t *e, int b, int pos, const float *k, const float *v) {
    int h, x, d = e->o.d;
    for (h = 0; h < e->o.hkv; h++) {
        size_t base = cache_index(e, b, pos, h);
        for (x = 0; x < d; x++) {
            st(e->k_cache, base + x, k[h * d + x]);
            st(e->v_cache, base + x, v[h * d + x]);
        }
    }
}

static size_t cache_bytes(const engine_t *e) { return (size_t)e->num_pages * e->o.page * e->row * esize(); }
static size_t pooled_bytes(const engine_t *e) { return (size_t)e->num_pages * e->slots * e->row * esize(); }
static size_t lens_bytes(const engine_t *e) { return (size_t)e->o.n_seq * sizeof(int32_t); }

/* Descriptors of the caches, block table and lengths as the library (e->ctx) sees them:
 * device memory on the GPU path, host memory on the CPU path. */
static dashattn_tensor kcache_t(engine_t *e) {
    return tensor4(lib_ptr(e->k_cache, e->d_k), storage_dtype(), e->num_pages, e->o.page, e->o.hkv, e->o.d);
}
static dashattn_tensor vcache_t(engine_t *e) {
    return tensor4(lib_ptr(e->v_cache, e->d_v), storage_dtype(), e->num_pages, e->o.page, e->o.hkv, e->o.d);
}
static dashattn_tensor pooled_t(engine_t *e) {
    return tensor4(lib_ptr(e->pooled, e->d_pooled), storage_dtype(), e->num_pages, e->slots, e->o.hkv,
                   e->o.d);
}
static dashattn_tensor table_t(engine_t *e) {
    return tensor2(lib_ptr(e->table, e->d_table), DASHATTN_DTYPE_I32, e->o.n_seq, e->max_pages);
}
static dashattn_tensor lens_t(engine_t *e) {
    return tensor1(lib_ptr(e->lens, e->d_lens), DASHATTN_DTYPE_I32, e->o.n_seq);
}
static dashattn_tensor prev_t(engine_t *e) {
    return tensor1(lib_ptr(e->prev, e->d_prev), DASHATTN_DTYPE_I32, e->o.n_seq);
}

static void pool(engine_t *e) {
    dashattn_tensor kc = kcache_t(e), pc = pooled_t(e), bt = table_t(e), pl = prev_t(e), sl = lens_t(e);
    check(dashattn_pool_keys_paged(e->ctx, &e->cfg, &kc, &pc, &bt, &pl, &sl, NULL, 0), "dashattn_pool_keys_paged");
}

/* GPU path: copies the token each sequence appended last (K and V rows at position
 * prev[b]) and the new lengths to the device. */
static void push_appended(engine_t *e) {
    int b;
    for (b = 0; b < e->o.n_seq; b++) {
        size_t off = cache_index(e, b, e->prev[b], 0) * esize(); /* the Hkv * D row is contiguous */
        push(e->d_k, e->k_cache, off, e->row * esize());
        push(e->d_v, e->v_cache, off, e->row * esize());
    }
    push(e->d_prev, e->prev, 0, lens_bytes(e));
    push(e->d_lens, e->lens, 0, lens_bytes(e));
}

/* GPU path: copies the pooled keys of the blocks completed between prev and lens back into
 * the host pooled cache (read by the C-side selection statistics). */
static void pull_new_pooled(engine_t *e) {
    int b, j;
    for (b = 0; b < e->o.n_seq; b++)
        for (j = e->prev[b] / e->o.block; j < e->lens[b] / e->o.block; j++)
            pull(e->pooled, e->d_pooled, pooled_index(e, b, j, 0) * esize(), e->row * esize());
}

/* Coarse scores of sequence b, KV group h, at query q (the group's G rows, storage
 * precision already applied), over the candidate blocks of position t. Returns |Cand|. */
static int coarse_scores(engine_t *e, int b, int h, const void *qbuf, size_t qoff, int t, double *z) {
    int g = e->o.hq / e->o.hkv, d = e->o.d, c = t / e->o.block, ncand = c - e->o.n_local + 1, j, gi, x;
    double sigma_c = e->cfg.coarse_scale > 0 ? e->cfg.coarse_scale
                     : (e->cfg.scale > 0 ? e->cfg.scale : 1.0 / sqrt((double)d));
    if (ncand < 0) ncand = 0;
    for (j = 0; j < ncand; j++) {
        size_t pi = pooled_index(e, b, j, h);
        double acc = 0.0;
        for (gi = 0; gi < g; gi++)
            for (x = 0; x < d; x++)
                acc += (double)ld(qbuf, qoff + ((size_t)h * g + gi) * d + x) * (double)ld(e->pooled, pi + x);
        z[j] = sigma_c * acc / g;
    }
    return ncand;
}

static int count_selected(const double *z, int n, double tau, double alpha) {
    int j, s = 0;
    if (alpha <= 1.0) return n;
    for (j = 0; j < n; j++) if ((alpha - 1.0) * z[j] - tau > 0.0) s++;
    return s;
}

/* Gathers sequence b's K/V ([1, len, Hkv, D]) back out of the pages. */
static void gather(engine_t *e, int b, int len, void *k, void *v) {
    int pos, h, x, d = e->o.d;
    for (pos = 0; pos < len; pos++)
        for (h = 0; h < e->o.hkv; h++) {
            size_t src = cache_index(e, b, pos, h), dst = ((size_t)pos * e->o.hkv + h) * d;
            for (x = 0; x < d; x++) {
                st(k, dst + x, ld(e->k_cache, src + x));
                st(v, dst + x, ld(e->v_cache, src + x));
            }
        }
}

/* Verifies one decode step: o/lse of the decode (host copies) against dashattn_forward on
 * the CPU backend (e->ref_ctx) over the contiguous keys; also compares the selection derived
 * from the library's tau with the C solver's. */
static int verify(engine_t *e, const void *q, const void *o, const float *lse, double *max_diff, int step) {
    int b, h, g = e->o.hq / e->o.hkv, d = e->o.d, hq = e->o.hq, fail = 0;
    size_t x;
    double md = 0.0, mlse = 0.0;
    long sel_lib = 0, sel_c = 0;
    pull(e->pooled, e->d_pooled, 0, pooled_bytes(e)); /* GPU path: the device's pooled keys */
    for (b = 0; b < e->o.n_seq; b++) {
        int len = e->lens[b], nb = (len + e->o.block - 1) / e->o.block;
        void *kc = xmalloc((size_t)len * e->row * esize()), *vc = xmalloc((size_t)len * e->row * esize());
        void *pk = xmalloc((size_t)nb * e->row * esize() + 1);
        void *oref = xmalloc((size_t)hq * d * esize());
        float *lref = xmalloc((size_t)hq * sizeof(float)), *tref = xmalloc((size_t)hq * sizeof(float));
        double *z = xmalloc(((size_t)nb + 1) * sizeof(double));
        const void *qb = (const char *)q + (size_t)b * hq * d * esize();
        dashattn_tensor tq = tensor4((void *)qb, storage_dtype(), 1, 1, hq, d);
        dashattn_tensor tk = tensor4(kc, storage_dtype(), 1, len, e->o.hkv, d);
        dashattn_tensor tv = tensor4(vc, storage_dtype(), 1, len, e->o.hkv, d);
        dashattn_tensor tp = tensor4(pk, storage_dtype(), 1, nb, e->o.hkv, d);
        dashattn_tensor to = tensor4(oref, storage_dtype(), 1, 1, hq, d);
        dashattn_tensor tl = tensor3(lref, DASHATTN_DTYPE_F32, 1, hq, 1);
        dashattn_tensor tt = tensor3(tref, DASHATTN_DTYPE_F32, 1, hq, 1);
        gather(e, b, len, kc, vc);
        if (g_f16) {
            /* f16: give the forward the pooled keys of the cache (already rounded to f16; on
             * the GPU path computed on the device), so both sides see identical coarse inputs.
             * Only complete blocks are ever scored in causal mode; the trailing partial
             * block's entry is unused. */
            int j, hh;
            memset(pk, 0, (size_t)nb * e->row * esize());
            for (j = 0; j < len / e->o.block; j++)
                for (hh = 0; hh < e->o.hkv; hh++) {
                    size_t src = pooled_index(e, b, j, hh), dst = ((size_t)j * e->o.hkv + hh) * d;
                    for (x = 0; x < (size_t)d; x++) st(pk, dst + x, ld(e->pooled, src + x));
                }
        }
        /* f32: no pooled_k, so the forward mean-pools the contiguous keys itself; this also
         * checks dashattn_pool_keys_paged. */
        check(dashattn_forward(e->ref_ctx, &e->cfg, &tq, &tk, &tv, g_f16 ? &tp : NULL, NULL, &to, &tl, &tt, NULL, 0),
              "dashattn_forward (reference)");
        for (x = 0; x < (size_t)hq * d; x++) {
            double a = ld(o, (size_t)b * hq * d + x), r = ld(oref, x), df = fabs(a - r);
            if (!(df <= md)) md = df; /* NaN propagates */
        }
        for (h = 0; h < hq; h++) {
            double df = fabs((double)lse[(size_t)b * hq + h] - (double)lref[h]);
            if (!(df <= mlse)) mlse = df;
        }
        for (h = 0; h < e->o.hkv; h++) {
            int n = coarse_scores(e, b, h, q, (size_t)b * hq * d, len - 1, z);
            if (n > 0) {
                sel_lib += count_selected(z, n, (double)tref[h * g], e->cfg.alpha);
                sel_c += count_selected(z, n, entmax_tau(z, n, e->cfg.alpha), e->cfg.alpha);
            }
        }
        free(kc); free(vc); free(pk); free(oref); free(lref); free(tref); free(z);
    }
    printf("  check step %4d: max |o_decode%s - o_forward%s| = %.3g, max |lse diff| = %.3g, "
           "selected blocks (library tau / C tau) = %ld / %ld\n",
           step, g_gpu ? " (CUDA)" : "", g_gpu ? " (CPU)" : "", md, mlse, sel_lib, sel_c);
    if (!(md <= (g_f16 ? 2e-3 : 1e-4)) || !(mlse <= (g_f16 ? 2e-3 : 1e-4))) fail = 1;
    if (md > *max_diff || md != md) *max_diff = md;
    return fail;
}

/* Creates e->ctx for the requested backend and, when it comes up on CUDA, loads the driver
 * API (sets g_gpu) and a CPU context for the reference forward. Returns 0 or an exit status. */
static int setup_backend(engine_t *e, int32_t *backend) {
    dashattn_context_options copt;
    char why[512];
    check(dashattn_context_options_default(&copt), "dashattn_context_options_default");
    copt.backend = e->o.backend;
    copt.num_threads = e->o.threads;
    check(dashattn_context_create(&copt, &e->ctx), "dashattn_context_create");
    check(dashattn_context_get_backend(e->ctx, backend), "dashattn_context_get_backend");
    e->ref_ctx = e->ctx;
    if (*backend != DASHATTN_BACKEND_CUDA) return 0;
    if (!cuda_open(copt.device, why, sizeof why)) {
        if (e->o.backend == DASHATTN_BACKEND_CUDA) {
            fprintf(stderr, "--backend cuda: the example cannot reach the CUDA driver: %s\n", why);
            check(dashattn_context_destroy(e->ctx), "dashattn_context_destroy");
            return 1;
        }
        /* The library found CUDA but the example cannot allocate device memory: keep every
         * tensor in host memory on the CPU backend. */
        printf("note: %s; running on the CPU backend with host memory\n", why);
        check(dashattn_context_destroy(e->ctx), "dashattn_context_destroy");
        copt.backend = DASHATTN_BACKEND_CPU;
        check(dashattn_context_create(&copt, &e->ctx), "dashattn_context_create");
        check(dashattn_context_get_backend(e->ctx, backend), "dashattn_context_get_backend");
        e->ref_ctx = e->ctx;
        return 0;
    }
    if (!cuda_supports(&e->o)) {
        cuda_close();
        check(dashattn_context_destroy(e->ctx), "dashattn_context_destroy");
        return 2;
    }
    g_gpu = 1;
    if (!e->o.f16) printf("note: the CUDA kernels take f16/bf16 tensors: using f16 storage (--f16)\n");
    e->o.f16 = 1;
    /* Load the kernels now (fatbin, or an NVRTC compile on first use) rather than inside the
     * first timed call. */
    check(dashattn_context_prepare(e->ctx), "dashattn_context_prepare");
    copt.backend = DASHATTN_BACKEND_CPU;
    check(dashattn_context_create(&copt, &e->ref_ctx), "dashattn_context_create (CPU reference)");
    return 0;
}

int main(int argc, char **argv) {
    engine_t E;
    engine_t *e = &E;
    int32_t backend = -1;
    int b, h, i, step, fail = 0, total_pages, *perm, rc;
    int d;
    double t0, t_prefill = 0.0, t_decode = 0.0, t_pool = 0.0, t_copy = 0.0, max_diff = 0.0;
    long prefill_tokens = 0;
    void *q, *o;
    float *lse, *kt, *vt, *qt;
    double *z;
    CUdeviceptr d_q, d_o, d_lse;

    memset(e, 0, sizeof *e);
    if (!parse_opts(argc, argv, &e->o)) return 2;
    rng_state = e->o.seed;
    d = e->o.d;

    printf("dashattn %s (header %d.%d.%d)\n", dashattn_version_string(), DASHATTN_VERSION_MAJOR,
           DASHATTN_VERSION_MINOR, DASHATTN_VERSION_PATCH);
    if (dashattn_version() / 100 != DASHATTN_VERSION_MAJOR * 100 + DASHATTN_VERSION_MINOR) {
        fprintf(stderr, "library version %u does not match the header\n", dashattn_version());
        return 1;
    }
    if ((rc = setup_backend(e, &backend)) != 0) return rc;
    g_f16 = e->o.f16;

    check(dashattn_config_default(&e->cfg), "dashattn_config_default");
    e->cfg.block_size = e->o.block;
    e->cfg.n_local = e->o.n_local;
    e->cfg.alpha = e->o.alpha;

    /* Pages: each sequence gets ceil(max_len / page) pages, in shuffled order. */
    e->row = (size_t)e->o.hkv * d;
    e->slots = e->o.page / e->o.block > 1 ? e->o.page / e->o.block : 1;
    e->max_len = xcalloc((size_t)e->o.n_seq, sizeof(int));
    e->max_pages = 0;
    e->max_blocks = 0;
    total_pages = 0;
    for (b = 0; b < e->o.n_seq; b++) {
        int np;
        e->max_len[b] = e->o.prompt + b * e->o.stagger + e->o.steps;
        np = (e->max_len[b] + e->o.page - 1) / e->o.page;
        if (np > e->max_pages) e->max_pages = np;
        if (e->max_len[b] / e->o.block + 1 > e->max_blocks) e->max_blocks = e->max_len[b] / e->o.block + 1;
        total_pages += np;
    }
    e->num_pages = total_pages + 3; /* a few spare pages, never used */
    perm = xcalloc((size_t)e->num_pages, sizeof(int));
    for (i = 0; i < e->num_pages; i++) perm[i] = i;
    for (i = e->num_pages - 1; i > 0; i--) {
        int j = (int)(rng_u64() % (uint64_t)(i + 1)), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    e->table = xcalloc((size_t)e->o.n_seq * e->max_pages, sizeof(int32_t));
    {
        int next = 0;
        for (b = 0; b < e->o.n_seq; b++) {
            int np = (e->max_len[b] + e->o.page - 1) / e->o.page;
            for (i = 0; i < e->max_pages; i++)
                e->table[(size_t)b * e->max_pages + i] = i < np ? perm[next++] : 0; /* unused entries */
        }
    }
    free(perm);
    e->k_cache = xcalloc((size_t)e->num_pages * e->o.page * e->row, esize());
    e->v_cache = xcalloc((size_t)e->num_pages * e->o.page * e->row, esize());
    e->pooled = xcalloc((size_t)e->num_pages * e->slots * e->row, esize());
    e->lens = xcalloc((size_t)e->o.n_seq, sizeof(int32_t));
    e->prev = xcalloc((size_t)e->o.n_seq, sizeof(int32_t));
    e->topics = xmalloc((size_t)e->o.n_seq * e->max_blocks * e->row * sizeof(float));
    for (i = 0; i < (int)((size_t)e->o.n_seq * e->max_blocks * e->row); i++) e->topics[i] = 1.5f * rng_normal();

    /* Device copies (GPU path; no-ops on the CPU). The K/V caches are filled after the
     * prefill; the block table never changes; the pooled cache starts zeroed like the host's. */
    e->d_k = dev_alloc(cache_bytes(e));
    e->d_v = dev_alloc(cache_bytes(e));
    e->d_pooled = dev_alloc(pooled_bytes(e));
    e->d_table = dev_alloc((size_t)e->o.n_seq * e->max_pages * sizeof(int32_t));
    e->d_lens = dev_alloc(lens_bytes(e));
    e->d_prev = dev_alloc(lens_bytes(e));
    push(e->d_pooled, e->pooled, 0, pooled_bytes(e));
    push(e->d_table, e->table, 0, (size_t)e->o.n_seq * e->max_pages * sizeof(int32_t));

    printf("config: %d sequences, Hq=%d Hkv=%d D=%d, B=%d, page=%d (%d pages, %d per sequence max), "
           "alpha=%.3g, n_local=%d, %s, backend %s\n",
           e->o.n_seq, e->o.hq, e->o.hkv, d, e->o.block, e->o.page, e->num_pages, e->max_pages,
           (double)e->o.alpha, e->o.n_local, g_f16 ? "f16" : "f32",
           backend == DASHATTN_BACKEND_CPU ? "CPU" : "CUDA (device memory; reference forward on the CPU)");

    /* ---- prefill: one dashattn_forward per prompt, then into the pages ---- */
    for (b = 0; b < e->o.n_seq; b++) {
        int L = e->o.prompt + b * e->o.stagger, pos;
        size_t qrow = (size_t)e->o.hq * d;
        size_t qbytes = (size_t)L * qrow * esize(), kvbytes = (size_t)L * e->row * esize();
        void *pq = xmalloc(qbytes), *pkk = xmalloc(kvbytes), *pv = xmalloc(kvbytes), *po = xmalloc(qbytes);
        CUdeviceptr dq = dev_alloc(qbytes), dk = dev_alloc(kvbytes), dv = dev_alloc(kvbytes);
        CUdeviceptr dout = dev_alloc(qbytes);
        float *kr = xmalloc(e->row * sizeof(float)), *vr = xmalloc(e->row * sizeof(float));
        float *qr = xmalloc(qrow * sizeof(float));
        dashattn_tensor tq = tensor4(lib_ptr(pq, dq), storage_dtype(), 1, L, e->o.hq, d);
        dashattn_tensor tk = tensor4(lib_ptr(pkk, dk), storage_dtype(), 1, L, e->o.hkv, d);
        dashattn_tensor tv = tensor4(lib_ptr(pv, dv), storage_dtype(), 1, L, e->o.hkv, d);
        dashattn_tensor to = tensor4(lib_ptr(po, dout), storage_dtype(), 1, L, e->o.hq, d);
        for (pos = 0; pos < L; pos++) {
            gen_kv(e, b, pos, kr, vr);
            gen_q(e, b, pos, qr);
            for (i = 0; i < (int)e->row; i++) {
                st(pkk, (size_t)pos * e->row + i, kr[i]);
                st(pv, (size_t)pos * e->row + i, vr[i]);
            }
            for (i = 0; i < (int)qrow; i++) st(pq, (size_t)pos * qrow + i, qr[i]);
        }
        t0 = now_s();
        push(dq, pq, 0, qbytes);
        push(dk, pkk, 0, kvbytes);
        push(dv, pv, 0, kvbytes);
        check(dashattn_forward(e->ctx, &e->cfg, &tq, &tk, &tv, NULL, NULL, &to, NULL, NULL, NULL, 0), "dashattn_forward (prefill)");
        dev_sync();
        t_prefill += now_s() - t0;
        prefill_tokens += L;
        /* K/V of the prompt into the sequence's pages (as an engine writes them while the
         * prefill's projections run). */
        for (pos = 0; pos < L; pos++)
            for (h = 0; h < e->o.hkv; h++) {
                size_t dst = cache_index(e, b, pos, h), src = ((size_t)pos * e->o.hkv + h) * d;
                memcpy((char *)e->k_cache + dst * esize(), (char *)pkk + src * esize(), (size_t)d * esize());
                memcpy((char *)e->v_cache + dst * esize(), (char *)pv + src * esize(), (size_t)d * esize());
            }
        e->lens[b] = L;
        e->prev[b] = 0;
        free(pq); free(pkk); free(pv); free(po); free(kr); free(vr); free(qr);
        dev_free(dq); dev_free(dk); dev_free(dv); dev_free(dout);
    }
    /* GPU path: the filled pages reach the device in one copy each (untimed, like the page
     * writes above: an engine on the GPU writes them there directly), then the lengths. */
    push(e->d_k, e->k_cache, 0, cache_bytes(e));
    push(e->d_v, e->v_cache, 0, cache_bytes(e));
    push(e->d_lens, e->lens, 0, lens_bytes(e));
    push(e->d_prev, e->prev, 0, lens_bytes(e));
    t0 = now_s();
    pool(e); /* prev_seq_lens = 0: pools every complete block of every prompt */
    dev_sync();
    t_pool += now_s() - t0;
    pull(e->pooled, e->d_pooled, 0, pooled_bytes(e)); /* for the C-side statistics (untimed) */
    printf("prefill: %ld tokens in %.3f s (%.0f tokens/s%s), pooled-key cache filled in %.2f ms\n",
           prefill_tokens, t_prefill, prefill_tokens / (t_prefill > 0 ? t_prefill : 1e-9),
           g_gpu ? ", incl. copying q/k/v to the device" : "", 1e3 * t_pool);

    /* ---- decode loop ---- */
    q = xmalloc((size_t)e->o.n_seq * e->o.hq * d * esize());
    o = xmalloc((size_t)e->o.n_seq * e->o.hq * d * esize());
    lse = xmalloc((size_t)e->o.n_seq * e->o.hq * sizeof(float));
    qt = xmalloc((size_t)e->o.hq * d * sizeof(float));
    kt = xmalloc(e->row * sizeof(float));
    vt = xmalloc(e->row * sizeof(float));
    z = xmalloc(((size_t)e->max_blocks + 1) * sizeof(double));
    d_q = dev_alloc((size_t)e->o.n_seq * e->o.hq * d * esize());
    d_o = dev_alloc((size_t)e->o.n_seq * e->o.hq * d * esize());
    d_lse = dev_alloc((size_t)e->o.n_seq * e->o.hq * sizeof(float));
    {
        size_t qbytes = (size_t)e->o.n_seq * e->o.hq * d * esize();
        dashattn_tensor tq = tensor4(lib_ptr(q, d_q), storage_dtype(), e->o.n_seq, 1, e->o.hq, d);
        dashattn_tensor to = tensor4(lib_ptr(o, d_o), storage_dtype(), e->o.n_seq, 1, e->o.hq, d);
        dashattn_tensor tl = tensor3(lib_ptr(lse, d_lse), DASHATTN_DTYPE_F32, e->o.n_seq, e->o.hq, 1);
        dashattn_tensor kc = kcache_t(e), vc = vcache_t(e), pc = pooled_t(e), bt = table_t(e), sl = lens_t(e);
        size_t ws_size = 0;
        void *ws = NULL;
        CUdeviceptr d_ws = 0;
        check(dashattn_decode_workspace_size(e->ctx, &e->cfg, &tq, &kc, &pc, &bt, &sl, &ws_size),
              "dashattn_decode_workspace_size");
        if (g_gpu) {
            if (ws_size > 0) d_ws = dev_alloc(ws_size); /* cuMemAlloc is 256-byte aligned */
            ws = lib_ptr(NULL, d_ws);
        } else if (ws_size > 0 && posix_memalign(&ws, 256, ws_size) != 0) {
            fprintf(stderr, "out of memory (workspace)\n");
            return 2;
        }
        for (step = 0; step < e->o.steps; step++) {
            int checked = (step == e->o.steps - 1) || (e->o.check_every > 0 && step % e->o.check_every == 0);
            /* The "model": new token's q, k, v per sequence; append K/V to the pages. */
            for (b = 0; b < e->o.n_seq; b++) {
                int pos = e->lens[b];
                gen_kv(e, b, pos, kt, vt);
                gen_q(e, b, pos, qt);
                append_token(e, b, pos, kt, vt);
                for (i = 0; i < e->o.hq * d; i++) st(q, (size_t)b * e->o.hq * d + i, qt[i]);
                e->prev[b] = pos;
                e->lens[b] = pos + 1;
            }
            if (g_gpu) {
                t0 = now_s();
                push_appended(e); /* the new K/V rows and lengths */
                push(d_q, q, 0, qbytes);
                t_copy += now_s() - t0;
            }
            t0 = now_s();
            pool(e); /* pools a block exactly when this token completed it */
            dev_sync();
            t_pool += now_s() - t0;
            t0 = now_s();
            check(dashattn_decode(e->ctx, &e->cfg, &tq, &kc, &vc, &pc, &bt, &sl, NULL, &to, &tl, ws, ws_size),
                  "dashattn_decode");
            dev_sync();
            t_decode += now_s() - t0;
            if (g_gpu) {
                t0 = now_s();
                pull(o, d_o, 0, qbytes);
                t_copy += now_s() - t0;
                /* Untimed: what the statistics and the check read on the host. */
                pull_new_pooled(e);
                if (checked) pull(lse, d_lse, 0, (size_t)e->o.n_seq * e->o.hq * sizeof(float));
            }

            /* Statistics (untimed): candidate vs. selected blocks, with tau solved in C. */
            for (b = 0; b < e->o.n_seq; b++) {
                int len = e->lens[b], t = len - 1, c = t / e->o.block, nloc = c + 1 < e->o.n_local ? c + 1 : e->o.n_local;
                for (h = 0; h < e->o.hkv; h++) {
                    int n = coarse_scores(e, b, h, q, (size_t)b * e->o.hq * d, t, z), s = 0;
                    if (n > 0) s = count_selected(z, n, entmax_tau(z, n, e->cfg.alpha), e->cfg.alpha);
                    e->cand_blocks += n;
                    e->sel_blocks += s;
                    e->local_blocks += nloc;
                    e->ctx_keys += len;
                    /* keys read by the fine stage: selected (complete) blocks + local window */
                    e->read_keys += (double)s * e->o.block + (len - (double)(c - nloc + 1) * e->o.block);
                }
            }
            for (i = 0; i < e->o.n_seq * e->o.hq * d; i++) {
                float v = ld(o, (size_t)i);
                if (v != v) { fprintf(stderr, "NaN in decode output at step %d\n", step); fail = 1; break; }
            }
            if (checked) fail |= verify(e, q, o, lse, &max_diff, step);
        }
        if (g_gpu) dev_free(d_ws);
        else free(ws);
    }
    {
        long toks = (long)e->o.n_seq * e->o.steps;
        double t_all = t_decode + t_pool + t_copy;
        if (g_gpu)
            printf("decode: %d steps x %d sequences = %ld tokens; dashattn_decode %.3f s, "
                   "dashattn_pool_keys_paged %.3f s, host<->device copies %.3f s -> %.0f tokens/s "
                   "(decode + pooling + copies)\n",
                   e->o.steps, e->o.n_seq, toks, t_decode, t_pool, t_copy, toks / (t_all > 0 ? t_all : 1e-9));
        else
            printf("decode: %d steps x %d sequences = %ld tokens; dashattn_decode %.3f s, "
                   "dashattn_pool_keys_paged %.3f s -> %.0f tokens/s (decode + pooling)\n",
                   e->o.steps, e->o.n_seq, toks, t_decode, t_pool, toks / (t_all > 0 ? t_all : 1e-9));
        printf("final lengths:");
        for (b = 0; b < e->o.n_seq; b++) printf(" %d", e->lens[b]);
        printf("\n");
        printf("selection (per KV group, C-derived): %.0f candidate blocks, %.0f selected = %.1f%% "
               "(+ %.0f local blocks); fine stage read %.1f%% of the context's keys\n",
               e->cand_blocks, e->sel_blocks, e->cand_blocks > 0 ? 100.0 * e->sel_blocks / e->cand_blocks : 0.0,
               e->local_blocks, e->ctx_keys > 0 ? 100.0 * e->read_keys / e->ctx_keys : 0.0);
    }
    dev_free(d_q); dev_free(d_o); dev_free(d_lse);
    dev_free(e->d_k); dev_free(e->d_v); dev_free(e->d_pooled); dev_free(e->d_table);
    dev_free(e->d_lens); dev_free(e->d_prev);
    if (e->ref_ctx != e->ctx) check(dashattn_context_destroy(e->ref_ctx), "dashattn_context_destroy");
    check(dashattn_context_destroy(e->ctx), "dashattn_context_destroy");
    cuda_close();
    free(q); free(o); free(lse); free(qt); free(kt); free(vt); free(z);
    free(e->k_cache); free(e->v_cache); free(e->pooled); free(e->table); free(e->lens);
    free(e->prev); free(e->max_len); free(e->topics);
    if (fail) {
        printf("FAIL: decode does not match the contiguous forward (max abs diff %.3g)\n", max_diff);
        return 1;
    }
    printf("OK: decode matches the contiguous forward (max abs diff %.3g)\n", max_diff);
    return 0;
}
