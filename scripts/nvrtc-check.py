#!/usr/bin/env python3
"""Compiles every kernels/*.cu through NVRTC as the library's run-time fallback does
(src/cuda/module.rs: local `#include "x.cuh"` inlined as build.rs does, options
--std=c++17 -DDASHATTN_NVRTC=1 --gpu-architecture=sm_XX), for each arch given. No GPU needed:
NVRTC is a compiler library. Catches source that nvcc accepts but NVRTC rejects (host-only
constructs, e.g. a generic lambda, which NVRTC treats as a host function).

usage: nvrtc-check.py LIBNVRTC ARCH[,ARCH...]   (e.g. .../libnvrtc.so.13 80,90a)
The libnvrtc-builtins library must be on LD_LIBRARY_PATH."""
import ctypes, glob, os, re, sys, time


def flatten(path):
    kdir, out = os.path.dirname(path), []
    for line in open(path).read().splitlines():
        m = re.fullmatch(r'#include "(.*)"', line.strip())
        inc = os.path.join(kdir, m.group(1)) if m else None
        if inc and os.path.isfile(inc):
            out += [l for l in open(inc).read().splitlines() if l.strip() != "#pragma once"]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def main():
    lib = ctypes.CDLL(sys.argv[1])
    archs = sys.argv[2].split(",")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    fail = 0
    for f in sorted(glob.glob(os.path.join(root, "kernels", "*.cu"))):
        src = flatten(f).encode()
        for a in archs:
            prog = ctypes.c_void_p()
            if lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(f).encode(), 0, None, None):
                print(f"nvrtcCreateProgram failed: {f}")
                return 1
            opts = [b"--std=c++17", b"-DDASHATTN_NVRTC=1", f"--gpu-architecture=sm_{a}".encode()]
            t0 = time.time()
            r = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
            n = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
            log = ctypes.create_string_buffer(max(n.value, 1))
            lib.nvrtcGetProgramLog(prog, log)
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
            status = "ok" if r == 0 else f"FAILED (nvrtcResult {r})"
            print(f"nvrtc {os.path.basename(f)} sm_{a}: {status} ({time.time() - t0:.1f} s)")
            if r != 0:
                print(log.value.decode(errors="replace")[:4000])
                fail = 1
    return fail


if __name__ == "__main__":
    sys.exit(main())
