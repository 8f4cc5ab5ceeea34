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
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import dashattn  # noqa: E402
from bench_common import HKV, B, ALPHA, G, replay_us, decode_point, copy_bandwidth, read_only_us  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--len", type=int, default=131072)
ap.add_argument("--batches", default="8")
ap.add_argument("--kscale", default="0.5,2,8")
ap.add_argument("--splits", default="1,2,4")
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--floor", action="store_true", help="also time a read-only Triton kernel over the step's byte counts")
a = ap.parse_args()

torch.manual_seed(0)


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
    ctx0 = dashattn.Context("cuda")
    pt = decode_point(n, L, ks, ctx0, layer_bytes=40e9)
    torch.cuda.synchronize()
    ctx0.close()
    q, table, lens, sparsity, bytes_read, nl = pt["q"], pt["table"], pt["lens"], pt["sparsity"], pt["bytes_read"], pt["nl"]
    layers = [(pt["k"], pt["v"], pt["pooled"])] + [(pt["k"].clone(), pt["v"].clone(), pt["pooled"].clone()) for _ in range(nl - 1)]
    del pt
    o_ref = None
    res = []
    for chains in [int(x) for x in a.splits.split(",")]:
        by_heads = n < chains
        if (by_heads and HKV % chains) or (not by_heads and n % chains):
            continue
        o = torch.zeros_like(q)
        layer_fns = []
        for kc, vc, pp in layers:
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
    for chains, how, us, same in res:
        gbs = bytes_read / (us * 1e-6) / 1e9
        print(f"| {n} | {L} | {ks:g} | {100 * sparsity:.2f}% | {nl} | {chains} ({how}) | {us:.1f} | {gbs:.0f} | {same} |", flush=True)
    del q, layers
    torch.cuda.empty_cache()
    return bytes_read


def read_floor(sizes):
    """The read-only reference (bench_common.read_only_us) over each byte count, per launch
    of 16 launches on distinct buffers in one graph."""
    bw = copy_bandwidth()
    print(f"\n# copy {bw:.0f} GB/s; read-only kernel over a step's bytes (per launch, 16 buffers in a graph)\n")
    print("| bytes | read-only us | GB/s | % of copy | us at 70% of copy |")
    print("|---|---|---|---|---|")
    for nbytes in sizes:
        us = read_only_us(nbytes, 16, 50)
        if us is None:  # (no Triton)
            return
        gbs = nbytes / (us * 1e-6) / 1e9
        print(f"| {nbytes / 1e6:.1f} MB | {us:.2f} | {gbs:.0f} | {100 * gbs / bw:.1f}% | {nbytes / (0.7 * bw * 1e3):.2f} |", flush=True)


print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | dashattn {dashattn.__version__}")
print("\n| batch | context | kscale | sparsity | layers | chains | us / layer | GB/s on bytes read | o vs 1 chain |")
print("|---|---|---|---|---|---|---|---|---|")
sizes = []
for n in [int(x) for x in a.batches.split(",")]:
    for ks in [float(x) for x in a.kscale.split(",")]:
        sizes.append(run_point(n, a.len, ks))
if a.floor:
    read_floor(sorted(set(sizes)))
