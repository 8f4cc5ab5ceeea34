"""The C ABI of libdashattn, mirrored in ctypes: constants, the three structs, every
function's argtypes/restype, library lookup, and status -> DashattnError.

Everything here follows include/dashattn.h one to one; tests/test_numpy.py parses the
header and fails when the two drift apart.
"""

import ctypes
import os
import sys
import threading
from ctypes import POINTER, c_char, c_char_p, c_float, c_int32, c_int64, c_size_t, c_uint32, c_void_p
from pathlib import Path

# ---- constants (#define in the header) -------------------------------------------------

DASHATTN_DTYPE_F32 = 0
DASHATTN_DTYPE_F16 = 1
DASHATTN_DTYPE_BF16 = 2
DASHATTN_DTYPE_I32 = 3
DASHATTN_DTYPE_F64 = 4

DASHATTN_BACKEND_AUTO = 0
DASHATTN_BACKEND_CPU = 1
DASHATTN_BACKEND_CUDA = 2

DASHATTN_SELECT_PER_GROUP = 0
DASHATTN_SELECT_PER_HEAD = 1

DASHATTN_PRECISION_DEFAULT = 0
DASHATTN_PRECISION_F64 = 1

DASHATTN_MAX_RANK = 6

DASHATTN_VERSION_MAJOR = 0
DASHATTN_VERSION_MINOR = 1
DASHATTN_VERSION_PATCH = 0

DASHATTN_SUCCESS = 0
DASHATTN_ERR_NULL_POINTER = 1
DASHATTN_ERR_INVALID_ARGUMENT = 2
DASHATTN_ERR_INVALID_SHAPE = 3
DASHATTN_ERR_INVALID_STRIDE = 4
DASHATTN_ERR_INVALID_DTYPE = 5
DASHATTN_ERR_INVALID_CONFIG = 6
DASHATTN_ERR_OVERFLOW = 7
DASHATTN_ERR_WORKSPACE_TOO_SMALL = 8
DASHATTN_ERR_MISALIGNED = 9
DASHATTN_ERR_OUT_OF_RANGE = 10
DASHATTN_ERR_NO_DEVICE = 11
DASHATTN_ERR_UNSUPPORTED = 12
DASHATTN_ERR_CUDA = 13
DASHATTN_ERR_OUT_OF_MEMORY = 14
DASHATTN_ERR_INTERNAL = 15

#: status code -> its name in the header.
STATUS_NAMES = {v: k for k, v in globals().items() if k.startswith(("DASHATTN_SUCCESS", "DASHATTN_ERR_"))}

#: Alignment the library requires of a caller-provided workspace.
WORKSPACE_ALIGNMENT = 256

# ---- types -------------------------------------------------------------------------------

dashattn_status = c_int32


class dashattn_context(ctypes.Structure):
    """Opaque; only ever handled through a pointer."""


class dashattn_context_options(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("backend", c_int32),
        ("device", c_int32),
        ("num_threads", c_int32),
    ]


class dashattn_config(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("block_size", c_int32),
        ("n_local", c_int32),
        ("causal", c_int32),
        ("selection", c_int32),
        ("precision", c_int32),
        ("alpha", c_float),
        ("scale", c_float),
        ("coarse_scale", c_float),
        ("deterministic", c_int32),
    ]


class dashattn_tensor(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("dtype", c_int32),
        ("rank", c_int32),
        ("shape", c_int64 * DASHATTN_MAX_RANK),
        ("strides", c_int64 * DASHATTN_MAX_RANK),
    ]


ctx_p = POINTER(dashattn_context)
cfg_p = POINTER(dashattn_config)
tensor_p = POINTER(dashattn_tensor)

#: Every exported function: name -> (restype, argtypes), in header order.
PROTOTYPES = {
    "dashattn_context_options_default": (dashattn_status, [POINTER(dashattn_context_options)]),
    "dashattn_context_create": (dashattn_status, [POINTER(dashattn_context_options), POINTER(ctx_p)]),
    "dashattn_context_destroy": (dashattn_status, [ctx_p]),
    "dashattn_context_set_stream": (dashattn_status, [ctx_p, c_void_p]),
    "dashattn_context_get_backend": (dashattn_status, [ctx_p, POINTER(c_int32)]),
    "dashattn_context_prepare": (dashattn_status, [ctx_p]),
    "dashattn_cuda_available": (dashattn_status, [POINTER(c_int32)]),
    "dashattn_status_string": (c_char_p, [dashattn_status]),
    "dashattn_last_error_message": (c_size_t, [POINTER(c_char), c_size_t]),
    "dashattn_config_default": (dashattn_status, [cfg_p]),
    "dashattn_forward_workspace_size": (dashattn_status, [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, POINTER(c_size_t)]),
    "dashattn_forward": (
        dashattn_status,
        [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, c_void_p, c_size_t],
    ),
    "dashattn_backward_workspace_size": (dashattn_status, [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, POINTER(c_size_t)]),
    "dashattn_backward": (
        dashattn_status,
        [ctx_p, cfg_p] + [tensor_p] * 13 + [c_void_p, c_size_t],
    ),
    "dashattn_pool_keys_paged_workspace_size": (dashattn_status, [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, POINTER(c_size_t)]),
    "dashattn_pool_keys_paged": (dashattn_status, [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, c_void_p, c_size_t]),
    "dashattn_decode_workspace_size": (dashattn_status, [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, POINTER(c_size_t)]),
    "dashattn_decode": (
        dashattn_status,
        [ctx_p, cfg_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, tensor_p, c_void_p, c_size_t],
    ),
    "dashattn_merge_states": (dashattn_status, [ctx_p, tensor_p, tensor_p, tensor_p, tensor_p]),
    "dashattn_version": (c_uint32, []),
    "dashattn_version_string": (c_char_p, []),
}

# ---- errors ------------------------------------------------------------------------------


class DashattnError(RuntimeError):
    """A dashattn call returned a non-zero status.

    `status` is the DASHATTN_ERR_* code, `message` the library's detail for the failed
    call (dashattn_last_error_message on the calling thread), `status_name` the code's
    name in the header.
    """

    def __init__(self, status, message=""):
        self.status = int(status)
        self.message = message
        self.status_name = STATUS_NAMES.get(self.status, "unknown status %d" % self.status)
        super().__init__(status, message)

    def __str__(self):
        return "%s (%d): %s" % (self.status_name, self.status, self.message)


def last_error_message():
    """The detail message of the most recent failed call on this thread."""
    lib = library()
    n = lib.dashattn_last_error_message(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.dashattn_last_error_message(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


def check(status):
    """Raises DashattnError for a non-zero status (reads the message on this thread)."""
    if status != DASHATTN_SUCCESS:
        raise DashattnError(status, last_error_message())


def status_string(status):
    """dashattn_status_string: the static description of a status code."""
    return library().dashattn_status_string(int(status)).decode("utf-8", "replace")


# ---- library lookup ----------------------------------------------------------------------

_PACKAGE_DIR = Path(__file__).resolve().parent
#: bindings/python/dashattn -> the repository root (when run from a checkout).
_REPO_ROOT = _PACKAGE_DIR.parents[2] if len(_PACKAGE_DIR.parents) > 2 else _PACKAGE_DIR


def _library_file_name():
    if sys.platform == "darwin":
        return "libdashattn.dylib"
    if sys.platform.startswith("win"):
        return "dashattn.dll"
    return "libdashattn.so"


def library_candidates():
    """Where the library is looked for, in order: $DASHATTN_LIBRARY alone when set, else
    next to the package (inside it, then beside it), then <repo>/target/release and
    <repo>/target/debug."""
    env = os.environ.get("DASHATTN_LIBRARY")
    if env:
        return [Path(env)]
    name = _library_file_name()
    dirs = [
        _PACKAGE_DIR,
        _PACKAGE_DIR.parent,
        _REPO_ROOT / "target" / "release",
        _REPO_ROOT / "target" / "debug",
    ]
    return [d / name for d in dirs]


_lib = None
_lib_lock = threading.Lock()


def _declare(lib):
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def library():
    """The loaded libdashattn (a ctypes.CDLL with every prototype declared), loaded once."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in library_candidates():
            if not path.is_file():
                tried.append("%s (not found)" % path)
                continue
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                tried.append("%s (%s)" % (path, e))
                continue
            _declare(lib)
            got = lib.dashattn_version()
            if got // 10000 != DASHATTN_VERSION_MAJOR or (got // 100) % 100 != DASHATTN_VERSION_MINOR:
                raise OSError(
                    "%s is dashattn %s but this binding mirrors header %d.%d.x"
                    % (path, lib.dashattn_version_string().decode(), DASHATTN_VERSION_MAJOR, DASHATTN_VERSION_MINOR)
                )
            _check_struct_sizes(lib, path)
            lib._dashattn_path = str(path)
            _lib = lib
            return lib
        raise OSError(
            "libdashattn not found; build it with `cargo build --release` or set DASHATTN_LIBRARY. Tried:\n  "
            + "\n  ".join(tried)
        )


def _check_struct_sizes(lib, path):
    """The *_default functions write the library's struct_size: it must equal ctypes'."""
    cfg = dashattn_config()
    check(lib.dashattn_config_default(ctypes.byref(cfg)))
    opts = dashattn_context_options()
    check(lib.dashattn_context_options_default(ctypes.byref(opts)))
    for what, got, want in [
        ("dashattn_config", cfg.struct_size, ctypes.sizeof(dashattn_config)),
        ("dashattn_context_options", opts.struct_size, ctypes.sizeof(dashattn_context_options)),
    ]:
        if got != want:
            raise OSError("%s: sizeof(%s) is %d in the library but %d here" % (path, what, got, want))


def version():
    """(version number MAJOR*10000+MINOR*100+PATCH, version string) of the loaded library."""
    lib = library()
    return int(lib.dashattn_version()), lib.dashattn_version_string().decode()


def cuda_available():
    """dashattn_cuda_available: True when a CUDA driver and at least one device exist."""
    out = c_int32(0)
    check(library().dashattn_cuda_available(ctypes.byref(out)))
    return bool(out.value)
