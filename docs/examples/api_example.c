/* dashattn C API walk-through (docs/api.md): forward, backward, pooled-key cache upkeep
 * and a decode step on the CPU backend, with error handling on every call.
 *
 *   cargo build --release && make -C docs/examples run
 *
 * Strict C99; only the public header. Exits 0 on success, 1 on any failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashattn.h"

/* Problem size: one sequence of 96 tokens, GQA with 4 query heads over 2 KV heads. */
enum { N = 1, L = 96, HQ = 4, HKV = 2, D = 16, BLOCK = 16 };
/* Fused QKV activation buffer [N, L, HQ + 2*HKV, D]: q, k and v are strided views of it. */
enum { H3 = HQ + 2 * HKV };
/* Paged cache: pages of 32 tokens (two 16-token blocks per page), 4 pages. */
enum { PAGE = 32, NUM_PAGES = 4, MAX_PAGES = 4, SLOTS = PAGE / BLOCK };

/* Prints a failed call, its status and the thread-local detail message. */
static void report(FILE *to, const char *what, dashattn_status st) {
    size_t n = dashattn_last_error_message(NULL, 0); /* full length, without the NUL */
    char *msg = malloc(n + 1);
    if (msg != NULL) {
        dashattn_last_error_message(msg, n + 1);
    }
    fprintf(to, "%s: status %d (%s): %s\n", what, (int)st, dashattn_status_string(st),
            msg != NULL ? msg : "(no memory for the message)");
    free(msg);
}

#define CHECK(call)                                  \
    do {                                             \
        dashattn_status st_ = (call);                \
        if (st_ != DASHATTN_SUCCESS) {               \
            report(stderr, #call, st_);                      \
            goto cleanup;                            \
        }                                            \
    } while (0)

/* A tensor descriptor with explicit element strides. */
static dashattn_tensor strided(void *data, int32_t dtype, int32_t rank, const int64_t *shape,
                               const int64_t *strides) {
    dashattn_tensor t;
    int32_t i;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = rank;
    for (i = 0; i < rank; i++) {
        t.shape[i] = shape[i];
        t.strides[i] = strides[i];
    }
    return t;
}

/* A contiguous row-major tensor descriptor. */
static dashattn_tensor contiguous(void *data, int32_t dtype, int32_t rank, const int64_t *shape) {
    int64_t strides[DASHATTN_MAX_RANK];
    int64_t acc = 1;
    int32_t i;
    for (i = rank - 1; i >= 0; i--) {
        strides[i] = acc;
        acc *= shape[i];
    }
    return strided(data, dtype, rank, shape, strides);
}

/* Workspace: 256-byte aligned, carved from a malloc'd block (C99 has no aligned_alloc). */
typedef struct {
    void *raw;
    void *ptr;
    size_t size;
} workspace;

static int workspace_alloc(workspace *ws, size_t size) {
    ws->raw = NULL;
    ws->ptr = NULL;
    ws->size = size;
    if (size == 0) {
        return 0; /* NULL, 0 is a valid "no workspace needed" */
    }
    ws->raw = malloc(size + 255);
    if (ws->raw == NULL) {
        return -1;
    }
    ws->ptr = (void *)(((uintptr_t)ws->raw + 255) & ~(uintptr_t)255);
    return 0;
}

/* Deterministic pseudo-random numbers (roughly N(0, 1)). */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float randn(void) {
    float s = 0.0f;
    int i;
    for (i = 0; i < 4; i++) {
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        s += (float)((rng_state >> 40) & 0xFFFFFF) / 16777216.0f;
    }
    return (s - 2.0f) * 1.7320508f; /* variance of a sum of 4 uniforms is 1/3 */
}

static double norm(const float *x, size_t n) {
    double s = 0.0;
    size_t i;
    for (i = 0; i < n; i++) {
        s += (double)x[i] * x[i];
    }
    return sqrt(s);
}

int main(void) {
    int rc = 1;
    dashattn_context *ctx = NULL;
    dashattn_context_options opts;
    dashattn_config cfg, bad;
    dashattn_tensor q, k, v, o, lse, tau, d_o, dq, dk, dv;
    dashattn_tensor k_cache, v_cache, pooled_cache, table, prev_lens, lens, q_dec, o_dec, lse_dec;
    workspace fws = {NULL, NULL, 0}, bws = {NULL, NULL, 0};
    float *qkv = NULL, *out = NULL, *row_lse = NULL, *row_tau = NULL, *grad_out = NULL;
    float *gq = NULL, *gk = NULL, *gv = NULL, *gq2 = NULL;
    float *kc = NULL, *vc = NULL, *pc = NULL, *od = NULL, *lsed = NULL;
    int32_t block_table[N * MAX_PAGES] = {2, 0, 3, 1}; /* logical page i of sequence 0 -> physical page */
    int32_t prev_seq_lens[N], seq_lens[N];
    int32_t backend = -1;
    size_t fsize = 0, bsize = 0, psize = 0, dsize = 0, i;
    int no_candidates = 0;
    int64_t h, x, t;
    double max_diff = 0.0;

    /* --- Version check: the loaded library against the header we compiled with. */
    if (dashattn_version() / 100 != DASHATTN_VERSION_MAJOR * 100 + DASHATTN_VERSION_MINOR) {
        fprintf(stderr, "header %d.%d but library %s\n", DASHATTN_VERSION_MAJOR,
                DASHATTN_VERSION_MINOR, dashattn_version_string());
        return 1;
    }
    printf("dashattn %s\n", dashattn_version_string());

    /* --- Context on the CPU backend (host memory, synchronous calls). */
    CHECK(dashattn_context_options_default(&opts));
    opts.backend = DASHATTN_BACKEND_CPU;
    opts.num_threads = 0; /* all cores */
    CHECK(dashattn_context_create(&opts, &ctx));
    CHECK(dashattn_context_get_backend(ctx, &backend));
    printf("backend: %s\n", backend == DASHATTN_BACKEND_CPU ? "CPU" : "CUDA");

    /* --- Config: defaults, then our block size. */
    CHECK(dashattn_config_default(&cfg));
    cfg.block_size = BLOCK; /* 16 | 32 | 64 | 128 */
    cfg.alpha = 1.5f;       /* entmax alpha in [1, 2] */
    /* causal = 1, n_local = 1, per-group selection, scale = coarse_scale = 1/sqrt(D). */

    /* --- Inputs: a fused QKV buffer. Keys get a per-block shared component so that the
     * pooled keys differ and entmax selects a proper subset of the blocks. */
    qkv = malloc(sizeof(float) * N * L * H3 * D);
    if (qkv == NULL) goto oom;
    for (i = 0; i < (size_t)N * L * H3 * D; i++) qkv[i] = randn();
    {
        float topic[L / BLOCK][HKV][D];
        int64_t j;
        for (j = 0; j < L / BLOCK; j++)
            for (h = 0; h < HKV; h++)
                for (x = 0; x < D; x++) topic[j][h][x] = 1.5f * randn();
        for (t = 0; t < L; t++)
            for (h = 0; h < HKV; h++)
                for (x = 0; x < D; x++) qkv[(t * H3 + HQ + h) * D + x] += topic[t / BLOCK][h][x];
    }
    {
        /* q [N, L, HQ, D], k and v [N, L, HKV, D]: views into the fused buffer. */
        const int64_t qshape[4] = {N, L, HQ, D}, kshape[4] = {N, L, HKV, D};
        const int64_t st[4] = {(int64_t)L * H3 * D, H3 * D, D, 1};
        q = strided(qkv, DASHATTN_DTYPE_F32, 4, qshape, st);
        k = strided(qkv + HQ * D, DASHATTN_DTYPE_F32, 4, kshape, st);
        v = strided(qkv + (HQ + HKV) * D, DASHATTN_DTYPE_F32, 4, kshape, st);
    }

    /* --- Outputs of the forward: o [N, L, HQ, D], lse and tau [N, HQ, L] (f32). */
    out = malloc(sizeof(float) * N * L * HQ * D);
    row_lse = malloc(sizeof(float) * N * HQ * L);
    row_tau = malloc(sizeof(float) * N * HQ * L);
    if (out == NULL || row_lse == NULL || row_tau == NULL) goto oom;
    {
        const int64_t oshape[4] = {N, L, HQ, D}, sshape[3] = {N, HQ, L};
        o = contiguous(out, DASHATTN_DTYPE_F32, 4, oshape);
        lse = contiguous(row_lse, DASHATTN_DTYPE_F32, 3, sshape);
        tau = contiguous(row_tau, DASHATTN_DTYPE_F32, 3, sshape);
    }

    /* --- An invalid call, on purpose: block_size 48 is refused and nothing is written. */
    bad = cfg;
    bad.block_size = 48;
    {
        dashattn_status st = dashattn_forward(ctx, &bad, &q, &k, &v, NULL, NULL, &o, &lse, &tau, NULL, 0);
        if (st != DASHATTN_ERR_INVALID_CONFIG) {
            fprintf(stderr, "expected DASHATTN_ERR_INVALID_CONFIG, got %d\n", (int)st);
            goto cleanup;
        }
        report(stdout, "expected error from forward with block_size 48", st);
    }

    /* --- Forward, with a caller-owned workspace of the queried size. */
    CHECK(dashattn_forward_workspace_size(ctx, &cfg, &q, &k, &v, NULL, &fsize));
    if (workspace_alloc(&fws, fsize) != 0) goto oom;
    CHECK(dashattn_forward(ctx, &cfg, &q, &k, &v, /*pooled_k=*/NULL, /*head_alpha=*/NULL, &o,
                           &lse, &tau, fws.ptr, fws.size));
    for (i = 0; i < (size_t)N * HQ * L; i++) no_candidates += isinf(row_tau[i]) && row_tau[i] < 0;
    printf("forward: workspace %zu bytes, |o| = %.6f, lse[0,0,%d] = %.6f, %d of %d rows without candidates (tau = -inf)\n",
           fsize, norm(out, (size_t)N * L * HQ * D), L - 1, row_lse[L - 1], no_candidates, N * HQ * L);

    /* --- Backward of loss = <d_o, o>: same inputs as the forward plus o, d_o, lse, tau. */
    grad_out = malloc(sizeof(float) * N * L * HQ * D);
    gq = malloc(sizeof(float) * N * L * HQ * D);
    gq2 = malloc(sizeof(float) * N * L * HQ * D);
    gk = malloc(sizeof(float) * N * L * HKV * D);
    gv = malloc(sizeof(float) * N * L * HKV * D);
    if (grad_out == NULL || gq == NULL || gq2 == NULL || gk == NULL || gv == NULL) goto oom;
    for (i = 0; i < (size_t)N * L * HQ * D; i++) grad_out[i] = randn();
    {
        const int64_t qshape[4] = {N, L, HQ, D}, kshape[4] = {N, L, HKV, D};
        d_o = contiguous(grad_out, DASHATTN_DTYPE_F32, 4, qshape);
        dq = contiguous(gq, DASHATTN_DTYPE_F32, 4, qshape);
        dk = contiguous(gk, DASHATTN_DTYPE_F32, 4, kshape);
        dv = contiguous(gv, DASHATTN_DTYPE_F32, 4, kshape);
    }
    CHECK(dashattn_backward_workspace_size(ctx, &cfg, &q, &k, &v, NULL, &bsize));
    if (workspace_alloc(&bws, bsize) != 0) goto oom;
    CHECK(dashattn_backward(ctx, &cfg, &q, &k, &v, NULL, NULL, &o, &d_o, &lse, &tau, &dq, &dk, &dv,
                            /*d_pooled_k=*/NULL, bws.ptr, bws.size));
    printf("backward: workspace %zu bytes, |dq| = %.6f, |dk| = %.6f, |dv| = %.6f\n", bsize,
           norm(gq, (size_t)N * L * HQ * D), norm(gk, (size_t)N * L * HKV * D), norm(gv, (size_t)N * L * HKV * D));
    /* deterministic = 1 (the default): a second run gives the same bits. NULL, 0 lets the
     * library allocate its own scratch. */
    {
        const int64_t qshape[4] = {N, L, HQ, D};
        dashattn_tensor dq2 = contiguous(gq2, DASHATTN_DTYPE_F32, 4, qshape);
        CHECK(dashattn_backward(ctx, &cfg, &q, &k, &v, NULL, NULL, &o, &d_o, &lse, &tau, &dq2, &dk, &dv,
                                NULL, NULL, 0));
        if (memcmp(gq, gq2, sizeof(float) * N * L * HQ * D) != 0) {
            fprintf(stderr, "backward is not deterministic\n");
            goto cleanup;
        }
        printf("backward: second run bitwise identical\n");
    }

    /* --- Paged KV cache: the same 96 keys/values spread over shuffled pages. Token i of
     * sequence 0 lives on page block_table[i / PAGE], row i % PAGE. */
    kc = calloc((size_t)NUM_PAGES * PAGE * HKV * D, sizeof(float));
    vc = calloc((size_t)NUM_PAGES * PAGE * HKV * D, sizeof(float));
    pc = calloc((size_t)NUM_PAGES * SLOTS * HKV * D, sizeof(float));
    if (kc == NULL || vc == NULL || pc == NULL) goto oom;
    for (t = 0; t < L; t++) {
        int64_t page = block_table[t / PAGE], slot = t % PAGE;
        for (h = 0; h < HKV; h++)
            for (x = 0; x < D; x++) {
                kc[((page * PAGE + slot) * HKV + h) * D + x] = qkv[(t * H3 + HQ + h) * D + x];
                vc[((page * PAGE + slot) * HKV + h) * D + x] = qkv[(t * H3 + HQ + HKV + h) * D + x];
            }
    }
    {
        const int64_t cshape[4] = {NUM_PAGES, PAGE, HKV, D}, pshape[4] = {NUM_PAGES, SLOTS, HKV, D};
        const int64_t tshape[2] = {N, MAX_PAGES}, lshape[1] = {N};
        k_cache = contiguous(kc, DASHATTN_DTYPE_F32, 4, cshape);
        v_cache = contiguous(vc, DASHATTN_DTYPE_F32, 4, cshape);
        pooled_cache = contiguous(pc, DASHATTN_DTYPE_F32, 4, pshape);
        table = contiguous(block_table, DASHATTN_DTYPE_I32, 2, tshape);
        prev_lens = contiguous(prev_seq_lens, DASHATTN_DTYPE_I32, 1, lshape);
        lens = contiguous(seq_lens, DASHATTN_DTYPE_I32, 1, lshape);
    }

    /* --- Pooled-key cache upkeep: after a prefill of 95 tokens (blocks 0..4 complete),
     * then after appending token 95 (block 5 completes). */
    CHECK(dashattn_pool_keys_paged_workspace_size(ctx, &cfg, &k_cache, &pooled_cache, &table, &lens, &psize));
    prev_seq_lens[0] = 0;
    seq_lens[0] = L - 1;
    CHECK(dashattn_pool_keys_paged(ctx, &cfg, &k_cache, &pooled_cache, &table, &prev_lens, &lens, NULL, psize));
    prev_seq_lens[0] = L - 1;
    seq_lens[0] = L;
    CHECK(dashattn_pool_keys_paged(ctx, &cfg, &k_cache, &pooled_cache, &table, &prev_lens, &lens, NULL, psize));
    printf("pool_keys_paged: workspace %zu bytes, %d blocks pooled\n", psize, L / BLOCK);

    /* --- Decode the last token (q_len = 1; it is already in the cache, seq_lens = 96).
     * Its query is row L-1 of the fused buffer: a strided view again. */
    od = malloc(sizeof(float) * N * 1 * HQ * D);
    lsed = malloc(sizeof(float) * N * HQ * 1);
    if (od == NULL || lsed == NULL) goto oom;
    {
        const int64_t qshape[4] = {N, 1, HQ, D}, st[4] = {(int64_t)L * H3 * D, H3 * D, D, 1};
        const int64_t sshape[3] = {N, HQ, 1};
        q_dec = strided(qkv + (size_t)(L - 1) * H3 * D, DASHATTN_DTYPE_F32, 4, qshape, st);
        o_dec = contiguous(od, DASHATTN_DTYPE_F32, 4, qshape);
        lse_dec = contiguous(lsed, DASHATTN_DTYPE_F32, 3, sshape);
    }
    CHECK(dashattn_decode_workspace_size(ctx, &cfg, &q_dec, &k_cache, &pooled_cache, &table, &lens, &dsize));
    CHECK(dashattn_decode(ctx, &cfg, &q_dec, &k_cache, &v_cache, &pooled_cache, &table, &lens,
                          /*head_alpha=*/NULL, &o_dec, &lse_dec, NULL, dsize));
    /* Decode is the same operator: it must reproduce the forward's last row. */
    for (h = 0; h < HQ; h++) {
        double dl = fabs((double)lsed[h] - row_lse[h * L + (L - 1)]);
        if (dl > max_diff) max_diff = dl;
        for (x = 0; x < D; x++) {
            double d = fabs((double)od[h * D + x] - out[((L - 1) * HQ + h) * D + x]);
            if (d > max_diff) max_diff = d;
        }
    }
    printf("decode: workspace %zu bytes, max |decode - forward last row| = %.3g (o and lse)\n", dsize, max_diff);
    if (max_diff > 1e-5) {
        fprintf(stderr, "decode disagrees with the forward\n");
        goto cleanup;
    }

    printf("ok\n");
    rc = 0;
    goto cleanup;

oom:
    fprintf(stderr, "out of host memory\n");
cleanup:
    if (ctx != NULL) {
        dashattn_status st = dashattn_context_destroy(ctx);
        if (st != DASHATTN_SUCCESS) {
            report(stderr, "dashattn_context_destroy(ctx)", st);
            rc = 1;
        }
    }
    free(fws.raw);
    free(bws.raw);
    free(qkv);
    free(out);
    free(row_lse);
    free(row_tau);
    free(grad_out);
    free(gq);
    free(gq2);
    free(gk);
    free(gv);
    free(kc);
    free(vc);
    free(pc);
    free(od);
    free(lsed);
    return rc;
}
