"""The torch side: `attention` as a torch.autograd.Function over dashattn_forward and
dashattn_backward, and `decode_paged`. Imported only when torch is available.

CPU tensors run on the CPU backend; CUDA tensors run on the CUDA backend of their device,
launched on torch's current stream, so they order correctly with surrounding torch work.
"""

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import _core


def _inner_contiguous(x):
    # The library needs the head dimension contiguous; autograd hands out expanded or
    # transposed gradients (e.g. the backward of .sum() has all strides 0).
    return x if x is None or x.dim() == 0 or x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


class DashAttentionFunction(torch.autograd.Function):
    """o = DashAttention(q, k, v[, pooled_k]); saves o, lse and tau for the backward."""

    @staticmethod
    def forward(ctx, q, k, v, pooled_k, head_alpha, settings):
        q, k, v, pooled_k = (_inner_contiguous(x) for x in (q, k, v, pooled_k))
        kw = dict(settings)
        scalar_alpha = kw.pop("alpha")
        alpha = scalar_alpha if head_alpha is None else head_alpha
        o, lse, tau = _core.forward(q, k, v, alpha=alpha, pooled_k=pooled_k, **kw)
        ctx.save_for_backward(q, k, v, pooled_k, head_alpha, o, lse, tau)
        ctx.settings = settings
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o):
        q, k, v, pooled_k, head_alpha, o, lse, tau = ctx.saved_tensors
        kw = dict(ctx.settings)
        scalar_alpha = kw.pop("alpha")
        alpha = scalar_alpha if head_alpha is None else head_alpha
        dq, dk, dv, dpk = _core.backward(q, k, v, o, _inner_contiguous(d_o), lse, tau, alpha=alpha, pooled_k=pooled_k, **kw)
        return dq, dk, dv, dpk, None, None


def attention(q, k, v, *, alpha=1.5, block_size=64, n_local=1, causal=True, selection="group", scale=None,
              pooled_k=None, coarse_scale=None, deterministic=True, context=None):
    """DashAttention (SPEC 3) on torch tensors, differentiable in q, k, v and pooled_k.

    q [N, Lq, Hq, D], k and v [N, Lk, Hkv, D] (Hq a multiple of Hkv), one dtype:
    float32, float16 or bfloat16 (float64 on the CPU, where it runs in f64 precision:
    torch.autograd.gradcheck works). `alpha`: entmax alpha in [1, 2], a float or one value
    per query head (no gradient). `selection`: "group" (heads of a KV group share their
    block choice) or "head". `scale` None means 1/sqrt(D). `pooled_k` [N, ceil(Lk /
    block_size), Hkv, D] replaces mean pooling of k and receives its own gradient.
    Returns o [N, Lq, Hq, D].
    """
    head_alpha = None
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        head_alpha = alpha.detach().to(device=q.device, dtype=torch.float32)
    elif not isinstance(alpha, torch.Tensor) and np.ndim(alpha) > 0:
        head_alpha = torch.as_tensor(np.asarray(alpha, dtype=np.float32), device=q.device)
    precision = "f64" if q.dtype == torch.float64 else "default"
    settings = (("alpha", 1.5 if head_alpha is not None else float(alpha)), ("block_size", block_size), ("n_local", n_local), ("causal", causal),
                ("selection", selection), ("scale", scale), ("coarse_scale", coarse_scale),
                ("precision", precision), ("deterministic", deterministic), ("context", context))
    return DashAttentionFunction.apply(q, k, v, pooled_k, head_alpha, settings)


@torch.no_grad()
def decode_paged(q, k_cache, v_cache, pooled_cache, block_table, seq_lens, **kw):
    """dashattn.decode on torch tensors (no autograd): the decode step over a paged KV
    cache. Returns (o, lse). See dashattn.decode and dashattn.PagedKVCache."""
    return _core.decode(q, k_cache, v_cache, pooled_cache, block_table, seq_lens, **kw)
