#!/usr/bin/env python3
"""Backward and decode benchmarks: dashattn (CUDA, through the Python binding = the public C
API) beside torch SDPA (cuDNN and flash backends) in the same process, same GPU.

    DASHATTN_LIBRARY=.../libdashattn.so python3 scripts/bench_backward_decode.py \
        [--bwd-lens 8192,16384,32768] [--dec-lens 8192,32768,131072] [--batches 1,8,64] \
        [--kscale 1,4,8] [--reps 10] [--kernels]

Inputs come from the topic generator of docs/performance.md (a topic vector per key block
and KV head; keys = kscale * (topic + 0.5 noise), queries = mix of 3 earlier topics +
noise): a larger kscale concentrates attention, so entmax keeps fewer blocks.

Backward: causal, batch 1, Hq=32, Hkv=8, D=128, B=64, bf16, per-group selection, alpha 1.5.
Our backward time vs SDPA's backward (autograd.grad of an SDPA output). Row-level block
sparsity = 1 - (selected + local blocks) / (causal blocks), from the forward's tau.
Decode: one query token per sequence over a paged cache (pages of 64 tokens, identity page
table), pooled keys precomputed; SDPA decode reads the same K/V laid out contiguously.
Decode times (ours and SDPA's) are CUDA-graph replays, so host overhead is excluded: per
layer (several layers' calls on distinct caches in one graph, so nothing is reused from L2
and the replay's launch latency is shared) and single (one call per replay).
Bandwidth counts the bytes our decode must read: pooled keys of every candidate block plus
K and V of the selected and local blocks (per KV group) and q/o. --kernels adds, per decode
row, the device time of each dash_* kernel (torch.profiler over 5 eager calls).
Read-only: per layer, the best time of a Triton kernel that only reads the same number of
bytes (`layers` distinct buffers in one graph, as ours; the best of a few tilings): what
any kernel reading those bytes costs on this GPU, launch included. `% of read-only` is that
time over ours. Omitted (n/a) without Triton.
"""
import argparse, math, os, sys

ap = argparse.ArgumentParser()
ap.add_argument("--bwd-lens", default="8192,16384,32768")
ap.add_argument("--dec-lens", default="8192,32768,131072")
ap.add_argument("--batches", default="1,8,64")
ap.add_argument("--kscale", default="1,4,8")
ap.add_argument("--reps", type=int, default=10)
ap.add_argument("--skip", default="")
ap.add_argument("--profile", action="store_true", help="backward: per-kernel times (torch profiler) and tile-level density")
ap.add_argument("--kernels", action="store_true", help="decode: per-kernel device times (torch.profiler, eager calls)")
a = ap.parse_args()

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
import dashattn
from bench_common import (HQ, HKV, D, B, ALPHA, G, dev, median_ms, graph_us, layered_us, topics, queries,  # noqa: E402
                          copy_bandwidth, read_only_us, decode_point)

torch.manual_seed(0)


def row_sparsity(q, kbar, tau, pos, sigma):
    """Row-level: 1 - attended blocks / causal blocks, from z and the forward's tau
    (per-group selection: tau of the group's first head)."""
    n, R = q.shape[0], q.shape[1]
    att = dense = 0
    for r0 in range(0, R, 2048):
        qs = q[:, r0:r0 + 2048].float().view(n, -1, HKV, G, D).mean(3)  # [n, r, Hkv, D]
        z = sigma * torch.einsum("nrhd,njhd->nrhj", qs, kbar)
        t = tau[:, ::G, r0:r0 + 2048].permute(0, 2, 1)[..., None]  # [n, r, Hkv, 1]
        p = pos[r0:r0 + 2048]
        c = (p // B)[None, :, None, None]
        j = torch.arange(kbar.shape[1], device=dev)[None, None, None, :]
        sel = ((ALPHA - 1) * z - t > 0) & (j <= c - 1)
        att += sel.sum().item() + (n * HKV * p.numel())  # + 1 local block per row
        dense += (n * HKV * (p // B + 1)).sum().item()
    return 1 - att / dense


def tile_density(q, kbar, tau, pos, sigma):
    """Tile level, as the backward kernels compute: a query tile is 64 / G rows x G heads;
    a (tile, block) pair is computed when any row of the tile selected the block or has it
    local. Returns (computed pairs, causal pairs) summed over KV heads."""
    n, R = q.shape[0], q.shape[1]
    rt = 64 // G
    comp = dense = 0
    for r0 in range(0, R, 2048):
        qs = q[:, r0:r0 + 2048].float().view(n, -1, HKV, G, D).mean(3)
        z = sigma * torch.einsum("nrhd,njhd->nrhj", qs, kbar)
        t = tau[:, ::G, r0:r0 + 2048].permute(0, 2, 1)[..., None]
        p = pos[r0:r0 + 2048]
        c = (p // B)[None, :, None, None]
        j = torch.arange(kbar.shape[1], device=dev)[None, None, None, :]
        att = (((ALPHA - 1) * z - t > 0) & (j <= c - 1)) | (j == c)
        rr = att.shape[1] // rt * rt
        u = att[:, :rr].view(n, rr // rt, rt, HKV, -1).any(2)
        comp += u.sum().item()
        dense += (n * HKV * (p[rt - 1:rr:rt] // B + 1)).sum().item()
    return comp, dense


def profile_backward(run):
    from torch.profiler import profile, ProfilerActivity
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            rows[e.name] = rows.get(e.name, 0.0) + e.device_time_total / 1e3
    return ", ".join(f"{k.replace('dash_', '')} {v:.2f} ms" for k, v in sorted(rows.items(), key=lambda kv: -kv[1]))


def bench_backward():
    print("\n## Backward (causal, batch 1, Hq=32, Hkv=8, D=128, B=64, bf16)\n")
    print("|     L | kscale | row sparsity | dash bwd ms | cuDNN bwd ms | flash bwd ms | x cuDNN | x flash | dash TF/s (attended) |")
    print("|------:|-------:|-------------:|------------:|-------------:|-------------:|--------:|--------:|---------------------:|")
    sigma = 1 / math.sqrt(D)
    for L in [int(x) for x in a.bwd_lens.split(",")]:
        base = {}
        qd = torch.randn(1, HQ, L, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        kd = torch.randn(1, HKV, L, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        vd = torch.randn(1, HKV, L, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel([be]):
                    o = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True)
                    do = torch.randn_like(o)
                    base[name] = median_ms(lambda: torch.autograd.grad(o, (qd, kd, vd), do, retain_graph=True), a.reps)
                    del o
            except Exception as ex:  # noqa
                print(f"# SDPA {name} L={L}: {ex}", file=sys.stderr)
                base[name] = float("nan")
        del qd, kd, vd
        torch.cuda.empty_cache()
        for ks in [float(x) for x in a.kscale.split(",")]:
            T, k, v = topics(1, L, ks)
            pos = torch.arange(L, device=dev)
            q = queries(T, pos, 1)
            ctx = dashattn.Context("cuda")
            o, lse, tau = dashattn.forward(q, k, v, alpha=ALPHA, block_size=B, context=ctx)
            do = torch.randn_like(o)
            out = [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]
            ms = median_ms(lambda: dashattn.backward(q, k, v, o, do, lse, tau, alpha=ALPHA, block_size=B, context=ctx,
                                                     dq=out[0], dk=out[1], dv=out[2]), max(3, a.reps // 2))
            kbar = k.float().view(1, -1, B, HKV, D).mean(2) if L % B == 0 else None
            sp = row_sparsity(q, kbar, tau, pos, sigma) if kbar is not None else float("nan")
            dense_flops = 2.5 * 4 * L * L / 2 * D * HQ  # backward ~2.5x forward's 4*L^2/2*D*Hq
            tf = dense_flops * (1 - sp) / (ms * 1e-3) / 1e12
            print(f"| {L:5d} | {ks:6g} | {100*sp:11.1f}% | {ms:11.3f} | {base['cudnn']:12.3f} | {base['flash']:12.3f} | "
                  f"{base['cudnn']/ms:7.2f} | {base['flash']/ms:7.2f} | {tf:20.1f} |", flush=True)
            if a.profile and kbar is not None:
                comp, dense = tile_density(q, kbar, tau, pos, sigma)
                # 7 matmuls of 64 M-rows x B keys x D per computed (tile, block): dq kernel 3, dkv kernel 4
                ctf = comp * 64 * B * D * 2 * 7 / (ms * 1e-3) / 1e12
                print(f"#   L={L} kscale={ks:g}: tile-level sparsity {100*(1-comp/dense):.1f}% ({comp} of {dense} tile-blocks), "
                      f"{ctf:.1f} TF/s on computed tile-blocks; kernels: "
                      + profile_backward(lambda: dashattn.backward(q, k, v, o, do, lse, tau, alpha=ALPHA, block_size=B, context=ctx,
                                                                   dq=out[0], dk=out[1], dv=out[2])), flush=True)
            ctx.close()
            del T, k, v, q, o, lse, tau, do, out
            torch.cuda.empty_cache()


def kernel_times(fn, reps=5):
    """Mean device microseconds per call of each dash_* kernel launched by fn."""
    from torch.profiler import profile, ProfilerActivity
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    tot = {}
    for e in prof.events():
        if e.name.startswith("dash_"):
            tot[e.name] = tot.get(e.name, 0.0) + e.device_time_total
    return ", ".join(f"{k} {v / reps:.1f}" for k, v in sorted(tot.items(), key=lambda kv: -kv[1]))


def bench_decode():
    bw = copy_bandwidth()
    print(f"\n# device-to-device copy: {bw:.0f} GB/s (read + write)")
    print("\n## Decode (one token per sequence, Hq=32, Hkv=8, D=128, B=64, bf16, pages of 64)\n")
    print("Per-layer times: `layers` decode calls on distinct caches captured in one graph, replayed back to back (time / replays / layers);")
    print("single: one call per graph replay, each replay timed alone (includes the replay's launch latency).")
    print("Bandwidth: the bytes our decode must read (pooled keys of all candidates, K/V of selected + local blocks, q, o) per dash us.")
    print("Read-only: the fastest kernel that only reads as many bytes, per layer the same way (its time over ours: % of read-only).\n")
    print("| batch | context | kscale | block sparsity | layers | dash us | dash single us | cuDNN us | cuDNN single us | flash us | x cuDNN | x cuDNN single | x flash | GB/s on bytes read | % of copy | read-only us | % of read-only |")
    print("|------:|--------:|-------:|---------------:|-------:|--------:|---------------:|---------:|----------------:|---------:|--------:|---------------:|--------:|-------------------:|----------:|-------------:|---------------:|")
    for n in [int(x) for x in a.batches.split(",")]:
        for L in [int(x) for x in a.dec_lens.split(",")]:
            kv_bytes = n * L * HKV * D * 2 * 2
            if kv_bytes > 40e9:
                print(f"| {n:5d} | {L:7d} | (skipped: {kv_bytes/1e9:.0f} GB of K/V) |||||||||||||")
                continue
            for ks in [float(x) for x in a.kscale.split(",")]:
                ctx = dashattn.Context("cuda")
                pt = decode_point(n, L, ks, ctx)
                q, sparsity, bytes_read, nl = pt["q"], pt["sparsity"], pt["bytes_read"], pt["nl"]
                table, lens = pt["table"], pt["lens"]
                layers = [(pt["k"], pt["v"], pt["pooled"])] + [(pt["k"].clone(), pt["v"].clone(), pt["pooled"].clone()) for _ in range(nl - 1)]
                del pt
                o = torch.empty_like(q)
                fns = [(lambda kk=kk, vv=vv, pp=pp: dashattn.decode(q, kk, vv, pp, table, lens, alpha=ALPHA, block_size=B, context=ctx, out=o))
                       for kk, vv, pp in layers]
                us = layered_us(fns, ctx, a.reps)
                us1 = graph_us(fns[0], ctx, a.reps)
                qd = q.transpose(1, 2)
                base, base1 = {}, {}
                for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                    try:
                        with sdpa_kernel([be]):
                            sds = [(lambda kk=kk, vv=vv: F.scaled_dot_product_attention(qd, kk.view(n, L, HKV, D).transpose(1, 2), vv.view(n, L, HKV, D).transpose(1, 2), enable_gqa=True))
                                   for kk, vv, _ in layers]
                            try:
                                base[name] = layered_us(sds, None, a.reps)
                                base1[name] = graph_us(sds[0], None, a.reps)
                            except Exception as ex:  # noqa  (not capturable: time it eagerly)
                                print(f"# SDPA {name} n={n} L={L}: no graph ({str(ex)[:80]}), timed eagerly", file=sys.stderr)
                                base[name] = base1[name] = 1e3 * median_ms(sds[0], a.reps)
                    except Exception as ex:  # noqa
                        print(f"# SDPA {name} n={n} L={L}: {str(ex)[:120]}", file=sys.stderr)
                        base[name] = base1[name] = float("nan")
                gbs = bytes_read / (us * 1e-6) / 1e9
                ro = read_only_us(bytes_read, nl, a.reps)
                ro_s = f"{ro:12.1f} | {100 * ro / us:13.1f}%" if ro is not None else f"{'n/a':>12} | {'n/a':>14}"
                print(f"| {n:5d} | {L:7d} | {ks:6g} | {100*sparsity:13.2f}% | {nl:6d} | {us:7.1f} | {us1:14.1f} | {base['cudnn']:8.1f} | "
                      f"{base1['cudnn']:15.1f} | {base['flash']:8.1f} | {base['cudnn']/us:7.2f} | {base1['cudnn']/us1:14.2f} | {base['flash']/us:7.2f} | "
                      f"{gbs:18.0f} | {100*gbs/bw:8.1f}% | {ro_s} |", flush=True)
                if a.kernels:
                    print(f"#   kernels (n={n}, L={L}, kscale={ks:g}): {kernel_times(fns[0])}", flush=True)
                ctx.close()
                del q, o, qd, layers, fns
                torch.cuda.empty_cache()


print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | cuDNN {torch.backends.cudnn.version()} | dashattn {dashattn.__version__}")
if "bwd" not in a.skip:
    bench_backward()
if "dec" not in a.skip:
    bench_decode()
