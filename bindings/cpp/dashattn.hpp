// dashattn.hpp: header-only C++17 wrapper around the dashattn C ABI (include/dashattn.h).
//
//  - dashattn::Context   move-only owner of a dashattn_context (destroyed in the destructor)
//  - dashattn::TensorView a dashattn_tensor built from pointer + dtype + shape (+ strides)
//  - dashattn::Config    dashattn_config initialised by dashattn_config_default, fluent setters
//  - dashattn::Error     thrown for every non-success status; carries status() and the
//                        library's detail message (dashattn_last_error_message)
//
// Optional tensors are passed as `const TensorView*` (nullptr = absent), in the argument
// order of the C functions. Nothing here allocates tensor memory: the caller owns all data.
// As in C, on error no output tensor is written.
//
// Link with -ldashattn (the Makefile next to this file shows how).
#ifndef DASHATTN_HPP
#define DASHATTN_HPP

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dashattn.h"

namespace dashattn {

// ---------------------------------------------------------------------------------------
// Enumerations (values are the DASHATTN_* macros of the C header)

enum class Status : int32_t {
  Success = DASHATTN_SUCCESS,
  NullPointer = DASHATTN_ERR_NULL_POINTER,
  InvalidArgument = DASHATTN_ERR_INVALID_ARGUMENT,
  InvalidShape = DASHATTN_ERR_INVALID_SHAPE,
  InvalidStride = DASHATTN_ERR_INVALID_STRIDE,
  InvalidDtype = DASHATTN_ERR_INVALID_DTYPE,
  InvalidConfig = DASHATTN_ERR_INVALID_CONFIG,
  Overflow = DASHATTN_ERR_OVERFLOW,
  WorkspaceTooSmall = DASHATTN_ERR_WORKSPACE_TOO_SMALL,
  Misaligned = DASHATTN_ERR_MISALIGNED,
  OutOfRange = DASHATTN_ERR_OUT_OF_RANGE,
  NoDevice = DASHATTN_ERR_NO_DEVICE,
  Unsupported = DASHATTN_ERR_UNSUPPORTED,
  Cuda = DASHATTN_ERR_CUDA,
  OutOfMemory = DASHATTN_ERR_OUT_OF_MEMORY,
  Internal = DASHATTN_ERR_INTERNAL,
};

enum class DType : int32_t {
  F32 = DASHATTN_DTYPE_F32,
  F16 = DASHATTN_DTYPE_F16,
  BF16 = DASHATTN_DTYPE_BF16,
  I32 = DASHATTN_DTYPE_I32,
  F64 = DASHATTN_DTYPE_F64,
};

enum class Backend : int32_t {
  Auto = DASHATTN_BACKEND_AUTO,
  Cpu = DASHATTN_BACKEND_CPU,
  Cuda = DASHATTN_BACKEND_CUDA,
};

enum class Selection : int32_t {
  PerGroup = DASHATTN_SELECT_PER_GROUP,
  PerHead = DASHATTN_SELECT_PER_HEAD,
};

enum class Precision : int32_t {
  Default = DASHATTN_PRECISION_DEFAULT,
  F64 = DASHATTN_PRECISION_F64,
};

constexpr int kMaxRank = DASHATTN_MAX_RANK;

// The static description of a status code ("unknown status code" outside the set).
inline const char* status_string(Status s) noexcept {
  return dashattn_status_string(static_cast<dashattn_status>(s));
}

// The detail message of the most recent failed call on this thread ("" if none).
inline std::string last_error_message() {
  size_t n = dashattn_last_error_message(nullptr, 0);
  std::string msg(n + 1, '\0');
  dashattn_last_error_message(&msg[0], msg.size());
  msg.resize(n);
  return msg;
}

// ---------------------------------------------------------------------------------------
// Errors

class Error : public std::runtime_error {
 public:
  Error(Status status, std::string message)
      : std::runtime_error(format(status, message)), status_(status), message_(std::move(message)) {}

  // The status code the call returned.
  Status status() const noexcept { return status_; }
  // Its integer value (DASHATTN_ERR_*).
  int32_t code() const noexcept { return static_cast<int32_t>(status_); }
  // The library's detail message (names the offending argument); what() adds the status.
  const std::string& message() const noexcept { return message_; }

 private:
  static std::string format(Status s, const std::string& m) {
    std::string out = "dashattn: ";
    out += status_string(s);
    out += " (status ";
    out += std::to_string(static_cast<int32_t>(s));
    out += ")";
    if (!m.empty()) {
      out += ": ";
      out += m;
    }
    return out;
  }

  Status status_;
  std::string message_;
};

// Throws dashattn::Error for a non-success status; the message is read on this thread
// right away (it is thread-local in the library).
inline void check(dashattn_status s) {
  if (s != DASHATTN_SUCCESS) throw Error(static_cast<Status>(s), last_error_message());
}

// ---------------------------------------------------------------------------------------
// Free functions

// Library version as MAJOR * 10000 + MINOR * 100 + PATCH.
inline uint32_t version() noexcept { return dashattn_version(); }
inline const char* version_string() noexcept { return dashattn_version_string(); }

// Whether the header this file was compiled against matches the loaded library's major
// and minor version.
inline bool version_compatible() noexcept {
  uint32_t v = dashattn_version();
  return v / 10000 == DASHATTN_VERSION_MAJOR && (v / 100) % 100 == DASHATTN_VERSION_MINOR;
}

inline bool cuda_available() {
  int32_t a = 0;
  check(dashattn_cuda_available(&a));
  return a != 0;
}

// ---------------------------------------------------------------------------------------
// dtype traits

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::F64;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::I32;
};

// Size in bytes of one element of a dtype (0 for an unknown value).
inline size_t dtype_size(DType d) noexcept {
  switch (d) {
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::F64:
      return 8;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// TensorView: a non-owning dashattn_tensor.

class TensorView {
 public:
  // A rank-0 placeholder (not a valid argument for the library until reassigned).
  TensorView() noexcept : t_{} {}

  // Contiguous row-major view: strides computed from the shape (last dimension stride 1).
  TensorView(const void* data, DType dtype, std::initializer_list<int64_t> shape)
      : TensorView(data, dtype, std::vector<int64_t>(shape)) {}
  TensorView(const void* data, DType dtype, const std::vector<int64_t>& shape) : t_{} {
    init(data, dtype, shape);
    set_contiguous_strides();
  }

  // Strided view: strides in elements (not bytes), one per dimension.
  TensorView(const void* data, DType dtype, std::initializer_list<int64_t> shape,
             std::initializer_list<int64_t> strides)
      : TensorView(data, dtype, std::vector<int64_t>(shape), std::vector<int64_t>(strides)) {}
  TensorView(const void* data, DType dtype, const std::vector<int64_t>& shape,
             const std::vector<int64_t>& strides)
      : t_{} {
    init(data, dtype, shape);
    if (strides.size() != shape.size())
      throw Error(Status::InvalidShape, "TensorView: " + std::to_string(strides.size()) +
                                            " strides for a rank-" + std::to_string(shape.size()) +
                                            " shape");
    for (size_t i = 0; i < strides.size(); ++i) t_.strides[i] = strides[i];
  }

  // Typed helpers: dtype deduced from the element type (float, double, int32_t).
  template <class T>
  static TensorView of(const T* data, std::initializer_list<int64_t> shape) {
    return TensorView(data, dtype_of<T>::value, shape);
  }
  template <class T>
  static TensorView of(const T* data, std::initializer_list<int64_t> shape,
                       std::initializer_list<int64_t> strides) {
    return TensorView(data, dtype_of<T>::value, shape, strides);
  }
  template <class T>
  static TensorView of(const std::vector<T>& v, std::initializer_list<int64_t> shape) {
    return TensorView(v.data(), dtype_of<T>::value, shape);
  }

  // Builder-style modifiers (return *this).
  TensorView& data(const void* p) noexcept {
    t_.data = const_cast<void*>(p);
    return *this;
  }
  TensorView& strides(std::initializer_list<int64_t> s) {
    if (static_cast<int32_t>(s.size()) != t_.rank)
      throw Error(Status::InvalidShape, "TensorView::strides: wrong number of strides");
    int i = 0;
    for (int64_t x : s) t_.strides[i++] = x;
    return *this;
  }

  void* data() const noexcept { return t_.data; }
  DType dtype() const noexcept { return static_cast<DType>(t_.dtype); }
  int rank() const noexcept { return t_.rank; }
  int64_t shape(int i) const { return t_.shape[checked(i)]; }
  int64_t stride(int i) const { return t_.strides[checked(i)]; }
  int64_t numel() const noexcept {
    int64_t n = 1;
    for (int i = 0; i < t_.rank; ++i) n *= t_.shape[i];
    return n;
  }

  // The C descriptor (valid while this view lives).
  const dashattn_tensor* c_ptr() const noexcept { return &t_; }
  const dashattn_tensor& raw() const noexcept { return t_; }

 private:
  void init(const void* data, DType dtype, const std::vector<int64_t>& shape) {
    if (shape.empty() || shape.size() > static_cast<size_t>(kMaxRank))
      throw Error(Status::InvalidShape, "TensorView: rank " + std::to_string(shape.size()) +
                                            " (must be 1.." + std::to_string(kMaxRank) + ")");
    t_.data = const_cast<void*>(data);
    t_.dtype = static_cast<int32_t>(dtype);
    t_.rank = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t_.shape[i] = shape[i];
  }
  void set_contiguous_strides() noexcept {
    int64_t acc = 1;
    for (int i = t_.rank - 1; i >= 0; --i) {
      t_.strides[i] = acc;
      acc *= t_.shape[i] > 0 ? t_.shape[i] : 1;
    }
  }
  int checked(int i) const {
    if (i < 0 || i >= t_.rank) throw std::out_of_range("TensorView: dimension index out of range");
    return i;
  }

  dashattn_tensor t_;
};

namespace detail {
inline const dashattn_tensor* opt(const TensorView* t) noexcept { return t ? t->c_ptr() : nullptr; }
}  // namespace detail

// ---------------------------------------------------------------------------------------
// Config: dashattn_config with the library defaults.

class Config {
 public:
  Config() { check(dashattn_config_default(&c_)); }

  Config& block_size(int32_t b) noexcept { c_.block_size = b; return *this; }
  Config& n_local(int32_t n) noexcept { c_.n_local = n; return *this; }
  Config& causal(bool c) noexcept { c_.causal = c ? 1 : 0; return *this; }
  Config& selection(Selection s) noexcept { c_.selection = static_cast<int32_t>(s); return *this; }
  Config& precision(Precision p) noexcept { c_.precision = static_cast<int32_t>(p); return *this; }
  Config& alpha(float a) noexcept { c_.alpha = a; return *this; }
  // 0 means 1/sqrt(D).
  Config& scale(float s) noexcept { c_.scale = s; return *this; }
  // 0 means the fine scale.
  Config& coarse_scale(float s) noexcept { c_.coarse_scale = s; return *this; }
  Config& deterministic(bool d) noexcept { c_.deterministic = d ? 1 : 0; return *this; }

  int32_t block_size() const noexcept { return c_.block_size; }
  int32_t n_local() const noexcept { return c_.n_local; }
  bool causal() const noexcept { return c_.causal != 0; }
  Selection selection() const noexcept { return static_cast<Selection>(c_.selection); }
  Precision precision() const noexcept { return static_cast<Precision>(c_.precision); }
  float alpha() const noexcept { return c_.alpha; }
  float scale() const noexcept { return c_.scale; }
  float coarse_scale() const noexcept { return c_.coarse_scale; }
  bool deterministic() const noexcept { return c_.deterministic != 0; }

  // Direct access to the C struct (for fields added later, or raw int values).
  dashattn_config& raw() noexcept { return c_; }
  const dashattn_config* c_ptr() const noexcept { return &c_; }

 private:
  dashattn_config c_{};
};

// ---------------------------------------------------------------------------------------
// ContextOptions

class ContextOptions {
 public:
  ContextOptions() { check(dashattn_context_options_default(&o_)); }
  ContextOptions& backend(Backend b) noexcept { o_.backend = static_cast<int32_t>(b); return *this; }
  ContextOptions& device(int32_t d) noexcept { o_.device = d; return *this; }
  // 0 = all cores.
  ContextOptions& num_threads(int32_t n) noexcept { o_.num_threads = n; return *this; }
  dashattn_context_options& raw() noexcept { return o_; }
  const dashattn_context_options* c_ptr() const noexcept { return &o_; }

 private:
  dashattn_context_options o_{};
};

// A caller-provided workspace (nullptr / 0: the library allocates its own).
struct Workspace {
  void* ptr = nullptr;
  size_t size = 0;
};

// ---------------------------------------------------------------------------------------
// Context: move-only owner of a dashattn_context. One thread at a time per context.

class Context {
 public:
  // Creates a context with the given options (default: backend AUTO).
  explicit Context(const ContextOptions& opts = ContextOptions()) {
    check(dashattn_context_create(opts.c_ptr(), &ctx_));
  }
  // A CPU context with `threads` worker threads (0 = all cores).
  static Context cpu(int32_t threads = 0) {
    return Context(ContextOptions().backend(Backend::Cpu).num_threads(threads));
  }
  // A CUDA context on `device`; throws Error(NoDevice) without a driver or device.
  static Context cuda(int32_t device = 0) {
    return Context(ContextOptions().backend(Backend::Cuda).device(device));
  }
  // Takes ownership of a raw handle (may be nullptr).
  static Context adopt(dashattn_context* raw) noexcept { return Context(raw); }

  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)) {}
  Context& operator=(Context&& o) noexcept {
    if (this != &o) {
      reset();
      ctx_ = std::exchange(o.ctx_, nullptr);
    }
    return *this;
  }
  ~Context() { reset(); }

  // Destroys the context now (idempotent). Errors are ignored, as in the destructor.
  void reset() noexcept {
    if (ctx_) {
      (void)dashattn_context_destroy(ctx_);
      ctx_ = nullptr;
    }
  }
  // Gives up ownership; the caller must dashattn_context_destroy the result.
  dashattn_context* release() noexcept { return std::exchange(ctx_, nullptr); }
  dashattn_context* get() const noexcept { return ctx_; }
  explicit operator bool() const noexcept { return ctx_ != nullptr; }

  Backend backend() const {
    int32_t b = 0;
    check(dashattn_context_get_backend(ctx_, &b));
    return static_cast<Backend>(b);
  }
  // Loads the CUDA kernels now (before CUDA-graph capture); a no-op on the CPU backend.
  void prepare() { check(dashattn_context_prepare(ctx_)); }
  // Borrowed CUstream / cudaStream_t (nullptr = legacy default stream).
  void set_stream(void* stream) { check(dashattn_context_set_stream(ctx_, stream)); }

  // --- forward (SPEC 3) ---
  size_t forward_workspace_size(const Config& cfg, const TensorView& q, const TensorView& k,
                                const TensorView& v, const TensorView* pooled_k = nullptr) const {
    size_t n = 0;
    check(dashattn_forward_workspace_size(ctx_, cfg.c_ptr(), q.c_ptr(), k.c_ptr(), v.c_ptr(),
                                          detail::opt(pooled_k), &n));
    return n;
  }
  // Arguments in the order of dashattn_forward; pooled_k, head_alpha, lse, tau optional.
  void forward(const Config& cfg, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView* pooled_k, const TensorView* head_alpha, const TensorView& o,
               const TensorView* lse, const TensorView* tau, Workspace ws = {}) const {
    check(dashattn_forward(ctx_, cfg.c_ptr(), q.c_ptr(), k.c_ptr(), v.c_ptr(), detail::opt(pooled_k),
                           detail::opt(head_alpha), o.c_ptr(), detail::opt(lse), detail::opt(tau),
                           ws.ptr, ws.size));
  }
  // Short form: mean-pooled keys, config alpha, optional lse / tau.
  void forward(const Config& cfg, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView* lse = nullptr,
               const TensorView* tau = nullptr) const {
    forward(cfg, q, k, v, nullptr, nullptr, o, lse, tau);
  }

  // --- backward (SPEC 4) ---
  size_t backward_workspace_size(const Config& cfg, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const TensorView* pooled_k = nullptr) const {
    size_t n = 0;
    check(dashattn_backward_workspace_size(ctx_, cfg.c_ptr(), q.c_ptr(), k.c_ptr(), v.c_ptr(),
                                           detail::opt(pooled_k), &n));
    return n;
  }
  // Arguments in the order of dashattn_backward; d_pooled_k required iff pooled_k given.
  void backward(const Config& cfg, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView* pooled_k, const TensorView* head_alpha, const TensorView& o,
                const TensorView& d_o, const TensorView& lse, const TensorView& tau,
                const TensorView& dq, const TensorView& dk, const TensorView& dv,
                const TensorView* d_pooled_k, Workspace ws = {}) const {
    check(dashattn_backward(ctx_, cfg.c_ptr(), q.c_ptr(), k.c_ptr(), v.c_ptr(), detail::opt(pooled_k),
                            detail::opt(head_alpha), o.c_ptr(), d_o.c_ptr(), lse.c_ptr(), tau.c_ptr(),
                            dq.c_ptr(), dk.c_ptr(), dv.c_ptr(), detail::opt(d_pooled_k), ws.ptr,
                            ws.size));
  }
  // Short form: mean-pooled keys, config alpha.
  void backward(const Config& cfg, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& d_o, const TensorView& lse,
                const TensorView& tau, const TensorView& dq, const TensorView& dk,
                const TensorView& dv) const {
    backward(cfg, q, k, v, nullptr, nullptr, o, d_o, lse, tau, dq, dk, dv, nullptr);
  }

  // --- paged KV cache (SPEC 5) ---
  size_t pool_keys_paged_workspace_size(const Config& cfg, const TensorView& k_cache,
                                        const TensorView& pooled_cache,
                                        const TensorView& block_table,
                                        const TensorView& seq_lens) const {
    size_t n = 0;
    check(dashattn_pool_keys_paged_workspace_size(ctx_, cfg.c_ptr(), k_cache.c_ptr(),
                                                  pooled_cache.c_ptr(), block_table.c_ptr(),
                                                  seq_lens.c_ptr(), &n));
    return n;
  }
  void pool_keys_paged(const Config& cfg, const TensorView& k_cache, const TensorView& pooled_cache,
                       const TensorView& block_table, const TensorView& prev_seq_lens,
                       const TensorView& seq_lens, Workspace ws = {}) const {
    check(dashattn_pool_keys_paged(ctx_, cfg.c_ptr(), k_cache.c_ptr(), pooled_cache.c_ptr(),
                                   block_table.c_ptr(), prev_seq_lens.c_ptr(), seq_lens.c_ptr(),
                                   ws.ptr, ws.size));
  }

  size_t decode_workspace_size(const Config& cfg, const TensorView& q, const TensorView& k_cache,
                               const TensorView& pooled_cache, const TensorView& block_table,
                               const TensorView& seq_lens) const {
    size_t n = 0;
    check(dashattn_decode_workspace_size(ctx_, cfg.c_ptr(), q.c_ptr(), k_cache.c_ptr(),
                                         pooled_cache.c_ptr(), block_table.c_ptr(),
                                         seq_lens.c_ptr(), &n));
    return n;
  }
  // Arguments in the order of dashattn_decode; head_alpha and lse optional.
  void decode(const Config& cfg, const TensorView& q, const TensorView& k_cache,
              const TensorView& v_cache, const TensorView& pooled_cache,
              const TensorView& block_table, const TensorView& seq_lens,
              const TensorView* head_alpha, const TensorView& o, const TensorView* lse = nullptr,
              Workspace ws = {}) const {
    check(dashattn_decode(ctx_, cfg.c_ptr(), q.c_ptr(), k_cache.c_ptr(), v_cache.c_ptr(),
                          pooled_cache.c_ptr(), block_table.c_ptr(), seq_lens.c_ptr(),
                          detail::opt(head_alpha), o.c_ptr(), detail::opt(lse), ws.ptr, ws.size));
  }

  // --- merging partial results ---
  // Combines S partial results over disjoint key sets: o_parts [S, N, L, H, D],
  // lse_parts [S, N, H, L] f32; o [N, L, H, D] output, lse [N, H, L] optional output.
  void merge_states(const TensorView& o_parts, const TensorView& lse_parts, const TensorView& o,
                    const TensorView* lse = nullptr) const {
    check(dashattn_merge_states(ctx_, o_parts.c_ptr(), lse_parts.c_ptr(), o.c_ptr(), detail::opt(lse)));
  }

 private:
  explicit Context(dashattn_context* raw) noexcept : ctx_(raw) {}
  dashattn_context* ctx_ = nullptr;
};

}  // namespace dashattn

#endif  // DASHATTN_HPP
