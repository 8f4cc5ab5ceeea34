"""Decode experiment (issue 5, twentieth session): does running a step as several
independent chains on separate streams (a fork/join per layer) overlap one chain's select
and attention with another chain's score, and so beat one call? And what does a kernel
that only reads the bytes of a step get (the read floor of the 70%-of-copy target)?

    DASHATTN_LIBRARY=.../libdashattn.so python3 scripts/microbench/split_chains.py

Same inputs as scripts/bench_backward_decode.py (Hq 32, Hkv 8, D 128, B 64, bf16, pages of
64, 128k). Per layer: layers of distinct caches in one CUDA graph, replayed back to back.
A chain is a dashattn.decode call on a slice of the batch (sequences) or of the KV heads
(batch 1), on its own context and stream.
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python"))
import dashattn  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--len", type=int, default=131072)
ap.add_argument("--batches", default="8")
ap.add_argument("--kscale", default="0.5,2,8")
ap.add_argument("--splits", default="1,2,4")
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--floor", action="store_true", help="also time a read-only Triton kernel over the step's byte counts")
a = ap.parse_args()

HQ, HKV, D, B, ALPHA = 32, 8, 128, 64, 1.5
G = HQ // HKV
dev = "cuda"
torch.manual_seed(0)


def topics(n, L, kscale):
    nb = (L + B - 1) // B
    T = torch.randn(n, nb, HKV, D, device=dev)
    k = torch.empty(n, L, HKV, D, device=dev, dtype=torch.bfloat16)
    v = torch.empty(n, L, HKV, D, device=dev, dtype=torch.bfloat16)
    step = max(B, (1 << 24) // (HKV * D) // B * B)
    for b in range(n):
        for i0 in range(0, L, step):
            i1 = min(L, i0 + step)
            blk = torch.arange(i0, i1, device=dev) // B
            k[b, i0:i1] = (kscale * (T[b, blk] + 0.5 * torch.randn(i1 - i0, HKV, D, device=dev))).bfloat16()
            v[b, i0:i1] = torch.randn(i1 - i0, HKV, D, device=dev).bfloat16()
    return T, k, v


def queries(T, L, n):
    hi = float(L // B)
    idx = (torch.rand(n, 1, 3, HQ, device=dev) * hi).long()
    hk = torch.arange(HQ, device=dev) // G
    q = T[torch.arange(n, device=dev)[:, None, None, None], idx, hk[None, None, None, :]].sum(2) / math.sqrt(3)
    return (q + torch.randn(n, 1, HQ, D, device=dev)).bfloat16()


def entmax_tau(z, alpha, valid):
    s = torch.where(valid, (alpha - 1) * z.double(), torch.full_like(z, -1e30, dtype=torch.float64))
    mx = s.max(-1, keepdim=True).values
    lo, hi = mx - 1, mx
    for _ in range(60):
        mid = (lo + hi) / 2
        f = (torch.clamp(s - mid, min=0) ** (1 / (alpha - 1))).sum(-1, keepdim=True)
        lo = torch.where(f >= 1, mid, lo)
        hi = torch.where(f >= 1, hi, mid)
    return lo


def replay_us(g, reps, per):
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


def capture_layers(layer_fns, chains):
    """One graph: for each layer, fork to `chains` streams, run chain i's call on stream i,
    join. layer_fns[l][i](ctx_i) is chain i's call of layer l."""
    cap = torch.cuda.Stream()
    side = [torch.cuda.Stream() for _ in range(chains)]
    ctxs = [dashattn.Context("cuda") for _ in range(chains)]
    for c, s in zip(ctxs, side):
        c.prepare()
        c.set_stream(s)

    def step():
        cur = torch.cuda.current_stream()
        for fns in layer_fns:
            for s in side:
                s.wait_stream(cur)
            for i, s in enumerate(side):
                with torch.cuda.stream(s):
                    fns[i](ctxs[i])
            for s in side:
                cur.wait_stream(s)

    cap.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(cap):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(cap)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return g, ctxs


def run_point(n, L, ks):
    T, k, v = topics(n, L, ks)
    q = queries(T, L, n)
    del T
    ps = 64
    pages = n * L // ps
    table = torch.arange(pages, device=dev, dtype=torch.int32).view(n, L // ps)
    lens = torch.full((n,), L, device=dev, dtype=torch.int32)
    ctx0 = dashattn.Context("cuda")
    pooled = torch.empty(pages, 1, HKV, D, device=dev, dtype=torch.bfloat16)
    dashattn.pool_keys_paged(k.view(pages, ps, HKV, D), pooled, table, torch.zeros_like(lens), lens, block_size=B, context=ctx0)
    torch.cuda.synchronize()
    ctx0.close()
    nb = L // B
    kbar = pooled.view(n, nb, HKV, D).float()
    qg = q.float().view(n, HKV, G, D).mean(2)
    z = (1 / math.sqrt(D)) * torch.einsum("nhd,njhd->nhj", qg, kbar)
    del kbar
    cand = torch.arange(nb, device=dev)[None, None, :] <= (L - 1) // B - 1
    tau = entmax_tau(z, ALPHA, cand)
    att = ((((ALPHA - 1) * z.double() - tau) > 0) & cand).sum().item() + n * HKV
    del z, tau, cand
    sparsity = 1 - att / (n * HKV * nb)
    bytes_read = att * B * D * 2 * 2 + n * HKV * nb * D * 2 + 2 * q.numel() * 2
    kv_bytes = n * L * HKV * D * 2 * 2
    nl = max(1, min(16, math.ceil(256e6 / bytes_read), int(40e9 // (kv_bytes * 1.02))))
    layers = [(k, v, pooled)] + [(k.clone(), v.clone(), pooled.clone()) for _ in range(nl - 1)]
    o_ref = None
    res = []
    for chains in [int(x) for x in a.splits.split(",")]:
        by_heads = n < chains
        if (by_heads and HKV % chains) or (not by_heads and n % chains):
            continue
        o = torch.zeros_like(q)
        layer_fns = []
        for kk, vv, pp in layers:
            kc, vc = kk.view(pages, ps, HKV, D), vv.view(pages, ps, HKV, D)
            fns = []
            for i in range(chains):
                if by_heads:  # batch 1: chain i takes KV heads [h0, h1) and their query heads
                    h0, h1 = i * HKV // chains, (i + 1) * HKV // chains
                    fns.append(lambda c, h0=h0, h1=h1, kc=kc, vc=vc, pp=pp: dashattn.decode(
                        q[:, :, h0 * G:h1 * G], kc[:, :, h0:h1], vc[:, :, h0:h1], pp[:, :, h0:h1], table, lens,
                        alpha=ALPHA, block_size=B, context=c, out=o[:, :, h0 * G:h1 * G]))
                else:
                    b0, b1 = i * n // chains, (i + 1) * n // chains
                    fns.append(lambda c, b0=b0, b1=b1, kc=kc, vc=vc, pp=pp: dashattn.decode(
                        q[b0:b1], kc, vc, pp, table[b0:b1], lens[b0:b1], alpha=ALPHA, block_size=B, context=c, out=o[b0:b1]))
            layer_fns.append(fns)
        try:
            g, ctxs = capture_layers(layer_fns, chains)
            us = replay_us(g, a.reps, nl)
        except Exception as ex:  # noqa
            print(f"# {chains} chains ({'heads' if by_heads else 'seqs'}): {str(ex)[:200]}", flush=True)
            torch.cuda.synchronize()
            continue
        torch.cuda.synchronize()
        if o_ref is None:
            o_ref = o.clone()
            same = "ref"
        else:
            same = "bitwise" if torch.equal(o, o_ref) else "max diff %.3g" % (o.float() - o_ref.float()).abs().max().item()
        res.append((chains, "heads" if by_heads else "seqs", us, same))
        for c in ctxs:
            c.close()
        del g
    gbs0 = None
    for chains, how, us, same in res:
        gbs = bytes_read / (us * 1e-6) / 1e9
        print(f"| {n} | {L} | {ks:g} | {100 * sparsity:.2f}% | {nl} | {chains} ({how}) | {us:.1f} | {gbs:.0f} | {same} |", flush=True)
    del k, v, q, pooled, layers
    torch.cuda.empty_cache()
    return bytes_read


def read_floor(sizes):
    """Per-launch microseconds of a read-only Triton kernel over each byte count (16 distinct
    buffers in one graph, replayed back to back), the best of a few tilings."""
    import triton
    import triton.language as tl

    @triton.jit
    def rd(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        pid = tl.program_id(0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        base = pid.to(tl.int64) * BLOCK * ITERS
        for i in range(ITERS):
            offs = base + i * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0, cache_modifier=".cg").to(tl.float32)
        tl.store(out_ptr + pid, tl.sum(acc))

    x = torch.empty(1 << 31, dtype=torch.bfloat16, device=dev).normal_()
    y = torch.empty_like(x)
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        y.copy_(x)
    st.record()
    for _ in range(10):
        y.copy_(x)
    en.record(); en.synchronize()
    bw = 2 * (1 << 32) * 10 / (st.elapsed_time(en) * 1e-3) / 1e9
    del y
    print(f"\n# copy {bw:.0f} GB/s; read-only kernel over a step's bytes (per launch, 16 buffers in a graph)\n")
    print("| bytes | best us | GB/s | % of copy | time at 70% of copy | config |")
    print("|---|---|---|---|---|---|")
    out = torch.empty(1 << 20, device=dev)
    for nbytes in sizes:
        ne = int(nbytes) // 2
        best = None
        for BLOCK, ITERS, warps in ((1024, 4, 4), (2048, 4, 8), (4096, 2, 8), (2048, 8, 8), (1024, 16, 4), (8192, 1, 8)):
            per = BLOCK * ITERS
            grid = (ne + per - 1) // per
            if grid > out.numel():
                continue
            stride = (ne + 4095) // 4096 * 4096
            bufs = [x[i * stride:i * stride + ne] for i in range(16)]
            if 16 * stride > x.numel():
                continue
            for b_ in bufs[:2]:
                rd[(grid,)](b_, out, ne, BLOCK=BLOCK, ITERS=ITERS, num_warps=warps)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                with torch.cuda.graph(g, stream=s):
                    for b_ in bufs:
                        rd[(grid,)](b_, out, ne, BLOCK=BLOCK, ITERS=ITERS, num_warps=warps)
            us = replay_us(g, 50, 16)
            if best is None or us < best[0]:
                best = (us, f"BLOCK {BLOCK} ITERS {ITERS} warps {warps} grid {grid}")
        gbs = nbytes / (best[0] * 1e-6) / 1e9
        print(f"| {nbytes / 1e6:.1f} MB | {best[0]:.2f} | {gbs:.0f} | {100 * gbs / bw:.1f}% | {nbytes / (0.7 * bw * 1e3):.2f} | {best[1]} |", flush=True)
    del x
    torch.cuda.empty_cache()


print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | dashattn {dashattn.__version__}")
print("\n| batch | context | kscale | sparsity | layers | chains | us / layer | GB/s on bytes read | o vs 1 chain |")
print("|---|---|---|---|---|---|---|---|---|")
sizes = []
for n in [int(x) for x in a.batches.split(",")]:
    for ks in [float(x) for x in a.kscale.split(",")]:
        sizes.append(run_point(n, a.len, ks))
if a.floor:
    read_floor(sorted(set(sizes)))
