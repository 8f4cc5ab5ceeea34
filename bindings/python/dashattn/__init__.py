"""dashattn: DashAttention (alpha-entmax hierarchical sparse attention) from Python.

A ctypes binding of libdashattn (no compiled extension). numpy arrays run on the CPU
backend; torch tensors run on the CPU backend (CPU tensors) or the CUDA backend (CUDA
tensors, on torch's current stream). `dashattn.attention` is differentiable (torch).

    import dashattn
    o, lse, tau = dashattn.forward(q, k, v, alpha=1.5, block_size=64)      # numpy
    o = dashattn.attention(q, k, v, alpha=1.5, block_size=64)              # torch, trains

The library is found through $DASHATTN_LIBRARY, then next to this package, then
<repo>/target/release and <repo>/target/debug.
"""

from ._ffi import *  # noqa: F401,F403  (the header's constants and structs)
from ._ffi import (  # noqa: F401
    PROTOTYPES,
    DashattnError,
    check,
    cuda_available,
    last_error_message,
    library,
    library_candidates,
    status_string,
    version,
)
from ._core import (  # noqa: F401
    Context,
    PagedKVCache,
    backward,
    decode,
    default_context,
    describe,
    forward,
    make_config,
    merge_states,
    pool_keys_paged,
)

__version__ = "0.1.0"

_TORCH_NAMES = ("attention", "decode_paged", "DashAttentionFunction")


def __getattr__(name):
    # The torch part is imported on first use, so numpy-only users never import torch.
    if name in _TORCH_NAMES:
        try:
            from . import _torch
        except ImportError as e:
            raise AttributeError("dashattn.%s needs torch (%s)" % (name, e)) from e
        return getattr(_torch, name)
    raise AttributeError("module 'dashattn' has no attribute %r" % name)


def __dir__():
    return sorted(list(globals()) + list(_TORCH_NAMES))
