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
 * It prints tokens/s, and the fraction of candidate blocks the entmax stage selected. That
 * fraction is derived outside the timed region, in C, from the pooled-key cache: the coarse
 * score z_j = sigma_c * mean_g <q_g, kbar_j> and the alpha-entmax threshold tau (solved here
 * by bisection) give Sel = { j : (alpha - 1) z_j > tau }. On the checked steps the
 * library's own tau (from a dashattn_forward with the tau output) is used as well and the
 * two selections are compared.
 *
 * Check: on the checked steps, every sequence's decode output is compared with
 * dashattn_forward on the same keys laid out contiguously (gathered back from the pages).
 * The program exits with status 1 when the max abs difference exceeds 1e-4 (f32) or
 * 2e-3 (f16), or when anything is NaN.
 *
 * The K/V/Q data are synthetic: keys carry a per-block "topic" vector so that blocks differ
 * and entmax has something to select; queries lean towards the topic of one earlier block.
 */
#define _POSIX_C_SOURCE 200112L

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
           "  --f16           keep Q/K/V and the caches in f16 (default f32)\n"
           "  --threads N     CPU worker threads, 0 = all cores (default 0)\n"
           "  --backend B     auto | cpu | cuda (default auto)\n"
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
     * validate: its error message is printed if they are wrong. */
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
/* The engine                                                                           */

typedef struct {
    opts_t o;
    dashattn_context *ctx;
    dashattn_config cfg;
    int num_pages, max_pages, slots;
    size_t row;          /* Hkv * D elements: one token of K or V */
    void *k_cache, *v_cache, *pooled;
    int32_t *table;      /* [N, max_pages] */
    int32_t *lens;       /* [N] current lengths */
    int32_t *prev;       /* [N] lengths before the last append */
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

static dashattn_tensor cache_t(engine_t *e, void *data) {
    return tensor4(data, storage_dtype(), e->num_pages, e->o.page, e->o.hkv, e->o.d);
}
static dashattn_tensor pooled_t(engine_t *e) {
    return tensor4(e->pooled, storage_dtype(), e->num_pages, e->slots, e->o.hkv, e->o.d);
}

static void pool(engine_t *e) {
    dashattn_tensor kc = cache_t(e, e->k_cache), pc = pooled_t(e);
    dashattn_tensor bt = tensor2(e->table, DASHATTN_DTYPE_I32, e->o.n_seq, e->max_pages);
    dashattn_tensor pl = tensor1(e->prev, DASHATTN_DTYPE_I32, e->o.n_seq);
    dashattn_tensor sl = tensor1(e->lens, DASHATTN_DTYPE_I32, e->o.n_seq);
    check(dashattn_pool_keys_paged(e->ctx, &e->cfg, &kc, &pc, &bt, &pl, &sl, NULL, 0), "dashattn_pool_keys_paged");
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

/* Verifies one decode step: o/lse of the decode against dashattn_forward on the contiguous
 * keys; also compares the selection derived from the library's tau with the C solver's. */
static int verify(engine_t *e, const void *q, const void *o, const float *lse, double *max_diff, int step) {
    int b, h, g = e->o.hq / e->o.hkv, d = e->o.d, hq = e->o.hq, fail = 0;
    size_t x;
    double md = 0.0, mlse = 0.0;
    long sel_lib = 0, sel_c = 0;
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
            /* f16: give the forward the pooled keys of the cache (already rounded to f16), so
             * both sides see identical coarse inputs. Only complete blocks are ever scored in
             * causal mode; the trailing partial block's entry is unused. */
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
        check(dashattn_forward(e->ctx, &e->cfg, &tq, &tk, &tv, g_f16 ? &tp : NULL, NULL, &to, &tl, &tt, NULL, 0),
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
    printf("  check step %4d: max |o_decode - o_forward| = %.3g, max |lse diff| = %.3g, "
           "selected blocks (library tau / C tau) = %ld / %ld\n",
           step, md, mlse, sel_lib, sel_c);
    if (!(md <= (g_f16 ? 2e-3 : 1e-4)) || !(mlse <= (g_f16 ? 2e-3 : 1e-4))) fail = 1;
    if (md > *max_diff || md != md) *max_diff = md;
    return fail;
}

int main(int argc, char **argv) {
    engine_t E;
    engine_t *e = &E;
    dashattn_context_options copt;
    int32_t backend = -1;
    int b, h, i, step, fail = 0, total_pages, *perm;
    int d;
    double t0, t_prefill = 0.0, t_decode = 0.0, t_pool = 0.0, max_diff = 0.0;
    long prefill_tokens = 0;
    void *q, *o;
    float *lse, *kt, *vt, *qt;
    double *z;

    memset(e, 0, sizeof *e);
    if (!parse_opts(argc, argv, &e->o)) return 2;
    g_f16 = e->o.f16;
    rng_state = e->o.seed;
    d = e->o.d;

    printf("dashattn %s (header %d.%d.%d)\n", dashattn_version_string(), DASHATTN_VERSION_MAJOR,
           DASHATTN_VERSION_MINOR, DASHATTN_VERSION_PATCH);
    if (dashattn_version() / 100 != DASHATTN_VERSION_MAJOR * 100 + DASHATTN_VERSION_MINOR) {
        fprintf(stderr, "library version %u does not match the header\n", dashattn_version());
        return 1;
    }

    check(dashattn_context_options_default(&copt), "dashattn_context_options_default");
    copt.backend = e->o.backend;
    copt.num_threads = e->o.threads;
    check(dashattn_context_create(&copt, &e->ctx), "dashattn_context_create");
    check(dashattn_context_get_backend(e->ctx, &backend), "dashattn_context_get_backend");
    if (backend == DASHATTN_BACKEND_CUDA) {
        /* This example keeps every tensor in host memory, which the CUDA backend does not
         * accept: fall back to the CPU backend. */
        printf("note: the CUDA backend wants device memory; this example uses host memory, so it "
               "runs on the CPU backend\n");
        check(dashattn_context_destroy(e->ctx), "dashattn_context_destroy");
        copt.backend = DASHATTN_BACKEND_CPU;
        check(dashattn_context_create(&copt, &e->ctx), "dashattn_context_create");
        check(dashattn_context_get_backend(e->ctx, &backend), "dashattn_context_get_backend");
    }

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

    printf("config: %d sequences, Hq=%d Hkv=%d D=%d, B=%d, page=%d (%d pages, %d per sequence max), "
           "alpha=%.3g, n_local=%d, %s, backend %s\n",
           e->o.n_seq, e->o.hq, e->o.hkv, d, e->o.block, e->o.page, e->num_pages, e->max_pages,
           (double)e->o.alpha, e->o.n_local, g_f16 ? "f16" : "f32",
           backend == DASHATTN_BACKEND_CPU ? "CPU" : "CUDA");

    /* ---- prefill: one dashattn_forward per prompt, then into the pages ---- */
    for (b = 0; b < e->o.n_seq; b++) {
        int L = e->o.prompt + b * e->o.stagger, pos;
        size_t qrow = (size_t)e->o.hq * d;
        void *pq = xmalloc((size_t)L * qrow * esize()), *pkk = xmalloc((size_t)L * e->row * esize());
        void *pv = xmalloc((size_t)L * e->row * esize()), *po = xmalloc((size_t)L * qrow * esize());
        float *kr = xmalloc(e->row * sizeof(float)), *vr = xmalloc(e->row * sizeof(float));
        float *qr = xmalloc(qrow * sizeof(float));
        dashattn_tensor tq = tensor4(pq, storage_dtype(), 1, L, e->o.hq, d);
        dashattn_tensor tk = tensor4(pkk, storage_dtype(), 1, L, e->o.hkv, d);
        dashattn_tensor tv = tensor4(pv, storage_dtype(), 1, L, e->o.hkv, d);
        dashattn_tensor to = tensor4(po, storage_dtype(), 1, L, e->o.hq, d);
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
        check(dashattn_forward(e->ctx, &e->cfg, &tq, &tk, &tv, NULL, NULL, &to, NULL, NULL, NULL, 0), "dashattn_forward (prefill)");
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
    }
    t0 = now_s();
    pool(e); /* prev_seq_lens = 0: pools every complete block of every prompt */
    t_pool += now_s() - t0;
    printf("prefill: %ld tokens in %.3f s (%.0f tokens/s), pooled-key cache filled in %.2f ms\n",
           prefill_tokens, t_prefill, prefill_tokens / (t_prefill > 0 ? t_prefill : 1e-9), 1e3 * t_pool);

    /* ---- decode loop ---- */
    q = xmalloc((size_t)e->o.n_seq * e->o.hq * d * esize());
    o = xmalloc((size_t)e->o.n_seq * e->o.hq * d * esize());
    lse = xmalloc((size_t)e->o.n_seq * e->o.hq * sizeof(float));
    qt = xmalloc((size_t)e->o.hq * d * sizeof(float));
    kt = xmalloc(e->row * sizeof(float));
    vt = xmalloc(e->row * sizeof(float));
    z = xmalloc(((size_t)e->max_blocks + 1) * sizeof(double));
    {
        dashattn_tensor tq = tensor4(q, storage_dtype(), e->o.n_seq, 1, e->o.hq, d);
        dashattn_tensor to = tensor4(o, storage_dtype(), e->o.n_seq, 1, e->o.hq, d);
        dashattn_tensor tl = tensor3(lse, DASHATTN_DTYPE_F32, e->o.n_seq, e->o.hq, 1);
        dashattn_tensor kc = cache_t(e, e->k_cache), vc = cache_t(e, e->v_cache), pc = pooled_t(e);
        dashattn_tensor bt = tensor2(e->table, DASHATTN_DTYPE_I32, e->o.n_seq, e->max_pages);
        dashattn_tensor sl = tensor1(e->lens, DASHATTN_DTYPE_I32, e->o.n_seq);
        size_t ws_size = 0;
        void *ws = NULL;
        double t_step_pool = 0.0;
        check(dashattn_decode_workspace_size(e->ctx, &e->cfg, &tq, &kc, &pc, &bt, &sl, &ws_size),
              "dashattn_decode_workspace_size");
        if (ws_size > 0 && posix_memalign(&ws, 256, ws_size) != 0) {
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
            t0 = now_s();
            pool(e); /* pools a block exactly when this token completed it */
            t_step_pool = now_s() - t0;
            t_pool += t_step_pool;
            t0 = now_s();
            check(dashattn_decode(e->ctx, &e->cfg, &tq, &kc, &vc, &pc, &bt, &sl, NULL, &to, &tl, ws, ws_size),
                  "dashattn_decode");
            t_decode += now_s() - t0;

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
        free(ws);
    }
    {
        long toks = (long)e->o.n_seq * e->o.steps;
        printf("decode: %d steps x %d sequences = %ld tokens; dashattn_decode %.3f s, "
               "dashattn_pool_keys_paged %.3f s -> %.0f tokens/s (decode + pooling)\n",
               e->o.steps, e->o.n_seq, toks, t_decode, t_pool, toks / (t_decode + t_pool > 0 ? t_decode + t_pool : 1e-9));
        printf("final lengths:");
        for (b = 0; b < e->o.n_seq; b++) printf(" %d", e->lens[b]);
        printf("\n");
        printf("selection (per KV group, C-derived): %.0f candidate blocks, %.0f selected = %.1f%% "
               "(+ %.0f local blocks); fine stage read %.1f%% of the context's keys\n",
               e->cand_blocks, e->sel_blocks, e->cand_blocks > 0 ? 100.0 * e->sel_blocks / e->cand_blocks : 0.0,
               e->local_blocks, e->ctx_keys > 0 ? 100.0 * e->read_keys / e->ctx_keys : 0.0);
    }
    check(dashattn_context_destroy(e->ctx), "dashattn_context_destroy");
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
