/* api_test.c: tests of the dashattn C API, compiled as C99 against include/dashattn.h.
 *
 * Numerical checks (CPU backend):
 *   - with no candidate blocks the operator is plain causal (or full) softmax attention,
 *     computed here in C; rows before the first key and Lk = 0 give o = 0, lse = -inf;
 *   - the general forward against a C transcription of SPEC 3 (all alpha regimes,
 *     per-group/per-head selection, per-head alpha, caller pooled keys, non-causal),
 *     in f64 mode (f64 tensors, f64 accumulation) and f32 mode;
 *   - dashattn_pool_keys_paged against C means (incrementally, untouched slots stay put);
 *   - dashattn_decode against the last rows of dashattn_forward on the same keys laid
 *     out contiguously (q_len 1 and 4, pages smaller and larger than blocks, f16);
 *   - dashattn_backward against central finite differences of the forward in f64 mode,
 *     and bitwise determinism.
 * Error paths: every entry point with NULL pointers, bad ranks/shapes/strides/dtypes,
 * config values, overflowing shapes, workspace problems and bad block tables. Each must
 * return the specific DASHATTN_ERR_* code, set a fresh non-empty message, and leave every
 * output buffer holding its poison pattern.
 *
 * Prints "N passed, M failed" and exits non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200112L

#include <float.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashattn.h"

/* ------------------------------------------------------------------------------------ */
/* Test bookkeeping                                                                     */

static int n_pass, n_fail;

static void report(int ok, const char *file, int line, const char *fmt, const char *a, double x, double y) {
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    printf("FAIL %s:%d: ", file, line);
    printf(fmt, a, x, y);
    printf("\n");
}
/* CHECK(cond, fmt, string, double, double): one counted check with a formatted reason. */
#define CHECK(cond, fmt, a, x, y) report((cond) ? 1 : 0, __FILE__, __LINE__, fmt, a, (double)(x), (double)(y))

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    return p;
}

/* splitmix64 */
static uint64_t rng_s = 12345;
static uint64_t rng_u64(void) {
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(void) { return (double)(rng_u64() >> 11) * (1.0 / 9007199254740992.0); }
static double rng_normal(void) {
    double u = rng_uniform(), v = rng_uniform();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* IEEE half <-> float (round to nearest even). */
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
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)h;
}
static float f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16, exp = ((uint32_t)h >> 10) & 0x1fu, man = (uint32_t)h & 0x3ffu, x;
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

static uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN stays NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
static float bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static size_t dsize(int32_t dt) {
    switch (dt) {
    case DASHATTN_DTYPE_F64: return 8;
    case DASHATTN_DTYPE_F16:
    case DASHATTN_DTYPE_BF16: return 2;
    default: return 4;
    }
}

/* Converts n doubles into a new buffer of dtype dt (f32, f64 or f16). */
static void *to_dtype(const double *x, size_t n, int32_t dt) {
    void *p = xmalloc(n * dsize(dt));
    for (size_t i = 0; i < n; i++) {
        if (dt == DASHATTN_DTYPE_F64) ((double *)p)[i] = x[i];
        else if (dt == DASHATTN_DTYPE_F16) ((uint16_t *)p)[i] = f32_to_f16((float)x[i]);
        else if (dt == DASHATTN_DTYPE_BF16) ((uint16_t *)p)[i] = f32_to_bf16((float)x[i]);
        else ((float *)p)[i] = (float)x[i];
    }
    return p;
}
static double elem(const void *p, size_t i, int32_t dt) {
    if (dt == DASHATTN_DTYPE_F64) return ((const double *)p)[i];
    if (dt == DASHATTN_DTYPE_F16) return f16_to_f32(((const uint16_t *)p)[i]);
    if (dt == DASHATTN_DTYPE_BF16) return bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}
/* Rounds values in place to what dtype dt can hold (so C references see what the library sees). */
static void round_to(double *x, size_t n, int32_t dt) {
    for (size_t i = 0; i < n; i++) {
        if (dt == DASHATTN_DTYPE_F32) x[i] = (float)x[i];
        else if (dt == DASHATTN_DTYPE_F16) x[i] = f16_to_f32(f32_to_f16((float)x[i]));
        else if (dt == DASHATTN_DTYPE_BF16) x[i] = bf16_to_f32(f32_to_bf16((float)x[i]));
    }
}

static dashattn_tensor tensor(void *data, int32_t dtype, int rank, const int64_t *shape) {
    dashattn_tensor t;
    int64_t s = 1;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = rank;
    for (int i = rank - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.strides[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
    return t;
}
static dashattn_tensor t4(void *data, int32_t dt, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t s[4];
    s[0] = a; s[1] = b; s[2] = c; s[3] = d;
    return tensor(data, dt, 4, s);
}
static dashattn_tensor t3(void *data, int32_t dt, int64_t a, int64_t b, int64_t c) {
    int64_t s[3];
    s[0] = a; s[1] = b; s[2] = c;
    return tensor(data, dt, 3, s);
}
static dashattn_tensor t2(void *data, int32_t dt, int64_t a, int64_t b) {
    int64_t s[2];
    s[0] = a; s[1] = b;
    return tensor(data, dt, 2, s);
}
static dashattn_tensor t1(void *data, int32_t dt, int64_t a) { return tensor(data, dt, 1, &a); }

static dashattn_context *g_ctx;

static dashattn_config default_config(void) {
    dashattn_config c;
    memset(&c, 0, sizeof c);
    if (dashattn_config_default(&c) != DASHATTN_SUCCESS) {
        printf("dashattn_config_default failed\n");
        exit(2);
    }
    return c;
}

static void must(dashattn_status st, const char *what) {
    char msg[512];
    if (st == DASHATTN_SUCCESS) {
        n_pass++;
        return;
    }
    dashattn_last_error_message(msg, sizeof msg);
    n_fail++;
    printf("FAIL: %s returned %d (%s): %s\n", what, (int)st, dashattn_status_string(st), msg);
}

/* ------------------------------------------------------------------------------------ */
/* C transcription of the operator (SPEC 3), in double                                  */

typedef struct {
    int n, lq, lk, hq, hkv, d;
    double *q, *k, *v; /* [N, Lq, Hq, D], [N, Lk, Hkv, D] x2 */
    double *pk;        /* optional [N, nb, Hkv, D] */
    double *ha;        /* optional [Hq] */
} prob_t;

static int nblocks(int lk, int bs) { return (lk + bs - 1) / bs; }

static prob_t make_prob(int n, int lq, int lk, int hq, int hkv, int d, int bs, double topic_scale) {
    prob_t p;
    int nb = nblocks(lk, bs);
    size_t nq = (size_t)n * lq * hq * d, nk = (size_t)n * lk * hkv * d;
    double *topics = xmalloc(((size_t)n * nb * hkv * d + 1) * sizeof(double));
    memset(&p, 0, sizeof p);
    p.n = n; p.lq = lq; p.lk = lk; p.hq = hq; p.hkv = hkv; p.d = d;
    p.q = xmalloc((nq + 1) * sizeof(double));
    p.k = xmalloc((nk + 1) * sizeof(double));
    p.v = xmalloc((nk + 1) * sizeof(double));
    for (size_t i = 0; i < (size_t)n * nb * hkv * d; i++) topics[i] = topic_scale * rng_normal();
    for (size_t i = 0; i < nq; i++) p.q[i] = rng_normal();
    for (int b = 0; b < n; b++)
        for (int i = 0; i < lk; i++)
            for (int h = 0; h < hkv; h++)
                for (int x = 0; x < d; x++) {
                    size_t at = (((size_t)b * lk + i) * hkv + h) * d + x;
                    p.k[at] = rng_normal() + topics[(((size_t)b * nb + i / bs) * hkv + h) * d + x];
                    p.v[at] = rng_normal();
                }
    free(topics);
    return p;
}
static void free_prob(prob_t *p) {
    free(p->q); free(p->k); free(p->v); free(p->pk); free(p->ha);
    memset(p, 0, sizeof *p);
}
static void round_prob(prob_t *p, int32_t dt, int bs) {
    round_to(p->q, (size_t)p->n * p->lq * p->hq * p->d, dt);
    round_to(p->k, (size_t)p->n * p->lk * p->hkv * p->d, dt);
    round_to(p->v, (size_t)p->n * p->lk * p->hkv * p->d, dt);
    if (p->pk) round_to(p->pk, (size_t)p->n * nblocks(p->lk, bs) * p->hkv * p->d, dt);
    if (p->ha) round_to(p->ha, (size_t)p->hq, DASHATTN_DTYPE_F32);
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* alpha-entmax threshold (SPEC 3.3) of z (n > 0). */
static double ref_tau(const double *z, int n, double alpha) {
    double mx = z[0];
    for (int i = 1; i < n; i++) if (z[i] > mx) mx = z[i];
    if (alpha <= 1.0) {
        double s = 0.0;
        for (int i = 0; i < n; i++) s += exp(z[i] - mx);
        return mx + log(s);
    }
    if (alpha >= 2.0) { /* sort-based sparsemax */
        double *v = xmalloc((size_t)n * sizeof(double)), cum = 0.0, tau = mx - 1.0;
        for (int i = 0; i < n; i++) v[i] = z[i];
        qsort(v, (size_t)n, sizeof(double), cmp_desc);
        for (int k = 0; k < n; k++) {
            double t;
            cum += v[k];
            t = (cum - 1.0) / (k + 1);
            if (v[k] > t) tau = t;
            else break;
        }
        free(v);
        return tau;
    }
    {
        double lo = (alpha - 1.0) * mx - 1.0, hi = (alpha - 1.0) * mx - pow((double)n, 1.0 - alpha);
        for (int it = 0; it < 400; it++) {
            double mid = 0.5 * (lo + hi), mass = 0.0;
            if (!(mid > lo && mid < hi)) break;
            for (int i = 0; i < n; i++) {
                double x = (alpha - 1.0) * z[i] - mid;
                if (x > 0.0) mass += pow(x, 1.0 / (alpha - 1.0));
            }
            if (mass >= 1.0) lo = mid; else hi = mid;
        }
        return 0.5 * (lo + hi);
    }
}

/* The operator on p with config c; o [N, Lq, Hq, D], lse and tau [N, Hq, Lq]. */
static void ref_forward(const prob_t *p, const dashattn_config *c, double *o, double *lse, double *tau) {
    int bs = c->block_size, nb = nblocks(p->lk, bs), d = p->d, g = p->hq / p->hkv;
    int per_head = c->selection == DASHATTN_SELECT_PER_HEAD, hpu = per_head ? 1 : g;
    double sigma = c->scale > 0 ? c->scale : 1.0 / sqrt((double)d);
    double sigma_c = c->coarse_scale > 0 ? c->coarse_scale : sigma;
    double *kbar = xmalloc(((size_t)nb * d + 1) * sizeof(double));
    double *z = xmalloc(((size_t)nb + 1) * sizeof(double)), *beta = xmalloc(((size_t)nb + 1) * sizeof(double));
    int *att = xmalloc(((size_t)nb + 1) * sizeof(int)), *cand = xmalloc(((size_t)nb + 1) * sizeof(int));
    double *lg = xmalloc(((size_t)p->lk + 1) * sizeof(double));
    for (int b = 0; b < p->n; b++)
        for (int hk = 0; hk < p->hkv; hk++) {
            for (int j = 0; j < nb; j++) {
                int cnt = (j + 1) * bs < p->lk ? bs : p->lk - j * bs;
                for (int x = 0; x < d; x++) {
                    double s = 0.0;
                    if (p->pk) {
                        s = p->pk[(((size_t)b * nb + j) * p->hkv + hk) * d + x];
                    } else {
                        for (int i = j * bs; i < j * bs + cnt; i++) s += p->k[(((size_t)b * p->lk + i) * p->hkv + hk) * d + x];
                        s /= cnt;
                    }
                    kbar[(size_t)j * d + x] = s;
                }
            }
            for (int r = 0; r < p->lq; r++) {
                long t = (long)p->lk - p->lq + r;
                long cblk = t >= 0 ? t / bs : -((-t + bs - 1) / bs);
                int ncand = 0;
                for (int j = 0; j < nb; j++) {
                    int is_local, is_cand;
                    if (c->causal) {
                        is_local = t >= 0 && j <= cblk && j > cblk - c->n_local;
                        is_cand = t >= 0 && j <= cblk - c->n_local;
                    } else {
                        long dj = j - cblk;
                        is_local = (dj < 0 ? -dj : dj) < c->n_local;
                        is_cand = !is_local;
                    }
                    att[j] = is_local ? 1 : 0; /* 1: local (beta 0), 2: selected, 0: not attended */
                    beta[j] = 0.0;
                    if (is_cand) cand[ncand++] = j;
                }
                for (int u = 0; u < g / hpu; u++) {
                    int h0 = hk * g + u * hpu;
                    double alpha = p->ha ? p->ha[h0] : c->alpha, tv = -INFINITY;
                    for (int ci = 0; ci < ncand; ci++) {
                        double acc = 0.0;
                        for (int hh = h0; hh < h0 + hpu; hh++)
                            for (int x = 0; x < d; x++)
                                acc += p->q[(((size_t)b * p->lq + r) * p->hq + hh) * d + x] * kbar[(size_t)cand[ci] * d + x];
                        z[ci] = sigma_c * acc / hpu;
                    }
                    if (ncand > 0) tv = ref_tau(z, ncand, alpha);
                    for (int j = 0; j < nb; j++) if (att[j] == 2) att[j] = 0;
                    for (int ci = 0; ci < ncand; ci++) {
                        if (alpha <= 1.0) {
                            att[cand[ci]] = 2;
                            beta[cand[ci]] = z[ci] - tv;
                        } else {
                            double xx = (alpha - 1.0) * z[ci] - tv;
                            if (xx > 0.0) {
                                att[cand[ci]] = 2;
                                beta[cand[ci]] = log(xx) / (alpha - 1.0);
                            }
                        }
                    }
                    for (int hh = h0; hh < h0 + hpu; hh++) {
                        const double *qr = p->q + (((size_t)b * p->lq + r) * p->hq + hh) * d;
                        double *orow = o + (((size_t)b * p->lq + r) * p->hq + hh) * d, m = -INFINITY, l = 0.0;
                        int na = 0;
                        for (int x = 0; x < d; x++) orow[x] = 0.0;
                        for (int i = 0; i < p->lk; i++) {
                            int j = i / bs;
                            double s = 0.0;
                            lg[i] = -INFINITY;
                            if (!att[j] || (c->causal && i > t)) continue;
                            for (int x = 0; x < d; x++) s += qr[x] * p->k[(((size_t)b * p->lk + i) * p->hkv + hk) * d + x];
                            lg[i] = sigma * s + (att[j] == 2 ? beta[j] : 0.0);
                            if (lg[i] > m) m = lg[i];
                            na++;
                        }
                        if (na == 0) {
                            lse[((size_t)b * p->hq + hh) * p->lq + r] = -INFINITY;
                        } else {
                            for (int i = 0; i < p->lk; i++) {
                                double w;
                                if (lg[i] == -INFINITY) continue;
                                w = exp(lg[i] - m);
                                l += w;
                                for (int x = 0; x < d; x++) orow[x] += w * p->v[(((size_t)b * p->lk + i) * p->hkv + hk) * d + x];
                            }
                            for (int x = 0; x < d; x++) orow[x] /= l;
                            lse[((size_t)b * p->hq + hh) * p->lq + r] = m + log(l);
                        }
                        tau[((size_t)b * p->hq + hh) * p->lq + r] = tv;
                    }
                }
            }
        }
    free(kbar); free(z); free(beta); free(att); free(cand); free(lg);
}

/* ------------------------------------------------------------------------------------ */
/* Library wrappers on prob_t                                                           */

/* Forward through the C API in dtype dt (stats f64 for f64 tensors, else f32). */
static dashattn_status lib_forward(const prob_t *p, const dashattn_config *c, int32_t dt, double *o, double *lse, double *tau) {
    int nb = nblocks(p->lk, c->block_size);
    int32_t sdt = dt == DASHATTN_DTYPE_F64 ? DASHATTN_DTYPE_F64 : DASHATTN_DTYPE_F32;
    size_t nq = (size_t)p->n * p->lq * p->hq * p->d, nk = (size_t)p->n * p->lk * p->hkv * p->d, ns = (size_t)p->n * p->hq * p->lq;
    size_t npk = (size_t)p->n * nb * p->hkv * p->d;
    void *q = to_dtype(p->q, nq, dt), *k = to_dtype(p->k, nk, dt), *v = to_dtype(p->v, nk, dt);
    void *pk = p->pk ? to_dtype(p->pk, npk, dt) : NULL;
    float *ha = NULL;
    void *ob = xmalloc(nq * dsize(dt) + 1), *lb = xmalloc(ns * dsize(sdt) + 1), *tb = xmalloc(ns * dsize(sdt) + 1);
    dashattn_tensor tq = t4(q, dt, p->n, p->lq, p->hq, p->d), tk = t4(k, dt, p->n, p->lk, p->hkv, p->d);
    dashattn_tensor tv = t4(v, dt, p->n, p->lk, p->hkv, p->d), tp = t4(pk, dt, p->n, nb, p->hkv, p->d);
    dashattn_tensor th, to = t4(ob, dt, p->n, p->lq, p->hq, p->d);
    dashattn_tensor tl = t3(lb, sdt, p->n, p->hq, p->lq), tt = t3(tb, sdt, p->n, p->hq, p->lq);
    dashattn_status st;
    if (p->ha) {
        ha = xmalloc((size_t)p->hq * sizeof(float));
        for (int h = 0; h < p->hq; h++) ha[h] = (float)p->ha[h];
    }
    th = t1(ha, DASHATTN_DTYPE_F32, p->hq);
    st = dashattn_forward(g_ctx, c, &tq, &tk, &tv, pk ? &tp : NULL, ha ? &th : NULL, &to, &tl, &tt, NULL, 0);
    if (st == DASHATTN_SUCCESS) {
        for (size_t i = 0; i < nq; i++) o[i] = elem(ob, i, dt);
        for (size_t i = 0; i < ns; i++) {
            if (lse) lse[i] = elem(lb, i, sdt);
            if (tau) tau[i] = elem(tb, i, sdt);
        }
    }
    free(q); free(k); free(v); free(pk); free(ha); free(ob); free(lb); free(tb);
    return st;
}

/* Backward through the C API in f64 (tensors and precision): returns dq, dk, dv, dpk. */
static dashattn_status lib_backward64(const prob_t *p, const dashattn_config *c, const double *d_o, double *dq, double *dk, double *dv, double *dpk) {
    int nb = nblocks(p->lk, c->block_size);
    const int32_t dt = DASHATTN_DTYPE_F64;
    size_t nq = (size_t)p->n * p->lq * p->hq * p->d, nk = (size_t)p->n * p->lk * p->hkv * p->d, ns = (size_t)p->n * p->hq * p->lq;
    size_t npk = (size_t)p->n * nb * p->hkv * p->d;
    double *o = xmalloc((nq + 1) * sizeof(double)), *lse = xmalloc((ns + 1) * sizeof(double)), *tau = xmalloc((ns + 1) * sizeof(double));
    dashattn_status st = lib_forward(p, c, dt, o, lse, tau);
    if (st == DASHATTN_SUCCESS) {
        double *gq = xmalloc((nq + 1) * 8), *gk = xmalloc((nk + 1) * 8), *gv = xmalloc((nk + 1) * 8), *gp = xmalloc((npk + 1) * 8);
        float *ha = NULL;
        dashattn_tensor tq = t4(p->q, dt, p->n, p->lq, p->hq, p->d), tk = t4(p->k, dt, p->n, p->lk, p->hkv, p->d);
        dashattn_tensor tv = t4(p->v, dt, p->n, p->lk, p->hkv, p->d), tp = t4(p->pk, dt, p->n, nb, p->hkv, p->d);
        dashattn_tensor to = t4(o, dt, p->n, p->lq, p->hq, p->d), tdo = t4((void *)d_o, dt, p->n, p->lq, p->hq, p->d);
        dashattn_tensor tl = t3(lse, dt, p->n, p->hq, p->lq), tt = t3(tau, dt, p->n, p->hq, p->lq), th;
        dashattn_tensor tdq = t4(gq, dt, p->n, p->lq, p->hq, p->d), tdk = t4(gk, dt, p->n, p->lk, p->hkv, p->d);
        dashattn_tensor tdv = t4(gv, dt, p->n, p->lk, p->hkv, p->d), tdp = t4(gp, dt, p->n, nb, p->hkv, p->d);
        if (p->ha) {
            ha = xmalloc((size_t)p->hq * sizeof(float));
            for (int h = 0; h < p->hq; h++) ha[h] = (float)p->ha[h];
        }
        th = t1(ha, DASHATTN_DTYPE_F32, p->hq);
        st = dashattn_backward(g_ctx, c, &tq, &tk, &tv, p->pk ? &tp : NULL, ha ? &th : NULL, &to, &tdo, &tl, &tt, &tdq, &tdk,
                               &tdv, p->pk ? &tdp : NULL, NULL, 0);
        if (st == DASHATTN_SUCCESS) {
            memcpy(dq, gq, nq * 8);
            memcpy(dk, gk, nk * 8);
            memcpy(dv, gv, nk * 8);
            if (p->pk && dpk) memcpy(dpk, gp, npk * 8);
        }
        free(gq); free(gk); free(gv); free(gp); free(ha);
    }
    free(o); free(lse); free(tau);
    return st;
}

static double max_abs_diff(const double *a, const double *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d;
        if (isinf(a[i]) && isinf(b[i]) && (a[i] > 0) == (b[i] > 0)) continue;
        d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN sticks */
    }
    return m;
}

static double rel_l2(const double *a, const double *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    if (num != num) return INFINITY;
    return sqrt(num / (den > 1e-300 ? den : 1e-300));
}

/* ------------------------------------------------------------------------------------ */
/* Numerical tests                                                                      */

/* Plain softmax attention with GQA; causal = bottom-right aligned. */
static void plain_attention(const prob_t *p, int causal, double *o, double *lse) {
    int g = p->hq / p->hkv, d = p->d;
    double sigma = 1.0 / sqrt((double)d);
    double *lg = xmalloc(((size_t)p->lk + 1) * sizeof(double));
    for (int b = 0; b < p->n; b++)
        for (int r = 0; r < p->lq; r++)
            for (int h = 0; h < p->hq; h++) {
                long t = (long)p->lk - p->lq + r;
                int hk = h / g, na = causal ? (int)(t + 1 < p->lk ? (t + 1 > 0 ? t + 1 : 0) : p->lk) : p->lk;
                double m = -INFINITY, l = 0.0, *orow = o + (((size_t)b * p->lq + r) * p->hq + h) * d;
                for (int x = 0; x < d; x++) orow[x] = 0.0;
                for (int i = 0; i < na; i++) {
                    double s = 0.0;
                    for (int x = 0; x < d; x++)
                        s += p->q[(((size_t)b * p->lq + r) * p->hq + h) * d + x] * p->k[(((size_t)b * p->lk + i) * p->hkv + hk) * d + x];
                    lg[i] = sigma * s;
                    if (lg[i] > m) m = lg[i];
                }
                for (int i = 0; i < na; i++) {
                    double w = exp(lg[i] - m);
                    l += w;
                    for (int x = 0; x < d; x++) orow[x] += w * p->v[(((size_t)b * p->lk + i) * p->hkv + hk) * d + x];
                }
                if (na > 0)
                    for (int x = 0; x < d; x++) orow[x] /= l;
                lse[((size_t)b * p->hq + h) * p->lq + r] = na > 0 ? m + log(l) : -INFINITY;
            }
    free(lg);
}

static void test_no_candidates(void) {
    /* Causal: B = 16, Lk = 100 has blocks 0..6; n_local = 7 leaves no candidates. */
    struct { int n, lq, lk, hq, hkv, d, causal, n_local; } cases[] = {
        {2, 37, 100, 6, 2, 16, 1, 7},  /* chunk of a sequence, GQA */
        {1, 100, 100, 2, 2, 8, 1, 7},  /* prefill */
        {1, 20, 10, 2, 1, 8, 1, 1},    /* Lq > Lk: the first rows see no key */
        {2, 30, 100, 4, 2, 8, 0, 8},   /* non-causal, every block local */
        {1, 3, 0, 2, 1, 8, 1, 1},      /* Lk = 0 */
        {1, 3, 0, 2, 1, 8, 0, 0},      /* Lk = 0, non-causal, n_local = 0 */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        prob_t p = make_prob(cases[ci].n, cases[ci].lq, cases[ci].lk, cases[ci].hq, cases[ci].hkv, cases[ci].d, 16, 1.0);
        dashattn_config c = default_config();
        size_t nq = (size_t)p.n * p.lq * p.hq * p.d, ns = (size_t)p.n * p.hq * p.lq;
        double *o = xmalloc(nq * 8 + 8), *lse = xmalloc(ns * 8 + 8), *tau = xmalloc(ns * 8 + 8);
        double *ro = xmalloc(nq * 8 + 8), *rl = xmalloc(ns * 8 + 8);
        int tau_ok = 1;
        c.block_size = 16;
        c.n_local = cases[ci].n_local;
        c.causal = cases[ci].causal;
        round_prob(&p, DASHATTN_DTYPE_F32, 16);
        plain_attention(&p, c.causal, ro, rl);
        for (int prec = 0; prec < 2; prec++) {
            char label[96];
            c.precision = prec ? DASHATTN_PRECISION_F64 : DASHATTN_PRECISION_DEFAULT;
            sprintf(label, "no-candidates case %d (%s)", (int)ci, prec ? "f64 accumulation" : "f32");
            must(lib_forward(&p, &c, DASHATTN_DTYPE_F32, o, lse, tau), label);
            CHECK(max_abs_diff(o, ro, nq) <= 2e-6, "%s: max |o - softmax attention| = %g > %g", label, max_abs_diff(o, ro, nq), 2e-6);
            CHECK(max_abs_diff(lse, rl, ns) <= 2e-5, "%s: max |lse diff| = %g > %g", label, max_abs_diff(lse, rl, ns), 2e-5);
            for (size_t i = 0; i < ns; i++) tau_ok &= isinf(tau[i]) && tau[i] < 0;
            CHECK(tau_ok, "%s: tau is not -inf for rows without candidates", label, 0, 0);
        }
        free(o); free(lse); free(tau); free(ro); free(rl);
        free_prob(&p);
    }
}

static void test_forward_vs_reference(void) {
    struct { int n, lq, lk, hq, hkv, d, bs, causal, n_local, sel; double alpha; int use_ha, use_pk; } cases[] = {
        {2, 96, 96, 4, 2, 8, 16, 1, 1, 0, 1.5, 0, 0},
        {1, 40, 150, 6, 2, 16, 16, 1, 1, 1, 1.5, 0, 0},  /* per head, chunked, partial block */
        {1, 64, 130, 2, 1, 8, 16, 1, 2, 0, 2.0, 0, 0},  /* sparsemax */
        {1, 64, 130, 2, 1, 8, 16, 1, 1, 0, 1.0, 0, 0},  /* softmax prior */
        {2, 50, 128, 4, 4, 8, 32, 1, 1, 0, 1.25, 0, 0}, /* MHA, general alpha */
        {1, 70, 70, 4, 2, 8, 16, 0, 1, 0, 1.5, 0, 0},   /* non-causal */
        {1, 70, 70, 4, 2, 8, 16, 0, 0, 1, 1.7, 0, 0},   /* non-causal, no local blocks */
        {2, 80, 80, 4, 2, 8, 16, 1, 1, 1, 1.5, 1, 0},   /* per-head alpha */
        {2, 80, 80, 4, 2, 8, 16, 1, 1, 0, 1.5, 1, 0},   /* per-head alpha, per group: first head */
        {1, 80, 90, 4, 2, 8, 16, 1, 1, 0, 1.5, 0, 1},   /* caller pooled keys */
        {1, 96, 200, 2, 1, 8, 16, 1, 1, 0, 1.01, 0, 0}, /* alpha near 1 */
        {1, 96, 200, 2, 1, 8, 16, 1, 1, 1, 1.99, 0, 0}, /* alpha near 2 */
        {2, 50, 20, 4, 2, 8, 16, 0, 1, 0, 1.5, 0, 0},   /* non-causal, Lq > Lk */
        {1, 40, 300, 8, 2, 32, 64, 1, 1, 0, 1.5, 0, 0}, /* B = 64, G = 4 */
        {1, 30, 300, 2, 1, 16, 128, 1, 1, 1, 1.5, 0, 0}, /* B = 128 */
        {1, 64, 64, 2, 1, 256, 16, 1, 1, 0, 1.5, 0, 0}, /* D = 256 */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        prob_t p = make_prob(cases[ci].n, cases[ci].lq, cases[ci].lk, cases[ci].hq, cases[ci].hkv, cases[ci].d, cases[ci].bs, 1.5);
        dashattn_config c = default_config();
        int nb = nblocks(p.lk, cases[ci].bs);
        size_t nq = (size_t)p.n * p.lq * p.hq * p.d, ns = (size_t)p.n * p.hq * p.lq;
        double *o = xmalloc(nq * 8 + 8), *lse = xmalloc(ns * 8 + 8), *tau = xmalloc(ns * 8 + 8);
        double *ro = xmalloc(nq * 8 + 8), *rl = xmalloc(ns * 8 + 8), *rt = xmalloc(ns * 8 + 8);
        c.block_size = cases[ci].bs;
        c.causal = cases[ci].causal;
        c.n_local = cases[ci].n_local;
        c.selection = cases[ci].sel;
        c.alpha = (float)cases[ci].alpha;
        if (cases[ci].use_ha) {
            p.ha = xmalloc((size_t)p.hq * sizeof(double));
            for (int h = 0; h < p.hq; h++) p.ha[h] = (float)(1.0 + (double)h / (p.hq - 1)); /* 1 .. 2, as f32 */
        }
        if (cases[ci].use_pk) {
            size_t npk = (size_t)p.n * nb * p.hkv * p.d;
            p.pk = xmalloc(npk * sizeof(double));
            for (size_t i = 0; i < npk; i++) p.pk[i] = 1.5 * rng_normal();
        }
        /* modes: f64 tensors + f64 accumulation, f32, f16, bf16 (each on inputs rounded to
         * the dtype, compared with the double reference on the same rounded inputs). The
         * rounding is applied in place, from fine to coarse, so earlier modes are unaffected. */
        for (int mode = 0; mode < 4; mode++) {
            static const int32_t dts[4] = {DASHATTN_DTYPE_F64, DASHATTN_DTYPE_F32, DASHATTN_DTYPE_F16, DASHATTN_DTYPE_BF16};
            static const char *names[4] = {"f64", "f32", "f16", "bf16"};
            static const double rel_tol[4] = {1e-12, 1e-5, 2e-3, 1e-2};
            int32_t dt = dts[mode];
            double tol = mode == 0 ? 1e-9 : 2e-5;
            char label[96];
            sprintf(label, "forward case %d (%s)", (int)ci, names[mode]);
            c.precision = mode == 0 ? DASHATTN_PRECISION_F64 : DASHATTN_PRECISION_DEFAULT;
            if (mode > 0) round_prob(&p, dt, c.block_size);
            ref_forward(&p, &c, ro, rl, rt);
            must(lib_forward(&p, &c, dt, o, lse, tau), label);
            CHECK(rel_l2(o, ro, nq) <= rel_tol[mode], "%s: relative L2 error of o = %g > %g", label, rel_l2(o, ro, nq), rel_tol[mode]);
            if (mode <= 1) {
                CHECK(max_abs_diff(o, ro, nq) <= tol, "%s: max |o - reference| = %g > %g", label, max_abs_diff(o, ro, nq), tol);
                CHECK(max_abs_diff(lse, rl, ns) <= tol * 10, "%s: max |lse - reference| = %g > %g", label, max_abs_diff(lse, rl, ns), tol * 10);
                CHECK(max_abs_diff(tau, rt, ns) <= tol * 10, "%s: max |tau - reference| = %g > %g", label, max_abs_diff(tau, rt, ns), tol * 10);
            } else {
                CHECK(max_abs_diff(lse, rl, ns) <= 1e-4, "%s: max |lse - reference| = %g > %g", label, max_abs_diff(lse, rl, ns), 1e-4);
                CHECK(max_abs_diff(tau, rt, ns) <= 1e-4, "%s: max |tau - reference| = %g > %g", label, max_abs_diff(tau, rt, ns), 1e-4);
            }
        }
        free(o); free(lse); free(tau); free(ro); free(rl); free(rt);
        free_prob(&p);
    }
}

/* Workspace: the queried size works exactly; the library-managed path gives the same. */
static void test_workspace_roundtrip(void) {
    prob_t p = make_prob(2, 64, 64, 4, 2, 8, 16, 1.5);
    dashattn_config c = default_config();
    size_t nq = (size_t)p.n * p.lq * p.hq * p.d, nk = (size_t)p.n * p.lk * p.hkv * p.d, ws_size = 0;
    float *q, *k, *v, *o1 = xmalloc(nq * 4), *o2 = xmalloc(nq * 4);
    void *ws = NULL;
    dashattn_tensor tq, tk, tv, to;
    c.block_size = 16;
    q = to_dtype(p.q, nq, DASHATTN_DTYPE_F32);
    k = to_dtype(p.k, nk, DASHATTN_DTYPE_F32);
    v = to_dtype(p.v, nk, DASHATTN_DTYPE_F32);
    tq = t4(q, DASHATTN_DTYPE_F32, 2, 64, 4, 8);
    tk = t4(k, DASHATTN_DTYPE_F32, 2, 64, 2, 8);
    tv = t4(v, DASHATTN_DTYPE_F32, 2, 64, 2, 8);
    must(dashattn_forward_workspace_size(g_ctx, &c, &tq, &tk, &tv, NULL, &ws_size), "forward_workspace_size");
    CHECK(ws_size > 0, "%s: forward workspace size is ", "mean pooling needs scratch", (double)ws_size, 0);
    if (posix_memalign(&ws, 256, ws_size ? ws_size : 1) != 0) exit(2);
    to = t4(o1, DASHATTN_DTYPE_F32, 2, 64, 4, 8);
    must(dashattn_forward(g_ctx, &c, &tq, &tk, &tv, NULL, NULL, &to, NULL, NULL, ws, ws_size), "forward with exact workspace");
    to = t4(o2, DASHATTN_DTYPE_F32, 2, 64, 4, 8);
    must(dashattn_forward(g_ctx, &c, &tq, &tk, &tv, NULL, NULL, &to, NULL, NULL, NULL, 0), "forward without workspace");
    CHECK(memcmp(o1, o2, nq * 4) == 0, "%s", "forward with caller workspace differs from library-managed scratch", 0, 0);
    free(ws); free(q); free(k); free(v); free(o1); free(o2);
    free_prob(&p);
}

/* Results do not depend on the number of CPU threads (forward, and deterministic backward). */
static void test_thread_independence(void) {
    prob_t p = make_prob(2, 100, 150, 4, 2, 16, 16, 1.5);
    dashattn_config c = default_config();
    dashattn_context_options o;
    dashattn_context *one = NULL, *keep = g_ctx;
    size_t nq = (size_t)p.n * p.lq * p.hq * p.d, nk = (size_t)p.n * p.lk * p.hkv * p.d, ns = (size_t)p.n * p.hq * p.lq;
    double *o1 = xmalloc(nq * 8), *o2 = xmalloc(nq * 8), *l1 = xmalloc(ns * 8), *l2 = xmalloc(ns * 8), *t1_ = xmalloc(ns * 8), *t2_ = xmalloc(ns * 8);
    double *w = xmalloc(nq * 8), *g1[3], *g2[3];
    c.block_size = 16;
    for (int i = 0; i < 3; i++) {
        g1[i] = xmalloc((i ? nk : nq) * 8);
        g2[i] = xmalloc((i ? nk : nq) * 8);
    }
    for (size_t i = 0; i < nq; i++) w[i] = rng_normal();
    dashattn_context_options_default(&o);
    o.backend = DASHATTN_BACKEND_CPU;
    o.num_threads = 1;
    must(dashattn_context_create(&o, &one), "1-thread context");
    c.precision = DASHATTN_PRECISION_F64;
    must(lib_forward(&p, &c, DASHATTN_DTYPE_F32, o1, l1, t1_), "forward (all threads)");
    must(lib_backward64(&p, &c, w, g1[0], g1[1], g1[2], NULL), "backward (all threads)");
    g_ctx = one;
    must(lib_forward(&p, &c, DASHATTN_DTYPE_F32, o2, l2, t2_), "forward (1 thread)");
    must(lib_backward64(&p, &c, w, g2[0], g2[1], g2[2], NULL), "backward (1 thread)");
    g_ctx = keep;
    CHECK(memcmp(o1, o2, nq * 8) == 0 && memcmp(l1, l2, ns * 8) == 0 && memcmp(t1_, t2_, ns * 8) == 0, "%s", "forward differs between 1 and all threads", 0, 0);
    CHECK(memcmp(g1[0], g2[0], nq * 8) == 0 && memcmp(g1[1], g2[1], nk * 8) == 0 && memcmp(g1[2], g2[2], nk * 8) == 0, "%s",
          "deterministic backward differs between 1 and all threads", 0, 0);
    must(dashattn_context_destroy(one), "destroy 1-thread context");
    for (int i = 0; i < 3; i++) {
        free(g1[i]);
        free(g2[i]);
    }
    free(o1); free(o2); free(l1); free(l2); free(t1_); free(t2_); free(w);
    free_prob(&p);
}

/* dashattn_merge_states: attention over two disjoint key halves, merged by lse, equals
 * attention over all keys (non-causal with every block local: plain softmax attention). */
static void test_merge_states(void) {
    const int N = 2, LQ = 7, LK = 90, SPLIT = 37, H = 4, HKV = 2, D = 8;
    prob_t p = make_prob(N, LQ, LK, H, HKV, D, 16, 1.0);
    dashattn_config c = default_config();
    size_t nq = (size_t)N * LQ * H * D, ns = (size_t)N * H * LQ;
    double *of = xmalloc(nq * 8), *lf = xmalloc(ns * 8), *op[2], *lp[2], *om = xmalloc(nq * 8), *lm = xmalloc(ns * 8);
    float *parts = xmalloc(2 * nq * 4), *lparts = xmalloc(2 * ns * 4), *ob = xmalloc(nq * 4), *lb = xmalloc(ns * 4);
    dashattn_tensor to_parts, tl_parts, to, tl;
    int64_t sh5[5], sh3[3];
    c.block_size = 16;
    c.causal = 0;
    c.n_local = 64;
    round_prob(&p, DASHATTN_DTYPE_F32, 16);
    must(lib_forward(&p, &c, DASHATTN_DTYPE_F32, of, lf, NULL), "merge: full forward");
    for (int part = 0; part < 2; part++) {
        prob_t h = p;
        int lo = part ? SPLIT : 0, hi = part ? LK : SPLIT;
        size_t row = (size_t)HKV * D;
        h.lk = hi - lo;
        h.k = xmalloc((size_t)N * h.lk * row * 8);
        h.v = xmalloc((size_t)N * h.lk * row * 8);
        for (int b = 0; b < N; b++) {
            memcpy(h.k + (size_t)b * h.lk * row, p.k + ((size_t)b * LK + lo) * row, (size_t)h.lk * row * 8);
            memcpy(h.v + (size_t)b * h.lk * row, p.v + ((size_t)b * LK + lo) * row, (size_t)h.lk * row * 8);
        }
        op[part] = xmalloc(nq * 8);
        lp[part] = xmalloc(ns * 8);
        must(lib_forward(&h, &c, DASHATTN_DTYPE_F32, op[part], lp[part], NULL), "merge: partial forward");
        for (size_t i = 0; i < nq; i++) parts[part * nq + i] = (float)op[part][i];
        for (size_t i = 0; i < ns; i++) lparts[part * ns + i] = (float)lp[part][i];
        free(h.k);
        free(h.v);
    }
    sh5[0] = 2; sh5[1] = N; sh5[2] = LQ; sh5[3] = H; sh5[4] = D;
    to_parts = tensor(parts, DASHATTN_DTYPE_F32, 5, sh5);
    sh3[0] = N; sh3[1] = H; sh3[2] = LQ;
    tl_parts = t4(lparts, DASHATTN_DTYPE_F32, 2, N, H, LQ);
    to = t4(ob, DASHATTN_DTYPE_F32, N, LQ, H, D);
    tl = tensor(lb, DASHATTN_DTYPE_F32, 3, sh3);
    must(dashattn_merge_states(g_ctx, &to_parts, &tl_parts, &to, &tl), "merge_states");
    for (size_t i = 0; i < nq; i++) om[i] = ob[i];
    for (size_t i = 0; i < ns; i++) lm[i] = lb[i];
    CHECK(max_abs_diff(om, of, nq) <= 2e-6, "%s: max |o_merged - o_full| = %g > %g", "merge_states", max_abs_diff(om, of, nq), 2e-6);
    CHECK(max_abs_diff(lm, lf, ns) <= 2e-5, "%s: max |lse_merged - lse_full| = %g > %g", "merge_states", max_abs_diff(lm, lf, ns), 2e-5);
    /* a part with lse = -inf contributes nothing: [part 0, empty] merges to part 0 exactly */
    for (size_t i = 0; i < ns; i++) lparts[ns + i] = -INFINITY;
    must(dashattn_merge_states(g_ctx, &to_parts, &tl_parts, &to, &tl), "merge_states with an empty part");
    {
        int same = 1;
        for (size_t i = 0; i < nq; i++) same &= ob[i] == parts[i];
        for (size_t i = 0; i < ns; i++) same &= lb[i] == lparts[i];
        CHECK(same, "%s", "merge_states: [x, empty] is not exactly x", 0, 0);
    }
    for (size_t i = 0; i < ns; i++) lparts[i] = -INFINITY;
    must(dashattn_merge_states(g_ctx, &to_parts, &tl_parts, &to, &tl), "merge_states with all parts empty");
    {
        int ok = 1;
        for (size_t i = 0; i < nq; i++) ok &= ob[i] == 0.0f;
        for (size_t i = 0; i < ns; i++) ok &= isinf(lb[i]) && lb[i] < 0;
        CHECK(ok, "%s", "merge_states: all parts empty must give o = 0, lse = -inf", 0, 0);
    }
    free(of); free(lf); free(om); free(lm); free(parts); free(lparts); free(ob); free(lb);
    for (int i = 0; i < 2; i++) {
        free(op[i]);
        free(lp[i]);
    }
    free_prob(&p);
}

/* --- paged cache helpers --- */
typedef struct {
    int n, num_pages, page, max_pages, slots, hkv, d, bs;
    int32_t dt;
    void *kc, *vc, *pc;
    int32_t *table, *lens;
} paged_t;

/* Lays sequences b (first lens[b] keys of p) out in shuffled pages (f32 or f16). */
static paged_t make_paged(const prob_t *p, const int *lens, int page, int bs, int32_t dt) {
    paged_t g;
    int *perm;
    size_t row = (size_t)p->hkv * p->d, es = dsize(dt);
    memset(&g, 0, sizeof g);
    g.n = p->n; g.page = page; g.bs = bs; g.hkv = p->hkv; g.d = p->d; g.dt = dt;
    g.max_pages = (p->lk + page - 1) / page;
    g.num_pages = p->n * g.max_pages + 3;
    g.slots = page / bs > 1 ? page / bs : 1;
    perm = xmalloc((size_t)g.num_pages * sizeof(int));
    for (int i = 0; i < g.num_pages; i++) perm[i] = i;
    for (int i = g.num_pages - 1; i > 0; i--) {
        int j = (int)(rng_u64() % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    g.table = xmalloc((size_t)g.n * g.max_pages * sizeof(int32_t));
    g.lens = xmalloc((size_t)g.n * sizeof(int32_t));
    g.kc = xmalloc((size_t)g.num_pages * page * row * es);
    g.vc = xmalloc((size_t)g.num_pages * page * row * es);
    g.pc = xmalloc((size_t)g.num_pages * g.slots * row * es);
    memset(g.kc, 0x7f, (size_t)g.num_pages * page * row * es); /* garbage outside the sequences */
    memset(g.vc, 0x7f, (size_t)g.num_pages * page * row * es);
    memset(g.pc, 0xA5, (size_t)g.num_pages * g.slots * row * es);
    for (int b = 0; b < g.n; b++) {
        g.lens[b] = lens[b];
        for (int i = 0; i < g.max_pages; i++) g.table[(size_t)b * g.max_pages + i] = perm[b * g.max_pages + i];
        for (int i = 0; i < lens[b]; i++) {
            int pg = g.table[(size_t)b * g.max_pages + i / page];
            for (size_t x = 0; x < row; x++) {
                size_t dst = ((size_t)pg * page + (size_t)(i % page)) * row + x, src = ((size_t)b * p->lk + i) * row + x;
                if (dt == DASHATTN_DTYPE_F16) {
                    ((uint16_t *)g.kc)[dst] = f32_to_f16((float)p->k[src]);
                    ((uint16_t *)g.vc)[dst] = f32_to_f16((float)p->v[src]);
                } else {
                    ((float *)g.kc)[dst] = (float)p->k[src];
                    ((float *)g.vc)[dst] = (float)p->v[src];
                }
            }
        }
    }
    free(perm);
    return g;
}
static void free_paged(paged_t *g) {
    free(g->kc); free(g->vc); free(g->pc); free(g->table); free(g->lens);
}
static dashattn_status paged_pool(paged_t *g, const dashattn_config *c, const int32_t *prev, const int32_t *lens) {
    dashattn_tensor kc = t4(g->kc, g->dt, g->num_pages, g->page, g->hkv, g->d);
    dashattn_tensor pc = t4(g->pc, g->dt, g->num_pages, g->slots, g->hkv, g->d);
    dashattn_tensor bt = t2(g->table, DASHATTN_DTYPE_I32, g->n, g->max_pages);
    dashattn_tensor pl = t1((void *)prev, DASHATTN_DTYPE_I32, g->n), sl = t1((void *)lens, DASHATTN_DTYPE_I32, g->n);
    return dashattn_pool_keys_paged(g_ctx, c, &kc, &pc, &bt, &pl, &sl, NULL, 0);
}

static void test_pool_and_decode(void) {
    struct { int page, bs, q_len, sel; int32_t dt; } cases[] = {
        {16, 16, 1, 0, DASHATTN_DTYPE_F32},
        {8, 16, 1, 0, DASHATTN_DTYPE_F32},  /* pages smaller than blocks */
        {64, 16, 4, 0, DASHATTN_DTYPE_F32}, /* several blocks per page, q_len 4 */
        {32, 32, 3, 1, DASHATTN_DTYPE_F32}, /* per head */
        {32, 16, 1, 0, DASHATTN_DTYPE_F16},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int lens[3] = {70, 129, 200}, bs = cases[ci].bs, ql = cases[ci].q_len;
        int32_t dt = cases[ci].dt, prev0[3] = {0, 0, 0}, mid[3], lens32[3];
        prob_t p = make_prob(3, 1, 200, 4, 2, 8, bs, 1.5);
        dashattn_config c = default_config();
        paged_t g;
        size_t row = (size_t)p.hkv * p.d, nqd = (size_t)p.n * ql * p.hq * p.d;
        double *qd = xmalloc(nqd * sizeof(double));
        double maxdiff = 0.0, maxl = 0.0, maxpool = 0.0;
        int untouched = 1;
        char label[96];
        c.block_size = bs;
        c.selection = cases[ci].sel;
        round_prob(&p, dt, bs);
        for (size_t i = 0; i < nqd; i++) qd[i] = rng_normal();
        round_to(qd, nqd, dt);
        g = make_paged(&p, lens, cases[ci].page, bs, dt);
        sprintf(label, "pool/decode case %d", (int)ci);
        /* Pool in two steps: 0 -> mid, mid -> len (must equal pooling at once). */
        for (int b = 0; b < 3; b++) {
            mid[b] = lens[b] / 2 + 3;
            lens32[b] = lens[b];
        }
        must(paged_pool(&g, &c, prev0, mid), label);
        must(paged_pool(&g, &c, mid, lens32), label);
        for (int b = 0; b < 3; b++) {
            int nfull = lens[b] / bs;
            for (int j = 0; j < nblocks(200, bs); j++) {
                int tok = j * bs;
                int pg, slot;
                if (tok >= g.max_pages * g.page) break;
                pg = g.table[(size_t)b * g.max_pages + tok / g.page];
                slot = (tok % g.page) / bs;
                for (int h = 0; h < p.hkv; h++)
                    for (int x = 0; x < p.d; x++) {
                        size_t at = (((size_t)pg * g.slots + slot) * p.hkv + h) * p.d + x;
                        if (j < nfull) {
                            double s = 0.0, got = elem(g.pc, at, dt), df;
                            for (int i = tok; i < tok + bs; i++) s += p.k[(((size_t)b * p.lk + i) * p.hkv + h) * p.d + x];
                            s /= bs;
                            df = fabs(got - s);
                            if (!(df <= maxpool)) maxpool = df;
                        } else {
                            /* incomplete block: never written */
                            const unsigned char *bytes = (const unsigned char *)g.pc + at * dsize(dt);
                            for (size_t y = 0; y < dsize(dt); y++) untouched &= bytes[y] == 0xA5;
                        }
                    }
            }
        }
        CHECK(maxpool <= (dt == DASHATTN_DTYPE_F16 ? 2e-3 : 1e-5), "%s: pooled keys differ from the C means by %g (tol %g)", label, maxpool,
              dt == DASHATTN_DTYPE_F16 ? 2e-3 : 1e-5);
        CHECK(untouched, "%s: pool_keys_paged wrote the slot of an incomplete block", label, 0, 0);
        {
            void *q = to_dtype(qd, nqd, dt), *o = xmalloc(nqd * dsize(dt));
            float *lse = xmalloc((size_t)p.n * p.hq * ql * sizeof(float));
            dashattn_tensor tq = t4(q, dt, p.n, ql, p.hq, p.d), to = t4(o, dt, p.n, ql, p.hq, p.d);
            dashattn_tensor kc = t4(g.kc, dt, g.num_pages, g.page, p.hkv, p.d), vc = t4(g.vc, dt, g.num_pages, g.page, p.hkv, p.d);
            dashattn_tensor pc = t4(g.pc, dt, g.num_pages, g.slots, p.hkv, p.d);
            dashattn_tensor bt = t2(g.table, DASHATTN_DTYPE_I32, p.n, g.max_pages), sl = t1(lens32, DASHATTN_DTYPE_I32, p.n);
            dashattn_tensor tl = t3(lse, DASHATTN_DTYPE_F32, p.n, p.hq, ql);
            must(dashattn_decode(g_ctx, &c, &tq, &kc, &vc, &pc, &bt, &sl, NULL, &to, &tl, NULL, 0), label);
            for (int b = 0; b < 3; b++) {
                /* Forward on sequence b alone, contiguous, Lq = q_len (its last rows). For
                 * f16 the pooled keys are those of the cache (rounded to f16), so both sides
                 * see identical inputs; f32 mean-pools inside the forward. */
                prob_t s;
                int nb = nblocks(lens[b], bs);
                size_t nqs = (size_t)ql * p.hq * p.d;
                double *os = xmalloc(nqs * 8), *ls = xmalloc((size_t)p.hq * ql * 8);
                memset(&s, 0, sizeof s);
                s.n = 1; s.lq = ql; s.lk = lens[b]; s.hq = p.hq; s.hkv = p.hkv; s.d = p.d;
                s.q = qd + (size_t)b * nqs;
                s.k = p.k + (size_t)b * p.lk * row;
                s.v = p.v + (size_t)b * p.lk * row;
                if (dt == DASHATTN_DTYPE_F16) {
                    s.pk = xmalloc((size_t)nb * row * sizeof(double));
                    for (int j = 0; j < nb; j++)
                        for (size_t x = 0; x < row; x++) {
                            int tok = j * bs, pg = g.table[(size_t)b * g.max_pages + tok / g.page], slot = (tok % g.page) / bs;
                            s.pk[(size_t)j * row + x] = j < lens[b] / bs ? elem(g.pc, ((size_t)pg * g.slots + slot) * row + x, dt) : 0.0;
                        }
                }
                must(lib_forward(&s, &c, dt, os, ls, NULL), "forward for decode check");
                for (size_t i = 0; i < nqs; i++) {
                    double df = fabs(elem(o, (size_t)b * nqs + i, dt) - os[i]);
                    if (!(df <= maxdiff)) maxdiff = df;
                }
                for (int h = 0; h < p.hq; h++)
                    for (int r = 0; r < ql; r++) {
                        double df = fabs((double)lse[((size_t)b * p.hq + h) * ql + r] - ls[(size_t)h * ql + r]);
                        if (!(df <= maxl)) maxl = df;
                    }
                free(s.pk); free(os); free(ls);
            }
            CHECK(maxdiff <= (dt == DASHATTN_DTYPE_F16 ? 1e-3 : 1e-5), "%s: decode differs from forward by %g (tol %g)", label, maxdiff,
                  dt == DASHATTN_DTYPE_F16 ? 1e-3 : 1e-5);
            CHECK(maxl <= 1e-5, "%s: decode lse differs from forward by %g (tol %g)", label, maxl, 1e-5);
            free(q); free(o); free(lse);
        }
        free(qd);
        free_paged(&g);
        free_prob(&p);
    }
}

/* Gradients vs. central finite differences of L = sum(w * o), all in f64. */
static void test_backward_fd(void) {
    struct { int lq, lk, hq, hkv, sel, causal, n_local, use_pk; double alpha; } cases[] = {
        {64, 64, 2, 1, 0, 1, 1, 0, 1.5},
        {24, 64, 4, 2, 1, 1, 1, 0, 1.25},
        {64, 64, 2, 1, 0, 1, 1, 0, 2.0},
        {48, 64, 2, 2, 0, 1, 1, 0, 1.0},
        {40, 56, 2, 1, 1, 0, 1, 0, 1.5}, /* non-causal with a partial block */
        {64, 64, 4, 2, 0, 1, 1, 1, 1.5}, /* caller pooled keys: d_pooled_k */
        {64, 64, 6, 2, 0, 1, 1, 0, 1.5}, /* per group, G = 3: the 1/G factor */
        {48, 80, 4, 2, 0, 1, 2, 2, 1.5}, /* n_local 2; use_pk = 2: per-head alpha instead */
    };
    const double eps = 1e-5;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        prob_t p = make_prob(1, cases[ci].lq, cases[ci].lk, cases[ci].hq, cases[ci].hkv, 4, 16, 1.0);
        dashattn_config c = default_config();
        int nb = nblocks(p.lk, 16), nsel_rows = 0;
        size_t nq = (size_t)p.lq * p.hq * p.d, nk = (size_t)p.lk * p.hkv * p.d, npk = (size_t)nb * p.hkv * p.d, ns = (size_t)p.hq * p.lq;
        double *w = xmalloc(nq * 8), *o = xmalloc(nq * 8), *gq = xmalloc(nq * 8), *gk = xmalloc(nk * 8), *gv = xmalloc(nk * 8);
        double *gp = xmalloc(npk * 8 + 8), *gq2 = xmalloc(nq * 8), *gk2 = xmalloc(nk * 8), *gv2 = xmalloc(nk * 8), *gp2 = xmalloc(npk * 8 + 8);
        double *tau = xmalloc(ns * 8);
        double *arrays[4];
        size_t sizes[4];
        const char *names[4] = {"dq", "dk", "dv", "d_pooled_k"};
        double *grads[4];
        char label[96];
        c.block_size = 16;
        c.precision = DASHATTN_PRECISION_F64;
        c.selection = cases[ci].sel;
        c.causal = cases[ci].causal;
        c.n_local = cases[ci].n_local;
        c.alpha = (float)cases[ci].alpha;
        if (cases[ci].use_pk == 2) {
            p.ha = xmalloc((size_t)p.hq * sizeof(double));
            for (int h = 0; h < p.hq; h++) p.ha[h] = (float)(1.0 + 0.3 * h);
        } else if (cases[ci].use_pk) {
            p.pk = xmalloc(npk * 8);
            for (size_t i = 0; i < npk; i++) p.pk[i] = rng_normal();
        }
        for (size_t i = 0; i < nq; i++) w[i] = rng_normal();
        sprintf(label, "backward case %d", (int)ci);
        must(lib_backward64(&p, &c, w, gq, gk, gv, gp), label);
        must(lib_backward64(&p, &c, w, gq2, gk2, gv2, gp2), label);
        CHECK(memcmp(gq, gq2, nq * 8) == 0 && memcmp(gk, gk2, nk * 8) == 0 && memcmp(gv, gv2, nk * 8) == 0 &&
                  (!p.pk || memcmp(gp, gp2, npk * 8) == 0),
              "%s: deterministic backward differs between two runs", label, 0, 0);
        /* make sure the case exercises the coarse stage: some row with >= 2 candidates selected */
        must(lib_forward(&p, &c, DASHATTN_DTYPE_F64, o, NULL, tau), label);
        for (size_t i = 0; i < ns; i++) nsel_rows += isfinite(tau[i]) ? 1 : 0;
        CHECK(nsel_rows > 0, "%s: no row has candidate blocks", label, 0, 0);
        arrays[0] = p.q; arrays[1] = p.k; arrays[2] = p.v; arrays[3] = p.pk;
        sizes[0] = nq; sizes[1] = nk; sizes[2] = nk; sizes[3] = p.pk ? npk : 0;
        grads[0] = gq; grads[1] = gk; grads[2] = gv; grads[3] = gp;
        for (int a = 0; a < 4; a++) {
            double worst_a = 0.0;
            for (size_t i = 0; i < sizes[a]; i++) {
                double keep = arrays[a][i], lp = 0.0, lm = 0.0, fd, err;
                arrays[a][i] = keep + eps;
                if (lib_forward(&p, &c, DASHATTN_DTYPE_F64, o, NULL, NULL) != DASHATTN_SUCCESS) must(DASHATTN_ERR_INTERNAL, "fd forward");
                for (size_t x = 0; x < nq; x++) lp += w[x] * o[x];
                arrays[a][i] = keep - eps;
                if (lib_forward(&p, &c, DASHATTN_DTYPE_F64, o, NULL, NULL) != DASHATTN_SUCCESS) must(DASHATTN_ERR_INTERNAL, "fd forward");
                for (size_t x = 0; x < nq; x++) lm += w[x] * o[x];
                arrays[a][i] = keep;
                fd = (lp - lm) / (2 * eps);
                err = fabs(fd - grads[a][i]) / (1e-3 + fabs(fd));
                if (!(err <= worst_a)) worst_a = err;
            }
            {
                char l2[128];
                sprintf(l2, "%s: %s", label, names[a]);
                CHECK(worst_a <= 1e-5, "%s vs central differences: worst relative error %g (tol %g)", l2, worst_a, 1e-5);
            }
        }
        free(w); free(o); free(gq); free(gk); free(gv); free(gp); free(gq2); free(gk2); free(gv2); free(gp2); free(tau);
        free_prob(&p);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Error paths                                                                          */

#define POISON 0xA5
#define OUTBUF (1u << 20)

static char g_sentinel[256];

/* Makes the thread's last error message a known, unrelated one. */
static void set_sentinel(void) {
    dashattn_context_options o;
    dashattn_context *c = NULL;
    dashattn_context_options_default(&o);
    o.struct_size = 12345u;
    if (dashattn_context_create(&o, &c) == DASHATTN_SUCCESS) {
        printf("FAIL: context_create accepted struct_size 12345\n");
        n_fail++;
        dashattn_context_destroy(c);
    }
    dashattn_last_error_message(g_sentinel, sizeof g_sentinel);
}

static unsigned char *g_outs[8];
static size_t g_out_size[8];
static int g_nouts;
static void outs_set(int n, ...);
static void outs_poison(void) {
    for (int i = 0; i < g_nouts; i++) memset(g_outs[i], POISON, g_out_size[i]);
}
static int outs_poisoned(void) {
    for (int i = 0; i < g_nouts; i++)
        for (size_t j = 0; j < g_out_size[i]; j++)
            if (g_outs[i][j] != POISON) return 0;
    return 1;
}

/* Checks an error call: status, a fresh non-empty message (containing `hint` when given),
 * and untouched outputs. */
static void expect_err(dashattn_status got, dashattn_status want, const char *what, const char *hint) {
    char msg[1024];
    size_t n = dashattn_last_error_message(NULL, 0);
    dashattn_last_error_message(msg, sizeof msg);
    if (got != want) {
        n_fail++;
        printf("FAIL %s: status %d (%s), expected %d (%s); message: %s\n", what, (int)got, dashattn_status_string(got), (int)want,
               dashattn_status_string(want), got ? msg : "-");
    } else {
        n_pass++;
    }
    if (want != DASHATTN_SUCCESS) {
        if (got != DASHATTN_SUCCESS) {
            if (n > 0 && strlen(msg) > 0 && strcmp(msg, g_sentinel) != 0) {
                n_pass++;
            } else {
                n_fail++;
                printf("FAIL %s: no fresh error message (got \"%s\")\n", what, msg);
            }
            if (hint && !strstr(msg, hint)) {
                n_fail++;
                printf("FAIL %s: message \"%s\" does not mention \"%s\"\n", what, msg, hint);
            } else {
                n_pass++;
            }
        }
        CHECK(outs_poisoned(), "%s: an output buffer was written although the call failed", what, 0, 0);
    }
}

static float *g_fill(size_t n) {
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)rng_normal();
    return p;
}

/* ---- forward ---- */
typedef struct {
    dashattn_context *ctx;
    dashattn_config cfg;
    int cfg_null;
    dashattn_tensor q, k, v, pk, ha, o, lse, tau;
    int use_pk, use_ha, use_lse, use_tau;
    int null_q, null_k, null_v, null_o;
    void *ws;
    size_t ws_size;
} fwd_call;

static dashattn_status fwd_run(const fwd_call *c) {
    return dashattn_forward(c->ctx, c->cfg_null ? NULL : &c->cfg, c->null_q ? NULL : &c->q, c->null_k ? NULL : &c->k, c->null_v ? NULL : &c->v,
                            c->use_pk ? &c->pk : NULL, c->use_ha ? &c->ha : NULL, c->null_o ? NULL : &c->o, c->use_lse ? &c->lse : NULL,
                            c->use_tau ? &c->tau : NULL, c->ws, c->ws_size);
}
static void fwd_expect(const fwd_call *c, dashattn_status want, const char *what, const char *hint) {
    char label[160];
    dashattn_status st;
    outs_poison();
    set_sentinel();
    st = fwd_run(c);
    sprintf(label, "forward: %s", what);
    expect_err(st, want, label, hint);
}

static unsigned char *g_ob, *g_lb, *g_tb, *g_ob2, *g_ob3, *g_ob4;

static void outs_set(int n, ...) {
    va_list ap;
    va_start(ap, n);
    g_nouts = n;
    for (int i = 0; i < n; i++) {
        g_outs[i] = va_arg(ap, unsigned char *);
        g_out_size[i] = OUTBUF;
    }
    va_end(ap);
}

static void test_forward_errors(void) {
    const int N = 2, L = 64, HQ = 4, HKV = 2, D = 8, BS = 16, NB = 4;
    float *q = g_fill(OUTBUF / 4), *k = g_fill(OUTBUF / 4), *v = g_fill(OUTBUF / 4), *pk = g_fill(OUTBUF / 4);
    float ha[8] = {1.5f, 1.5f, 1.5f, 1.5f, 1.5f, 1.5f, 1.5f, 1.5f};
    unsigned char *fake_ctx = calloc(1, 256);
    void *ws = NULL;
    size_t ws_need = 0, out_size;
    fwd_call b, c;
    memset(&b, 0, sizeof b);
    b.ctx = g_ctx;
    b.cfg = default_config();
    b.cfg.block_size = BS;
    b.q = t4(q, DASHATTN_DTYPE_F32, N, L, HQ, D);
    b.k = t4(k, DASHATTN_DTYPE_F32, N, L, HKV, D);
    b.v = t4(v, DASHATTN_DTYPE_F32, N, L, HKV, D);
    b.pk = t4(pk, DASHATTN_DTYPE_F32, N, NB, HKV, D);
    b.ha = t1(ha, DASHATTN_DTYPE_F32, HQ);
    b.o = t4(g_ob, DASHATTN_DTYPE_F32, N, L, HQ, D);
    b.lse = t3(g_lb, DASHATTN_DTYPE_F32, N, HQ, L);
    b.tau = t3(g_tb, DASHATTN_DTYPE_F32, N, HQ, L);
    b.use_lse = b.use_tau = 1;
    outs_set(3, g_ob, g_lb, g_tb);

    /* the base call and simple variants succeed */
    c = b; fwd_expect(&c, DASHATTN_SUCCESS, "valid base call", NULL);
    c = b; c.use_pk = c.use_ha = 1; fwd_expect(&c, DASHATTN_SUCCESS, "valid with pooled_k and head_alpha", NULL);
    c = b; c.cfg.alpha = 1.0f; fwd_expect(&c, DASHATTN_SUCCESS, "alpha = 1 (edge)", NULL);
    c = b; c.cfg.alpha = 2.0f; fwd_expect(&c, DASHATTN_SUCCESS, "alpha = 2 (edge)", NULL);
    c = b; c.cfg.causal = 0; c.cfg.n_local = 0; fwd_expect(&c, DASHATTN_SUCCESS, "non-causal with n_local = 0", NULL);
    c = b; c.q.strides[0] = 0; fwd_expect(&c, DASHATTN_SUCCESS, "broadcast input (stride 0)", NULL);
    c = b; c.o.shape[3] = 1; c.o.strides[3] = 7; c.q.shape[3] = 1; c.k.shape[3] = 1; c.v.shape[3] = 1;
    fwd_expect(&c, DASHATTN_SUCCESS, "D = 1 with any last stride", NULL);
    c = b; c.k.shape[1] = c.v.shape[1] = 0; c.k.data = c.v.data = NULL;
    fwd_expect(&c, DASHATTN_SUCCESS, "Lk = 0 with NULL k/v data (no elements)", NULL);

    /* NULL pointers */
    c = b; c.ctx = NULL; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "ctx NULL", "ctx");
    c = b; c.ctx = (dashattn_context *)(void *)fake_ctx; fwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "ctx not a context", "ctx");
    c = b; c.cfg_null = 1; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "config NULL", "config");
    c = b; c.null_q = 1; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "q NULL", "q");
    c = b; c.null_k = 1; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "k NULL", "k");
    c = b; c.null_v = 1; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "v NULL", "v");
    c = b; c.null_o = 1; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "o NULL", "o");
    c = b; c.q.data = NULL; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "q.data NULL", "q.data");
    c = b; c.o.data = NULL; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "o.data NULL", "o.data");
    c = b; c.use_lse = 1; c.lse.data = NULL; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "lse.data NULL", "lse");

    /* rank / shape */
    c = b; c.q.rank = 3; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q rank 3", "q");
    c = b; c.q.rank = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q rank 0", "q");
    c = b; c.q.rank = 7; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q rank 7", "q");
    c = b; c.q.rank = -1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q rank -1", "q");
    c = b; c.k.rank = 5; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "k rank 5", "k");
    c = b; c.lse.rank = 2; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "lse rank 2", "lse");
    c = b; c.k.shape[0] = N + 1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "k batch differs from q", "k");
    c = b; c.k.shape[3] = D / 2; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "k head dim differs", "k");
    c = b; c.v.shape[1] = L - 1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "v length differs from k", "v");
    c = b; c.o.shape[1] = L - 1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "o shape differs from q", "o");
    c = b; c.lse = t3(g_lb, DASHATTN_DTYPE_F32, N, L, HQ); fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "lse [N, Lq, Hq] instead of [N, Hq, Lq]", "lse");
    c = b; c.tau.shape[0] = 1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "tau batch wrong", "tau");
    c = b; c.use_pk = 1; c.pk.shape[1] = NB + 1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "pooled_k with nb + 1 blocks", "pooled_k");
    c = b; c.use_ha = 1; c.ha.shape[0] = HQ + 1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "head_alpha [Hq + 1]", "head_alpha");
    c = b; c.q.shape[1] = -1; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "negative Lq", "q");
    c = b; c.k.shape[2] = -2; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "negative Hkv", "k");
    c = b; c.q.shape[2] = 3; c.o.shape[2] = 3; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "Hq = 3 not a multiple of Hkv = 2", "Hkv");
    c = b; c.k.shape[2] = 0; c.v.shape[2] = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "Hkv = 0", NULL);
    c = b; c.q.shape[3] = c.k.shape[3] = c.v.shape[3] = c.o.shape[3] = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "D = 0", "D");
    c = b; c.q = t4(q, DASHATTN_DTYPE_F32, 1, 8, 2, 257); c.k = t4(k, DASHATTN_DTYPE_F32, 1, 8, 2, 257);
    c.v = t4(v, DASHATTN_DTYPE_F32, 1, 8, 2, 257); c.o = t4(g_ob, DASHATTN_DTYPE_F32, 1, 8, 2, 257); c.use_lse = c.use_tau = 0;
    fwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "D = 257", "D");

    /* strides */
    c = b; c.q.strides[0] = -5; fwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "negative q stride", "q");
    c = b; c.k.strides[3] = 2; fwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "k last dim not contiguous", "k");
    c = b; c.o.strides[3] = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "o last stride 0", "o");
    c = b; c.o.strides[0] = c.o.strides[1] = c.o.strides[2] = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "o overlapping itself", "o");
    c = b; c.lse.strides[2] = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "lse overlapping itself", "lse");
    c = b; c.o.strides[1] = 4; fwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "o rows interleaved", "o");

    /* dtypes */
    c = b; c.k.dtype = DASHATTN_DTYPE_F16; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "k f16 with q f32", "k");
    c = b; c.v.dtype = DASHATTN_DTYPE_BF16; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "v bf16 with q f32", "v");
    c = b; c.o.dtype = DASHATTN_DTYPE_F16; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "o f16 with q f32", "o");
    c = b; c.q.dtype = 99; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "q dtype 99", "q");
    c = b; c.o.dtype = -1; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "o dtype -1", "o");
    c = b; c.q.dtype = c.k.dtype = c.v.dtype = c.o.dtype = DASHATTN_DTYPE_I32; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "i32 attention tensors", "q");
    c = b; c.lse.dtype = DASHATTN_DTYPE_F16; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "lse f16", "lse");
    c = b; c.use_ha = 1; c.ha.dtype = DASHATTN_DTYPE_F64; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "head_alpha f64", "head_alpha");
    c = b; c.use_pk = 1; c.pk.dtype = DASHATTN_DTYPE_F16; fwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "pooled_k f16 with q f32", "pooled_k");

    /* config values */
    {
        float bad_alpha[6];
        const char *names[6] = {"alpha 0.5", "alpha 2.5", "alpha NaN", "alpha +inf", "alpha -inf", "alpha 0.99999"};
        bad_alpha[0] = 0.5f; bad_alpha[1] = 2.5f; bad_alpha[2] = (float)NAN; bad_alpha[3] = (float)INFINITY;
        bad_alpha[4] = -(float)INFINITY; bad_alpha[5] = 0.99999f;
        for (int i = 0; i < 6; i++) {
            /* a config field: INVALID_CONFIG (per-head alpha values below: INVALID_ARGUMENT) */
            c = b; c.cfg.alpha = bad_alpha[i]; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, names[i], "alpha");
        }
        for (int i = 0; i < 3; i++) {
            float keep = ha[1];
            ha[1] = bad_alpha[i];
            c = b; c.use_ha = 1; fwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, names[i], "head_alpha");
            ha[1] = keep;
        }
    }
    {
        int bad_bs[6] = {0, 8, 48, 256, -64, 65};
        for (int i = 0; i < 6; i++) {
            c = b; c.cfg.block_size = bad_bs[i]; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "unsupported block size", "block_size");
        }
    }
    c = b; c.cfg.n_local = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "causal with n_local = 0", "n_local");
    c = b; c.cfg.n_local = -1; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "n_local = -1", "n_local");
    c = b; c.cfg.causal = 2; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "causal = 2", "causal");
    c = b; c.cfg.causal = -1; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "causal = -1", "causal");
    c = b; c.cfg.selection = 2; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "selection = 2", "selection");
    c = b; c.cfg.selection = -1; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "selection = -1", "selection");
    c = b; c.cfg.precision = 2; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "precision = 2", "precision");
    c = b; c.cfg.deterministic = 3; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "deterministic = 3", "deterministic");
    c = b; c.cfg.scale = (float)NAN; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "scale NaN", "scale");
    c = b; c.cfg.scale = -1.0f; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "scale -1", "scale");
    c = b; c.cfg.coarse_scale = (float)INFINITY; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "coarse_scale inf", "coarse_scale");
    c = b; c.cfg.struct_size = 0; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "config.struct_size 0", "struct_size");
    c = b; c.cfg.struct_size = (uint32_t)sizeof(dashattn_config) - 4; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "config.struct_size too small", "struct_size");
    c = b; c.cfg.struct_size = (uint32_t)sizeof(dashattn_config) + 4; fwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "config.struct_size too large", "struct_size");

    /* overflowing sizes (descriptors only: the data is never touched) */
    c = b; c.q.shape[1] = INT64_C(1) << 61; c.q.strides[0] = 0; fwd_expect(&c, DASHATTN_ERR_OVERFLOW, "q element count overflows", NULL);
    c = b; c.q.strides[0] = INT64_C(1) << 62; fwd_expect(&c, DASHATTN_ERR_OVERFLOW, "q byte extent overflows 64 bits", NULL);
    c = b; c.k.shape[0] = c.k.shape[1] = INT64_C(1) << 31; c.k.strides[1] = 16; c.k.strides[0] = INT64_C(1) << 35;
    fwd_expect(&c, DASHATTN_ERR_OVERFLOW, "k extent 2^66 elements", NULL);
    c = b; c.v.shape[1] = INT64_C(1) << 58; c.v.strides[1] = 16; c.v.strides[0] = 0;
    fwd_expect(&c, DASHATTN_ERR_OVERFLOW, "v spans 2^64 bytes (int64 overflow)", NULL);
    c = b; c.v.shape[1] = INT64_C(1) << 57; c.v.strides[1] = 16; c.v.strides[0] = 0;
    fwd_expect(&c, DASHATTN_ERR_OVERFLOW, "v spans 2^63 bytes (fits uint64, not int64)", NULL);
    c = b; c.q.shape[0] = INT64_MAX; c.q.strides[0] = 1; fwd_expect(&c, DASHATTN_ERR_OVERFLOW, "q batch INT64_MAX", NULL);

    /* workspace */
    c = b;
    must(dashattn_forward_workspace_size(g_ctx, &c.cfg, &c.q, &c.k, &c.v, NULL, &ws_need), "forward_workspace_size");
    if (posix_memalign(&ws, 256, ws_need + 512) != 0) exit(2);
    c = b; c.ws = ws; c.ws_size = ws_need - 1; fwd_expect(&c, DASHATTN_ERR_WORKSPACE_TOO_SMALL, "workspace one byte short", "workspace");
    c = b; c.ws = ws; c.ws_size = 0; fwd_expect(&c, DASHATTN_ERR_WORKSPACE_TOO_SMALL, "workspace size 0 with a pointer", "workspace");
    c = b; c.ws = (char *)ws + 64; c.ws_size = ws_need; fwd_expect(&c, DASHATTN_ERR_MISALIGNED, "workspace not 256-aligned", "workspace");
    c = b; c.ws = NULL; c.ws_size = ws_need; fwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "workspace NULL with a size", "workspace");
    c = b; c.ws = ws; c.ws_size = ws_need; fwd_expect(&c, DASHATTN_SUCCESS, "workspace of exactly the queried size", NULL);

    /* alignment, aliasing */
    c = b; c.q.data = (char *)q + 2; fwd_expect(&c, DASHATTN_ERR_MISALIGNED, "q.data misaligned", "q");
    c = b; c.o.data = (char *)g_ob + 1; fwd_expect(&c, DASHATTN_ERR_MISALIGNED, "o.data misaligned", "o");
    c = b; c.o.data = q; outs_set(1, (unsigned char *)g_lb); /* q's buffer must stay intact: checked below */
    {
        float *copy = xmalloc(OUTBUF);
        memcpy(copy, q, OUTBUF);
        fwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "o aliases q", "overlap");
        CHECK(memcmp(copy, q, OUTBUF) == 0, "%s", "forward: o aliasing q wrote into q", 0, 0);
        free(copy);
    }
    outs_set(3, g_ob, g_lb, g_tb);
    c = b; c.tau.data = (float *)g_lb + 3; fwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "tau overlaps lse", "overlap");

    /* the workspace-size query */
    {
        size_t poison_size;
        memset(&poison_size, POISON, sizeof poison_size);
        c = b;
        outs_set(0);
        set_sentinel();
        expect_err(dashattn_forward_workspace_size(g_ctx, &c.cfg, &c.q, &c.k, &c.v, NULL, NULL), DASHATTN_ERR_NULL_POINTER,
                   "forward_workspace_size: out_size NULL", "out_size");
        c.cfg.block_size = 12;
        out_size = poison_size;
        set_sentinel();
        expect_err(dashattn_forward_workspace_size(g_ctx, &c.cfg, &c.q, &c.k, &c.v, NULL, &out_size), DASHATTN_ERR_INVALID_CONFIG,
                   "forward_workspace_size: bad block size", "block_size");
        CHECK(out_size == poison_size, "%s", "forward_workspace_size wrote out_size on error", 0, 0);
        c = b;
        c.k.shape[1] = 3;
        set_sentinel();
        expect_err(dashattn_forward_workspace_size(g_ctx, &c.cfg, &c.q, &c.k, &c.v, NULL, &out_size), DASHATTN_ERR_INVALID_SHAPE,
                   "forward_workspace_size: v differs from k", "v");
        CHECK(out_size == poison_size, "%s", "forward_workspace_size wrote out_size on error", 0, 0);
        set_sentinel();
        expect_err(dashattn_forward_workspace_size(NULL, &b.cfg, &b.q, &b.k, &b.v, NULL, &out_size), DASHATTN_ERR_NULL_POINTER,
                   "forward_workspace_size: ctx NULL", "ctx");
    }
    free(q); free(k); free(v); free(pk); free(fake_ctx); free(ws);
}

/* ---- backward ---- */
typedef struct {
    dashattn_config cfg;
    dashattn_tensor q, k, v, pk, ha, o, d_o, lse, tau, dq, dk, dv, dpk;
    int use_pk, use_ha, use_dpk;
    int null_lse, null_tau, null_do, null_dq;
    void *ws;
    size_t ws_size;
} bwd_call;

static void bwd_expect(const bwd_call *c, dashattn_status want, const char *what, const char *hint) {
    char label[160];
    dashattn_status st;
    outs_poison();
    set_sentinel();
    st = dashattn_backward(g_ctx, &c->cfg, &c->q, &c->k, &c->v, c->use_pk ? &c->pk : NULL, c->use_ha ? &c->ha : NULL, &c->o,
                           c->null_do ? NULL : &c->d_o, c->null_lse ? NULL : &c->lse, c->null_tau ? NULL : &c->tau,
                           c->null_dq ? NULL : &c->dq, &c->dk, &c->dv, c->use_dpk ? &c->dpk : NULL, c->ws, c->ws_size);
    sprintf(label, "backward: %s", what);
    expect_err(st, want, label, hint);
}

static void test_backward_errors(void) {
    const int N = 2, L = 64, HQ = 4, HKV = 2, D = 8, BS = 16, NB = 4;
    float *q = g_fill(OUTBUF / 4), *k = g_fill(OUTBUF / 4), *v = g_fill(OUTBUF / 4), *pk = g_fill(OUTBUF / 4), *d_o = g_fill(OUTBUF / 4);
    float *o = xmalloc(OUTBUF), *lse = xmalloc(OUTBUF), *tau = xmalloc(OUTBUF);
    float ha[4] = {1.5f, 1.5f, 1.2f, 1.2f};
    void *ws = NULL;
    size_t ws_need = 0;
    bwd_call b, c;
    memset(&b, 0, sizeof b);
    b.cfg = default_config();
    b.cfg.block_size = BS;
    b.q = t4(q, DASHATTN_DTYPE_F32, N, L, HQ, D);
    b.k = t4(k, DASHATTN_DTYPE_F32, N, L, HKV, D);
    b.v = t4(v, DASHATTN_DTYPE_F32, N, L, HKV, D);
    b.pk = t4(pk, DASHATTN_DTYPE_F32, N, NB, HKV, D);
    b.ha = t1(ha, DASHATTN_DTYPE_F32, HQ);
    b.o = t4(o, DASHATTN_DTYPE_F32, N, L, HQ, D);
    b.d_o = t4(d_o, DASHATTN_DTYPE_F32, N, L, HQ, D);
    b.lse = t3(lse, DASHATTN_DTYPE_F32, N, HQ, L);
    b.tau = t3(tau, DASHATTN_DTYPE_F32, N, HQ, L);
    b.dq = t4(g_ob, DASHATTN_DTYPE_F32, N, L, HQ, D);
    b.dk = t4(g_ob2, DASHATTN_DTYPE_F32, N, L, HKV, D);
    b.dv = t4(g_ob3, DASHATTN_DTYPE_F32, N, L, HKV, D);
    b.dpk = t4(g_ob4, DASHATTN_DTYPE_F32, N, NB, HKV, D);
    must(dashattn_forward(g_ctx, &b.cfg, &b.q, &b.k, &b.v, NULL, NULL, &b.o, &b.lse, &b.tau, NULL, 0), "forward for backward");
    outs_set(4, g_ob, g_ob2, g_ob3, g_ob4);

    c = b; bwd_expect(&c, DASHATTN_SUCCESS, "valid base call", NULL);
    c = b; c.null_lse = 1; bwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "lse NULL (required)", "lse");
    c = b; c.null_tau = 1; bwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "tau NULL (required)", "tau");
    c = b; c.null_do = 1; bwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "d_o NULL", "d_o");
    c = b; c.null_dq = 1; bwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "dq NULL", "dq");
    c = b; c.use_pk = 1; bwd_expect(&c, DASHATTN_ERR_NULL_POINTER, "pooled_k given, d_pooled_k NULL", "d_pooled_k");
    c = b; c.use_dpk = 1; bwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "d_pooled_k without pooled_k", "d_pooled_k");
    c = b; c.use_pk = c.use_dpk = 1; c.dpk.shape[1] = NB - 1; bwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "d_pooled_k shape", "d_pooled_k");
    c = b; c.d_o.dtype = DASHATTN_DTYPE_F16; bwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "d_o f16 with q f32", "d_o");
    c = b; c.dk.dtype = DASHATTN_DTYPE_BF16; bwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "dk bf16 with k f32", "dk");
    c = b; c.tau.dtype = DASHATTN_DTYPE_I32; bwd_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "tau i32", "tau");
    c = b; c.lse.shape[2] = L + 1; bwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "lse shape", "lse");
    c = b; c.dk.shape[1] = L - 1; bwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "dk shape", "dk");
    c = b; c.o = t3(o, DASHATTN_DTYPE_F32, N, L, HQ * D); bwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "o rank 3 (contiguous)", "o");
    c = b; c.dq.strides[2] = 0; bwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "dq heads overlapping", "dq");
    c = b; c.dv.strides[3] = 3; bwd_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "dv last dim strided", "dv");
    c = b; c.dk.data = g_ob; bwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "dk overlaps dq", "overlap");
    c = b; c.cfg.alpha = (float)NAN; bwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "alpha NaN", "alpha");
    c = b; c.use_ha = 1; ha[3] = 7.0f; bwd_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "head_alpha 7", "head_alpha"); ha[3] = 1.2f;
    c = b; c.cfg.selection = 9; bwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "selection 9", "selection");
    c = b; c.cfg.struct_size = 1; bwd_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "struct_size 1", "struct_size");
    c = b; c.q.shape[2] = 3; c.o.shape[2] = 3; c.d_o.shape[2] = 3; c.dq.shape[2] = 3; c.lse.shape[1] = 3; c.tau.shape[1] = 3;
    bwd_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "Hq = 3, Hkv = 2", "Hkv");
    c = b; c.dq.shape[0] = c.q.shape[0] = c.o.shape[0] = c.d_o.shape[0] = INT64_C(1) << 60;
    bwd_expect(&c, DASHATTN_ERR_OVERFLOW, "batch 2^60", NULL);
    must(dashattn_backward_workspace_size(g_ctx, &b.cfg, &b.q, &b.k, &b.v, NULL, &ws_need), "backward_workspace_size");
    if (posix_memalign(&ws, 256, ws_need + 256) != 0) exit(2);
    c = b; c.ws = ws; c.ws_size = ws_need / 2; bwd_expect(&c, DASHATTN_ERR_WORKSPACE_TOO_SMALL, "half the workspace", "workspace");
    c = b; c.ws = ws; c.ws_size = ws_need; bwd_expect(&c, DASHATTN_SUCCESS, "exact workspace", NULL);
    free(q); free(k); free(v); free(pk); free(d_o); free(o); free(lse); free(tau); free(ws);
}

/* ---- pool_keys_paged and decode ---- */
typedef struct {
    dashattn_config cfg;
    dashattn_tensor q, kc, vc, pc, bt, prev, sl, ha, o, lse;
    int use_ha, use_lse;
    void *ws;
    size_t ws_size;
} paged_call;

static void pool_expect(const paged_call *c, dashattn_status want, const char *what, const char *hint) {
    char label[160];
    dashattn_status st;
    outs_poison();
    set_sentinel();
    st = dashattn_pool_keys_paged(g_ctx, &c->cfg, &c->kc, &c->pc, &c->bt, &c->prev, &c->sl, c->ws, c->ws_size);
    sprintf(label, "pool_keys_paged: %s", what);
    expect_err(st, want, label, hint);
}
static void dec_expect(const paged_call *c, dashattn_status want, const char *what, const char *hint) {
    char label[160];
    dashattn_status st;
    outs_poison();
    set_sentinel();
    st = dashattn_decode(g_ctx, &c->cfg, &c->q, &c->kc, &c->vc, &c->pc, &c->bt, &c->sl, c->use_ha ? &c->ha : NULL, &c->o,
                         c->use_lse ? &c->lse : NULL, c->ws, c->ws_size);
    sprintf(label, "decode: %s", what);
    expect_err(st, want, label, hint);
}

static void test_paged_errors(void) {
    const int N = 2, PAGES = 12, PS = 16, HQ = 4, HKV = 2, D = 8, MAXP = 5, BS = 16;
    float *kc = g_fill(OUTBUF / 4), *vc = g_fill(OUTBUF / 4), *pc = g_fill(OUTBUF / 4), *q = g_fill(OUTBUF / 4);
    int32_t table[10] = {3, 7, 1, 9, 0, 2, 4, 11, 5, 8};
    int32_t lens[2] = {50, 70}, prev[2] = {0, 0};
    float ha[4] = {1.5f, 1.5f, 1.5f, 1.5f};
    size_t out_size = 0;
    void *ws = NULL;
    paged_call b, c;
    memset(&b, 0, sizeof b);
    b.cfg = default_config();
    b.cfg.block_size = BS;
    b.q = t4(q, DASHATTN_DTYPE_F32, N, 1, HQ, D);
    b.kc = t4(kc, DASHATTN_DTYPE_F32, PAGES, PS, HKV, D);
    b.vc = t4(vc, DASHATTN_DTYPE_F32, PAGES, PS, HKV, D);
    b.pc = t4(pc, DASHATTN_DTYPE_F32, PAGES, 1, HKV, D);
    b.bt = t2(table, DASHATTN_DTYPE_I32, N, MAXP);
    b.prev = t1(prev, DASHATTN_DTYPE_I32, N);
    b.sl = t1(lens, DASHATTN_DTYPE_I32, N);
    b.ha = t1(ha, DASHATTN_DTYPE_F32, HQ);
    b.o = t4(g_ob, DASHATTN_DTYPE_F32, N, 1, HQ, D);
    b.lse = t3(g_lb, DASHATTN_DTYPE_F32, N, HQ, 1);
    b.use_lse = 1;
    if (posix_memalign(&ws, 256, 4096) != 0) exit(2);

    /* pool_keys_paged: the output is the pooled cache */
    {
        paged_call pb = b;
        pb.pc = t4(g_ob2, DASHATTN_DTYPE_F32, PAGES, 1, HKV, D);
        outs_set(1, g_ob2);
        c = pb; pool_expect(&c, DASHATTN_SUCCESS, "valid base call", NULL);
        c = pb; c.kc.shape[1] = 24; c.vc.shape[1] = 24; pool_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "page size 24 with B = 16", "page_size");
        c = pb; c.kc.shape[1] = 0; pool_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "page size 0", "page_size");
        c = pb; c.pc.shape[1] = 2; pool_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "pooled cache with 2 slots per 16-token page", "pooled_cache");
        c = pb; c.pc.dtype = DASHATTN_DTYPE_F16; pool_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "pooled cache f16, K cache f32", "pooled_cache");
        c = pb; c.bt.dtype = DASHATTN_DTYPE_F32; pool_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "block table f32", "block_table");
        c = pb; c.bt.dtype = 17; pool_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "block table dtype 17", "block_table");
        c = pb; c.bt.rank = 1; pool_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "block table rank 1", "block_table");
        c = pb; c.sl.shape[0] = 3; pool_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "seq_lens [3] for N = 2", "seq_lens");
        c = pb; c.prev.dtype = DASHATTN_DTYPE_F32; pool_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "prev_seq_lens f32", "prev_seq_lens");
        c = pb; c.pc.strides[1] = 0; c.pc.shape[1] = 1; c.pc.strides[0] = 0;
        pool_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "pooled cache pages overlapping", "pooled_cache");
        c = pb; c.pc.data = kc; outs_set(0); pool_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "pooled cache aliases K cache", "overlap");
        outs_set(1, g_ob2);
        c = pb; c.cfg.block_size = 24; pool_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "block size 24", "block_size");
        c = pb; c.cfg.struct_size = 0; pool_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "struct_size 0", "struct_size");
        table[8] = PAGES; /* sequence 1's 4th page (tokens 48..63) out of range; sequence 0 is fine */
        c = pb; pool_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "block table entry = num_pages (others valid)", "block_table");
        table[8] = -1;
        c = pb; pool_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "block table entry -1", "block_table");
        table[8] = 5;
        table[4] = -7; /* sequence 0's unused 5th page: never read */
        c = pb; pool_expect(&c, DASHATTN_SUCCESS, "garbage in an unused block-table entry", NULL);
        table[4] = 0;
        lens[1] = MAXP * PS + 1;
        c = pb; pool_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "seq_lens beyond max_pages * page_size", "seq_lens");
        lens[1] = -1;
        c = pb; pool_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "seq_lens negative", "seq_lens");
        lens[1] = 70;
        prev[1] = 71;
        c = pb; pool_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "prev_seq_lens > seq_lens", "prev_seq_lens");
        prev[1] = -3;
        c = pb; pool_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "prev_seq_lens negative", "prev_seq_lens");
        prev[1] = 0;
        /* max_pages * page_size > INT32_MAX: a broadcast block table (stride 0) of 2^28 entries */
        c = pb; c.bt.shape[1] = INT64_C(1) << 28; c.bt.strides[0] = 0; c.bt.strides[1] = 0;
        pool_expect(&c, DASHATTN_ERR_OVERFLOW, "max_pages * page_size over INT32_MAX", NULL);
        c = pb; c.kc.shape[0] = INT64_C(1) << 60; c.pc.shape[0] = INT64_C(1) << 60; c.kc.strides[0] = 0;
        pool_expect(&c, DASHATTN_ERR_OVERFLOW, "num_pages 2^60 (pooled cache extent overflows)", NULL);
        c = pb; c.ws = (char *)ws + 8; c.ws_size = 64; pool_expect(&c, DASHATTN_ERR_MISALIGNED, "workspace misaligned", "workspace");
        c = pb; c.ws = NULL; c.ws_size = 64; pool_expect(&c, DASHATTN_ERR_NULL_POINTER, "workspace NULL with size 64", "workspace");
        /* workspace size query */
        set_sentinel();
        outs_set(0);
        expect_err(dashattn_pool_keys_paged_workspace_size(g_ctx, &pb.cfg, &pb.kc, &pb.pc, &pb.bt, &pb.sl, NULL),
                   DASHATTN_ERR_NULL_POINTER, "pool_keys_paged_workspace_size: out_size NULL", "out_size");
        must(dashattn_pool_keys_paged_workspace_size(g_ctx, &pb.cfg, &pb.kc, &pb.pc, &pb.bt, &pb.sl, &out_size), "pool ws size");
        /* keep the real pooled cache up to date for the decode tests */
        must(dashattn_pool_keys_paged(g_ctx, &b.cfg, &b.kc, &b.pc, &b.bt, &b.prev, &b.sl, NULL, 0), "pool for decode");
    }

    outs_set(2, g_ob, g_lb);
    c = b; dec_expect(&c, DASHATTN_SUCCESS, "valid base call", NULL);
    c = b; c.use_ha = 1; c.cfg.precision = DASHATTN_PRECISION_F64; dec_expect(&c, DASHATTN_SUCCESS, "valid, head_alpha + f64 accumulation", NULL);
    c = b; c.cfg.causal = 0; dec_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "causal = 0", "causal");
    c = b; c.cfg.n_local = 0; dec_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "n_local = 0", "n_local");
    c = b; c.cfg.alpha = 2.0001f; dec_expect(&c, DASHATTN_ERR_INVALID_CONFIG, "alpha 2.0001", "alpha");
    c = b; c.use_ha = 1; ha[2] = 0.0f; dec_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "head_alpha 0", "head_alpha"); ha[2] = 1.5f;
    c = b; c.q.shape[1] = 0; c.o.shape[1] = 0; c.lse.shape[2] = 0; dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q_len 0", "q_len");
    c = b; c.q.shape[1] = 17; c.o.shape[1] = 17; c.lse.shape[2] = 17; c.q.strides[0] = 17 * HQ * D; c.o.strides[0] = 17 * HQ * D;
    c.lse = t3(g_lb, DASHATTN_DTYPE_F32, N, HQ, 17);
    dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q_len 17", "q_len");
    c = b; c.q.shape[0] = 3; c.o.shape[0] = 3; c.lse.shape[0] = 3; dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "q batch 3, block table 2", "q");
    c = b; c.q.shape[2] = 3; c.o.shape[2] = 3; c.lse.shape[1] = 3; dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "Hq = 3, Hkv = 2", "Hkv");
    c = b; c.vc.shape[1] = 32; c.vc.strides[0] = 32 * HKV * D; dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "v cache shape differs", "v_cache");
    c = b; c.vc.dtype = DASHATTN_DTYPE_F16; dec_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "v cache f16", "v_cache");
    c = b; c.q.dtype = DASHATTN_DTYPE_BF16; c.o.dtype = DASHATTN_DTYPE_BF16; dec_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "q bf16, caches f32", "q");
    c = b; c.lse.dtype = DASHATTN_DTYPE_I32; dec_expect(&c, DASHATTN_ERR_INVALID_DTYPE, "lse i32", "lse");
    c = b; c.lse.shape[2] = 2; dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "lse shape", "lse");
    c = b; c.kc.shape[1] = 12; c.vc.shape[1] = 12; dec_expect(&c, DASHATTN_ERR_INVALID_SHAPE, "page size 12 with B = 16", "page_size");
    c = b; c.kc.strides[3] = 2; dec_expect(&c, DASHATTN_ERR_INVALID_STRIDE, "k cache last dim strided", "k_cache");
    c = b; c.o.data = kc; outs_set(1, g_lb); dec_expect(&c, DASHATTN_ERR_INVALID_ARGUMENT, "o aliases the K cache", "overlap");
    outs_set(2, g_ob, g_lb);
    c = b; c.ws = (char *)ws + 4; c.ws_size = 16; dec_expect(&c, DASHATTN_ERR_MISALIGNED, "workspace misaligned", "workspace");
    c = b; c.ws = ws; c.ws_size = 4096; dec_expect(&c, DASHATTN_SUCCESS, "aligned workspace", NULL);
    table[9] = PAGES + 100; /* sequence 1's 5th page holds tokens 64..69 */
    c = b; dec_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "block table entry out of range", "block_table");
    table[9] = INT32_MIN;
    c = b; dec_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "block table entry INT32_MIN", "block_table");
    table[9] = 8;
    lens[0] = 0;
    c = b; dec_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "seq_lens 0 < q_len", "seq_lens");
    lens[0] = MAXP * PS + 5;
    c = b; dec_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "seq_lens over capacity", "seq_lens");
    lens[0] = INT32_MAX;
    c = b; dec_expect(&c, DASHATTN_ERR_OUT_OF_RANGE, "seq_lens INT32_MAX", "seq_lens");
    lens[0] = 50;
    c = b; c.bt.shape[1] = INT64_C(1) << 28; c.bt.strides[0] = 0; c.bt.strides[1] = 0;
    dec_expect(&c, DASHATTN_ERR_OVERFLOW, "max_pages * page_size over INT32_MAX", NULL);
    c = b; c.sl.data = NULL; dec_expect(&c, DASHATTN_ERR_NULL_POINTER, "seq_lens.data NULL", "seq_lens");
    c = b; c.bt.data = (char *)table + 2; dec_expect(&c, DASHATTN_ERR_MISALIGNED, "block table misaligned", "block_table");
    {
        size_t poison_size;
        memset(&poison_size, POISON, sizeof poison_size);
        out_size = poison_size;
        outs_set(0);
        c = b; c.cfg.causal = 0;
        set_sentinel();
        expect_err(dashattn_decode_workspace_size(g_ctx, &c.cfg, &c.q, &c.kc, &c.pc, &c.bt, &c.sl, &out_size), DASHATTN_ERR_INVALID_CONFIG,
                   "decode_workspace_size: causal 0", "causal");
        CHECK(out_size == poison_size, "%s", "decode_workspace_size wrote out_size on error", 0, 0);
        set_sentinel();
        expect_err(dashattn_decode_workspace_size(g_ctx, &b.cfg, &b.q, &b.kc, &b.pc, &b.bt, NULL, &out_size), DASHATTN_ERR_NULL_POINTER,
                   "decode_workspace_size: seq_lens NULL", "seq_lens");
        must(dashattn_decode_workspace_size(g_ctx, &b.cfg, &b.q, &b.kc, &b.pc, &b.bt, &b.sl, &out_size), "decode ws size");
    }
    free(kc); free(vc); free(pc); free(q); free(ws);
}

/* ---- merge_states ---- */
static void merge_expect(const dashattn_tensor *op, const dashattn_tensor *lp, const dashattn_tensor *o, const dashattn_tensor *l,
                         dashattn_context *ctx, dashattn_status want, const char *what, const char *hint) {
    char label[160];
    dashattn_status st;
    outs_poison();
    set_sentinel();
    st = dashattn_merge_states(ctx, op, lp, o, l);
    sprintf(label, "merge_states: %s", what);
    expect_err(st, want, label, hint);
}

static void test_merge_errors(void) {
    const int S = 3, N = 2, L = 5, H = 2, D = 8;
    float *parts = g_fill(OUTBUF / 4), *lparts = g_fill(OUTBUF / 4);
    int64_t sh5[5];
    dashattn_tensor op, lp, o, l, c_op, c_lp, c_o, c_l;
    sh5[0] = S; sh5[1] = N; sh5[2] = L; sh5[3] = H; sh5[4] = D;
    op = tensor(parts, DASHATTN_DTYPE_F32, 5, sh5);
    lp = t4(lparts, DASHATTN_DTYPE_F32, S, N, H, L);
    o = t4(g_ob, DASHATTN_DTYPE_F32, N, L, H, D);
    l = t3(g_lb, DASHATTN_DTYPE_F32, N, H, L);
    outs_set(2, g_ob, g_lb);
    merge_expect(&op, &lp, &o, &l, g_ctx, DASHATTN_SUCCESS, "valid base call", NULL);
    merge_expect(&op, &lp, &o, NULL, g_ctx, DASHATTN_SUCCESS, "lse output NULL (optional)", NULL);
    merge_expect(&op, &lp, &o, &l, NULL, DASHATTN_ERR_NULL_POINTER, "ctx NULL", "ctx");
    merge_expect(NULL, &lp, &o, &l, g_ctx, DASHATTN_ERR_NULL_POINTER, "o_parts NULL", "o_parts");
    merge_expect(&op, NULL, &o, &l, g_ctx, DASHATTN_ERR_NULL_POINTER, "lse_parts NULL", "lse_parts");
    merge_expect(&op, &lp, NULL, &l, g_ctx, DASHATTN_ERR_NULL_POINTER, "o NULL", "o");
    c_op = op; c_op.rank = 4; merge_expect(&c_op, &lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_SHAPE, "o_parts rank 4", "o_parts");
    c_op = op; c_op.shape[0] = 0; c_lp = lp; c_lp.shape[0] = 0;
    merge_expect(&c_op, &c_lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_SHAPE, "S = 0 parts", "o_parts");
    c_lp = t4(lparts, DASHATTN_DTYPE_F32, S, N, L, H); merge_expect(&op, &c_lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_SHAPE, "lse_parts [S, N, L, H]", "lse_parts");
    c_o = o; c_o.shape[3] = D + 1; merge_expect(&op, &lp, &c_o, &l, g_ctx, DASHATTN_ERR_INVALID_SHAPE, "o head dim differs", "o");
    c_l = l; c_l.shape[0] = N + 1; merge_expect(&op, &lp, &o, &c_l, g_ctx, DASHATTN_ERR_INVALID_SHAPE, "lse batch differs", "lse");
    c_o = o; c_o.dtype = DASHATTN_DTYPE_F16; merge_expect(&op, &lp, &c_o, &l, g_ctx, DASHATTN_ERR_INVALID_DTYPE, "o f16, parts f32", "o");
    c_lp = lp; c_lp.dtype = DASHATTN_DTYPE_F16; merge_expect(&op, &c_lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_DTYPE, "lse_parts f16", "lse_parts");
    c_op = op; c_op.dtype = DASHATTN_DTYPE_I32; c_o = o; c_o.dtype = DASHATTN_DTYPE_I32;
    merge_expect(&c_op, &lp, &c_o, &l, g_ctx, DASHATTN_ERR_INVALID_DTYPE, "i32 parts", "o_parts");
    c_op = op; c_op.dtype = 42; merge_expect(&c_op, &lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_DTYPE, "dtype 42", "o_parts");
    c_op = op; c_op.strides[4] = 2; merge_expect(&c_op, &lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_STRIDE, "o_parts last dim strided", "o_parts");
    c_o = o; c_o.strides[1] = 0; merge_expect(&op, &lp, &c_o, &l, g_ctx, DASHATTN_ERR_INVALID_STRIDE, "o rows overlapping", "o");
    c_l = l; c_l.strides[2] = 0; merge_expect(&op, &lp, &o, &c_l, g_ctx, DASHATTN_ERR_INVALID_STRIDE, "lse overlapping", "lse");
    c_lp = lp; c_lp.strides[0] = -1; merge_expect(&op, &c_lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_STRIDE, "negative lse_parts stride", "lse_parts");
    c_op = op; c_op.shape[2] = -1; merge_expect(&c_op, &lp, &o, &l, g_ctx, DASHATTN_ERR_INVALID_SHAPE, "negative L", "o_parts");
    c_op = op; c_op.shape[0] = INT64_C(1) << 62; merge_expect(&c_op, &lp, &o, &l, g_ctx, DASHATTN_ERR_OVERFLOW, "S = 2^62", NULL);
    c_op = op; c_op.data = (char *)parts + 2; merge_expect(&c_op, &lp, &o, &l, g_ctx, DASHATTN_ERR_MISALIGNED, "o_parts misaligned", "o_parts");
    c_o = o; c_o.data = parts; outs_set(1, g_lb); merge_expect(&op, &lp, &c_o, &l, g_ctx, DASHATTN_ERR_INVALID_ARGUMENT, "o aliases o_parts", "overlap");
    outs_set(2, g_ob, g_lb);
    c_l = l; c_l.data = g_ob; outs_set(1, g_ob); merge_expect(&op, &lp, &o, &c_l, g_ctx, DASHATTN_ERR_INVALID_ARGUMENT, "lse aliases o", "overlap");
    free(parts);
    free(lparts);
}

/* ---- context, options, messages, version ---- */
static void test_context_errors(void) {
    dashattn_context_options o;
    dashattn_context *c, *poison_ctx;
    dashattn_config cfg;
    int32_t backend = -7, avail = -7;
    char buf[8];
    unsigned char *fake = calloc(1, 256);
    size_t n;
    memset(&poison_ctx, POISON, sizeof poison_ctx);
    outs_set(0);

    set_sentinel();
    expect_err(dashattn_context_options_default(NULL), DASHATTN_ERR_NULL_POINTER, "options_default(NULL)", "options");
    set_sentinel();
    expect_err(dashattn_config_default(NULL), DASHATTN_ERR_NULL_POINTER, "config_default(NULL)", "config");
    must(dashattn_context_options_default(&o), "options_default");
    CHECK(o.struct_size == sizeof o && o.backend == DASHATTN_BACKEND_AUTO && o.device == 0 && o.num_threads == 0,
          "%s", "options_default values", 0, 0);
    cfg = default_config();
    CHECK(cfg.struct_size == sizeof cfg && cfg.block_size == 64 && cfg.n_local == 1 && cfg.causal == 1 &&
              cfg.selection == DASHATTN_SELECT_PER_GROUP && cfg.precision == DASHATTN_PRECISION_DEFAULT && cfg.alpha == 1.5f &&
              cfg.scale == 0.0f && cfg.coarse_scale == 0.0f && cfg.deterministic == 1,
          "%s", "config_default values", 0, 0);

    set_sentinel();
    expect_err(dashattn_context_create(NULL, NULL), DASHATTN_ERR_NULL_POINTER, "context_create out_ctx NULL", "out_ctx");
    {
        struct { int32_t backend, device, threads; uint32_t size; dashattn_status want; const char *what, *hint; } cases[] = {
            {3, 0, 0, 0, DASHATTN_ERR_INVALID_ARGUMENT, "backend 3", "backend"},
            {-1, 0, 0, 0, DASHATTN_ERR_INVALID_ARGUMENT, "backend -1", "backend"},
            {DASHATTN_BACKEND_CPU, -1, 0, 0, DASHATTN_ERR_INVALID_ARGUMENT, "device -1", "device"},
            {DASHATTN_BACKEND_CPU, 0, -1, 0, DASHATTN_ERR_INVALID_ARGUMENT, "num_threads -1", "num_threads"},
            /* options are not a config: INVALID_ARGUMENT (config.struct_size gives INVALID_CONFIG) */
            {DASHATTN_BACKEND_CPU, 0, 0, 4, DASHATTN_ERR_INVALID_ARGUMENT, "options.struct_size 4", "struct_size"},
            {DASHATTN_BACKEND_CPU, 0, 0, 1000, DASHATTN_ERR_INVALID_ARGUMENT, "options.struct_size 1000", "struct_size"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char label[96];
            dashattn_context_options bad = o;
            bad.backend = cases[i].backend;
            bad.device = cases[i].device;
            bad.num_threads = cases[i].threads;
            if (cases[i].size) bad.struct_size = cases[i].size;
            c = poison_ctx;
            set_sentinel();
            sprintf(label, "context_create: %s", cases[i].what);
            expect_err(dashattn_context_create(&bad, &c), cases[i].want, label, cases[i].hint);
            CHECK(c == poison_ctx, "%s: *out_ctx was written on error", label, 0, 0);
        }
    }
    must(dashattn_cuda_available(&avail), "cuda_available");
    CHECK(avail == 0 || avail == 1, "%s", "cuda_available gives 0 or 1", 0, 0);
    if (!avail) {
        dashattn_context_options cu = o;
        cu.backend = DASHATTN_BACKEND_CUDA;
        c = poison_ctx;
        set_sentinel();
        expect_err(dashattn_context_create(&cu, &c), DASHATTN_ERR_NO_DEVICE, "context_create CUDA without a device", NULL);
        CHECK(c == poison_ctx, "%s", "context_create CUDA wrote *out_ctx on error", 0, 0);
    }
    set_sentinel();
    expect_err(dashattn_cuda_available(NULL), DASHATTN_ERR_NULL_POINTER, "cuda_available(NULL)", "out_available");
    must(dashattn_context_get_backend(g_ctx, &backend), "get_backend");
    CHECK(backend == DASHATTN_BACKEND_CPU, "%s: backend ", "CPU context", backend, 0);
    set_sentinel();
    expect_err(dashattn_context_get_backend(g_ctx, NULL), DASHATTN_ERR_NULL_POINTER, "get_backend out NULL", "out_backend");
    set_sentinel();
    expect_err(dashattn_context_get_backend(NULL, &backend), DASHATTN_ERR_NULL_POINTER, "get_backend ctx NULL", "ctx");
    set_sentinel();
    expect_err(dashattn_context_get_backend((dashattn_context *)(void *)fake, &backend), DASHATTN_ERR_INVALID_ARGUMENT,
               "get_backend on a non-context", "ctx");
    set_sentinel();
    expect_err(dashattn_context_set_stream(NULL, NULL), DASHATTN_ERR_NULL_POINTER, "set_stream ctx NULL", "ctx");
    must(dashattn_context_set_stream(g_ctx, (void *)fake), "set_stream on CPU (stored, ignored)");
    must(dashattn_context_destroy(NULL), "destroy(NULL)");
    set_sentinel();
    expect_err(dashattn_context_destroy((dashattn_context *)(void *)fake), DASHATTN_ERR_INVALID_ARGUMENT, "destroy a non-context", "ctx");

    /* status strings */
    for (int s = 0; s <= DASHATTN_ERR_INTERNAL; s++) {
        const char *str = dashattn_status_string(s);
        CHECK(str && *str && strcmp(str, "unknown status code") != 0, "%s ", "status_string of a known code", s, 0);
    }
    CHECK(strcmp(dashattn_status_string(16), "unknown status code") == 0, "%s", "status_string(16)", 0, 0);
    CHECK(strcmp(dashattn_status_string(-1), "unknown status code") == 0, "%s", "status_string(-1)", 0, 0);
    CHECK(strcmp(dashattn_status_string(INT32_MIN), "unknown status code") == 0, "%s", "status_string(INT32_MIN)", 0, 0);

    /* last_error_message: sizing, truncation, buf_size 0 */
    set_sentinel();
    n = dashattn_last_error_message(NULL, 0);
    CHECK(n == strlen(g_sentinel), "%s: %g vs %g", "last_error_message(NULL, 0) returns the full length", n, strlen(g_sentinel));
    memset(buf, 'x', sizeof buf);
    CHECK(dashattn_last_error_message(buf, 5) == n && buf[4] == '\0' && memcmp(buf, g_sentinel, 4) == 0 && buf[5] == 'x',
          "%s", "last_error_message truncates to buf_size - 1 and NUL-terminates", 0, 0);
    memset(buf, 'x', sizeof buf);
    CHECK(dashattn_last_error_message(buf, 0) == n && buf[0] == 'x', "%s", "last_error_message(buf, 0) writes nothing", 0, 0);
    CHECK(dashattn_last_error_message(buf, 1) == n && buf[0] == '\0', "%s", "last_error_message(buf, 1) writes the NUL", 0, 0);

    /* version */
    {
        char want[32];
        sprintf(want, "%d.%d.%d", DASHATTN_VERSION_MAJOR, DASHATTN_VERSION_MINOR, DASHATTN_VERSION_PATCH);
        CHECK(dashattn_version() == (uint32_t)(DASHATTN_VERSION_MAJOR * 10000 + DASHATTN_VERSION_MINOR * 100 + DASHATTN_VERSION_PATCH),
              "%s: ", "dashattn_version matches the header", dashattn_version(), 0);
        CHECK(strcmp(dashattn_version_string(), want) == 0, "%s", "dashattn_version_string matches the header", 0, 0);
    }
    /* a second CPU context works independently and is destroyed cleanly */
    {
        dashattn_context *c2 = NULL;
        dashattn_context_options one = o;
        one.backend = DASHATTN_BACKEND_CPU;
        one.num_threads = 1;
        must(dashattn_context_create(&one, &c2), "second context");
        must(dashattn_context_destroy(c2), "destroy second context");
    }
    free(fake);
}

int main(void) {
    dashattn_context_options o;
    g_ob = xmalloc(OUTBUF); g_lb = xmalloc(OUTBUF); g_tb = xmalloc(OUTBUF);
    g_ob2 = xmalloc(OUTBUF); g_ob3 = xmalloc(OUTBUF); g_ob4 = xmalloc(OUTBUF);
    dashattn_context_options_default(&o);
    o.backend = DASHATTN_BACKEND_CPU;
    if (dashattn_context_create(&o, &g_ctx) != DASHATTN_SUCCESS) {
        printf("cannot create a CPU context\n");
        return 2;
    }
    printf("dashattn %s, C API tests (CPU backend)\n", dashattn_version_string());
    test_no_candidates();
    printf("  no-candidate cases done (%d passed, %d failed so far)\n", n_pass, n_fail);
    test_forward_vs_reference();
    printf("  forward vs C reference done (%d passed, %d failed so far)\n", n_pass, n_fail);
    test_workspace_roundtrip();
    test_thread_independence();
    test_merge_states();
    test_pool_and_decode();
    printf("  pool/decode done (%d passed, %d failed so far)\n", n_pass, n_fail);
    test_backward_fd();
    printf("  backward vs finite differences done (%d passed, %d failed so far)\n", n_pass, n_fail);
    test_forward_errors();
    test_backward_errors();
    test_paged_errors();
    test_merge_errors();
    test_context_errors();
    printf("  error paths done\n");
    dashattn_context_destroy(g_ctx);
    free(g_ob); free(g_lb); free(g_tb); free(g_ob2); free(g_ob3); free(g_ob4);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
