"""Context, tensor descriptors and the four operations, for numpy arrays (CPU backend) and
torch tensors (CPU tensors on the CPU backend, CUDA tensors on the CUDA backend).

The library is never handed a pointer it cannot use: host arrays go only to a CPU
context and device tensors only to a CUDA context of their device (ValueError otherwise).
Shapes, dtypes, strides and configs are validated by the library itself, whose error
comes back as DashattnError.
"""

import ctypes
import sys
import threading

import numpy as np

from . import _ffi
from ._ffi import check, library

# ---- tensors -----------------------------------------------------------------------------

_NUMPY_DTYPES = {
    np.dtype(np.float32): _ffi.DASHATTN_DTYPE_F32,
    np.dtype(np.float16): _ffi.DASHATTN_DTYPE_F16,
    np.dtype(np.float64): _ffi.DASHATTN_DTYPE_F64,
    np.dtype(np.int32): _ffi.DASHATTN_DTYPE_I32,
}


def _torch():
    """The torch module if it is already imported (never imports it: numpy-only users
    don't pay for it)."""
    return sys.modules.get("torch")


def _is_torch(x):
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def _torch_dtypes():
    t = _torch()
    return {
        t.float32: _ffi.DASHATTN_DTYPE_F32,
        t.float16: _ffi.DASHATTN_DTYPE_F16,
        t.bfloat16: _ffi.DASHATTN_DTYPE_BF16,
        t.float64: _ffi.DASHATTN_DTYPE_F64,
        t.int32: _ffi.DASHATTN_DTYPE_I32,
    }


class _View:
    """One array as the library sees it: pointer, dtype code, shape, element strides and
    where it lives. Holds a reference to the array so the memory outlives the call."""

    __slots__ = ("array", "name", "ptr", "dtype", "shape", "strides", "device", "desc")

    def __init__(self, array, name, ptr, dtype, shape, strides, device):
        self.array, self.name, self.ptr, self.dtype = array, name, ptr, dtype
        self.shape, self.strides, self.device = tuple(shape), tuple(strides), device
        if len(self.shape) > _ffi.DASHATTN_MAX_RANK:
            raise ValueError("%s has rank %d; a dashattn_tensor holds at most %d" % (name, len(self.shape), _ffi.DASHATTN_MAX_RANK))
        d = _ffi.dashattn_tensor()
        d.data = ptr or None
        d.dtype = dtype
        d.rank = len(self.shape)
        for i, (s, st) in enumerate(zip(self.shape, self.strides)):
            d.shape[i] = s
            d.strides[i] = st
        self.desc = d

    @property
    def is_torch(self):
        return _is_torch(self.array)


def _numpy_dtype_code(dt, name):
    code = _NUMPY_DTYPES.get(dt)
    if code is None and dt.name == "bfloat16":  # ml_dtypes' bfloat16, when installed
        code = _ffi.DASHATTN_DTYPE_BF16
    if code is None:
        raise TypeError("%s has dtype %s; dashattn takes float32, float16, float64 (CPU), bfloat16 (torch or ml_dtypes) and int32" % (name, dt))
    return code


def _describable(a):
    """Whether numpy byte strides map to non-negative element strides."""
    return all(s >= 0 and s % a.itemsize == 0 for s in a.strides)


def describe(x, name, output=False):
    """A numpy array or torch tensor as the library sees it (`.desc` is its
    dashattn_tensor, for raw calls through dashattn.library()). An input whose layout a
    dashattn_tensor cannot express (negative or non-element-multiple byte strides) is
    copied; an output that cannot be written in place raises ValueError."""
    if _is_torch(x):
        code = _torch_dtypes().get(x.dtype)
        if code is None:
            raise TypeError("%s has dtype %s; dashattn takes float32, float16, bfloat16, float64 (CPU) and int32" % (name, x.dtype))
        dev = x.device
        device = ("cuda", dev.index if dev.index is not None else _torch().cuda.current_device()) if dev.type == "cuda" else (dev.type, None)
        return _View(x, name, x.data_ptr(), code, x.shape, x.stride(), device)
    if not isinstance(x, np.ndarray):
        if output:
            raise TypeError("%s must be a numpy array or torch tensor, got %s" % (name, type(x).__name__))
        x = np.asarray(x)
    code = _numpy_dtype_code(x.dtype, name)
    if not _describable(x):
        if output:
            raise ValueError("%s: strides %s cannot be written in place by dashattn" % (name, x.strides))
        x = np.ascontiguousarray(x)
    if output and not x.flags.writeable:
        raise ValueError("%s is a read-only array" % name)
    strides = [s // x.itemsize for s in x.strides]
    return _View(x, name, x.ctypes.data, code, x.shape, strides, ("cpu", None))


def _index_view(x, name, like):
    """An int32 index tensor (block table, sequence lengths): lists and other integer
    dtypes are converted (inputs only), onto the device of `like`."""
    if _is_torch(like.array):
        t = _torch()
        if not _is_torch(x):
            x = t.as_tensor(np.asarray(x), device=like.array.device)
        if x.dtype != t.int32 and not x.dtype.is_floating_point and not x.dtype.is_complex:
            x = x.to(t.int32)
        return describe(x, name)
    if _is_torch(x):
        x = x.cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind in "iu" and x.dtype != np.int32:
        x = x.astype(np.int32)
    return describe(x, name)


def _empty(like, shape, dtype_code):
    """An uninitialised output on like's device: a numpy array or a torch tensor."""
    if like.is_torch:
        t = _torch()
        tdt = {v: k for k, v in _torch_dtypes().items()}[dtype_code]
        return t.empty(tuple(shape), dtype=tdt, device=like.array.device)
    ndt = like.array.dtype if dtype_code == like.dtype else {v: k for k, v in _NUMPY_DTYPES.items()}[dtype_code]
    return np.empty(tuple(shape), dtype=ndt)


def _stat_dtype(q):
    """lse and tau are f32; with f64 inputs (CPU reference runs) they are kept in f64 so a
    backward sees the forward's tau unrounded."""
    return _ffi.DASHATTN_DTYPE_F64 if q.dtype == _ffi.DASHATTN_DTYPE_F64 else _ffi.DASHATTN_DTYPE_F32


def _ref(v):
    return ctypes.byref(v.desc) if v is not None else None


# ---- workspace ---------------------------------------------------------------------------


class _Workspace:
    """A WORKSPACE_ALIGNMENT-aligned buffer of at least `size` bytes on like's device."""

    def __init__(self, size, like):
        self.size = int(size)
        self.buffer = None
        self.ptr = None
        if self.size == 0:
            return
        pad = _ffi.WORKSPACE_ALIGNMENT
        if like.is_torch:
            t = _torch()
            self.buffer = t.empty(self.size + pad, dtype=t.uint8, device=like.array.device)
            base = self.buffer.data_ptr()
        else:
            self.buffer = np.empty(self.size + pad, dtype=np.uint8)
            base = self.buffer.ctypes.data
        self.ptr = base + (-base) % pad


# ---- context -----------------------------------------------------------------------------

_BACKENDS = {"auto": _ffi.DASHATTN_BACKEND_AUTO, "cpu": _ffi.DASHATTN_BACKEND_CPU, "cuda": _ffi.DASHATTN_BACKEND_CUDA}
_BACKEND_NAMES = {_ffi.DASHATTN_BACKEND_CPU: "cpu", _ffi.DASHATTN_BACKEND_CUDA: "cuda"}


class Context:
    """A dashattn context: one backend (CPU, or one CUDA device) and its stream.

    Use as a context manager or call close(). A lock serialises calls, since the library
    allows one thread at a time per context; threads that want parallelism use one
    context each (the default contexts are per thread).
    """

    def __init__(self, backend="auto", device=0, num_threads=0):
        lib = library()
        opts = _ffi.dashattn_context_options()
        check(lib.dashattn_context_options_default(ctypes.byref(opts)))
        opts.backend = _BACKENDS[backend] if isinstance(backend, str) else int(backend)
        opts.device = int(device)
        opts.num_threads = int(num_threads)
        ptr = _ffi.ctx_p()
        check(lib.dashattn_context_create(ctypes.byref(opts), ctypes.byref(ptr)))
        self._ptr = ptr
        self._lock = threading.RLock()
        self.device = int(device)
        out = ctypes.c_int32(0)
        check(lib.dashattn_context_get_backend(ptr, ctypes.byref(out)))
        #: "cpu" or "cuda": the backend the context actually runs on.
        self.backend = _BACKEND_NAMES.get(out.value, str(out.value))

    @property
    def handle(self):
        """The dashattn_context pointer (ValueError once closed)."""
        if not self._ptr:
            raise ValueError("this dashattn Context is closed")
        return self._ptr

    @property
    def closed(self):
        return not self._ptr

    def set_stream(self, stream):
        """Sets the CUDA stream later calls launch on: a raw handle (int), an object with a
        `cuda_stream` attribute (torch.cuda.Stream), or None for the legacy default
        stream. The stream is borrowed. Accepted and ignored by the CPU backend."""
        if stream is not None and hasattr(stream, "cuda_stream"):
            stream = stream.cuda_stream
        with self._lock:
            check(library().dashattn_context_set_stream(self.handle, ctypes.c_void_p(stream or None)))

    def prepare(self):
        """Loads the CUDA kernels now (before capturing calls into a CUDA graph); no-op on CPU."""
        with self._lock:
            check(library().dashattn_context_prepare(self.handle))

    def close(self):
        """Destroys the context (idempotent)."""
        ptr, self._ptr = getattr(self, "_ptr", None), None
        if ptr:
            check(library().dashattn_context_destroy(ptr))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self.closed else self.backend + (":%d" % self.device if self.backend == "cuda" else "")
        return "<dashattn.Context %s>" % state

    def _call(self, name, *args):
        with self._lock:
            check(getattr(library(), name)(self.handle, *args))


_defaults = threading.local()


def default_context(backend="cpu", device=0):
    """This thread's shared context for (backend, device), created on first use."""
    cache = getattr(_defaults, "contexts", None)
    if cache is None:
        cache = _defaults.contexts = {}
    key = (backend, int(device))
    ctx = cache.get(key)
    if ctx is None or ctx.closed:
        ctx = cache[key] = Context(backend, device)
    return ctx


def _resolve_context(context, views):
    """The context for a call and a check that every tensor lives where its backend reads.
    Default contexts on CUDA launch on torch's current stream."""
    views = [v for v in views if v is not None]
    devices = {v.device for v in views}
    if len(devices) > 1:
        raise ValueError("tensors live on different devices: " + ", ".join("%s on %s" % (v.name, _dev_str(v.device)) for v in views))
    (device,) = devices
    if device[0] not in ("cpu", "cuda"):
        raise ValueError("dashattn takes host (CPU) or CUDA tensors, not %s" % device[0])
    if context is None:
        context = default_context(device[0], device[1] or 0)
        if device[0] == "cuda":
            context.set_stream(_torch().cuda.current_stream(device[1]).cuda_stream)
    want = ("cpu", None) if context.backend == "cpu" else ("cuda", context.device)
    if device != want:
        raise ValueError("a %r cannot read tensors on %s" % (context, _dev_str(device)))
    return context


def _dev_str(device):
    return device[0] if device[1] is None else "%s:%d" % device


# ---- config ------------------------------------------------------------------------------

_SELECTIONS = {"group": _ffi.DASHATTN_SELECT_PER_GROUP, "head": _ffi.DASHATTN_SELECT_PER_HEAD}
_PRECISIONS = {"default": _ffi.DASHATTN_PRECISION_DEFAULT, "f32": _ffi.DASHATTN_PRECISION_DEFAULT, "f64": _ffi.DASHATTN_PRECISION_F64}


def _enum(value, table, what):
    if isinstance(value, str):
        try:
            return table[value]
        except KeyError:
            raise ValueError("%s = %r (one of %s)" % (what, value, ", ".join(map(repr, table)))) from None
    return int(value)


def make_config(*, alpha=1.5, block_size=64, n_local=1, causal=True, selection="group", precision="default",
                scale=None, coarse_scale=None, deterministic=True):
    """A dashattn_config from dashattn_config_default with these fields set. Values are
    passed as given; the library validates them. `alpha` must be a scalar here (per-head
    alphas travel as the head_alpha tensor). `selection`: "group" or "head";
    `precision`: "default" (f32 accumulation) or "f64" (CPU reference); `scale` and
    `coarse_scale` None mean the library's defaults (1/sqrt(D), and the fine scale)."""
    cfg = _ffi.dashattn_config()
    check(library().dashattn_config_default(ctypes.byref(cfg)))
    cfg.block_size = int(block_size)
    cfg.n_local = int(n_local)
    cfg.causal = int(causal)
    cfg.selection = _enum(selection, _SELECTIONS, "selection")
    cfg.precision = _enum(precision, _PRECISIONS, "precision")
    cfg.alpha = float(alpha)
    cfg.scale = 0.0 if scale is None else float(scale)
    cfg.coarse_scale = 0.0 if coarse_scale is None else float(coarse_scale)
    cfg.deterministic = int(deterministic)
    return cfg


def _split_alpha(alpha, like):
    """(scalar alpha for the config, head_alpha view or None)."""
    if np.ndim(alpha) == 0 and not _is_torch(alpha):
        return float(alpha), None
    if _is_torch(alpha) and alpha.dim() == 0:
        return float(alpha), None
    if like.is_torch:
        t = _torch()
        ha = t.as_tensor(alpha if _is_torch(alpha) else np.asarray(alpha, dtype=np.float32), dtype=t.float32).to(like.array.device)
    else:
        ha = np.ascontiguousarray(alpha.detach().cpu().numpy() if _is_torch(alpha) else alpha, dtype=np.float32)
    return 1.5, describe(ha, "head_alpha")


# ---- operations --------------------------------------------------------------------------


def _attn_outputs(q, name, given, shape, dtype_code):
    if given is not None:
        return describe(given, name, output=True)
    return describe(_empty(q, shape, dtype_code), name, output=True)


def forward(q, k, v, *, alpha=1.5, block_size=64, n_local=1, causal=True, selection="group", scale=None,
            coarse_scale=None, pooled_k=None, precision="default", deterministic=True, out=None, lse=None,
            tau=None, context=None):
    """DashAttention forward (SPEC 3) on numpy arrays or torch tensors.

    q [N, Lq, Hq, D]; k, v [N, Lk, Hkv, D]; one dtype; any non-negative strides with the
    last dimension contiguous. `alpha` is a scalar or one value per query head.
    `pooled_k` [N, ceil(Lk/B), Hkv, D] replaces mean pooling. `out`, `lse`, `tau` may be
    preallocated outputs. Returns (o, lse, tau): o like q; lse and tau [N, Hq, Lq] float32
    (float64 for float64 inputs). On error nothing is written and DashattnError is raised.
    """
    vq, vk, vv = describe(q, "q"), describe(k, "k"), describe(v, "v")
    vp = describe(pooled_k, "pooled_k") if pooled_k is not None else None
    a, vha = _split_alpha(alpha, vq)
    ctx = _resolve_context(context, [vq, vk, vv, vp, vha])
    cfg = make_config(alpha=a, block_size=block_size, n_local=n_local, causal=causal, selection=selection,
                      precision=precision, scale=scale, coarse_scale=coarse_scale, deterministic=deterministic)
    vo = _attn_outputs(vq, "o", out, vq.shape, vq.dtype)
    vl = vt = None
    if len(vq.shape) == 4:  # otherwise the library reports q's shape
        n, lq, hq, _ = vq.shape
        vl = _attn_outputs(vq, "lse", lse, (n, hq, lq), _stat_dtype(vq))
        vt = _attn_outputs(vq, "tau", tau, (n, hq, lq), _stat_dtype(vq))
    size = ctypes.c_size_t(0)
    ctx._call("dashattn_forward_workspace_size", ctypes.byref(cfg), _ref(vq), _ref(vk), _ref(vv), _ref(vp), ctypes.byref(size))
    ws = _Workspace(size.value, vq)
    ctx._call("dashattn_forward", ctypes.byref(cfg), _ref(vq), _ref(vk), _ref(vv), _ref(vp), _ref(vha),
              _ref(vo), _ref(vl), _ref(vt), ws.ptr, ws.size)
    return vo.array, (vl.array if vl else None), (vt.array if vt else None)


def backward(q, k, v, o, d_o, lse, tau, *, alpha=1.5, block_size=64, n_local=1, causal=True, selection="group",
             scale=None, coarse_scale=None, pooled_k=None, precision="default", deterministic=True, dq=None,
             dk=None, dv=None, d_pooled_k=None, context=None):
    """DashAttention backward (SPEC 4): the forward's inputs and settings, its outputs o,
    lse, tau, and d_o = dLoss/do. Returns (dq, dk, dv, d_pooled_k); d_pooled_k is None
    unless pooled_k was given (then the pooled keys' gradient goes there, not into dk).
    dq/dk/dv/d_pooled_k may be preallocated outputs; they are overwritten."""
    vq, vk, vv = describe(q, "q"), describe(k, "k"), describe(v, "v")
    vp = describe(pooled_k, "pooled_k") if pooled_k is not None else None
    vo, vdo, vl, vt = describe(o, "o"), describe(d_o, "d_o"), describe(lse, "lse"), describe(tau, "tau")
    a, vha = _split_alpha(alpha, vq)
    ctx = _resolve_context(context, [vq, vk, vv, vp, vha, vo, vdo, vl, vt])
    cfg = make_config(alpha=a, block_size=block_size, n_local=n_local, causal=causal, selection=selection,
                      precision=precision, scale=scale, coarse_scale=coarse_scale, deterministic=deterministic)
    vdq = _attn_outputs(vq, "dq", dq, vq.shape, vq.dtype)
    vdk = _attn_outputs(vk, "dk", dk, vk.shape, vk.dtype)
    vdv = _attn_outputs(vv, "dv", dv, vv.shape, vv.dtype)
    vdp = None
    if vp is not None or d_pooled_k is not None:
        like = vp if vp is not None else vk
        vdp = _attn_outputs(like, "d_pooled_k", d_pooled_k, like.shape, like.dtype)
    size = ctypes.c_size_t(0)
    ctx._call("dashattn_backward_workspace_size", ctypes.byref(cfg), _ref(vq), _ref(vk), _ref(vv), _ref(vp), ctypes.byref(size))
    ws = _Workspace(size.value, vq)
    ctx._call("dashattn_backward", ctypes.byref(cfg), _ref(vq), _ref(vk), _ref(vv), _ref(vp), _ref(vha), _ref(vo),
              _ref(vdo), _ref(vl), _ref(vt), _ref(vdq), _ref(vdk), _ref(vdv), _ref(vdp), ws.ptr, ws.size)
    return vdq.array, vdk.array, vdv.array, (vdp.array if vdp is not None else None)


def pool_keys_paged(k_cache, pooled_cache, block_table, prev_seq_lens, seq_lens, *, block_size=64, context=None):
    """Pooled-key cache upkeep (SPEC 5): writes, into `pooled_cache` in place, the pooled
    key of every block of sequence b that became complete between prev_seq_lens[b] and
    seq_lens[b]. k_cache [num_pages, page_size, Hkv, D]; pooled_cache [num_pages,
    max(1, page_size // block_size), Hkv, D]; block_table [N, max_pages] and the lengths
    [N] are int32 (other integer arrays and lists are converted). Returns pooled_cache."""
    vk = describe(k_cache, "k_cache")
    vpc = describe(pooled_cache, "pooled_cache", output=True)
    vbt = _index_view(block_table, "block_table", vk)
    vprev = _index_view(prev_seq_lens, "prev_seq_lens", vk)
    vlen = _index_view(seq_lens, "seq_lens", vk)
    ctx = _resolve_context(context, [vk, vpc, vbt, vprev, vlen])
    cfg = make_config(block_size=block_size)
    size = ctypes.c_size_t(0)
    ctx._call("dashattn_pool_keys_paged_workspace_size", ctypes.byref(cfg), _ref(vk), _ref(vpc), _ref(vbt), _ref(vlen), ctypes.byref(size))
    ws = _Workspace(size.value, vk)
    ctx._call("dashattn_pool_keys_paged", ctypes.byref(cfg), _ref(vk), _ref(vpc), _ref(vbt), _ref(vprev), _ref(vlen), ws.ptr, ws.size)
    return vpc.array


def decode(q, k_cache, v_cache, pooled_cache, block_table, seq_lens, *, alpha=1.5, block_size=64, n_local=1,
           selection="group", scale=None, coarse_scale=None, precision="default", out=None, lse=None, context=None):
    """Decode step over a paged KV cache (SPEC 5), causal. q [N, q_len, Hq, D] holds the
    q_len (1..16) newest tokens of each sequence, already in the caches, so row r of
    sequence b sits at seq_lens[b] - q_len + r. The pooled cache must be up to date
    (pool_keys_paged). Returns (o [N, q_len, Hq, D], lse [N, Hq, q_len])."""
    vq, vk, vv, vpc = describe(q, "q"), describe(k_cache, "k_cache"), describe(v_cache, "v_cache"), describe(pooled_cache, "pooled_cache")
    vbt = _index_view(block_table, "block_table", vq)
    vlen = _index_view(seq_lens, "seq_lens", vq)
    a, vha = _split_alpha(alpha, vq)
    ctx = _resolve_context(context, [vq, vk, vv, vpc, vbt, vlen, vha])
    cfg = make_config(alpha=a, block_size=block_size, n_local=n_local, causal=True, selection=selection,
                      precision=precision, scale=scale, coarse_scale=coarse_scale)
    vo = _attn_outputs(vq, "o", out, vq.shape, vq.dtype)
    vl = None
    if len(vq.shape) == 4:
        n, ql, hq, _ = vq.shape
        vl = _attn_outputs(vq, "lse", lse, (n, hq, ql), _stat_dtype(vq))
    size = ctypes.c_size_t(0)
    ctx._call("dashattn_decode_workspace_size", ctypes.byref(cfg), _ref(vq), _ref(vk), _ref(vpc), _ref(vbt), _ref(vlen), ctypes.byref(size))
    ws = _Workspace(size.value, vq)
    ctx._call("dashattn_decode", ctypes.byref(cfg), _ref(vq), _ref(vk), _ref(vv), _ref(vpc), _ref(vbt), _ref(vlen),
              _ref(vha), _ref(vo), _ref(vl), ws.ptr, ws.size)
    return vo.array, (vl.array if vl is not None else None)


def merge_states(o_parts, lse_parts, *, out=None, lse=None, context=None):
    """Merges S partial results of the same queries over disjoint key sets:
    lse = logsumexp_s lse_s, o = sum_s exp(lse_s - lse) o_s (parts with lse = -inf add
    nothing). o_parts [S, N, L, H, D] (or a sequence of S arrays [N, L, H, D]),
    lse_parts [S, N, H, L] (or a sequence). Returns (o [N, L, H, D], lse [N, H, L])."""
    o_parts, lse_parts = _stack(o_parts), _stack(lse_parts)
    vop, vlp = describe(o_parts, "o_parts"), describe(lse_parts, "lse_parts")
    ctx = _resolve_context(context, [vop, vlp])
    vo = vl = None
    if len(vop.shape) == 5:  # otherwise the library reports o_parts' shape
        _, n, l, h, d = vop.shape
        vo = _attn_outputs(vop, "o", out, (n, l, h, d), vop.dtype)
        vl = _attn_outputs(vop, "lse", lse, (n, h, l), vlp.dtype)
    else:
        vo = _attn_outputs(vop, "o", out, vop.shape, vop.dtype)
    ctx._call("dashattn_merge_states", _ref(vop), _ref(vlp), _ref(vo), _ref(vl))
    return vo.array, (vl.array if vl is not None else None)


def _stack(parts):
    if isinstance(parts, (list, tuple)):
        return _torch().stack(list(parts)) if parts and _is_torch(parts[0]) else np.stack(parts)
    return parts


# ---- a paged KV cache --------------------------------------------------------------------


class PagedKVCache:
    """A minimal paged KV cache for decoding with dashattn: K, V and pooled-key pages, a
    block table and sequence lengths, on the host (numpy) or a torch device.

    append(seq, k, v) writes new tokens of one sequence (taking pages from a free list)
    and refreshes the pooled keys of the blocks they completed; decode(q) runs a decode
    step for all sequences. An engine would own these buffers itself; this class shows
    the protocol and serves tests and examples.
    """

    def __init__(self, batch, max_pages, page_size, num_kv_heads, head_dim, *, num_pages=None, block_size=64,
                 dtype=np.float32, device=None, context=None):
        self.block_size, self.page_size, self.context = block_size, page_size, context
        num_pages = batch * max_pages if num_pages is None else num_pages
        slots = max(1, page_size // block_size)
        t = _torch()
        if t is None and device is not None:
            import torch as t
        self.is_torch = t is not None and (isinstance(dtype, t.dtype) or device is not None)
        if self.is_torch:
            dtype = dtype if isinstance(dtype, t.dtype) else t.float32
            z = lambda shape, dt: t.zeros(shape, dtype=dt, device=device)  # noqa: E731
            idx = t.int32
        else:
            z = lambda shape, dt: np.zeros(shape, dtype=dt)  # noqa: E731
            idx = np.int32
        self.k_cache = z((num_pages, page_size, num_kv_heads, head_dim), dtype)
        self.v_cache = z((num_pages, page_size, num_kv_heads, head_dim), dtype)
        self.pooled_cache = z((num_pages, slots, num_kv_heads, head_dim), dtype)
        self.block_table = z((batch, max_pages), idx) - 1
        self.seq_lens = z((batch,), idx)
        self._lens = [0] * batch
        self._free = list(range(num_pages - 1, -1, -1))

    def append(self, seq, k, v):
        """Appends k, v [T, Hkv, D] to sequence `seq` and pools the blocks they complete."""
        start, count = self._lens[seq], int(k.shape[0])
        pos = 0
        while pos < count:
            tok = start + pos
            page_idx, off = divmod(tok, self.page_size)
            if page_idx >= self.block_table.shape[1]:
                raise ValueError("sequence %d would exceed max_pages * page_size tokens" % seq)
            if int(self.block_table[seq, page_idx]) < 0:
                if not self._free:
                    raise MemoryError("PagedKVCache: no free page left")
                self.block_table[seq, page_idx] = self._free.pop()
            page = int(self.block_table[seq, page_idx])
            n = min(self.page_size - off, count - pos)
            self.k_cache[page, off:off + n] = k[pos:pos + n]
            self.v_cache[page, off:off + n] = v[pos:pos + n]
            pos += n
        self._lens[seq] = start + count
        prev = list(self._lens)
        prev[seq] = start
        if self.is_torch:
            t = _torch()
            self.seq_lens.copy_(t.as_tensor(self._lens, dtype=t.int32))
            prev = t.as_tensor(prev, dtype=t.int32, device=self.seq_lens.device)
        else:
            self.seq_lens[:] = self._lens
            prev = np.asarray(prev, dtype=np.int32)
        pool_keys_paged(self.k_cache, self.pooled_cache, self.block_table, prev, self.seq_lens,
                        block_size=self.block_size, context=self.context)

    def decode(self, q, **kw):
        """dashattn.decode over this cache: q [batch, q_len, Hq, D], the q_len newest
        tokens of every sequence. Keyword arguments as for dashattn.decode."""
        return decode(q, self.k_cache, self.v_cache, self.pooled_cache, self.block_table, self.seq_lens,
                      block_size=self.block_size, context=self.context, **kw)
