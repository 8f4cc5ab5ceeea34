"""The Python binding on the CPU backend, numpy only.

A plain numpy transcription of SPEC 3 (alpha-entmax by bisection in float64, pooled keys,
candidate and local blocks, the log prior) is compared with dashattn.forward; the
backward with central finite differences of the library's own forward in f64; decode
with the last rows of the forward; error paths with the status they must raise, leaving
poisoned outputs untouched; and the ctypes prototypes with include/dashattn.h.
"""

import ctypes
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dashattn  # noqa: E402
from dashattn import DashattnError  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

# ---- the SPEC reference, in float64 -------------------------------------------------------


def entmax_threshold(z, cand, alpha):
    """tau of alpha-entmax over the candidates of each row, by bisection (alpha > 1) or
    logsumexp (alpha = 1). z, cand [..., nb]; alpha broadcasts against z[..., 0].
    Rows without candidates get -inf."""
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), z.shape[:-1])
    any_cand = cand.any(-1)
    zm = np.where(cand, z, -np.inf)
    # alpha = 1: softmax, tau = logsumexp(z).
    m = np.where(any_cand, zm.max(-1), 0.0)
    lse = m + np.log(np.where(cand, np.exp(zm - m[..., None]), 0.0).sum(-1) + (~any_cand))
    # alpha > 1: sum_j [(alpha-1) z_j - tau]_+^(1/(alpha-1)) = 1, bracketed per SPEC 3.3.
    a1 = np.where(alpha > 1, alpha - 1, 0.5)
    s = np.where(cand, a1[..., None] * z, -np.inf)
    smax = np.where(any_cand, s.max(-1), 0.0)
    count = np.maximum(cand.sum(-1), 1)
    lo, hi = smax - 1.0, smax - count ** (-a1)
    for _ in range(120):
        mid = 0.5 * (lo + hi)
        mass = (np.clip(s - mid[..., None], 0.0, None) ** (1.0 / a1[..., None])).sum(-1)
        big = mass >= 1.0
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    tau = np.where(alpha > 1, 0.5 * (lo + hi), lse)
    return np.where(any_cand, tau, -np.inf)


def spec_blocks(lq, lk, bs, n_local, causal):
    """(cand, local) masks [Lq, nb] of SPEC 3.2, and positions t [Lq]."""
    nb = -(-lk // bs)
    t = lk - lq + np.arange(lq)
    c = np.floor_divide(t, bs)[:, None]
    j = np.arange(nb)[None, :]
    if causal:
        valid = (t >= 0)[:, None]
        local = (j > c - n_local) & (j <= c) & valid
        cand = (j <= c - n_local) & valid
    else:
        local = np.abs(j - c) < n_local
        cand = ~local
    return cand, local, t


def spec_forward(q, k, v, *, alpha=1.5, block_size=64, n_local=1, causal=True, selection="group", scale=None,
                 coarse_scale=None, pooled_k=None):
    """SPEC 3 literally, in float64. Returns (o, lse, tau, selected) with lse and tau
    [N, Hq, Lq] and selected [N, Lq, Hq, nb]."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    n, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    g, bs = hq // hkv, block_size
    nb = -(-lk // bs)
    sigma = 1.0 / np.sqrt(d) if scale is None else scale
    sigma_c = sigma if coarse_scale is None else coarse_scale
    if pooled_k is None:
        kbar = np.stack([k[:, j * bs:min((j + 1) * bs, lk)].mean(axis=1) for j in range(nb)], axis=1)
    else:
        kbar = np.asarray(pooled_k, dtype=np.float64)
    head_kv = np.arange(hq) // g
    cand, local, t = spec_blocks(lq, lk, bs, n_local, causal)
    # Coarse scores per query head, then per KV group the mean over its G heads.
    z = sigma_c * np.einsum("nrhd,njhd->nrhj", q, kbar[:, :, head_kv])
    if selection == "group":
        z = np.repeat(z.reshape(n, lq, hkv, g, nb).mean(axis=3), g, axis=2)
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (hq,)).copy()
    if selection == "group":  # a group uses its first head's alpha
        alphas = np.repeat(alphas[::g], g)
    a = alphas[None, None, :, None]
    cmask = np.broadcast_to(cand[None, :, None, :], z.shape)
    tau = entmax_threshold(z, cmask, alphas[None, None, :])
    x = np.where(a > 1, (a - 1) * z, z) - tau[..., None]
    selected = cmask & ((x > 0) | (a == 1))
    # log p = log(x) / (alpha - 1) (never log of p itself); alpha = 1: z - tau.
    log_x = np.log(np.where(selected & (a > 1), x, 1.0))
    beta = np.where(a > 1, log_x / np.where(a > 1, a - 1, 1.0), x)
    lmask = np.broadcast_to(local[None, :, None, :], z.shape)
    prior = np.where(selected, beta, np.where(lmask, 0.0, -np.inf))
    # Fine stage: token logits with the prior of their block; causal keys i <= t.
    block_of = np.arange(lk) // bs
    logits = sigma * np.einsum("nrhd,nihd->nrhi", q, k[:, :, head_kv]) + prior[..., block_of]
    if causal:
        logits = np.where(np.arange(lk)[None, None, None, :] <= t[None, :, None, None], logits, -np.inf)
    m = logits.max(-1, keepdims=True) if lk else np.full(logits.shape[:-1] + (1,), -np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(logits - m)
    l = w.sum(-1, keepdims=True)
    o = np.einsum("nrhi,nihd->nrhd", w / np.where(l > 0, l, 1.0), v[:, :, head_kv])
    lse = np.where(l[..., 0] > 0, m[..., 0] + np.log(np.where(l[..., 0] > 0, l[..., 0], 1.0)), -np.inf)
    return o, lse.transpose(0, 2, 1), tau.transpose(0, 2, 1), selected


# ---- problems ---------------------------------------------------------------------------


def problem(seed, n, lq, lk, hq, hkv, d, bs, dtype=np.float32, q_scale=1.5):
    """Random q, k, v; keys share a per-block component so pooled keys differ and entmax
    keeps a proper subset of the blocks (pure noise pools to ~0)."""
    rng = np.random.default_rng(seed)
    nb = -(-lk // bs)
    q = rng.standard_normal((n, lq, hq, d)) * q_scale
    topics = rng.standard_normal((n, nb, hkv, d)) * 1.5
    k = rng.standard_normal((n, lk, hkv, d)) + np.repeat(topics, bs, axis=1)[:, :lk]
    v = rng.standard_normal((n, lk, hkv, d))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def rel_l2(x, ref):
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300)


def assert_stats_close(got, ref, tol=1e-5):
    got = np.asarray(got, dtype=np.float64)
    assert np.array_equal(np.isneginf(got), np.isneginf(ref)), "the -inf pattern differs"
    fin = np.isfinite(ref)
    assert np.all(np.isfinite(got[fin]))
    np.testing.assert_allclose(got[fin], ref[fin], rtol=tol, atol=tol)


# ---- forward against the reference -----------------------------------------------------

SHAPES = [(77, 77), (13, 77)]  # prefill and a chunk; 77 is no multiple of the block


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("selection", ["group", "head"])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])  # GQA group size 1 and 4
@pytest.mark.parametrize("lq,lk", SHAPES)
def test_forward_matches_spec(causal, selection, hq, hkv, lq, lk):
    bs, n_local = 16, (1 if causal else 2)
    q, k, v = problem(hash((causal, selection, hq, lq)) % 1000, 2, lq, lk, hq, hkv, 16, bs)
    kw = dict(alpha=1.5, block_size=bs, n_local=n_local, causal=causal, selection=selection)
    o, lse, tau = dashattn.forward(q, k, v, precision="f64", **kw)
    assert o.dtype == np.float32 and o.shape == q.shape
    assert lse.shape == tau.shape == (2, hq, lq) and lse.dtype == np.float32
    ro, rlse, rtau, sel = spec_forward(q, k, v, **kw)
    # Selection must actually be sparse somewhere for the test to mean anything.
    cand, _, _ = spec_blocks(lq, lk, bs, n_local, causal)
    assert sel.sum() < np.broadcast_to(cand[None, :, None, :], sel.shape).sum()
    assert rel_l2(o, ro) < 1e-5
    assert_stats_close(lse, rlse)
    assert_stats_close(tau, rtau)


@pytest.mark.parametrize("alpha", [1.0, 1.25, 2.0, [1.0, 1.3, 1.5, 2.0]])
def test_forward_alpha(alpha):
    q, k, v = problem(7, 1, 50, 70, 4, 2, 8, 16)
    for selection in ["group", "head"]:
        kw = dict(alpha=alpha, block_size=16, selection=selection)
        o, lse, tau = dashattn.forward(q, k, v, precision="f64", **kw)
        ro, rlse, rtau, _ = spec_forward(q, k, v, **kw)
        assert rel_l2(o, ro) < 1e-5
        assert_stats_close(lse, rlse)
        assert_stats_close(tau, rtau)


def test_forward_pooled_keys_and_scales():
    bs = 16
    q, k, v = problem(8, 2, 40, 61, 4, 1, 8, bs)
    pooled = np.random.default_rng(9).standard_normal((2, 4, 1, 8)).astype(np.float32) * 2
    for causal in [True, False]:
        kw = dict(block_size=bs, causal=causal, scale=0.3, coarse_scale=0.7, pooled_k=pooled)
        o, lse, tau = dashattn.forward(q, k, v, precision="f64", **kw)
        ro, rlse, rtau, _ = spec_forward(q, k, v, **kw)
        assert rel_l2(o, ro) < 1e-5
        assert_stats_close(lse, rlse)
        assert_stats_close(tau, rtau)


def test_forward_short_context_is_causal_softmax():
    # SPEC 6: with no candidate block the operator is plain causal softmax attention.
    q, k, v = problem(10, 1, 20, 20, 2, 2, 8, 32)
    o, _, tau = dashattn.forward(q, k, v, block_size=32, precision="f64")
    assert np.all(np.isneginf(tau))
    s = np.einsum("nrhd,nihd->nhri", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(8)
    s = np.where(np.tril(np.ones((20, 20), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    assert rel_l2(o, np.einsum("nhri,nihd->nrhd", a, v.astype(np.float64))) < 1e-6


def test_forward_default_precision_and_f16():
    q, k, v = problem(11, 1, 64, 64, 4, 2, 16, 16)
    ro, _, _, _ = spec_forward(q, k, v, block_size=16)
    o32, _, _ = dashattn.forward(q, k, v, block_size=16)
    assert rel_l2(o32, ro) < 1e-5
    q16, k16, v16 = (x.astype(np.float16) for x in (q, k, v))
    o16, lse16, _ = dashattn.forward(q16, k16, v16, block_size=16)
    assert o16.dtype == np.float16 and lse16.dtype == np.float32
    ro16, _, _, _ = spec_forward(q16, k16, v16, block_size=16)
    assert rel_l2(o16, ro16) < 2e-3


def test_forward_strided_inputs():
    # q as a transposed view of [N, Hq, Lq, D], k and v as slices of one packed buffer.
    q, k, v = problem(12, 2, 30, 45, 4, 2, 8, 16)
    q_t = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    kv = np.ascontiguousarray(np.stack([k, v], axis=3))  # [N, Lk, Hkv, 2, D]
    assert not q_t.flags.c_contiguous
    want, _, _ = dashattn.forward(q, k, v, block_size=16, precision="f64")
    got, _, _ = dashattn.forward(q_t, kv[:, :, :, 0], kv[:, :, :, 1], block_size=16, precision="f64")
    np.testing.assert_array_equal(got, want)
    # A reversed view (negative strides) is copied, not rejected.
    rev = q[:, ::-1][:, ::-1]
    got2, _, _ = dashattn.forward(rev, k, v, block_size=16, precision="f64")
    np.testing.assert_array_equal(got2, want)


def test_forward_preallocated_outputs():
    q, k, v = problem(13, 1, 16, 40, 2, 1, 8, 16)
    o = np.full(q.shape, np.nan, np.float32)
    lse = np.full((1, 2, 16), np.nan, np.float32)
    tau = np.full((1, 2, 16), np.nan, np.float32)
    ro, rl, rt = dashattn.forward(q, k, v, block_size=16, out=o, lse=lse, tau=tau)
    assert ro is o and rl is lse and rt is tau
    assert not np.isnan(o).any() and not np.isnan(lse).any()


# ---- backward against finite differences -------------------------------------------------

FD_CASES = [
    dict(causal=True, selection="group", lq=56, lk=56, hq=2, hkv=1, alpha=1.5, pooled=False),
    dict(causal=True, selection="head", lq=24, lk=56, hq=2, hkv=1, alpha=1.25, pooled=True),
    dict(causal=False, selection="group", lq=8, lk=56, hq=4, hkv=2, alpha=[1.5, 1.5, 1.75, 1.75], pooled=False),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: "%s-%s-a%s" % ("causal" if c["causal"] else "full", c["selection"], c["alpha"]))
def test_backward_matches_finite_differences(case):
    bs, d = 16, 4
    q, k, v = problem(20 + case["lq"], 1, case["lq"], case["lk"], case["hq"], case["hkv"], d, bs, dtype=np.float64, q_scale=2.5)
    rng = np.random.default_rng(21)
    pooled = rng.standard_normal((1, -(-case["lk"] // bs), case["hkv"], d)) * 1.5 if case["pooled"] else None
    kw = dict(alpha=case["alpha"], block_size=bs, causal=case["causal"], selection=case["selection"], precision="f64", pooled_k=pooled)
    w = rng.standard_normal(q.shape)

    def loss(q_, k_, v_, p_):
        o, _, _ = dashattn.forward(q_, k_, v_, **dict(kw, pooled_k=p_))
        return float((o * w).sum())

    o, lse, tau = dashattn.forward(q, k, v, **kw)
    assert lse.dtype == np.float64
    # Some candidate block must be cut (x_j <= 0) for the entmax Jacobian to be exercised.
    _, _, _, sel = spec_forward(q, k, v, **{x: kw[x] for x in ("alpha", "block_size", "causal", "selection", "pooled_k")})
    cand, _, _ = spec_blocks(case["lq"], case["lk"], bs, 1, case["causal"])
    assert 0 < sel.sum() < np.broadcast_to(cand[None, :, None, :], sel.shape).sum()
    dq, dk, dv, dp = dashattn.backward(q, k, v, o, w, lse, tau, **kw)
    assert (dp is None) == (pooled is None)
    args = [q, k, v, pooled]
    grads = [dq, dk, dv, dp]
    eps = 1e-6
    for which in range(4):
        if args[which] is None:
            continue
        x, gx = args[which], grads[which]
        assert np.isfinite(gx).all()

        def shifted(delta):
            a = list(args)
            a[which] = x + delta
            return loss(*a)

        # A random direction over the whole tensor, then random single coordinates.
        u = rng.standard_normal(x.shape)
        fd = (shifted(eps * u) - shifted(-eps * u)) / (2 * eps)
        assert abs(fd - (gx * u).sum()) <= 1e-6 * max(1.0, abs(fd)), (which, fd, (gx * u).sum())
        flat = rng.choice(x.size, size=min(25, x.size), replace=False)
        scale = max(1.0, np.abs(gx).max())
        for idx in flat:
            e = np.zeros(x.size)
            e[idx] = eps
            e = e.reshape(x.shape)
            fd = (shifted(e) - shifted(-e)) / (2 * eps)
            assert abs(fd - gx.flat[idx]) <= 1e-6 * scale, (which, idx, fd, gx.flat[idx])


def test_backward_f32_close_to_f64():
    q, k, v = problem(30, 1, 40, 64, 4, 2, 8, 16)
    d_o = np.random.default_rng(31).standard_normal(q.shape).astype(np.float32)
    o, lse, tau = dashattn.forward(q, k, v, block_size=16)
    g32 = dashattn.backward(q, k, v, o, d_o, lse, tau, block_size=16)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    o64, lse64, tau64 = dashattn.forward(q64, k64, v64, block_size=16, precision="f64")
    g64 = dashattn.backward(q64, k64, v64, o64, d_o.astype(np.float64), lse64, tau64, block_size=16, precision="f64")
    for a, b in zip(g32[:3], g64[:3]):
        assert a.dtype == np.float32
        assert rel_l2(a, b) < 1e-5


def test_backward_deterministic():
    q, k, v = problem(32, 1, 48, 48, 4, 1, 8, 16)
    d_o = np.ones_like(q)
    o, lse, tau = dashattn.forward(q, k, v, block_size=16)
    a = dashattn.backward(q, k, v, o, d_o, lse, tau, block_size=16)
    b = dashattn.backward(q, k, v, o, d_o, lse, tau, block_size=16)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)


# ---- decode over a paged cache -----------------------------------------------------------


@pytest.mark.parametrize("bs,page_size", [(16, 16), (16, 8), (16, 32)])
@pytest.mark.parametrize("q_len", [1, 3])
def test_decode_equals_forward_rows(bs, page_size, q_len):
    hq, hkv, d = 4, 2, 8
    lens = [70, 37]
    rng = np.random.default_rng(40 + page_size + q_len)
    q_all, k, v = problem(41, 2, 70, 70, hq, hkv, d, bs)
    max_pages = -(-70 // page_size)
    num_pages = 2 * max_pages + 3
    order = rng.permutation(num_pages)
    k_cache = rng.standard_normal((num_pages, page_size, hkv, d)).astype(np.float32)
    v_cache = rng.standard_normal((num_pages, page_size, hkv, d)).astype(np.float32)
    table = np.full((2, max_pages), -1, np.int32)
    for b, n in enumerate(lens):
        for p in range(-(-n // page_size)):
            page = order[b * max_pages + p]
            table[b, p] = page
            chunk = slice(p * page_size, min((p + 1) * page_size, n))
            m = chunk.stop - chunk.start
            k_cache[page, :m], v_cache[page, :m] = k[b, chunk], v[b, chunk]
    pooled = np.full((num_pages, max(1, page_size // bs), hkv, d), np.nan, np.float32)
    got = dashattn.pool_keys_paged(k_cache, pooled, table, [0, 0], lens, block_size=bs)
    assert got is pooled
    q = rng.standard_normal((2, q_len, hq, d)).astype(np.float32)
    for selection in ["group", "head"]:
        kw = dict(block_size=bs, selection=selection, precision="f64")
        o, lse = dashattn.decode(q, k_cache, v_cache, pooled, table, lens, **kw)
        assert o.shape == q.shape and lse.shape == (2, hq, q_len)
        for b, n in enumerate(lens):
            fo, flse, _ = dashattn.forward(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], **kw)
            assert rel_l2(o[b], fo[0]) < 1e-5
            np.testing.assert_allclose(lse[b], flse[0], atol=1e-5)


def test_paged_cache_helper_incremental():
    bs, hq, hkv, d = 16, 4, 1, 8
    q_all, k, v = problem(50, 2, 60, 60, hq, hkv, d, bs)
    cache = dashattn.PagedKVCache(2, max_pages=8, page_size=8, num_kv_heads=hkv, head_dim=d, block_size=bs)
    cache.append(0, k[0, :33], v[0, :33])
    cache.append(1, k[1, :5], v[1, :5])
    for step in range(20):  # one token per sequence per step, as a decode loop does
        lens = [34 + step, 6 + step]
        for b in range(2):
            cache.append(b, k[b, lens[b] - 1:lens[b]], v[b, lens[b] - 1:lens[b]])
        q = q_all[:, lens[0] - 1:lens[0]]
        o, _ = cache.decode(q, precision="f64")
        for b in range(2):
            fo, _, _ = dashattn.forward(q[b:b + 1], k[b:b + 1, :lens[b]], v[b:b + 1, :lens[b]], block_size=bs, precision="f64")
            assert rel_l2(o[b], fo[0]) < 1e-5, (step, b)


# ---- error paths ---------------------------------------------------------------------------


def nan_like(x, shape=None, dtype=np.float32):
    return np.full(x.shape if shape is None else shape, np.nan, dtype)


def forward_error(q, k, v, **kw):
    n, lq, hq = q.shape[0], q.shape[1], q.shape[2] if q.ndim == 4 else 1
    o = kw.pop("out", None)
    o = nan_like(q, dtype=q.dtype) if o is None else o
    lse, tau = nan_like(q, (n, hq, lq)), nan_like(q, (n, hq, lq))
    with pytest.raises(DashattnError) as e:
        dashattn.forward(q, k, v, out=o, lse=lse, tau=tau, **kw)
    assert np.isnan(o).all() and np.isnan(lse).all() and np.isnan(tau).all(), "an output was written"
    assert e.value.message, "no detail message"
    return e.value


@pytest.mark.parametrize("kw,status,word", [
    (dict(block_size=48), dashattn.DASHATTN_ERR_INVALID_CONFIG, "block_size"),
    (dict(n_local=0), dashattn.DASHATTN_ERR_INVALID_CONFIG, "n_local"),
    (dict(causal=2), dashattn.DASHATTN_ERR_INVALID_CONFIG, "causal"),
    (dict(selection=7), dashattn.DASHATTN_ERR_INVALID_CONFIG, "selection"),
    (dict(alpha=2.5), dashattn.DASHATTN_ERR_INVALID_CONFIG, "alpha"),
    (dict(alpha=float("nan")), dashattn.DASHATTN_ERR_INVALID_CONFIG, "alpha"),
    (dict(alpha=[1.5, 3.0]), dashattn.DASHATTN_ERR_INVALID_ARGUMENT, "head_alpha"),
    (dict(alpha=[1.5, 1.5, 1.5]), dashattn.DASHATTN_ERR_INVALID_SHAPE, "head_alpha"),
    (dict(scale=-1.0), dashattn.DASHATTN_ERR_INVALID_CONFIG, "scale"),
])
def test_forward_config_errors(kw, status, word):
    q, k, v = problem(60, 1, 16, 32, 2, 1, 8, 16)
    err = forward_error(q, k, v, **dict(dict(block_size=16), **kw))
    assert err.status == status, err
    assert word in err.message


def test_forward_tensor_errors():
    q, k, v = problem(61, 1, 16, 32, 4, 2, 8, 16)
    bs = dict(block_size=16)
    e = forward_error(q[:, :, :3], k, v, **bs)  # Hq = 3 is no multiple of Hkv = 2
    assert e.status == dashattn.DASHATTN_ERR_INVALID_SHAPE and "multiple" in e.message
    e = forward_error(q, k.astype(np.float16), v, **bs)
    assert e.status == dashattn.DASHATTN_ERR_INVALID_DTYPE
    e = forward_error(q, k, v[:, :31], **bs)
    assert e.status == dashattn.DASHATTN_ERR_INVALID_SHAPE and "v" in e.message
    e = forward_error(q[0], k, v, **bs)  # rank 3
    assert e.status == dashattn.DASHATTN_ERR_INVALID_SHAPE
    e = forward_error(q, k[..., ::2], v[..., ::2], **bs)  # D not contiguous
    assert e.status == dashattn.DASHATTN_ERR_INVALID_STRIDE
    # An output whose last dimension is strided.
    o = np.full(q.shape[:3] + (16,), np.nan, np.float32)[..., ::2]
    e = forward_error(q, k, v, out=o, **bs)
    assert e.status == dashattn.DASHATTN_ERR_INVALID_STRIDE and "o" in e.message
    # An output aliasing an input.
    qq = q.copy()
    with pytest.raises(DashattnError) as ei:
        dashattn.forward(qq, k, v, out=qq, **bs)
    assert ei.value.status == dashattn.DASHATTN_ERR_INVALID_ARGUMENT and "overlaps" in ei.value.message
    np.testing.assert_array_equal(qq, q)


def desc(x, name, output=False):
    """A pointer to the dashattn_tensor describing x (kept alive by the returned view)."""
    v = dashattn.describe(x, name, output=output)
    return v, ctypes.byref(v.desc)


def test_backward_errors_leave_gradients_untouched():
    q, k, v = problem(62, 1, 20, 40, 2, 1, 8, 16)
    o, lse, tau = dashattn.forward(q, k, v, block_size=16)
    grads = dict(dq=nan_like(q), dk=nan_like(k), dv=nan_like(v))
    with pytest.raises(DashattnError) as e:  # lse of the wrong shape
        dashattn.backward(q, k, v, o, o, lse[:, :, :5], tau, block_size=16, **grads)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_SHAPE and "lse" in e.value.message
    with pytest.raises(DashattnError) as e:  # d_pooled_k without pooled_k
        dashattn.backward(q, k, v, o, o, lse, tau, block_size=16, d_pooled_k=np.zeros((1, 3, 1, 8), np.float32), **grads)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_ARGUMENT and "d_pooled_k" in e.value.message
    # pooled_k given but d_pooled_k NULL: only reachable through the raw C call.
    cfg = dashattn.make_config(block_size=16)
    keep = [desc(x, n) for x, n in [(q, "q"), (k, "k"), (v, "v"), (np.zeros((1, 3, 1, 8), np.float32), "pooled_k"),
                                     (o, "o"), (o, "d_o"), (lse, "lse"), (tau, "tau")]]
    keep += [desc(grads[n], n, output=True) for n in ("dq", "dk", "dv")]
    r = [p for _, p in keep]
    status = dashattn.library().dashattn_backward(dashattn.default_context().handle, ctypes.byref(cfg), r[0], r[1], r[2], r[3], None,
                                                  r[4], r[5], r[6], r[7], r[8], r[9], r[10], None, None, 0)
    assert status == dashattn.DASHATTN_ERR_NULL_POINTER and "d_pooled_k" in dashattn.last_error_message()
    for g in grads.values():
        assert np.isnan(g).all()


def test_workspace_errors():
    q, k, v = problem(63, 1, 16, 64, 2, 1, 8, 16)
    lib, ctx = dashattn.library(), dashattn.default_context()
    cfg = dashattn.make_config(block_size=16)
    o = nan_like(q)
    keep = [desc(q, "q"), desc(k, "k"), desc(v, "v"), desc(o, "o", output=True)]
    rq, rk, rv, ro = (p for _, p in keep)
    size = ctypes.c_size_t(0)
    dashattn.check(lib.dashattn_forward_workspace_size(ctx.handle, ctypes.byref(cfg), rq, rk, rv, None, ctypes.byref(size)))
    assert size.value > 0
    buf = np.zeros(size.value + 512, np.uint8)
    base = buf.ctypes.data + (-buf.ctypes.data) % 256

    def call(ptr, n):
        return lib.dashattn_forward(ctx.handle, ctypes.byref(cfg), rq, rk, rv, None, None, ro, None, None, ptr, n)

    assert call(base, size.value - 1) == dashattn.DASHATTN_ERR_WORKSPACE_TOO_SMALL
    assert call(base + 8, size.value) == dashattn.DASHATTN_ERR_MISALIGNED
    assert "256" in dashattn.last_error_message()
    assert call(None, 16) == dashattn.DASHATTN_ERR_NULL_POINTER
    assert np.isnan(o).all()
    assert call(base, size.value) == dashattn.DASHATTN_SUCCESS
    assert not np.isnan(o).any()


def test_decode_and_pool_errors_leave_outputs_untouched():
    bs, page_size, hkv, d = 16, 16, 1, 8
    k_cache = np.zeros((4, page_size, hkv, d), np.float32)
    pooled = np.full((4, 1, hkv, d), np.nan, np.float32)
    table = np.array([[0, 1, 9, 2]], np.int32)  # page 9 does not exist
    with pytest.raises(DashattnError) as e:
        dashattn.pool_keys_paged(k_cache, pooled, table, [0], [48], block_size=bs)
    assert e.value.status == dashattn.DASHATTN_ERR_OUT_OF_RANGE and "block_table" in e.value.message
    assert np.isnan(pooled).all()
    with pytest.raises(DashattnError) as e:  # prev > seq
        dashattn.pool_keys_paged(k_cache, pooled, table, [40], [20], block_size=bs)
    assert e.value.status == dashattn.DASHATTN_ERR_OUT_OF_RANGE and "prev_seq_lens" in e.value.message
    q = np.ones((1, 1, 2, d), np.float32)
    o = np.full(q.shape, np.nan, np.float32)
    lse = np.full((1, 2, 1), np.nan, np.float32)
    with pytest.raises(DashattnError) as e:
        dashattn.decode(q, k_cache, k_cache, pooled, table, [40], block_size=bs, out=o, lse=lse)
    assert e.value.status == dashattn.DASHATTN_ERR_OUT_OF_RANGE
    with pytest.raises(DashattnError) as e:  # seq_lens beyond max_pages * page_size
        dashattn.decode(q, k_cache, k_cache, pooled, table, [65], block_size=bs, out=o, lse=lse)
    assert e.value.status == dashattn.DASHATTN_ERR_OUT_OF_RANGE and "seq_lens" in e.value.message
    with pytest.raises(DashattnError) as e:  # page size incompatible with the block size
        dashattn.decode(q, np.zeros((4, 24, hkv, d), np.float32), np.zeros((4, 24, hkv, d), np.float32), pooled, table, [1],
                        block_size=bs, out=o, lse=lse)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_SHAPE and "page_size" in e.value.message
    assert np.isnan(o).all() and np.isnan(lse).all()


# ---- merging partial results -------------------------------------------------------------


def test_merge_states():
    rng = np.random.default_rng(80)
    s, n, l, h, d = 3, 2, 5, 4, 8
    o_parts = rng.standard_normal((s, n, l, h, d)).astype(np.float32)
    lse_parts = (rng.standard_normal((s, n, h, l)) * 3).astype(np.float32)
    lse_parts[0, 0, 0, :] = -np.inf  # one part attended nothing in these rows
    lse_parts[:, 1, 2, 3] = -np.inf  # no part attended anything in this row
    o, lse = dashattn.merge_states(o_parts, lse_parts)
    ref_lse = np.logaddexp.reduce(lse_parts.astype(np.float64), axis=0)
    with np.errstate(invalid="ignore"):
        w = np.nan_to_num(np.exp(lse_parts - ref_lse[None]), nan=0.0)  # [S, N, H, L]
    ref_o = np.einsum("snhl,snlhd->nlhd", w, o_parts.astype(np.float64))
    assert_stats_close(lse, ref_lse)
    assert rel_l2(o, ref_o) < 1e-6 and np.all(o[1, 3, 2] == 0)
    # A list of parts works too, and the result does not depend on the order.
    o2, _ = dashattn.merge_states([o_parts[2], o_parts[0], o_parts[1]], [lse_parts[2], lse_parts[0], lse_parts[1]])
    assert rel_l2(o2, o) < 1e-6
    out = np.full((n, l, h, d), np.nan, np.float32)
    with pytest.raises(DashattnError) as e:
        dashattn.merge_states(o_parts, lse_parts[:, :, :, :4], out=out)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_SHAPE and "lse_parts" in e.value.message
    assert np.isnan(out).all()


# ---- context, library, header ------------------------------------------------------------


def test_context_lifecycle():
    with dashattn.Context("cpu", num_threads=1) as ctx:
        assert ctx.backend == "cpu" and not ctx.closed
        ctx.prepare()  # no-op on the CPU backend
        ctx.set_stream(None)
        q, k, v = problem(70, 1, 8, 8, 2, 1, 8, 16)
        o, _, _ = dashattn.forward(q, k, v, block_size=16, context=ctx)
        assert np.isfinite(o).all()
    assert ctx.closed and "closed" in repr(ctx)
    with pytest.raises(ValueError):
        dashattn.forward(q, k, v, block_size=16, context=ctx)
    ctx.close()  # idempotent
    with pytest.raises(DashattnError) as e:
        dashattn.Context("cpu", num_threads=-1)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_ARGUMENT and "num_threads" in e.value.message
    with pytest.raises(DashattnError) as e:
        dashattn.Context(7)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_ARGUMENT
    assert dashattn.Context("auto").backend in ("cpu", "cuda")


def test_cuda_context_without_device():
    if dashattn.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(DashattnError) as e:
        dashattn.Context("cuda")
    assert e.value.status == dashattn.DASHATTN_ERR_NO_DEVICE


def test_library_basics():
    number, text = dashattn.version()
    assert number == dashattn.DASHATTN_VERSION_MAJOR * 10000 + dashattn.DASHATTN_VERSION_MINOR * 100 + dashattn.DASHATTN_VERSION_PATCH
    assert text == "%d.%d.%d" % (dashattn.DASHATTN_VERSION_MAJOR, dashattn.DASHATTN_VERSION_MINOR, dashattn.DASHATTN_VERSION_PATCH)
    assert dashattn.status_string(0)
    assert dashattn.status_string(12345) == "unknown status code"
    e = DashattnError(dashattn.DASHATTN_ERR_UNSUPPORTED, "detail")
    assert "DASHATTN_ERR_UNSUPPORTED" in str(e) and "detail" in str(e)
    assert Path(dashattn.library()._dashattn_path).is_file()


def test_library_lookup_order(monkeypatch):
    monkeypatch.setenv("DASHATTN_LIBRARY", "/nonexistent/libdashattn.so")
    assert [str(p) for p in dashattn.library_candidates()] == ["/nonexistent/libdashattn.so"]
    monkeypatch.delenv("DASHATTN_LIBRARY")
    c = dashattn.library_candidates()
    assert c[0].parent.name == "dashattn" and c[-2].parts[-2:] == ("release", c[-2].name) and "debug" in c[-1].parts


def test_error_message_is_thread_local():
    import threading
    q, k, v = problem(71, 1, 8, 8, 2, 1, 8, 16)
    with pytest.raises(DashattnError):
        dashattn.forward(q, k, v, block_size=48)
    msg = dashattn.last_error_message()
    seen = []
    th = threading.Thread(target=lambda: seen.append(dashattn.last_error_message()))
    th.start()
    th.join()
    assert "block_size" in msg and seen == [""]


# The header is the source of truth; the ctypes mirror must agree with it exactly.

_C_TYPES = {
    "dashattn_status": ctypes.c_int32, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
    "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t, "float": ctypes.c_float, "void *": ctypes.c_void_p,
    "const char *": ctypes.c_char_p, "char *": ctypes.POINTER(ctypes.c_char),
}


def _ctype(decl):
    decl = " ".join(decl.replace("*", " * ").split()).replace("* *", "**")
    decl = decl.replace(" *", " *").strip()
    if decl in _C_TYPES:
        return _C_TYPES[decl]
    base = decl.replace("const ", "").replace("struct ", "")
    stars = base.count("*")
    base = base.replace("*", "").strip()
    t = _C_TYPES.get(base) or getattr(dashattn._ffi, base)
    for _ in range(stars):
        t = ctypes.POINTER(t)
    return t


def _same(a, b):
    return a is b or (getattr(a, "_type_", None) is not None and getattr(b, "_type_", None) is not None
                      and issubclass(a, ctypes._Pointer) == issubclass(b, ctypes._Pointer) and _same(a._type_, b._type_))


def test_ctypes_mirror_header():
    header = REPO / "include" / "dashattn.h"
    if not header.is_file():
        pytest.skip("include/dashattn.h not found (binding used outside the repository)")
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", header.read_text(), flags=re.S)
    # #define constants
    defines = dict(re.findall(r"#define\s+(DASHATTN_\w+)\s+(-?\d+)\s*$", text, flags=re.M))
    assert defines, "no constants parsed"
    for name, value in defines.items():
        assert getattr(dashattn, name) == int(value), name
    # structs: field names and types in order
    structs = re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S)
    assert {s for s, _ in structs} == {"dashattn_context_options", "dashattn_config", "dashattn_tensor"}
    for name, body in structs:
        fields = []
        for line in filter(None, (x.strip() for x in body.split(";"))):
            m = re.match(r"(.+?)\s*\b(\w+)(?:\[(\w+)\])?$", line)
            ty, fname, arr = m.groups()
            t = _ctype(ty)
            fields.append((fname, t * int(defines.get(arr, arr)) if arr else t))
        mine = getattr(dashattn._ffi, name)._fields_
        assert [f for f, _ in mine] == [f for f, _ in fields], name
        for (f, a), (_, b) in zip(mine, fields):
            assert a == b or (ctypes.sizeof(a) == ctypes.sizeof(b) and getattr(a, "_type_", a) == getattr(b, "_type_", b)), (name, f)
    # functions: every declaration has a prototype here with the same types
    decls = re.findall(r"^([\w ]+?\s*\*?)\s*(dashattn_\w+)\(([^)]*)\);", text, flags=re.M)
    names = {n for _, n, _ in decls}
    assert names == set(dashattn.PROTOTYPES), names ^ set(dashattn.PROTOTYPES)
    for ret, name, params in decls:
        restype, argtypes = dashattn.PROTOTYPES[name]
        assert _same(restype, _ctype(ret)), name
        params = [] if params.strip() in ("", "void") else [p.strip() for p in params.split(",")]
        types = [_ctype(re.sub(r"\b\w+$", "", p)) for p in params]
        assert len(types) == len(argtypes), name
        for i, (a, b) in enumerate(zip(argtypes, types)):
            assert _same(a, b), (name, i, a, b)


# ---- the documentation's examples run -----------------------------------------------------

DOCS = [REPO / "bindings" / "python" / "README.md", REPO / "docs" / "bindings" / "python.md"]


def _python_blocks():
    for doc in DOCS:
        if doc.is_file():
            for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)):
                yield pytest.param(block, id="%s-%d" % (doc.name, i))


@pytest.mark.parametrize("code", list(_python_blocks()))
def test_documentation_example_runs(code, capsys):
    if re.search(r"^import torch", code, flags=re.M):
        pytest.importorskip("torch")
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "False" not in out, out
