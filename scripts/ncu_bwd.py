#!/usr/bin/env python3
"""One causal backward (Hq=32, Hkv=8, D=128, B=64, bf16, topic inputs) for profiling under ncu:
    ncu --kernel-name regex:bwd_select --launch-count 1 python3 scripts/ncu_bwd.py 32768 8
"""
import math, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))
import torch
import dashattn
L, ks = int(sys.argv[1]), float(sys.argv[2])
HQ, HKV, D, B = 32, 8, 128, 64
dev = "cuda"
torch.manual_seed(0)
nb = L // B
T = torch.randn(nb, HKV, D, device=dev)
blk = torch.arange(L, device=dev) // B
k = (ks * (T[blk] + 0.5 * torch.randn(L, HKV, D, device=dev))).bfloat16()[None]
v = torch.randn(1, L, HKV, D, device=dev).bfloat16()
idx = (torch.rand(L, 3, HQ, device=dev) * (blk + 1).float()[:, None, None]).long()
hk = torch.arange(HQ, device=dev) // (HQ // HKV)
q = (T[idx, hk[None, None, :]].sum(1) / math.sqrt(3) + torch.randn(L, HQ, D, device=dev)).bfloat16()[None]
ctx = dashattn.Context("cuda")
o, lse, tau = dashattn.forward(q, k, v, alpha=1.5, block_size=B, context=ctx)
do = torch.randn_like(o)
for _ in range(2):
    dashattn.backward(q, k, v, o, do, lse, tau, alpha=1.5, block_size=B, context=ctx)
torch.cuda.synchronize()
print("done")
