# DashAttn.jl: Julia binding of the dashattn C ABI (include/dashattn.h).
#
# Two layers:
#   1. A raw layer mirroring the header one to one: the DASHATTN_* constants, the structs
#      dashattn_tensor / dashattn_config / dashattn_context_options as isbits structs of
#      the same layout, and one function per C function (same name, same arguments) that
#      is a plain `ccall`. bindings/julia/check_signatures.py checks these against the
#      header.
#   2. A checked layer: `Context` (closed by `close` or a finalizer), `config`, `tensor`,
#      and `forward!`, `backward!`, `pool_keys_paged!`, `decode!` and the workspace-size
#      queries, throwing `DashAttnError` (status + the library's message) on failure.
#
# Layout: Julia arrays are column-major, the C API row-major. `tensor(A)` reverses the
# dimensions, so the C tensor q [N, Lq, Hq, D] is a Julia array of size (D, Hq, Lq, N),
# k/v [N, Lk, Hkv, D] are (D, Hkv, Lk, N), lse/tau [N, Hq, Lq] are (Lq, Hq, N),
# block_table [N, max_pages] is (max_pages, N) with 0-based page numbers, and so on.
#
# Memory: with the CPU backend pass `Array`s (host memory); with the CUDA backend pass
# CUDA.jl `CuArray`s: `pointer(A)` is then a device pointer (CuPtr) and goes into the
# descriptor as an address. CUDA.jl is not a dependency: anything with `pointer`,
# `strides` and `size` works. Set the stream with `set_stream!(ctx, CUDA.stream())`.
#
# The library is found at ENV["DASHATTN_LIB"] or ../../target/release/libdashattn.so
# relative to this file (build it with `cargo build --release`).
#
# Keyword `config` of every operation takes a dashattn_config, built by `attn_config(...)`.
module DashAttn

using Libdl

export DashAttnError, Context, attn_config, tensor, set_stream!, backend,
       forward!, backward!, pool_keys_paged!, decode!,
       forward_workspace_size, backward_workspace_size,
       pool_keys_paged_workspace_size, decode_workspace_size, merge_states!,
       aligned_workspace

const libdashattn = get(ENV, "DASHATTN_LIB",
                        joinpath(@__DIR__, "..", "..", "target", "release", "libdashattn." * Libdl.dlext))

# ---------------------------------------------------------------------------------------
# Constants (the DASHATTN_* macros of the header)

const DASHATTN_DTYPE_F32 = Int32(0)
const DASHATTN_DTYPE_F16 = Int32(1)
const DASHATTN_DTYPE_BF16 = Int32(2)
const DASHATTN_DTYPE_I32 = Int32(3)
const DASHATTN_DTYPE_F64 = Int32(4)

const DASHATTN_BACKEND_AUTO = Int32(0)
const DASHATTN_BACKEND_CPU = Int32(1)
const DASHATTN_BACKEND_CUDA = Int32(2)

const DASHATTN_SELECT_PER_GROUP = Int32(0)
const DASHATTN_SELECT_PER_HEAD = Int32(1)

const DASHATTN_PRECISION_DEFAULT = Int32(0)
const DASHATTN_PRECISION_F64 = Int32(1)

const DASHATTN_MAX_RANK = 6

const DASHATTN_VERSION_MAJOR = 0
const DASHATTN_VERSION_MINOR = 1
const DASHATTN_VERSION_PATCH = 0

const DASHATTN_SUCCESS = Int32(0)
const DASHATTN_ERR_NULL_POINTER = Int32(1)
const DASHATTN_ERR_INVALID_ARGUMENT = Int32(2)
const DASHATTN_ERR_INVALID_SHAPE = Int32(3)
const DASHATTN_ERR_INVALID_STRIDE = Int32(4)
const DASHATTN_ERR_INVALID_DTYPE = Int32(5)
const DASHATTN_ERR_INVALID_CONFIG = Int32(6)
const DASHATTN_ERR_OVERFLOW = Int32(7)
const DASHATTN_ERR_WORKSPACE_TOO_SMALL = Int32(8)
const DASHATTN_ERR_MISALIGNED = Int32(9)
const DASHATTN_ERR_OUT_OF_RANGE = Int32(10)
const DASHATTN_ERR_NO_DEVICE = Int32(11)
const DASHATTN_ERR_UNSUPPORTED = Int32(12)
const DASHATTN_ERR_CUDA = Int32(13)
const DASHATTN_ERR_OUT_OF_MEMORY = Int32(14)
const DASHATTN_ERR_INTERNAL = Int32(15)

# ---------------------------------------------------------------------------------------
# Types (same field order and types as the C structs)

const dashattn_status = Int32

# Opaque: only ever used as Ptr{dashattn_context}.
mutable struct dashattn_context end

struct dashattn_context_options
    struct_size::UInt32
    backend::Int32
    device::Int32
    num_threads::Int32
end

struct dashattn_config
    struct_size::UInt32
    block_size::Int32
    n_local::Int32
    causal::Int32
    selection::Int32
    precision::Int32
    alpha::Cfloat
    scale::Cfloat
    coarse_scale::Cfloat
    deterministic::Int32
end

struct dashattn_tensor
    data::Ptr{Cvoid}
    dtype::Int32
    rank::Int32
    shape::NTuple{DASHATTN_MAX_RANK,Int64}
    strides::NTuple{DASHATTN_MAX_RANK,Int64}
end

# ---------------------------------------------------------------------------------------
# Raw layer: one ccall per C function, same names and argument order as the header.

dashattn_context_options_default(options) =
    ccall((:dashattn_context_options_default, libdashattn), dashattn_status,
          (Ptr{dashattn_context_options},), options)

dashattn_context_create(options, out_ctx) =
    ccall((:dashattn_context_create, libdashattn), dashattn_status,
          (Ptr{dashattn_context_options}, Ptr{Ptr{dashattn_context}}), options, out_ctx)

dashattn_context_destroy(ctx) =
    ccall((:dashattn_context_destroy, libdashattn), dashattn_status,
          (Ptr{dashattn_context},), ctx)

dashattn_context_set_stream(ctx, stream) =
    ccall((:dashattn_context_set_stream, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{Cvoid}), ctx, stream)

dashattn_context_get_backend(ctx, out_backend) =
    ccall((:dashattn_context_get_backend, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{Int32}), ctx, out_backend)

dashattn_context_prepare(ctx) =
    ccall((:dashattn_context_prepare, libdashattn), dashattn_status,
          (Ptr{dashattn_context},), ctx)

dashattn_cuda_available(out_available) =
    ccall((:dashattn_cuda_available, libdashattn), dashattn_status,
          (Ptr{Int32},), out_available)

dashattn_status_string(status) =
    ccall((:dashattn_status_string, libdashattn), Cstring,
          (dashattn_status,), status)

dashattn_last_error_message(buf, buf_size) =
    ccall((:dashattn_last_error_message, libdashattn), Csize_t,
          (Ptr{UInt8}, Csize_t), buf, buf_size)

dashattn_config_default(config) =
    ccall((:dashattn_config_default, libdashattn), dashattn_status,
          (Ptr{dashattn_config},), config)

dashattn_forward_workspace_size(ctx, config, q, k, v, pooled_k, out_size) =
    ccall((:dashattn_forward_workspace_size, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Csize_t}),
          ctx, config, q, k, v, pooled_k, out_size)

dashattn_forward(ctx, config, q, k, v, pooled_k, head_alpha, o, lse, tau, workspace, workspace_size) =
    ccall((:dashattn_forward, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Cvoid}, Csize_t),
          ctx, config, q, k, v, pooled_k, head_alpha, o, lse, tau, workspace, workspace_size)

dashattn_backward_workspace_size(ctx, config, q, k, v, pooled_k, out_size) =
    ccall((:dashattn_backward_workspace_size, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Csize_t}),
          ctx, config, q, k, v, pooled_k, out_size)

dashattn_backward(ctx, config, q, k, v, pooled_k, head_alpha, o, d_o, lse, tau, dq, dk, dv, d_pooled_k,
                  workspace, workspace_size) =
    ccall((:dashattn_backward, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Cvoid}, Csize_t),
          ctx, config, q, k, v, pooled_k, head_alpha, o, d_o, lse, tau, dq, dk, dv, d_pooled_k,
          workspace, workspace_size)

dashattn_pool_keys_paged_workspace_size(ctx, config, k_cache, pooled_cache, block_table, seq_lens, out_size) =
    ccall((:dashattn_pool_keys_paged_workspace_size, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Csize_t}),
          ctx, config, k_cache, pooled_cache, block_table, seq_lens, out_size)

dashattn_pool_keys_paged(ctx, config, k_cache, pooled_cache, block_table, prev_seq_lens, seq_lens,
                         workspace, workspace_size) =
    ccall((:dashattn_pool_keys_paged, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Cvoid}, Csize_t),
          ctx, config, k_cache, pooled_cache, block_table, prev_seq_lens, seq_lens,
          workspace, workspace_size)

dashattn_decode_workspace_size(ctx, config, q, k_cache, pooled_cache, block_table, seq_lens, out_size) =
    ccall((:dashattn_decode_workspace_size, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Csize_t}),
          ctx, config, q, k_cache, pooled_cache, block_table, seq_lens, out_size)

dashattn_decode(ctx, config, q, k_cache, v_cache, pooled_cache, block_table, seq_lens, head_alpha, o, lse,
                workspace, workspace_size) =
    ccall((:dashattn_decode, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_config}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{Cvoid}, Csize_t),
          ctx, config, q, k_cache, v_cache, pooled_cache, block_table, seq_lens, head_alpha, o, lse,
          workspace, workspace_size)

dashattn_merge_states(ctx, o_parts, lse_parts, o, lse) =
    ccall((:dashattn_merge_states, libdashattn), dashattn_status,
          (Ptr{dashattn_context}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor}, Ptr{dashattn_tensor},
           Ptr{dashattn_tensor}),
          ctx, o_parts, lse_parts, o, lse)

dashattn_version() =
    ccall((:dashattn_version, libdashattn), UInt32, ())

dashattn_version_string() =
    ccall((:dashattn_version_string, libdashattn), Cstring, ())

# ---------------------------------------------------------------------------------------
# Errors

"""
    DashAttnError(status, message)

Thrown by the checked layer for every non-success status. `status` is the DASHATTN_*
code, `message` the library's detail (it names the offending argument).
"""
struct DashAttnError <: Exception
    status::Int32
    message::String
end

status_string(status::Integer) = unsafe_string(dashattn_status_string(Int32(status)))

function Base.showerror(io::IO, e::DashAttnError)
    print(io, "DashAttnError: ", status_string(e.status), " (status ", e.status, ")")
    isempty(e.message) || print(io, ": ", e.message)
end

"""
    last_error_message() -> String

The detail of the most recent failed call on this OS thread. Read it right after the
failing call, without yielding (a task may move to another thread at a yield point).
"""
function last_error_message()
    n = Int(dashattn_last_error_message(C_NULL, 0))
    buf = Vector{UInt8}(undef, n + 1)
    dashattn_last_error_message(buf, length(buf))
    return String(buf[1:n])
end

@inline function check(status::Integer)
    status == DASHATTN_SUCCESS && return nothing
    throw(DashAttnError(Int32(status), last_error_message()))
end

version() = dashattn_version()
version_string() = unsafe_string(dashattn_version_string())

function cuda_available()
    r = Ref{Int32}(0)
    check(dashattn_cuda_available(r))
    return r[] != 0
end

# ---------------------------------------------------------------------------------------
# Tensors

dtype_of(::Type{Float32}) = DASHATTN_DTYPE_F32
dtype_of(::Type{Float16}) = DASHATTN_DTYPE_F16
dtype_of(::Type{Float64}) = DASHATTN_DTYPE_F64
dtype_of(::Type{Int32}) = DASHATTN_DTYPE_I32
dtype_of(::Type{T}) where {T} =
    throw(DashAttnError(DASHATTN_ERR_INVALID_DTYPE,
                        "no dashattn dtype for element type $T; pass dtype= (e.g. DASHATTN_DTYPE_BF16 for BFloat16)"))

# The address of an array's first element: Ptr for Arrays, CuPtr for CuArrays (both
# 64-bit primitive types), as a Ptr{Cvoid} for the descriptor.
address(A) = Ptr{Cvoid}(reinterpret(UInt, pointer(A)))

"""
    tensor(A; dtype) -> dashattn_tensor

Describes array `A` (Array, contiguous view, or CuArray) as a row-major C tensor by
reversing its dimensions: size (D, H, L, N) becomes shape [N, L, H, D], strides likewise.
The descriptor holds a raw pointer: keep `A` alive (GC.@preserve) while it is used.
"""
function tensor(A::AbstractArray{T}; dtype::Integer = dtype_of(T)) where {T}
    r = ndims(A)
    1 <= r <= DASHATTN_MAX_RANK ||
        throw(DashAttnError(DASHATTN_ERR_INVALID_SHAPE, "rank $r (must be 1..$DASHATTN_MAX_RANK)"))
    sz = reverse(size(A))
    st = reverse(strides(A))
    shape = ntuple(i -> i <= r ? Int64(sz[i]) : Int64(0), DASHATTN_MAX_RANK)
    strd = ntuple(i -> i <= r ? Int64(st[i]) : Int64(0), DASHATTN_MAX_RANK)
    return dashattn_tensor(address(A), Int32(dtype), Int32(r), shape, strd)
end

# Ref to a descriptor for a ccall argument; `nothing` passes NULL.
tref(::Nothing) = C_NULL
tref(A) = Ref(tensor(A))

# Workspace pointer and size; `nothing` lets the library allocate.
wsptr(::Nothing) = C_NULL
wsptr(W) = address(W)
wssize(::Nothing) = Csize_t(0)
wssize(W) = Csize_t(length(W) * sizeof(eltype(W)))

"""
    aligned_workspace(nbytes) -> view of a Vector{UInt8}

A host workspace of `nbytes` bytes aligned to the 256 bytes the library requires (CPU
backend; CUDA allocations are already 256-byte aligned).
"""
function aligned_workspace(nbytes::Integer)
    buf = Vector{UInt8}(undef, nbytes + 256)
    off = Int((256 - UInt(pointer(buf)) % 256) % 256)
    return view(buf, off+1:off+nbytes)
end

# ---------------------------------------------------------------------------------------
# Config

"""
    attn_config(; block_size, n_local, causal, selection, precision, alpha, scale,
                  coarse_scale, deterministic) -> dashattn_config

The library defaults (dashattn_config_default) with the given fields replaced.
"""
function attn_config(; block_size = nothing, n_local = nothing, causal = nothing, selection = nothing,
                     precision = nothing, alpha = nothing, scale = nothing, coarse_scale = nothing,
                     deterministic = nothing)
    r = Ref{dashattn_config}()
    check(dashattn_config_default(r))
    c = r[]
    pick(x, d) = x === nothing ? d : x
    return dashattn_config(c.struct_size,
                           Int32(pick(block_size, c.block_size)),
                           Int32(pick(n_local, c.n_local)),
                           Int32(pick(causal, c.causal)),
                           Int32(pick(selection, c.selection)),
                           Int32(pick(precision, c.precision)),
                           Cfloat(pick(alpha, c.alpha)),
                           Cfloat(pick(scale, c.scale)),
                           Cfloat(pick(coarse_scale, c.coarse_scale)),
                           Int32(pick(deterministic, c.deterministic)))
end

# ---------------------------------------------------------------------------------------
# Context

"""
    Context(; backend = DASHATTN_BACKEND_AUTO, device = 0, num_threads = 0)

Owns a dashattn_context; `close(ctx)` destroys it (a finalizer does so otherwise). Use a
context from one task at a time.
"""
mutable struct Context
    ptr::Ptr{dashattn_context}
    function Context(; backend::Integer = DASHATTN_BACKEND_AUTO, device::Integer = 0, num_threads::Integer = 0)
        r = Ref{dashattn_context_options}()
        check(dashattn_context_options_default(r))
        r[] = dashattn_context_options(r[].struct_size, Int32(backend), Int32(device), Int32(num_threads))
        out = Ref{Ptr{dashattn_context}}(C_NULL)
        check(dashattn_context_create(r, out))
        ctx = new(out[])
        finalizer(ctx) do c
            if c.ptr != C_NULL
                dashattn_context_destroy(c.ptr)
                c.ptr = C_NULL
            end
        end
        return ctx
    end
end

Base.unsafe_convert(::Type{Ptr{dashattn_context}}, c::Context) = c.ptr

function Base.close(c::Context)
    if c.ptr != C_NULL
        p = c.ptr
        c.ptr = C_NULL
        check(dashattn_context_destroy(p))
    end
    return nothing
end

"Loads the CUDA kernels now (call before capturing a CUDA graph); no-op on the CPU."
prepare(c::Context) = (check(dashattn_context_prepare(c)); nothing)

function backend(c::Context)
    r = Ref{Int32}(0)
    check(dashattn_context_get_backend(c, r))
    return r[]
end

stream_ptr(s::Ptr) = Ptr{Cvoid}(s)
stream_ptr(s::Integer) = Ptr{Cvoid}(UInt(s))
stream_ptr(::Nothing) = C_NULL
stream_ptr(s) = stream_ptr(getfield(s, :handle))  # e.g. CUDA.jl's CuStream

"""
    set_stream!(ctx, stream)

Launch later calls on `stream`: a CUDA.jl `CuStream` (e.g. `CUDA.stream()`), a raw
CUstream pointer, or `nothing` / 0 for the legacy default stream. Borrowed, never
synchronised by dashattn.
"""
set_stream!(c::Context, stream) = check(dashattn_context_set_stream(c, stream_ptr(stream)))

# ---------------------------------------------------------------------------------------
# Operations (arrays in Julia layout, see the top of this file)

"""
    forward!(ctx, o, q, k, v; config, pooled_k, head_alpha, lse, tau, workspace) -> o

DashAttention forward (SPEC 3). q, o: (D, Hq, Lq, N); k, v: (D, Hkv, Lk, N); optional
pooled_k (D, Hkv, nb, N), head_alpha (Hq,) Float32, lse/tau (Lq, Hq, N) Float32 outputs.
"""
function forward!(ctx::Context, o, q, k, v; config::dashattn_config = attn_config(), pooled_k = nothing,
                  head_alpha = nothing, lse = nothing, tau = nothing, workspace = nothing)
    cfg = Ref(config)
    GC.@preserve ctx o q k v pooled_k head_alpha lse tau workspace begin
        check(dashattn_forward(ctx, cfg, tref(q), tref(k), tref(v), tref(pooled_k), tref(head_alpha),
                               tref(o), tref(lse), tref(tau), wsptr(workspace), wssize(workspace)))
    end
    return o
end

function forward_workspace_size(ctx::Context, q, k, v; config::dashattn_config = attn_config(), pooled_k = nothing)
    cfg = Ref(config)
    n = Ref{Csize_t}(0)
    GC.@preserve ctx q k v pooled_k begin
        check(dashattn_forward_workspace_size(ctx, cfg, tref(q), tref(k), tref(v), tref(pooled_k), n))
    end
    return Int(n[])
end

"""
    backward!(ctx, dq, dk, dv, q, k, v, o, d_o, lse, tau; config, pooled_k, head_alpha,
              d_pooled_k, workspace) -> (dq, dk, dv)

DashAttention backward (SPEC 4). Same layouts as `forward!`; gradients are overwritten.
`d_pooled_k` is required exactly when `pooled_k` is given.
"""
function backward!(ctx::Context, dq, dk, dv, q, k, v, o, d_o, lse, tau; config::dashattn_config = attn_config(),
                   pooled_k = nothing, head_alpha = nothing, d_pooled_k = nothing, workspace = nothing)
    cfg = Ref(config)
    GC.@preserve ctx dq dk dv q k v o d_o lse tau pooled_k head_alpha d_pooled_k workspace begin
        check(dashattn_backward(ctx, cfg, tref(q), tref(k), tref(v), tref(pooled_k), tref(head_alpha),
                                tref(o), tref(d_o), tref(lse), tref(tau), tref(dq), tref(dk), tref(dv),
                                tref(d_pooled_k), wsptr(workspace), wssize(workspace)))
    end
    return dq, dk, dv
end

function backward_workspace_size(ctx::Context, q, k, v; config::dashattn_config = attn_config(), pooled_k = nothing)
    cfg = Ref(config)
    n = Ref{Csize_t}(0)
    GC.@preserve ctx q k v pooled_k begin
        check(dashattn_backward_workspace_size(ctx, cfg, tref(q), tref(k), tref(v), tref(pooled_k), n))
    end
    return Int(n[])
end

"""
    pool_keys_paged!(ctx, pooled_cache, k_cache, block_table, prev_seq_lens, seq_lens;
                     config, workspace) -> pooled_cache

Pooled-key cache upkeep (SPEC 5). k_cache (D, Hkv, page_size, num_pages); pooled_cache
(D, Hkv, max(1, page_size/B), num_pages); block_table (max_pages, N) Int32 with 0-based
page numbers; prev_seq_lens, seq_lens (N,) Int32.
"""
function pool_keys_paged!(ctx::Context, pooled_cache, k_cache, block_table, prev_seq_lens, seq_lens;
                          config::dashattn_config = attn_config(), workspace = nothing)
    cfg = Ref(config)
    GC.@preserve ctx pooled_cache k_cache block_table prev_seq_lens seq_lens workspace begin
        check(dashattn_pool_keys_paged(ctx, cfg, tref(k_cache), tref(pooled_cache), tref(block_table),
                                       tref(prev_seq_lens), tref(seq_lens), wsptr(workspace), wssize(workspace)))
    end
    return pooled_cache
end

function pool_keys_paged_workspace_size(ctx::Context, k_cache, pooled_cache, block_table, seq_lens;
                                        config::dashattn_config = attn_config())
    cfg = Ref(config)
    n = Ref{Csize_t}(0)
    GC.@preserve ctx k_cache pooled_cache block_table seq_lens begin
        check(dashattn_pool_keys_paged_workspace_size(ctx, cfg, tref(k_cache), tref(pooled_cache),
                                                      tref(block_table), tref(seq_lens), n))
    end
    return Int(n[])
end

"""
    decode!(ctx, o, q, k_cache, v_cache, pooled_cache, block_table, seq_lens;
            config, head_alpha, lse, workspace) -> o

Decode step over the paged cache (SPEC 5). q, o: (D, Hq, q_len, N); caches as in
`pool_keys_paged!`; lse (q_len, Hq, N) Float32, optional.
"""
function decode!(ctx::Context, o, q, k_cache, v_cache, pooled_cache, block_table, seq_lens;
                 config::dashattn_config = attn_config(), head_alpha = nothing, lse = nothing, workspace = nothing)
    cfg = Ref(config)
    GC.@preserve ctx o q k_cache v_cache pooled_cache block_table seq_lens head_alpha lse workspace begin
        check(dashattn_decode(ctx, cfg, tref(q), tref(k_cache), tref(v_cache), tref(pooled_cache),
                              tref(block_table), tref(seq_lens), tref(head_alpha), tref(o), tref(lse),
                              wsptr(workspace), wssize(workspace)))
    end
    return o
end

function decode_workspace_size(ctx::Context, q, k_cache, pooled_cache, block_table, seq_lens;
                               config::dashattn_config = attn_config())
    cfg = Ref(config)
    n = Ref{Csize_t}(0)
    GC.@preserve ctx q k_cache pooled_cache block_table seq_lens begin
        check(dashattn_decode_workspace_size(ctx, cfg, tref(q), tref(k_cache), tref(pooled_cache),
                                             tref(block_table), tref(seq_lens), n))
    end
    return Int(n[])
end

"""
    merge_states!(ctx, o, o_parts, lse_parts; lse) -> o

Combines S partial results over disjoint key sets: o_parts (D, H, L, N, S), lse_parts
(L, H, N, S) Float32; o (D, H, L, N) output; lse (L, H, N) Float32 optional output.
"""
function merge_states!(ctx::Context, o, o_parts, lse_parts; lse = nothing)
    GC.@preserve ctx o o_parts lse_parts lse begin
        check(dashattn_merge_states(ctx, tref(o_parts), tref(lse_parts), tref(o), tref(lse)))
    end
    return o
end

end # module
