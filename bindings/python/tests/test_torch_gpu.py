"""The torch binding: dashattn.attention (a torch.autograd.Function) and the paged decode
helper, against a plain-PyTorch transcription of SPEC 3 that autograd differentiates.

CPU tests run wherever torch is installed; GPU tests need torch with CUDA and skip, with
the library's reason, while the CUDA backend answers DASHATTN_ERR_UNSUPPORTED.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dashattn  # noqa: E402
from dashattn import DashattnError  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="torch has no CUDA device")

# SPEC 6 accuracy contract: relative L2 error of outputs and gradients.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}

# ---- the SPEC reference in plain PyTorch (differentiable) ----------------------------------


def entmax_threshold(z, cand, alpha):
    """tau of alpha-entmax over the candidates of each row, differentiable in z.

    alpha = 1: logsumexp. alpha > 1: bisection without gradient, then one Newton step
    tau = tau0 - f(z, tau0) / f'(tau0) with f'(tau0) held constant; since f(tau0) = 0 its
    value is tau0 and its gradient is the implicit-function one, -df/dz / df/dtau.
    Rows without candidates get -inf.
    """
    alpha = alpha.expand(z.shape[:-1])
    any_cand = cand.any(-1)
    lse = torch.logsumexp(torch.where(cand, z, torch.full_like(z, -torch.inf)), -1)
    a1 = torch.where(alpha > 1, alpha - 1, torch.full_like(alpha, 0.5))
    kexp = (1.0 / a1)[..., None]
    s = a1[..., None] * z
    with torch.no_grad():
        sm = torch.where(cand, s, torch.full_like(s, -torch.inf)).amax(-1)
        sm = torch.where(any_cand, sm, torch.zeros_like(sm))
        count = cand.sum(-1).clamp(min=1).to(z.dtype)
        lo, hi = sm - 1.0, sm - count ** (-a1)
        for _ in range(120):
            mid = 0.5 * (lo + hi)
            mass = torch.where(cand, (s - mid[..., None]).clamp(min=0) ** kexp, torch.zeros_like(s)).sum(-1)
            big = mass >= 1
            lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
        tau0 = 0.5 * (lo + hi)
        x0 = (s - tau0[..., None]).clamp(min=0)
        slope = -torch.where(cand & (x0 > 0), kexp * x0 ** (kexp - 1), torch.zeros_like(s)).sum(-1)
        slope = torch.where(slope < 0, slope, -torch.ones_like(slope))
    f = torch.where(cand, (s - tau0[..., None]).clamp(min=0) ** kexp, torch.zeros_like(s)).sum(-1) - 1
    tau = torch.where(alpha > 1, tau0 - f / slope, lse)
    return torch.where(any_cand, tau, torch.full_like(tau, -torch.inf))


def spec_attention(q, k, v, *, alpha=1.5, block_size=64, n_local=1, causal=True, selection="group", scale=None,
                   coarse_scale=None, pooled_k=None):
    """SPEC 3 in the dtype of its inputs (the tests use float64). Returns o."""
    n, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    g, bs = hq // hkv, block_size
    nb = -(-lk // bs)
    dev = q.device
    sigma = d ** -0.5 if scale is None else scale
    sigma_c = sigma if coarse_scale is None else coarse_scale
    kbar = torch.stack([k[:, j * bs:min((j + 1) * bs, lk)].mean(1) for j in range(nb)], 1) if pooled_k is None else pooled_k
    head_kv = torch.arange(hq, device=dev) // g
    t = lk - lq + torch.arange(lq, device=dev)
    c = torch.div(t, bs, rounding_mode="floor")[:, None]
    j = torch.arange(nb, device=dev)[None, :]
    if causal:
        valid = (t >= 0)[:, None]
        local, cand = (j > c - n_local) & (j <= c) & valid, (j <= c - n_local) & valid
    else:
        local = (j - c).abs() < n_local
        cand = ~local
    z = sigma_c * torch.einsum("nrhd,njhd->nrhj", q, kbar[:, :, head_kv])
    if selection == "group":
        z = z.reshape(n, lq, hkv, g, nb).mean(3).repeat_interleave(g, dim=2)
    alphas = torch.as_tensor(alpha, dtype=q.dtype, device=dev).expand(hq).clone()
    if selection == "group":  # a group uses its first head's alpha
        alphas = alphas[::g].repeat_interleave(g)
    cand = cand[None, :, None, :].expand(z.shape)
    local = local[None, :, None, :].expand(z.shape)
    tau = entmax_threshold(z, cand, alphas[None, None, :])
    a = alphas[None, None, :, None]
    tau_safe = torch.where(torch.isfinite(tau), tau, torch.zeros_like(tau))[..., None]
    x = torch.where(a > 1, (a - 1) * z, z) - tau_safe
    selected = cand & ((x > 0) | (a == 1))
    # log p = log(x) / (alpha - 1), never log of p (SPEC 3.4); alpha = 1: z - tau.
    log_x = torch.log(torch.where(selected & (a > 1), x, torch.ones_like(x)))
    beta = torch.where(a > 1, log_x / torch.where(a > 1, a - 1, torch.ones_like(a)), x)
    zero, ninf = torch.zeros_like(x), torch.full_like(x, -torch.inf)
    prior = torch.where(selected, beta, torch.where(local, zero, ninf))
    block_of = torch.arange(lk, device=dev) // bs
    logits = sigma * torch.einsum("nrhd,nihd->nrhi", q, k[:, :, head_kv]) + prior[..., block_of]
    if causal:
        keep = torch.arange(lk, device=dev)[None, None, None, :] <= t[None, :, None, None]
        logits = torch.where(keep, logits, torch.full_like(logits, -torch.inf))
    return torch.einsum("nrhi,nihd->nrhd", torch.softmax(logits, -1), v[:, :, head_kv])


# ---- helpers ---------------------------------------------------------------------------------


def problem(seed, n, lq, lk, hq, hkv, d, bs, dtype=torch.float32, device="cpu", q_scale=1.5):
    """Random q, k, v (keys share a per-block component so entmax keeps a proper subset)."""
    g = torch.Generator().manual_seed(seed)
    nb = -(-lk // bs)
    q = torch.randn(n, lq, hq, d, generator=g, dtype=torch.float64) * q_scale
    topics = torch.randn(n, nb, hkv, d, generator=g, dtype=torch.float64) * 1.5
    k = torch.randn(n, lk, hkv, d, generator=g, dtype=torch.float64) + topics.repeat_interleave(bs, 1)[:, :lk]
    v = torch.randn(n, lk, hkv, d, generator=g, dtype=torch.float64)
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v))


def rel_l2(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    assert torch.isfinite(x).all(), "NaN or inf"
    return ((x - ref).norm() / ref.norm().clamp(min=1e-300)).item()


def compare_with_reference(q, k, v, pooled_k=None, **kw):
    """Forward and q/k/v(/pooled_k) gradients of dashattn.attention against the reference
    evaluated in float64 on the same (rounded) inputs. Returns the errors by name."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    ref_leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    if pooled_k is not None:
        leaves.append(pooled_k.detach().clone().requires_grad_(True))
        ref_leaves.append(pooled_k.detach().double().requires_grad_(True))
    o = dashattn.attention(*leaves[:3], pooled_k=leaves[3] if pooled_k is not None else None, **kw)
    ro = spec_attention(*ref_leaves[:3], pooled_k=ref_leaves[3] if pooled_k is not None else None, **kw)
    assert o.dtype == q.dtype and o.shape == q.shape
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(q.device)
    (o.double() * w).sum().backward()
    (ro * w).sum().backward()
    errs = {"o": rel_l2(o, ro)}
    for name, a, b in zip(["dq", "dk", "dv", "dpooled"], leaves, ref_leaves):
        assert a.grad is not None and a.grad.dtype == a.dtype, name
        errs[name] = rel_l2(a.grad, b.grad)
    return errs


# ---- the reference itself --------------------------------------------------------------------


def test_reference_entmax_gradient_matches_finite_differences():
    # The Newton-step trick must give the true entmax Jacobian, or the comparisons below
    # would test the binding against a wrong gradient.
    z = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    cand = torch.ones(2, 6, dtype=torch.bool)
    cand[1, 4:] = False
    for a in [1.0, 1.25, 1.5, 2.0]:
        alpha = torch.tensor([a], dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda zz: entmax_threshold(zz, cand, alpha), (z.clone().requires_grad_(True),))


# ---- CPU tensors: the CPU backend through torch.autograd ----------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("selection", ["group", "head"])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_cpu_autograd_matches_reference(causal, selection, hq, hkv):
    q, k, v = problem(1, 2, 45, 77, hq, hkv, 16, 16)
    errs = compare_with_reference(q, k, v, alpha=1.5, block_size=16, n_local=1 if causal else 2, causal=causal, selection=selection)
    assert max(errs.values()) < 1e-5, errs


def test_cpu_autograd_pooled_keys_head_alpha_scales():
    q, k, v = problem(2, 1, 40, 64, 4, 2, 8, 16)
    pooled = torch.randn(1, 4, 2, 8, generator=torch.Generator().manual_seed(3)) * 2
    errs = compare_with_reference(q, k, v, pooled_k=pooled, alpha=[1.0, 1.3, 1.5, 2.0], block_size=16, selection="head",
                                  scale=0.3, coarse_scale=0.6)
    assert set(errs) == {"o", "dq", "dk", "dv", "dpooled"}
    assert max(errs.values()) < 1e-5, errs


def test_cpu_alpha_forms_agree():
    q, k, v = problem(5, 1, 24, 48, 4, 2, 8, 16)
    base = dashattn.attention(q, k, v, block_size=16, alpha=1.25, selection="head")
    for alpha in [np.float32(1.25), torch.tensor(1.25), [1.25] * 4, torch.full((4,), 1.25)]:
        assert torch.equal(dashattn.attention(q, k, v, block_size=16, alpha=alpha, selection="head"), base)


def test_cpu_gradcheck_float64():
    # float64 CPU tensors run the library in f64: torch's own gradcheck applies.
    q, k, v = problem(4, 1, 40, 40, 2, 1, 4, 16, dtype=torch.float64, q_scale=2.5)
    for selection in ["group", "head"]:
        fn = lambda q_, k_, v_: dashattn.attention(q_, k_, v_, block_size=16, selection=selection, alpha=1.5)  # noqa: E731
        assert torch.autograd.gradcheck(fn, tuple(x.clone().requires_grad_(True) for x in (q, k, v)), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision(dtype):
    q, k, v = problem(6, 1, 33, 70, 4, 2, 16, 16, dtype=dtype)
    errs = compare_with_reference(q, k, v, block_size=16)
    assert max(errs.values()) < TOLERANCE[dtype], errs


def test_cpu_noncontiguous_inputs_and_grad():
    # Transposed q, packed k/v and an expanded upstream gradient (the backward of .sum()).
    q, k, v = problem(7, 1, 20, 40, 4, 2, 8, 16)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    kv = torch.stack([k, v], dim=3).requires_grad_(True)
    dashattn.attention(qt, kv[:, :, :, 0], kv[:, :, :, 1], block_size=16).sum().backward()
    q2, k2, v2 = (x.clone().requires_grad_(True) for x in (q, k, v))
    dashattn.attention(q2, k2, v2, block_size=16).sum().backward()
    assert torch.equal(qt.grad, q2.grad)
    assert torch.equal(kv.grad[:, :, :, 0], k2.grad) and torch.equal(kv.grad[:, :, :, 1], v2.grad)


def test_cpu_errors_surface_as_dashattn_error():
    q, k, v = problem(8, 1, 16, 32, 3, 2, 8, 16)
    with pytest.raises(DashattnError) as e:
        dashattn.attention(q, k, v, block_size=16)
    assert e.value.status == dashattn.DASHATTN_ERR_INVALID_SHAPE


def test_cpu_paged_decode_helper():
    bs, hq, hkv, d = 16, 4, 2, 8
    q_all, k, v = problem(9, 2, 50, 50, hq, hkv, d, bs)
    cache = dashattn.PagedKVCache(2, max_pages=4, page_size=16, num_kv_heads=hkv, head_dim=d, block_size=bs, dtype=torch.float32)
    lens = [50, 29]
    for b in range(2):
        cache.append(b, k[b, :lens[b]], v[b, :lens[b]])
    q = q_all[:, -2:]
    o, lse = dashattn.decode_paged(q, cache.k_cache, cache.v_cache, cache.pooled_cache, cache.block_table, cache.seq_lens, block_size=bs)
    assert isinstance(o, torch.Tensor) and lse.shape == (2, hq, 2)
    for b in range(2):
        ref = spec_attention(q[b:b + 1].double(), k[b:b + 1, :lens[b]].double(), v[b:b + 1, :lens[b]].double(), block_size=bs)
        assert rel_l2(o[b:b + 1], ref) < 1e-5


# ---- CUDA tensors: the CUDA backend on torch's current stream ------------------------------------


@needs_cuda
def test_cuda_context_and_device_checks():
    with dashattn.Context("cuda") as ctx:
        assert ctx.backend == "cuda"
        ctx.set_stream(torch.cuda.Stream())
        ctx.set_stream(None)
    q, k, v = problem(10, 1, 16, 32, 2, 1, 8, 16, device="cuda")
    with dashattn.Context("cpu") as cpu:
        # Device pointers must never reach the CPU backend.
        with pytest.raises(ValueError, match="cannot read"):
            dashattn.forward(q, k, v, block_size=16, context=cpu)
    with pytest.raises(ValueError, match="different devices"):
        dashattn.forward(q, k.cpu(), v, block_size=16)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("selection", ["group", "head"])
def test_cuda_autograd_matches_reference(dtype, d, selection):
    q, k, v = problem(11, 2, 300, 300, 8, 2, d, 64, dtype=dtype, device="cuda")
    if dtype == torch.float32:
        # The CUDA kernels take bf16/f16; f32 device tensors are refused with a status.
        with pytest.raises(DashattnError) as e:
            compare_with_reference(q, k, v, block_size=64, selection=selection)
        assert e.value.status == dashattn.DASHATTN_ERR_UNSUPPORTED
        return
    errs = compare_with_reference(q, k, v, block_size=64, selection=selection)
    assert max(errs.values()) < TOLERANCE[dtype], errs


@needs_cuda
def test_cuda_chunk_noncausal_pooled():
    q, k, v = problem(12, 1, 100, 333, 8, 8, 64, 32, dtype=torch.bfloat16, device="cuda")
    pooled = torch.randn(1, 11, 8, 64, device="cuda", dtype=torch.bfloat16)
    errs = compare_with_reference(q, k, v, pooled_k=pooled, block_size=32, causal=False, n_local=2)
    assert max(errs.values()) < TOLERANCE[torch.bfloat16], errs


@needs_cuda
def test_cuda_runs_on_current_stream():
    q, k, v = problem(13, 2, 256, 256, 8, 2, 64, 64, dtype=torch.bfloat16, device="cuda")
    want = dashattn.attention(q, k, v)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = dashattn.attention(q, k, v)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got, want)


@needs_cuda
def test_cuda_paged_decode():
    bs, hq, hkv, d = 64, 8, 2, 128
    q_all, k, v = problem(14, 2, 400, 400, hq, hkv, d, bs, dtype=torch.bfloat16, device="cuda")
    lens = [400, 129]

    def run():
        cache = dashattn.PagedKVCache(2, max_pages=7, page_size=64, num_kv_heads=hkv, head_dim=d, block_size=bs,
                                      dtype=torch.bfloat16, device="cuda")
        for b in range(2):
            cache.append(b, k[b, :lens[b]], v[b, :lens[b]])
        return cache.decode(q_all[:, -1:])

    o, _ = run()
    for b in range(2):
        ref = spec_attention(q_all[b:b + 1, -1:].double(), k[b:b + 1, :lens[b]].double(), v[b:b + 1, :lens[b]].double(), block_size=bs)
        assert rel_l2(o[b:b + 1], ref) < TOLERANCE[torch.bfloat16]
