"""Decode step on the CPU backend (the fallback without a GPU), through the Python binding
and numpy: batch 1, Hq 32, Hkv 8, D 128, B 64, pages of 64 (identity page table), one query
row. Keys are block topics plus noise (0.5 (T_block + 0.5 noise)), the query is random, so
the selection is what the scores give; the block sparsity printed is computed here from
the pooled keys and a bisection for tau (per KV group, alpha 1.5), as the library selects.

    python3 scripts/bench_cpu_decode.py [--lens 32768,131072] [--dtype float32|float16] [--reps 5]

DASHATTN_LIBRARY picks the library (default: the binding's search, target/release first).
"""
import argparse
import math
import os
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "bindings", "python"))
os.environ.setdefault("DASHATTN_LIBRARY", os.path.join(here, "..", "target", "release", "libdashattn.so"))
import dashattn  # noqa: E402

HQ, HKV, D, B, ALPHA = 32, 8, 128, 64, 1.5
G = HQ // HKV

ap = argparse.ArgumentParser()
ap.add_argument("--lens", default="32768,131072")
ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
ap.add_argument("--reps", type=int, default=5)
args = ap.parse_args()
dt = np.dtype(args.dtype)

print("| tokens | dtype | block sparsity | median ms (min) |")
print("|---|---|---|---|")
for L in [int(x) for x in args.lens.split(",")]:
    rng = np.random.default_rng(0)
    nb, ps = L // B, 64
    T = rng.standard_normal((nb, HKV, D)).astype(np.float32)
    k = (0.5 * (np.repeat(T, B, 0) + 0.5 * rng.standard_normal((L, HKV, D)))).astype(np.float32)
    v = rng.standard_normal((L, HKV, D)).astype(np.float32)
    q = rng.standard_normal((1, 1, HQ, D)).astype(dt)
    kc, vc = k.reshape(L // ps, ps, HKV, D).astype(dt), v.reshape(L // ps, ps, HKV, D).astype(dt)
    table = np.arange(L // ps, dtype=np.int32).reshape(1, -1)
    lens = np.full(1, L, np.int32)
    pooled = np.zeros((L // ps, 1, HKV, D), dt)
    dashattn.pool_keys_paged(kc, pooled, table, np.zeros_like(lens), lens, block_size=B)
    # what the library selects: per KV group, z over the complete blocks before the local one
    kbar = pooled.reshape(nb, HKV, D).astype(np.float64)
    qg = q[0, 0].astype(np.float64).reshape(HKV, G, D).mean(1)
    att = 0
    for h in range(HKV):
        s = (ALPHA - 1) * (kbar[: nb - 1, h] @ qg[h]) / math.sqrt(D)
        lo, hi = s.max() - 1, s.max()
        for _ in range(60):
            mid = (lo + hi) / 2
            if (np.clip(s - mid, 0, None) ** (1 / (ALPHA - 1))).sum() >= 1:
                lo = mid
            else:
                hi = mid
        att += int((s > lo).sum()) + 1  # + the local block
    ts = []
    for _ in range(args.reps + 1):
        t0 = time.perf_counter()
        dashattn.decode(q, kc, vc, pooled, table, lens, block_size=B)
        ts.append((time.perf_counter() - t0) * 1e3)
    ts = sorted(ts[1:])
    print("| %d | %s | %.2f%% | %.1f (%.1f) |" % (L, args.dtype, 100 * (1 - att / (HKV * nb)), ts[len(ts) // 2], ts[0]))
