#!/usr/bin/env python3
"""Forward benchmark: dashattn (CUDA, through examples/bench_forward) vs torch SDPA (cuDNN and
flash backends) in the same run, on the same GPU. Causal, Hq=32, Hkv=8, D=128, bf16, batch 1.

    python3 scripts/bench_forward.py [--bin .dev/bench_forward] [--lens 8192,16384,32768,65536]
                                     [--kscale 0.5,1,2,4,8] [--reps 10]

Prints one table: per (L, kscale) our forward time, tile-level block sparsity, TF/s on the
computed blocks, and the speed-up over SDPA cuDNN / flash at the same L (dense causal
FLOPs = 2 * 2 * L^2/2 * D * Hq).
"""
import argparse, json, os, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=".dev/bench_forward")
ap.add_argument("--lens", default="8192,16384,32768,65536")
ap.add_argument("--kscale", default="0.5,1,2,4,8")
ap.add_argument("--reps", type=int, default=10)
ap.add_argument("--hq", type=int, default=32)
ap.add_argument("--hkv", type=int, default=8)
ap.add_argument("--dim", type=int, default=128)
a = ap.parse_args()
lens = [int(x) for x in a.lens.split(",")]

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from bench_common import median_ms


sdpa = {}
for L in lens:
    q = torch.randn(1, a.hq, L, a.dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, a.hkv, L, a.dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, a.hkv, L, a.dim, device="cuda", dtype=torch.bfloat16)
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([be]):
                sdpa[(L, name)] = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), a.reps, warmup=3)
        except Exception as ex:  # noqa
            print(f"# SDPA {name} L={L}: {ex}", file=sys.stderr)
            sdpa[(L, name)] = float("nan")
    del q, k, v
    torch.cuda.empty_cache()
    print(f"# SDPA L={L}: cudnn {sdpa[(L,'cudnn')]:.3f} ms, flash {sdpa[(L,'flash')]:.3f} ms", flush=True)

jpath = os.path.join(tempfile.gettempdir(), "dash_bench.json")
cmd = [a.bin, "--lens", a.lens, "--kscale", a.kscale, "--reps", str(a.reps), "--hq", str(a.hq),
       "--hkv", str(a.hkv), "--dim", str(a.dim), "--json", jpath]
print("# " + " ".join(cmd), flush=True)
r = subprocess.run(cmd)
if r.returncode != 0:
    sys.exit(r.returncode)
rows = json.load(open(jpath))
print()
print(f"{'L':>7} {'kscale':>6} {'sparsity':>8} {'dash ms':>9} {'coarse ms':>9} {'fine TF/s':>9} {'cuDNN ms':>9} {'flash ms':>9} {'x cuDNN':>8} {'x flash':>8}")
for x in rows:
    L = x["L"]
    c, f = sdpa[(L, "cudnn")], sdpa[(L, "flash")]
    print(f"{L:>7} {x['kscale']:>6} {100*(1-x['computed_frac']):>7.1f}% {x['fwd_ms']:>9.3f} {x['coarse_ms']:>9.3f} "
          f"{x['tflops_fine']:>9.1f} {c:>9.3f} {f:>9.3f} {c/x['fwd_ms']:>8.2f} {f/x['fwd_ms']:>8.2f}")
out = os.environ.get("OUT")
if out:
    json.dump({"sdpa": {f"{k[0]}_{k[1]}": v for k, v in sdpa.items()}, "dash": rows}, open(os.path.join(out, "bench.json"), "w"), indent=1)
