// Package dashattn is a cgo binding of the dashattn C ABI (include/dashattn.h):
// DashAttention, alpha-entmax hierarchical sparse attention, on the CPU or CUDA backend.
//
// Memory: with the CPU backend tensors are host memory; pass Go slices through the
// Float32s / Float64s / Int32s / Raw16 helpers (they keep the slice alive for the call and
// check that it is long enough for the shape and strides). With the CUDA backend pass
// device pointers as uintptr through Device. Descriptors, configs and options are copied
// onto the C stack by small C helpers, so no Go pointer is ever stored in C memory
// (cgocheck=2 clean), and Go memory is only referenced for the duration of a call.
//
// Errors: every failing call returns a *Error carrying the library's status and its detail
// message. The message is read inside the same C call that failed, so it is always the
// message of that call even though goroutines migrate between OS threads (the library
// keeps it thread-local).
//
// A Context may be used by one goroutine at a time; use one Context per goroutine for
// concurrency. Close it when done (a finalizer closes forgotten ones).
package dashattn

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -ldashattn -Wl,-rpath,${SRCDIR}/../../target/release
#include <stdlib.h>
#include <string.h>
#include "dashattn.h"

// A tensor descriptor without any Go pointer. `addr` is a non-Go address (device memory,
// C memory) used when the host pointer passed beside it is NULL. present = 0: NULL tensor.
typedef struct {
	uintptr_t addr;
	int32_t dtype;
	int32_t rank;
	int64_t shape[DASHATTN_MAX_RANK];
	int64_t strides[DASHATTN_MAX_RANK];
	int32_t present;
} da_desc;

static const dashattn_tensor* da_fill(dashattn_tensor* t, const da_desc* d, void* host) {
	if (!d->present) return NULL;
	t->data = host ? host : (void*)d->addr;
	t->dtype = d->dtype;
	t->rank = d->rank;
	memcpy(t->shape, d->shape, sizeof t->shape);
	memcpy(t->strides, d->strides, sizeof t->strides);
	return t;
}

// On failure, copies this thread's detail message into a malloc'd string (freed by Go).
static dashattn_status da_done(dashattn_status s, char** msg) {
	if (s != DASHATTN_SUCCESS) {
		size_t n = dashattn_last_error_message(NULL, 0);
		char* m = (char*)malloc(n + 1);
		if (m) dashattn_last_error_message(m, n + 1);
		*msg = m;
	}
	return s;
}

static void* da_ws(void* host, uintptr_t addr) { return host ? host : (void*)addr; }

#define T(i, p) da_fill(&t[i], &d[i], p)

static dashattn_status da_context_create(const dashattn_context_options* o, int use_default,
                                         dashattn_context** out, char** msg) {
	return da_done(dashattn_context_create(use_default ? NULL : o, out), msg);
}

static dashattn_status da_context_destroy(dashattn_context* ctx, char** msg) {
	return da_done(dashattn_context_destroy(ctx), msg);
}

static dashattn_status da_set_stream(dashattn_context* ctx, uintptr_t stream, char** msg) {
	return da_done(dashattn_context_set_stream(ctx, (void*)stream), msg);
}

static dashattn_status da_get_backend(dashattn_context* ctx, int32_t* out, char** msg) {
	return da_done(dashattn_context_get_backend(ctx, out), msg);
}

static dashattn_status da_prepare(dashattn_context* ctx, char** msg) {
	return da_done(dashattn_context_prepare(ctx), msg);
}

static dashattn_status da_cuda_available(int32_t* out, char** msg) {
	return da_done(dashattn_cuda_available(out), msg);
}

static dashattn_status da_forward_workspace_size(dashattn_context* ctx, const dashattn_config* cfg,
		const da_desc* d, void* q, void* k, void* v, void* pk, size_t* out, char** msg) {
	dashattn_tensor t[4];
	return da_done(dashattn_forward_workspace_size(ctx, cfg, T(0, q), T(1, k), T(2, v), T(3, pk), out), msg);
}

static dashattn_status da_forward(dashattn_context* ctx, const dashattn_config* cfg, const da_desc* d,
		void* q, void* k, void* v, void* pk, void* ha, void* o, void* lse, void* tau,
		void* ws, uintptr_t ws_addr, size_t ws_size, char** msg) {
	dashattn_tensor t[8];
	return da_done(dashattn_forward(ctx, cfg, T(0, q), T(1, k), T(2, v), T(3, pk), T(4, ha), T(5, o),
	                                T(6, lse), T(7, tau), da_ws(ws, ws_addr), ws_size), msg);
}

static dashattn_status da_backward_workspace_size(dashattn_context* ctx, const dashattn_config* cfg,
		const da_desc* d, void* q, void* k, void* v, void* pk, size_t* out, char** msg) {
	dashattn_tensor t[4];
	return da_done(dashattn_backward_workspace_size(ctx, cfg, T(0, q), T(1, k), T(2, v), T(3, pk), out), msg);
}

static dashattn_status da_backward(dashattn_context* ctx, const dashattn_config* cfg, const da_desc* d,
		void* q, void* k, void* v, void* pk, void* ha, void* o, void* d_o, void* lse, void* tau,
		void* dq, void* dk, void* dv, void* dpk,
		void* ws, uintptr_t ws_addr, size_t ws_size, char** msg) {
	dashattn_tensor t[13];
	return da_done(dashattn_backward(ctx, cfg, T(0, q), T(1, k), T(2, v), T(3, pk), T(4, ha), T(5, o),
	                                 T(6, d_o), T(7, lse), T(8, tau), T(9, dq), T(10, dk), T(11, dv),
	                                 T(12, dpk), da_ws(ws, ws_addr), ws_size), msg);
}

static dashattn_status da_pool_keys_paged_workspace_size(dashattn_context* ctx, const dashattn_config* cfg,
		const da_desc* d, void* kc, void* pc, void* bt, void* sl, size_t* out, char** msg) {
	dashattn_tensor t[4];
	return da_done(dashattn_pool_keys_paged_workspace_size(ctx, cfg, T(0, kc), T(1, pc), T(2, bt), T(3, sl), out), msg);
}

static dashattn_status da_pool_keys_paged(dashattn_context* ctx, const dashattn_config* cfg, const da_desc* d,
		void* kc, void* pc, void* bt, void* prev, void* sl,
		void* ws, uintptr_t ws_addr, size_t ws_size, char** msg) {
	dashattn_tensor t[5];
	return da_done(dashattn_pool_keys_paged(ctx, cfg, T(0, kc), T(1, pc), T(2, bt), T(3, prev), T(4, sl),
	                                        da_ws(ws, ws_addr), ws_size), msg);
}

static dashattn_status da_decode_workspace_size(dashattn_context* ctx, const dashattn_config* cfg,
		const da_desc* d, void* q, void* kc, void* pc, void* bt, void* sl, size_t* out, char** msg) {
	dashattn_tensor t[5];
	return da_done(dashattn_decode_workspace_size(ctx, cfg, T(0, q), T(1, kc), T(2, pc), T(3, bt), T(4, sl), out), msg);
}

static dashattn_status da_decode(dashattn_context* ctx, const dashattn_config* cfg, const da_desc* d,
		void* q, void* kc, void* vc, void* pc, void* bt, void* sl, void* ha, void* o, void* lse,
		void* ws, uintptr_t ws_addr, size_t ws_size, char** msg) {
	dashattn_tensor t[9];
	return da_done(dashattn_decode(ctx, cfg, T(0, q), T(1, kc), T(2, vc), T(3, pc), T(4, bt), T(5, sl),
	                               T(6, ha), T(7, o), T(8, lse), da_ws(ws, ws_addr), ws_size), msg);
}

static dashattn_status da_merge_states(dashattn_context* ctx, const da_desc* d,
		void* o_parts, void* lse_parts, void* o, void* lse, char** msg) {
	dashattn_tensor t[4];
	return da_done(dashattn_merge_states(ctx, T(0, o_parts), T(1, lse_parts), T(2, o), T(3, lse)), msg);
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// MaxRank is the largest tensor rank a descriptor holds (DASHATTN_MAX_RANK).
const MaxRank = int(C.DASHATTN_MAX_RANK)

// WorkspaceAlign is the alignment the library requires of a caller-provided workspace.
const WorkspaceAlign = 256

// ---------------------------------------------------------------------------------------
// Status and errors

// Status is a dashattn_status code.
type Status int32

const (
	StatusSuccess           Status = C.DASHATTN_SUCCESS
	StatusNullPointer       Status = C.DASHATTN_ERR_NULL_POINTER
	StatusInvalidArgument   Status = C.DASHATTN_ERR_INVALID_ARGUMENT
	StatusInvalidShape      Status = C.DASHATTN_ERR_INVALID_SHAPE
	StatusInvalidStride     Status = C.DASHATTN_ERR_INVALID_STRIDE
	StatusInvalidDtype      Status = C.DASHATTN_ERR_INVALID_DTYPE
	StatusInvalidConfig     Status = C.DASHATTN_ERR_INVALID_CONFIG
	StatusOverflow          Status = C.DASHATTN_ERR_OVERFLOW
	StatusWorkspaceTooSmall Status = C.DASHATTN_ERR_WORKSPACE_TOO_SMALL
	StatusMisaligned        Status = C.DASHATTN_ERR_MISALIGNED
	StatusOutOfRange        Status = C.DASHATTN_ERR_OUT_OF_RANGE
	StatusNoDevice          Status = C.DASHATTN_ERR_NO_DEVICE
	StatusUnsupported       Status = C.DASHATTN_ERR_UNSUPPORTED
	StatusCuda              Status = C.DASHATTN_ERR_CUDA
	StatusOutOfMemory       Status = C.DASHATTN_ERR_OUT_OF_MEMORY
	StatusInternal          Status = C.DASHATTN_ERR_INTERNAL
)

// String is the library's description of the status (dashattn_status_string).
func (s Status) String() string {
	return C.GoString(C.dashattn_status_string(C.dashattn_status(s)))
}

// Error is the error every failing call returns.
type Error struct {
	Status  Status // the status code the C function returned
	Message string // the library's detail message (names the offending argument)
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("dashattn: %s (status %d)", e.Status, int32(e.Status))
	}
	return fmt.Sprintf("dashattn: %s (status %d): %s", e.Status, int32(e.Status), e.Message)
}

// Is makes errors.Is(err, &dashattn.Error{Status: s}) match any *Error with status s.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && (t.Message == "" || t.Message == e.Message)
}

func result(s C.dashattn_status, msg *C.char) error {
	if s == C.DASHATTN_SUCCESS {
		return nil
	}
	e := &Error{Status: Status(s)}
	if msg != nil {
		e.Message = C.GoString(msg)
		C.free(unsafe.Pointer(msg))
	}
	return e
}

func clientError(s Status, format string, args ...interface{}) error {
	return &Error{Status: s, Message: fmt.Sprintf(format, args...)}
}

// ---------------------------------------------------------------------------------------
// Enumerations

// DType is a DASHATTN_DTYPE_* value.
type DType int32

const (
	F32  DType = C.DASHATTN_DTYPE_F32
	F16  DType = C.DASHATTN_DTYPE_F16
	BF16 DType = C.DASHATTN_DTYPE_BF16
	I32  DType = C.DASHATTN_DTYPE_I32
	F64  DType = C.DASHATTN_DTYPE_F64
)

// Size is the element size in bytes (0 for an unknown dtype).
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case F16, BF16:
		return 2
	case F64:
		return 8
	}
	return 0
}

// Backend is a DASHATTN_BACKEND_* value.
type Backend int32

const (
	BackendAuto Backend = C.DASHATTN_BACKEND_AUTO
	BackendCPU  Backend = C.DASHATTN_BACKEND_CPU
	BackendCUDA Backend = C.DASHATTN_BACKEND_CUDA
)

// Selection is the coarse-stage granularity (DASHATTN_SELECT_*).
type Selection int32

const (
	SelectPerGroup Selection = C.DASHATTN_SELECT_PER_GROUP
	SelectPerHead  Selection = C.DASHATTN_SELECT_PER_HEAD
)

// Precision is the accumulation precision (DASHATTN_PRECISION_*).
type Precision int32

const (
	PrecisionDefault Precision = C.DASHATTN_PRECISION_DEFAULT
	PrecisionF64     Precision = C.DASHATTN_PRECISION_F64
)

// ---------------------------------------------------------------------------------------
// Version and capability queries

// Version is the loaded library's version, MAJOR*10000 + MINOR*100 + PATCH.
func Version() uint32 { return uint32(C.dashattn_version()) }

// VersionString is the loaded library's version as "MAJOR.MINOR.PATCH".
func VersionString() string { return C.GoString(C.dashattn_version_string()) }

// HeaderVersion is the version of the header this package was compiled against.
func HeaderVersion() uint32 {
	return uint32(C.DASHATTN_VERSION_MAJOR)*10000 + uint32(C.DASHATTN_VERSION_MINOR)*100 + uint32(C.DASHATTN_VERSION_PATCH)
}

// CudaAvailable reports whether a CUDA driver and at least one device are present.
func CudaAvailable() (bool, error) {
	var a C.int32_t
	var msg *C.char
	if err := result(C.da_cuda_available(&a, &msg), msg); err != nil {
		return false, err
	}
	return a != 0, nil
}

// ---------------------------------------------------------------------------------------
// Tensors

// Tensor describes a strided tensor. Exactly one of Data (host memory: a Go slice or C
// memory, CPU backend) and Addr (a device pointer or other non-Go address) is used: Data
// when it is non-nil. Shape and Strides are in elements, row-major; Strides nil means
// contiguous. A nil *Tensor passes NULL (for optional arguments).
type Tensor struct {
	Data    unsafe.Pointer
	Addr    uintptr
	DType   DType
	Shape   []int64
	Strides []int64

	elems int // length of the Go slice behind Data; -1 when unknown
}

func fromSlice(p unsafe.Pointer, n int, dtype DType, shape []int64) *Tensor {
	return &Tensor{Data: p, DType: dtype, Shape: append([]int64(nil), shape...), elems: n}
}

// Float32s views a []float32 as an f32 tensor of the given shape.
func Float32s(s []float32, shape ...int64) *Tensor {
	var p unsafe.Pointer
	if len(s) > 0 {
		p = unsafe.Pointer(&s[0])
	}
	return fromSlice(p, len(s), F32, shape)
}

// Float64s views a []float64 as an f64 tensor (CPU backend only).
func Float64s(s []float64, shape ...int64) *Tensor {
	var p unsafe.Pointer
	if len(s) > 0 {
		p = unsafe.Pointer(&s[0])
	}
	return fromSlice(p, len(s), F64, shape)
}

// Int32s views a []int32 as an i32 tensor (block tables, sequence lengths).
func Int32s(s []int32, shape ...int64) *Tensor {
	var p unsafe.Pointer
	if len(s) > 0 {
		p = unsafe.Pointer(&s[0])
	}
	return fromSlice(p, len(s), I32, shape)
}

// Raw16 views a []uint16 of raw f16 or bf16 bits as a tensor of that dtype.
func Raw16(s []uint16, dtype DType, shape ...int64) *Tensor {
	var p unsafe.Pointer
	if len(s) > 0 {
		p = unsafe.Pointer(&s[0])
	}
	return fromSlice(p, len(s), dtype, shape)
}

// Device describes device (or any non-Go) memory at addr, e.g. a CUDA allocation or a
// CUDA.jl / PyTorch tensor's data pointer.
func Device(addr uintptr, dtype DType, shape ...int64) *Tensor {
	return &Tensor{Addr: addr, DType: dtype, Shape: append([]int64(nil), shape...), elems: -1}
}

// WithStrides sets element strides (one per dimension) and returns t.
func (t *Tensor) WithStrides(strides ...int64) *Tensor {
	t.Strides = append([]int64(nil), strides...)
	return t
}

// Numel is the number of elements of the shape.
func (t *Tensor) Numel() int64 {
	n := int64(1)
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

// desc converts t (nil: absent) into a pointer-free descriptor and its host pointer.
// For slices it checks that the slice covers every element the view can reach.
func desc(name string, t *Tensor) (d C.da_desc, host unsafe.Pointer, err error) {
	if t == nil {
		return d, nil, nil
	}
	r := len(t.Shape)
	if r < 1 || r > MaxRank {
		return d, nil, clientError(StatusInvalidShape, "%s: rank %d (must be 1..%d)", name, r, MaxRank)
	}
	strides := t.Strides
	if strides == nil {
		strides = make([]int64, r)
		acc := int64(1)
		for i := r - 1; i >= 0; i-- {
			strides[i] = acc
			if t.Shape[i] > 0 {
				acc *= t.Shape[i]
			}
		}
	} else if len(strides) != r {
		return d, nil, clientError(StatusInvalidShape, "%s: %d strides for rank %d", name, len(strides), r)
	}
	d.present = 1
	d.dtype = C.int32_t(t.DType)
	d.rank = C.int32_t(r)
	empty := false
	for i := 0; i < r; i++ {
		d.shape[i] = C.int64_t(t.Shape[i])
		d.strides[i] = C.int64_t(strides[i])
		if t.Shape[i] == 0 {
			empty = true
		}
	}
	if t.Data != nil && t.elems >= 0 && !empty {
		// Bounds check of the Go slice (the library cannot see its length). Negative
		// values are left to the library, which rejects them.
		extent := int64(1)
		ok := true
		for i := 0; i < r; i++ {
			if t.Shape[i] < 0 || strides[i] < 0 {
				ok = false
				break
			}
			extent += (t.Shape[i] - 1) * strides[i]
		}
		if ok && extent > int64(t.elems) {
			return d, nil, clientError(StatusInvalidShape,
				"%s: shape %v with strides %v reaches element %d but the slice has %d", name, t.Shape, strides, extent-1, t.elems)
		}
	}
	if t.Data != nil {
		return d, t.Data, nil
	}
	d.addr = C.uintptr_t(t.Addr)
	return d, nil, nil
}

// descs converts a list of named tensors.
func descs(names []string, ts []*Tensor) ([]C.da_desc, []unsafe.Pointer, error) {
	ds := make([]C.da_desc, len(ts))
	ps := make([]unsafe.Pointer, len(ts))
	for i, t := range ts {
		d, p, err := desc(names[i], t)
		if err != nil {
			return nil, nil, err
		}
		ds[i], ps[i] = d, p
	}
	return ds, ps, nil
}

// Workspace is caller-provided scratch memory: Data for host memory (CPU backend), Addr for
// device memory; 256-byte aligned. The zero value lets the library allocate.
type Workspace struct {
	Data unsafe.Pointer
	Addr uintptr
	Size uint64
}

// HostWorkspace allocates a 256-byte aligned host workspace of size bytes (CPU backend).
func HostWorkspace(size uint64) Workspace {
	if size == 0 {
		return Workspace{}
	}
	buf := make([]byte, size+WorkspaceAlign)
	off := (WorkspaceAlign - int(uintptr(unsafe.Pointer(&buf[0]))%WorkspaceAlign)) % WorkspaceAlign
	return Workspace{Data: unsafe.Pointer(&buf[off]), Size: size}
}

// ---------------------------------------------------------------------------------------
// Config and options

// Config is the attention configuration (dashattn_config); start from DefaultConfig.
type Config struct {
	BlockSize     int32     // coarse block size B: 16, 32, 64 or 128
	NLocal        int32     // local blocks always attended (causal needs >= 1)
	Causal        bool      // bottom-right aligned causal mask
	Selection     Selection // SelectPerGroup (default) or SelectPerHead
	Precision     Precision // PrecisionDefault (f32) or PrecisionF64 (CPU only)
	Alpha         float32   // entmax alpha in [1, 2]
	Scale         float32   // fine scale sigma; 0 = 1/sqrt(D)
	CoarseScale   float32   // coarse scale sigma_c; 0 = Scale
	Deterministic bool      // bitwise reproducible backward
}

// DefaultConfig returns the library defaults (dashattn_config_default).
func DefaultConfig() Config {
	var c C.dashattn_config
	C.dashattn_config_default(&c)
	return Config{
		BlockSize:     int32(c.block_size),
		NLocal:        int32(c.n_local),
		Causal:        c.causal != 0,
		Selection:     Selection(c.selection),
		Precision:     Precision(c.precision),
		Alpha:         float32(c.alpha),
		Scale:         float32(c.scale),
		CoarseScale:   float32(c.coarse_scale),
		Deterministic: c.deterministic != 0,
	}
}

func b2i(b bool) C.int32_t {
	if b {
		return 1
	}
	return 0
}

// cConfig converts cfg (nil: defaults) into the C struct, with struct_size set.
func cConfig(cfg *Config) C.dashattn_config {
	var c C.dashattn_config
	C.dashattn_config_default(&c)
	if cfg == nil {
		return c
	}
	c.block_size = C.int32_t(cfg.BlockSize)
	c.n_local = C.int32_t(cfg.NLocal)
	c.causal = b2i(cfg.Causal)
	c.selection = C.int32_t(cfg.Selection)
	c.precision = C.int32_t(cfg.Precision)
	c.alpha = C.float(cfg.Alpha)
	c.scale = C.float(cfg.Scale)
	c.coarse_scale = C.float(cfg.CoarseScale)
	c.deterministic = b2i(cfg.Deterministic)
	return c
}

// ContextOptions selects the backend (dashattn_context_options).
type ContextOptions struct {
	Backend    Backend // BackendAuto (default), BackendCPU or BackendCUDA
	Device     int32   // CUDA device ordinal
	NumThreads int32   // CPU worker threads; 0 = all cores
}

// DefaultContextOptions returns the library defaults.
func DefaultContextOptions() ContextOptions {
	var o C.dashattn_context_options
	C.dashattn_context_options_default(&o)
	return ContextOptions{Backend: Backend(o.backend), Device: int32(o.device), NumThreads: int32(o.num_threads)}
}

// ---------------------------------------------------------------------------------------
// Context

// Context owns a dashattn_context. Use it from one goroutine at a time.
type Context struct {
	ptr *C.dashattn_context
}

// NewContext creates a context; opts nil means the defaults (backend AUTO).
func NewContext(opts *ContextOptions) (*Context, error) {
	var o C.dashattn_context_options
	C.dashattn_context_options_default(&o)
	useDefault := C.int(1)
	if opts != nil {
		useDefault = 0
		o.backend = C.int32_t(opts.Backend)
		o.device = C.int32_t(opts.Device)
		o.num_threads = C.int32_t(opts.NumThreads)
	}
	var p *C.dashattn_context
	var msg *C.char
	if err := result(C.da_context_create(&o, useDefault, &p, &msg), msg); err != nil {
		return nil, err
	}
	c := &Context{ptr: p}
	runtime.SetFinalizer(c, func(c *Context) { _ = c.Close() })
	return c, nil
}

// NewCPUContext creates a CPU-backend context with numThreads workers (0 = all cores).
func NewCPUContext(numThreads int) (*Context, error) {
	return NewContext(&ContextOptions{Backend: BackendCPU, NumThreads: int32(numThreads)})
}

// Close destroys the context. It is idempotent; later calls on c fail with
// StatusNullPointer.
func (c *Context) Close() error {
	if c == nil || c.ptr == nil {
		return nil
	}
	p := c.ptr
	c.ptr = nil
	runtime.SetFinalizer(c, nil)
	var msg *C.char
	return result(C.da_context_destroy(p, &msg), msg)
}

func (c *Context) raw() *C.dashattn_context {
	if c == nil {
		return nil
	}
	return c.ptr
}

// Backend reports the backend the context runs on (BackendCPU or BackendCUDA).
func (c *Context) Backend() (Backend, error) {
	var b C.int32_t
	var msg *C.char
	err := result(C.da_get_backend(c.raw(), &b, &msg), msg)
	runtime.KeepAlive(c)
	return Backend(b), err
}

// Prepare loads the CUDA kernels now (call it before capturing a CUDA graph); a no-op on
// the CPU backend.
func (c *Context) Prepare() error {
	var msg *C.char
	err := result(C.da_prepare(c.raw(), &msg), msg)
	runtime.KeepAlive(c)
	return err
}

// SetStream sets the CUDA stream (CUstream / cudaStream_t as uintptr; 0 = legacy default)
// later calls launch on. Borrowed, never synchronised. Ignored by the CPU backend.
func (c *Context) SetStream(stream uintptr) error {
	var msg *C.char
	err := result(C.da_set_stream(c.raw(), C.uintptr_t(stream), &msg), msg)
	runtime.KeepAlive(c)
	return err
}

// ForwardArgs are the tensors of a forward call (SPEC 3). Optional: PooledK, HeadAlpha,
// LSE, Tau (nil = NULL). LSE and Tau are required later by Backward.
type ForwardArgs struct {
	Q, K, V   *Tensor // q [N, Lq, Hq, D]; k, v [N, Lk, Hkv, D]
	PooledK   *Tensor // [N, ceil(Lk/B), Hkv, D]; nil = mean pooling
	HeadAlpha *Tensor // [Hq] f32
	O         *Tensor // [N, Lq, Hq, D] output
	LSE, Tau  *Tensor // [N, Hq, Lq] f32 outputs
	Workspace Workspace
}

// ForwardWorkspaceSize is the workspace dashattn_forward needs (pooledK may be nil).
func (c *Context) ForwardWorkspaceSize(cfg *Config, q, k, v, pooledK *Tensor) (uint64, error) {
	ds, ps, err := descs([]string{"q", "k", "v", "pooled_k"}, []*Tensor{q, k, v, pooledK})
	if err != nil {
		return 0, err
	}
	cc := cConfig(cfg)
	var n C.size_t
	var msg *C.char
	err = result(C.da_forward_workspace_size(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], &n, &msg), msg)
	runtime.KeepAlive(c)
	return uint64(n), err
}

// Forward runs dashattn_forward. On error nothing is written.
func (c *Context) Forward(cfg *Config, a *ForwardArgs) error {
	ds, ps, err := descs([]string{"q", "k", "v", "pooled_k", "head_alpha", "o", "lse", "tau"},
		[]*Tensor{a.Q, a.K, a.V, a.PooledK, a.HeadAlpha, a.O, a.LSE, a.Tau})
	if err != nil {
		return err
	}
	cc := cConfig(cfg)
	var msg *C.char
	err = result(C.da_forward(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], ps[4], ps[5], ps[6], ps[7],
		a.Workspace.Data, C.uintptr_t(a.Workspace.Addr), C.size_t(a.Workspace.Size), &msg), msg)
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
	return err
}

// BackwardArgs are the tensors of a backward call (SPEC 4): the forward's inputs and
// outputs, the output gradient DO, and the gradients to write. DPooledK is required iff
// PooledK is given.
type BackwardArgs struct {
	Q, K, V            *Tensor
	PooledK, HeadAlpha *Tensor // optional, as in the forward
	O, DO              *Tensor
	LSE, Tau           *Tensor
	DQ, DK, DV         *Tensor // outputs (overwritten)
	DPooledK           *Tensor // output, iff PooledK
	Workspace          Workspace
}

// BackwardWorkspaceSize is the workspace dashattn_backward needs.
func (c *Context) BackwardWorkspaceSize(cfg *Config, q, k, v, pooledK *Tensor) (uint64, error) {
	ds, ps, err := descs([]string{"q", "k", "v", "pooled_k"}, []*Tensor{q, k, v, pooledK})
	if err != nil {
		return 0, err
	}
	cc := cConfig(cfg)
	var n C.size_t
	var msg *C.char
	err = result(C.da_backward_workspace_size(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], &n, &msg), msg)
	runtime.KeepAlive(c)
	return uint64(n), err
}

// Backward runs dashattn_backward. On error nothing is written.
func (c *Context) Backward(cfg *Config, a *BackwardArgs) error {
	ds, ps, err := descs(
		[]string{"q", "k", "v", "pooled_k", "head_alpha", "o", "d_o", "lse", "tau", "dq", "dk", "dv", "d_pooled_k"},
		[]*Tensor{a.Q, a.K, a.V, a.PooledK, a.HeadAlpha, a.O, a.DO, a.LSE, a.Tau, a.DQ, a.DK, a.DV, a.DPooledK})
	if err != nil {
		return err
	}
	cc := cConfig(cfg)
	var msg *C.char
	err = result(C.da_backward(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], ps[4], ps[5], ps[6], ps[7], ps[8],
		ps[9], ps[10], ps[11], ps[12], a.Workspace.Data, C.uintptr_t(a.Workspace.Addr), C.size_t(a.Workspace.Size), &msg), msg)
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
	return err
}

// PoolKeysPagedArgs are the tensors of dashattn_pool_keys_paged (SPEC 5).
type PoolKeysPagedArgs struct {
	KCache      *Tensor // [num_pages, page_size, Hkv, D]
	PooledCache *Tensor // [num_pages, max(1, page_size/B), Hkv, D], written
	BlockTable  *Tensor // [N, max_pages] i32
	PrevSeqLens *Tensor // [N] i32
	SeqLens     *Tensor // [N] i32
	Workspace   Workspace
}

// PoolKeysPagedWorkspaceSize is the workspace dashattn_pool_keys_paged needs.
func (c *Context) PoolKeysPagedWorkspaceSize(cfg *Config, kCache, pooledCache, blockTable, seqLens *Tensor) (uint64, error) {
	ds, ps, err := descs([]string{"k_cache", "pooled_cache", "block_table", "seq_lens"},
		[]*Tensor{kCache, pooledCache, blockTable, seqLens})
	if err != nil {
		return 0, err
	}
	cc := cConfig(cfg)
	var n C.size_t
	var msg *C.char
	err = result(C.da_pool_keys_paged_workspace_size(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], &n, &msg), msg)
	runtime.KeepAlive(c)
	return uint64(n), err
}

// PoolKeysPaged writes the pooled keys of the blocks completed between PrevSeqLens and
// SeqLens. Call it after appending tokens to the K cache.
func (c *Context) PoolKeysPaged(cfg *Config, a *PoolKeysPagedArgs) error {
	ds, ps, err := descs([]string{"k_cache", "pooled_cache", "block_table", "prev_seq_lens", "seq_lens"},
		[]*Tensor{a.KCache, a.PooledCache, a.BlockTable, a.PrevSeqLens, a.SeqLens})
	if err != nil {
		return err
	}
	cc := cConfig(cfg)
	var msg *C.char
	err = result(C.da_pool_keys_paged(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], ps[4],
		a.Workspace.Data, C.uintptr_t(a.Workspace.Addr), C.size_t(a.Workspace.Size), &msg), msg)
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
	return err
}

// DecodeArgs are the tensors of dashattn_decode (SPEC 5). HeadAlpha and LSE are optional.
type DecodeArgs struct {
	Q           *Tensor // [N, q_len, Hq, D], q_len 1..16
	KCache      *Tensor // [num_pages, page_size, Hkv, D]
	VCache      *Tensor // like KCache
	PooledCache *Tensor // [num_pages, max(1, page_size/B), Hkv, D]
	BlockTable  *Tensor // [N, max_pages] i32
	SeqLens     *Tensor // [N] i32
	HeadAlpha   *Tensor // [Hq] f32
	O           *Tensor // [N, q_len, Hq, D] output
	LSE         *Tensor // [N, Hq, q_len] f32 output
	Workspace   Workspace
}

// DecodeWorkspaceSize is the workspace dashattn_decode needs.
func (c *Context) DecodeWorkspaceSize(cfg *Config, q, kCache, pooledCache, blockTable, seqLens *Tensor) (uint64, error) {
	ds, ps, err := descs([]string{"q", "k_cache", "pooled_cache", "block_table", "seq_lens"},
		[]*Tensor{q, kCache, pooledCache, blockTable, seqLens})
	if err != nil {
		return 0, err
	}
	cc := cConfig(cfg)
	var n C.size_t
	var msg *C.char
	err = result(C.da_decode_workspace_size(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], ps[4], &n, &msg), msg)
	runtime.KeepAlive(c)
	return uint64(n), err
}

// Decode runs one decode step over the paged cache. On error nothing is written.
func (c *Context) Decode(cfg *Config, a *DecodeArgs) error {
	ds, ps, err := descs(
		[]string{"q", "k_cache", "v_cache", "pooled_cache", "block_table", "seq_lens", "head_alpha", "o", "lse"},
		[]*Tensor{a.Q, a.KCache, a.VCache, a.PooledCache, a.BlockTable, a.SeqLens, a.HeadAlpha, a.O, a.LSE})
	if err != nil {
		return err
	}
	cc := cConfig(cfg)
	var msg *C.char
	err = result(C.da_decode(c.raw(), &cc, &ds[0], ps[0], ps[1], ps[2], ps[3], ps[4], ps[5], ps[6], ps[7], ps[8],
		a.Workspace.Data, C.uintptr_t(a.Workspace.Addr), C.size_t(a.Workspace.Size), &msg), msg)
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
	return err
}

// MergeStatesArgs are the tensors of dashattn_merge_states: S partial results of the same
// queries over disjoint key sets, combined by their lse.
type MergeStatesArgs struct {
	OParts   *Tensor // [S, N, L, H, D]
	LSEParts *Tensor // [S, N, H, L] f32
	O        *Tensor // [N, L, H, D] output
	LSE      *Tensor // [N, H, L] f32 output, optional
}

// MergeStates combines partial results: lse = logsumexp over parts, o = sum_s
// exp(lse_s - lse) o_s. On error nothing is written.
func (c *Context) MergeStates(a *MergeStatesArgs) error {
	ds, ps, err := descs([]string{"o_parts", "lse_parts", "o", "lse"}, []*Tensor{a.OParts, a.LSEParts, a.O, a.LSE})
	if err != nil {
		return err
	}
	var msg *C.char
	err = result(C.da_merge_states(c.raw(), &ds[0], ps[0], ps[1], ps[2], ps[3], &msg), msg)
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
	return err
}
