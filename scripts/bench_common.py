"""Pieces shared by the decode benchmarks (scripts/bench_backward_decode.py and
scripts/microbench/split_chains.py): the bench shape, the topic inputs, the entmax
threshold, CUDA-graph timing, the copy bandwidth and the read-only reference kernel."""
import math
import sys

import torch

HQ, HKV, D, B, ALPHA = 32, 8, 128, 64, 1.5
G = HQ // HKV
dev = "cuda"


def median_ms(fn, reps, warmup=2):
    """Median milliseconds of `fn` over `reps` calls, each timed alone (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def capture(fns, ctx):
    """A CUDA graph of fns called in order (after two warm-up rounds on a side stream).
    `ctx` (or None) launches on the capture stream."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        if ctx is not None:
            ctx.set_stream(s)
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        if ctx is not None:
            ctx.set_stream(torch.cuda.current_stream())
        for fn in fns:
            fn()
    if ctx is not None:
        ctx.set_stream(None)
    return g


def graph_us(fn, ctx, reps):
    """Median microseconds of `fn` replayed from a CUDA graph (what serving engines do:
    no Python or launch overhead in the number), each replay timed alone."""
    return 1e3 * median_ms(capture([fn], ctx).replay, reps)


def topics(n, L, kscale):
    """k, v [n, L, Hkv, D] and a query generator mixing topics of earlier blocks."""
    nb = (L + B - 1) // B
    T = torch.randn(n, nb, HKV, D, device=dev)
    k = torch.empty(n, L, HKV, D, device=dev, dtype=torch.bfloat16)
    v = torch.empty(n, L, HKV, D, device=dev, dtype=torch.bfloat16)
    step = max(B, (1 << 24) // (HKV * D) // B * B)  # chunks of ~16M elements (no fp32 copy of it all)
    for b in range(n):
        for i0 in range(0, L, step):
            i1 = min(L, i0 + step)
            blk = torch.arange(i0, i1, device=dev) // B
            k[b, i0:i1] = (kscale * (T[b, blk] + 0.5 * torch.randn(i1 - i0, HKV, D, device=dev))).bfloat16()
            v[b, i0:i1] = torch.randn(i1 - i0, HKV, D, device=dev).bfloat16()
    return T, k, v


def queries(T, rows_pos, n):
    """q [n, len(rows_pos), Hq, D]: each row mixes 3 random topics of blocks <= its own."""
    R = rows_pos.numel()
    hi = (rows_pos // B + 1).float()
    idx = (torch.rand(n, R, 3, HQ, device=dev) * hi[None, :, None, None]).long()
    hk = torch.arange(HQ, device=dev) // G
    q = T[torch.arange(n, device=dev)[:, None, None, None], idx, hk[None, None, None, :]].sum(2) / math.sqrt(3)
    return (q + torch.randn(n, R, HQ, D, device=dev)).bfloat16()


def entmax_tau(z, alpha, valid):
    """alpha-entmax threshold per row by bisection (float64), z [..., n], valid mask."""
    s = torch.where(valid, (alpha - 1) * z.double(), torch.full_like(z, -1e30, dtype=torch.float64))
    mx = s.max(-1, keepdim=True).values
    lo, hi = mx - 1, mx
    for _ in range(60):
        mid = (lo + hi) / 2
        f = (torch.clamp(s - mid, min=0) ** (1 / (alpha - 1))).sum(-1, keepdim=True)
        lo = torch.where(f >= 1, mid, lo)
        hi = torch.where(f >= 1, hi, mid)
    return lo


def copy_bandwidth():
    """Device-to-device copy of 4 GiB: bytes read + written per second (the bandwidth ceiling)."""
    x = torch.empty(1 << 31, dtype=torch.bfloat16, device=dev).normal_()
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), 10)
    del x, y
    torch.cuda.empty_cache()
    return 2 * (1 << 32) / (ms * 1e-3) / 1e9


_READ_KERNEL = []


def read_only_us(nbytes, nl, reps):
    """Per-layer microseconds of the fastest read-only kernel (Triton) over `nbytes` bytes,
    `nl` launches on distinct buffers in one graph (as layered_us); None without Triton."""
    if not _READ_KERNEL:
        try:
            import triton
            import triton.language as tl

            @triton.jit
            def read_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
                pid = tl.program_id(0)
                acc = tl.zeros([BLOCK], dtype=tl.float32)
                base = pid.to(tl.int64) * BLOCK * ITERS
                for i in range(ITERS):
                    offs = base + i * BLOCK + tl.arange(0, BLOCK)
                    acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0, cache_modifier=".cg").to(tl.float32)
                tl.store(out_ptr + pid, tl.sum(acc))

            _READ_KERNEL.append(read_sum)
        except Exception as ex:  # noqa
            print(f"# read-only reference: no Triton ({str(ex)[:80]})", file=sys.stderr)
            _READ_KERNEL.append(None)
    kern = _READ_KERNEL[0]
    if kern is None:
        return None
    ne = (int(nbytes) + 1) // 2
    stride = (ne + 4095) // 4096 * 4096
    x = torch.ones(nl * stride, dtype=torch.bfloat16, device=dev)
    best = None
    for BLOCK, ITERS, warps in ((512, 1, 2), (1024, 1, 4), (2048, 1, 4), (1024, 4, 4), (2048, 4, 8), (4096, 2, 8), (2048, 8, 8)):
        grid = (ne + BLOCK * ITERS - 1) // (BLOCK * ITERS)
        out = torch.empty(grid, device=dev)
        fns = [(lambda i=i: kern[(grid,)](x[i * stride:i * stride + ne], out, ne, BLOCK=BLOCK, ITERS=ITERS, num_warps=warps)) for i in range(nl)]
        us = layered_us(fns, None, reps)
        best = us if best is None else min(best, us)
    del x
    torch.cuda.empty_cache()
    return best


def replay_us(g, reps, per):
    """Microseconds per call of a graph `g` holding `per` calls, replayed back to back (the
    GPU stays busy, as in serving; an idle GPU between short replays also lowers its
    clock): the median of 5 runs of `reps` replays."""
    for _ in range(3):
        g.replay()
    ts = []
    for _ in range(5):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        for _ in range(reps):
            g.replay()
        en.record(); en.synchronize()
        ts.append(st.elapsed_time(en) / reps)
    ts.sort()
    return 1e3 * ts[2] / per


def layered_us(fns, ctx, reps):
    """Microseconds per call of fns (one per layer, each on its own buffers) captured back to
    back in one CUDA graph: a decode step of a model, where no layer finds the previous
    one's data in L2 and launch latency is paid once per step, not per layer."""
    return replay_us(capture(fns, ctx), reps, len(fns))


def decode_point(n, L, kscale, ctx, layer_bytes=48e9):
    """One point of the decode bench: n sequences of L tokens of topic keys (kscale) in a
    paged cache (pages of 64, identity page table) with their pooled keys (pooled by
    dashattn on `ctx`), one query row per sequence, and what the kernels will select (per
    KV group, from the pooled keys and a float64 tau). Returns a dict: q, k, v, pooled
    (the caches as [pages, 64 or 1, Hkv, D] views), table, lens, sparsity (block level),
    bytes_read (pooled keys of every candidate, K/V of the selected and local blocks, q
    and o), and nl, the layers (distinct cache copies) a step of >= 256 MB needs, at most
    16 and `layer_bytes` of K/V."""
    T, k, v = topics(n, L, kscale)
    q = queries(T, torch.tensor([L - 1], device=dev), n)  # [n, 1, Hq, D]
    del T
    ps = 64
    pages = n * L // ps
    table = torch.arange(pages, device=dev, dtype=torch.int32).view(n, L // ps)
    lens = torch.full((n,), L, device=dev, dtype=torch.int32)
    pooled = torch.empty(pages, 1, HKV, D, device=dev, dtype=torch.bfloat16)
    import dashattn
    dashattn.pool_keys_paged(k.view(pages, ps, HKV, D), pooled, table, torch.zeros_like(lens), lens, block_size=B, context=ctx)
    # Selection statistics (per KV group, as the kernel selects).
    nb = L // B
    kbar = pooled.view(n, nb, HKV, D).float()
    qg = q.float().view(n, HKV, G, D).mean(2)
    z = (1 / math.sqrt(D)) * torch.einsum("nhd,njhd->nhj", qg, kbar)
    del kbar
    cand = torch.arange(nb, device=dev)[None, None, :] <= (L - 1) // B - 1
    tau = entmax_tau(z, ALPHA, cand)
    att = ((((ALPHA - 1) * z.double() - tau) > 0) & cand).sum().item() + n * HKV  # + the local block
    del z, tau, cand
    bytes_read = att * B * D * 2 * 2 + n * HKV * nb * D * 2 + 2 * q.numel() * 2
    kv_bytes = n * L * HKV * D * 2 * 2
    nl = max(1, min(16, math.ceil(256e6 / bytes_read), int(layer_bytes // (kv_bytes * 1.02))))
    return dict(q=q, k=k.view(pages, ps, HKV, D), v=v.view(pages, ps, HKV, D), pooled=pooled, table=table, lens=lens,
                sparsity=1 - att / (n * HKV * nb), bytes_read=bytes_read, nl=nl)
