// Tests of the C++ wrapper on the CPU backend: results against simple invariants of the
// operator (SPEC 3-6) and error paths (the right status, outputs untouched).
//
//   make -C bindings/cpp test
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "dashattn.hpp"

namespace da = dashattn;

static int g_checks = 0, g_failures = 0;

#define CHECK(cond, ...)                                              \
  do {                                                                \
    ++g_checks;                                                       \
    if (!(cond)) {                                                    \
      ++g_failures;                                                   \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

// Runs f, expects a dashattn::Error with `want`; returns its message ("" if none thrown).
static std::string expect_status(const char* what, da::Status want, const std::function<void()>& f) {
  try {
    f();
  } catch (const da::Error& e) {
    CHECK(e.status() == want, "%s: got status %d (%s), want %d; message: %s", what, e.code(),
          da::status_string(e.status()), static_cast<int>(want), e.message().c_str());
    CHECK(!e.message().empty(), "%s: empty message", what);
    CHECK(std::string(e.what()).find(e.message()) != std::string::npos, "%s: what() lacks the message", what);
    return e.message();
  } catch (const std::exception& e) {
    CHECK(false, "%s: unexpected exception %s", what, e.what());
    return "";
  }
  CHECK(false, "%s: no exception, want status %d", what, static_cast<int>(want));
  return "";
}

template <class T>
static std::vector<T> randn(std::mt19937& rng, size_t n, double sd = 1.0) {
  std::normal_distribution<double> d(0.0, sd);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(d(rng));
  return v;
}

static bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

static const float kSentinel = -12345.5f;
static bool untouched(const std::vector<float>& v) {
  for (float x : v)
    if (x != kSentinel) return false;
  return true;
}

// Problem sizes in row-major [N, L, H, D] layouts.
struct Dims {
  int64_t n, lq, lk, hq, hkv, d;
  size_t qn() const { return n * lq * hq * d; }
  size_t kn() const { return n * lk * hkv * d; }
  size_t sn() const { return n * hq * lq; }
};

// Plain causal (bottom-right aligned) softmax attention in double: the operator when no
// block is a candidate (SPEC 6, "when Cand(t) is empty").
template <class T>
static std::vector<double> dense_causal(const Dims& s, const std::vector<T>& q, const std::vector<T>& k,
                                        const std::vector<T>& v, double sigma) {
  std::vector<double> o(s.qn(), 0.0);
  int64_t g = s.hq / s.hkv;
  for (int64_t b = 0; b < s.n; ++b)
    for (int64_t r = 0; r < s.lq; ++r)
      for (int64_t h = 0; h < s.hq; ++h) {
        int64_t t = s.lk - s.lq + r, kh = h / g;
        const T* qr = &q[((b * s.lq + r) * s.hq + h) * s.d];
        std::vector<double> l;
        double m = -INFINITY;
        for (int64_t i = 0; i <= t && i < s.lk; ++i) {
          const T* ki = &k[((b * s.lk + i) * s.hkv + kh) * s.d];
          double dot = 0;
          for (int64_t x = 0; x < s.d; ++x) dot += double(qr[x]) * double(ki[x]);
          l.push_back(sigma * dot);
          m = std::max(m, sigma * dot);
        }
        double z = 0;
        for (double& x : l) z += (x = std::exp(x - m));
        double* orow = &o[((b * s.lq + r) * s.hq + h) * s.d];
        for (size_t i = 0; i < l.size(); ++i) {
          const T* vi = &v[((b * s.lk + i) * s.hkv + kh) * s.d];
          for (int64_t x = 0; x < s.d; ++x) orow[x] += l[i] / z * double(vi[x]);
        }
      }
  return o;
}

static void test_version() {
  CHECK(da::version() == DASHATTN_VERSION_MAJOR * 10000u + DASHATTN_VERSION_MINOR * 100u + DASHATTN_VERSION_PATCH,
        "library version %u", da::version());
  CHECK(da::version_compatible(), "version mismatch");
  CHECK(std::string(da::version_string()).size() >= 5, "version string %s", da::version_string());
  CHECK(std::string(da::status_string(da::Status::InvalidShape)).size() > 0, "status string");
  CHECK(std::string(da::status_string(static_cast<da::Status>(999))) == "unknown status code", "unknown status");
  da::Config c;
  CHECK(c.block_size() == 64 && c.n_local() == 1 && c.causal() && c.alpha() == 1.5f &&
            c.selection() == da::Selection::PerGroup && c.deterministic() && c.scale() == 0.f,
        "config defaults");
  CHECK(c.raw().struct_size == sizeof(dashattn_config), "config struct_size");
}

static void test_context_ownership() {
  da::Context a = da::Context::cpu(2);
  CHECK(a.backend() == da::Backend::Cpu, "backend");
  a.prepare();  // a no-op on the CPU backend
  a.set_stream(nullptr);  // accepted and ignored by the CPU backend
  dashattn_context* raw = a.get();
  da::Context b(std::move(a));
  CHECK(!a && b && b.get() == raw, "move construction transfers ownership");
  da::Context c = da::Context::cpu(1);
  c = std::move(b);  // destroys c's old context, takes b's
  CHECK(!b && c.get() == raw, "move assignment transfers ownership");
  // A moved-from context is NULL to the library: NULL_POINTER, not a crash.
  expect_status("moved-from context", da::Status::NullPointer, [&] { (void)a.backend(); });
  dashattn_context* r = c.release();
  CHECK(!c && r == raw, "release");
  da::Context d = da::Context::adopt(r);
  CHECK(d.get() == raw, "adopt");
  d.reset();
  CHECK(!d, "reset");
  if (!da::cuda_available()) {
    expect_status("CUDA context without a device", da::Status::NoDevice, [] { da::Context::cuda(0); });
  }
}

// Short context (Lk <= B): no candidate block, so the operator is plain causal softmax
// attention (SPEC 6) and tau is -inf.
static void test_short_context_is_dense(da::Context& ctx) {
  std::mt19937 rng(1);
  Dims s{2, 5, 9, 4, 2, 16};
  auto q = randn<float>(rng, s.qn()), k = randn<float>(rng, s.kn()), v = randn<float>(rng, s.kn());
  std::vector<float> o(s.qn()), lse(s.sn()), tau(s.sn());
  da::Config cfg = da::Config().block_size(16);
  ctx.forward(cfg, da::TensorView::of(q.data(), {s.n, s.lq, s.hq, s.d}),
              da::TensorView::of(k.data(), {s.n, s.lk, s.hkv, s.d}),
              da::TensorView::of(v.data(), {s.n, s.lk, s.hkv, s.d}),
              da::TensorView::of(o.data(), {s.n, s.lq, s.hq, s.d}));
  auto ref = dense_causal(s, q, k, v, 1.0 / std::sqrt(double(s.d)));
  double num = 0, den = 0;
  for (size_t i = 0; i < o.size(); ++i) {
    num += (o[i] - ref[i]) * (o[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  CHECK(std::sqrt(num / den) < 1e-5, "short context vs dense causal softmax: rel L2 %g", std::sqrt(num / den));

  // With lse / tau: tau is -inf (no candidates), lse finite.
  da::TensorView tlse = da::TensorView::of(lse.data(), {s.n, s.hq, s.lq});
  da::TensorView ttau = da::TensorView::of(tau.data(), {s.n, s.hq, s.lq});
  ctx.forward(cfg, da::TensorView::of(q.data(), {s.n, s.lq, s.hq, s.d}),
              da::TensorView::of(k.data(), {s.n, s.lk, s.hkv, s.d}),
              da::TensorView::of(v.data(), {s.n, s.lk, s.hkv, s.d}),
              da::TensorView::of(o.data(), {s.n, s.lq, s.hq, s.d}), &tlse, &ttau);
  bool tau_ok = true, lse_ok = true;
  for (float x : tau) tau_ok &= std::isinf(x) && x < 0;
  for (float x : lse) lse_ok &= std::isfinite(x);
  CHECK(tau_ok, "tau must be -inf without candidate blocks");
  CHECK(lse_ok, "lse must be finite");
}

// Longer context with candidates: constant values give that constant; outputs lie in the
// convex hull of the values; runs are bitwise deterministic.
static void test_forward_invariants(da::Context& ctx) {
  std::mt19937 rng(2);
  Dims s{1, 96, 200, 4, 2, 8};
  auto q = randn<float>(rng, s.qn(), 2.0), k = randn<float>(rng, s.kn(), 2.0);
  std::vector<float> vconst(s.kn());
  for (size_t i = 0; i < vconst.size(); ++i) vconst[i] = 0.25f * float(i % s.d) - 0.5f;
  for (float alpha : {1.0f, 1.25f, 1.5f, 2.0f}) {
    for (da::Selection sel : {da::Selection::PerGroup, da::Selection::PerHead}) {
      da::Config cfg = da::Config().block_size(16).alpha(alpha).selection(sel).n_local(2);
      std::vector<float> o(s.qn(), kSentinel);
      ctx.forward(cfg, da::TensorView::of(q.data(), {s.n, s.lq, s.hq, s.d}),
                  da::TensorView::of(k.data(), {s.n, s.lk, s.hkv, s.d}),
                  da::TensorView::of(vconst.data(), {s.n, s.lk, s.hkv, s.d}),
                  da::TensorView::of(o.data(), {s.n, s.lq, s.hq, s.d}));
      double err = 0;
      for (size_t i = 0; i < o.size(); ++i) err = std::max(err, std::fabs(double(o[i]) - vconst[i % s.d]));
      CHECK(err < 1e-5, "alpha %g sel %d: constant values, max err %g", alpha, int(sel), err);
    }
  }

  auto v = randn<float>(rng, s.kn());
  std::vector<float> lo(s.d, INFINITY), hi(s.d, -INFINITY);
  for (size_t i = 0; i < v.size(); ++i) {
    lo[i % s.d] = std::min(lo[i % s.d], v[i]);
    hi[i % s.d] = std::max(hi[i % s.d], v[i]);
  }
  for (bool causal : {true, false}) {
    da::Config cfg = da::Config().block_size(32).causal(causal);
    std::vector<float> o1(s.qn(), kSentinel), o2(s.qn(), kSentinel), lse(s.sn()), tau(s.sn());
    auto tq = da::TensorView::of(q.data(), {s.n, s.lq, s.hq, s.d});
    auto tk = da::TensorView::of(k.data(), {s.n, s.lk, s.hkv, s.d});
    auto tv = da::TensorView::of(v.data(), {s.n, s.lk, s.hkv, s.d});
    auto tlse = da::TensorView::of(lse.data(), {s.n, s.hq, s.lq});
    auto ttau = da::TensorView::of(tau.data(), {s.n, s.hq, s.lq});
    ctx.forward(cfg, tq, tk, tv, da::TensorView::of(o1.data(), {s.n, s.lq, s.hq, s.d}), &tlse, &ttau);
    ctx.forward(cfg, tq, tk, tv, da::TensorView::of(o2.data(), {s.n, s.lq, s.hq, s.d}));
    bool hull = true, finite = true;
    for (size_t i = 0; i < o1.size(); ++i) {
      finite &= std::isfinite(o1[i]);
      hull &= o1[i] >= lo[i % s.d] - 1e-5f && o1[i] <= hi[i % s.d] + 1e-5f;
    }
    CHECK(finite, "causal %d: non-finite output", causal);
    CHECK(hull, "causal %d: output outside the convex hull of the values", causal);
    CHECK(bitwise_equal(o1, o2), "causal %d: forward not deterministic", causal);
    int with_tau = 0;
    for (float x : tau) with_tau += std::isfinite(x);
    CHECK(with_tau > 0, "causal %d: no row had candidate blocks", causal);
  }
}

// Backward: exact identities (sum of dv = sum of dO over the group; sum of dk = 0 since
// shifting every key by one vector leaves the output unchanged), determinism, and central
// finite differences in f64.
static void test_backward(da::Context& ctx) {
  std::mt19937 rng(3);
  Dims s{1, 48, 64, 4, 2, 8};
  auto q = randn<double>(rng, s.qn(), 1.5), k = randn<double>(rng, s.kn(), 1.5), v = randn<double>(rng, s.kn());
  auto dO = randn<double>(rng, s.qn());
  da::Config cfg = da::Config().block_size(16).precision(da::Precision::F64).alpha(1.5f);
  auto T4 = [](const std::vector<double>& x, int64_t a, int64_t b, int64_t c, int64_t d) {
    return da::TensorView::of(x.data(), {a, b, c, d});
  };
  auto forward = [&](const std::vector<double>& qq, const std::vector<double>& kk, const std::vector<double>& vv,
                     std::vector<double>& o, std::vector<double>& lse, std::vector<double>& tau) {
    auto tlse = da::TensorView::of(lse.data(), {s.n, s.hq, s.lq});
    auto ttau = da::TensorView::of(tau.data(), {s.n, s.hq, s.lq});
    ctx.forward(cfg, T4(qq, s.n, s.lq, s.hq, s.d), T4(kk, s.n, s.lk, s.hkv, s.d), T4(vv, s.n, s.lk, s.hkv, s.d),
                T4(o, s.n, s.lq, s.hq, s.d), &tlse, &ttau);
  };
  auto loss = [&](const std::vector<double>& qq, const std::vector<double>& kk, const std::vector<double>& vv) {
    std::vector<double> o(s.qn()), lse(s.sn()), tau(s.sn());
    forward(qq, kk, vv, o, lse, tau);
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += o[i] * dO[i];
    return l;
  };
  std::vector<double> o(s.qn()), lse(s.sn()), tau(s.sn());
  forward(q, k, v, o, lse, tau);
  std::vector<double> dq(s.qn()), dk(s.kn()), dv(s.kn());
  auto run_backward = [&]() {
    ctx.backward(cfg, T4(q, s.n, s.lq, s.hq, s.d), T4(k, s.n, s.lk, s.hkv, s.d), T4(v, s.n, s.lk, s.hkv, s.d),
                 T4(o, s.n, s.lq, s.hq, s.d), T4(dO, s.n, s.lq, s.hq, s.d),
                 da::TensorView::of(lse.data(), {s.n, s.hq, s.lq}), da::TensorView::of(tau.data(), {s.n, s.hq, s.lq}),
                 T4(dq, s.n, s.lq, s.hq, s.d), T4(dk, s.n, s.lk, s.hkv, s.d), T4(dv, s.n, s.lk, s.hkv, s.d));
  };
  run_backward();
  std::vector<double> dq1 = dq, dk1 = dk, dv1 = dv;
  run_backward();
  CHECK(std::memcmp(dq.data(), dq1.data(), dq.size() * 8) == 0 && std::memcmp(dk.data(), dk1.data(), dk.size() * 8) == 0 &&
            std::memcmp(dv.data(), dv1.data(), dv.size() * 8) == 0,
        "deterministic backward differs between runs");

  int64_t g = s.hq / s.hkv;
  double err_v = 0, err_k = 0;
  for (int64_t kh = 0; kh < s.hkv; ++kh)
    for (int64_t x = 0; x < s.d; ++x) {
      double sv = 0, sk = 0, so = 0;
      for (int64_t i = 0; i < s.lk; ++i) {
        sv += dv[(i * s.hkv + kh) * s.d + x];
        sk += dk[(i * s.hkv + kh) * s.d + x];
      }
      for (int64_t r = 0; r < s.lq; ++r)
        for (int64_t h = kh * g; h < (kh + 1) * g; ++h) so += dO[(r * s.hq + h) * s.d + x];
      err_v = std::max(err_v, std::fabs(sv - so));
      err_k = std::max(err_k, std::fabs(sk));
    }
  CHECK(err_v < 1e-9, "sum_i dv_i != sum of dO over the group: %g", err_v);
  CHECK(err_k < 1e-9, "sum_i dk_i != 0: %g", err_k);

  const double eps = 1e-6;
  double worst = 0;
  auto fd = [&](std::vector<double>& x, const std::vector<double>& grad, size_t idx) {
    double keep = x[idx];
    x[idx] = keep + eps;
    double lp = loss(q, k, v);
    x[idx] = keep - eps;
    double lm = loss(q, k, v);
    x[idx] = keep;
    double num = (lp - lm) / (2 * eps);
    worst = std::max(worst, std::fabs(num - grad[idx]) / std::max(1.0, std::fabs(num)));
  };
  for (size_t idx = 0; idx < q.size(); idx += 37) fd(q, dq, idx);
  for (size_t idx = 0; idx < k.size(); idx += 29) fd(k, dk, idx);
  for (size_t idx = 0; idx < v.size(); idx += 31) fd(v, dv, idx);
  CHECK(worst < 1e-6, "finite differences disagree with backward: worst rel err %g", worst);
}

// Decode over a paged cache (pages shuffled) equals the forward's last row.
static void test_decode(da::Context& ctx) {
  std::mt19937 rng(4);
  const int64_t L = 77, Hq = 4, Hkv = 1, D = 16, B = 16, PS = 8, P = 12;  // 12 pages of 8 tokens >= 77
  auto q = randn<float>(rng, L * Hq * D), k = randn<float>(rng, L * Hkv * D), v = randn<float>(rng, L * Hkv * D);
  da::Config cfg = da::Config().block_size(static_cast<int32_t>(B));
  std::vector<float> o(q.size());
  ctx.forward(cfg, da::TensorView::of(q.data(), {1, L, Hq, D}), da::TensorView::of(k.data(), {1, L, Hkv, D}),
              da::TensorView::of(v.data(), {1, L, Hkv, D}), da::TensorView::of(o.data(), {1, L, Hq, D}));

  std::vector<int32_t> table(P);
  for (int64_t p = 0; p < P; ++p) table[p] = static_cast<int32_t>((p * 5) % P);  // a permutation
  std::vector<float> kc(P * PS * Hkv * D, 0.f), vc(P * PS * Hkv * D, 0.f), pooled(P * 1 * Hkv * D, kSentinel);
  for (int64_t t = 0; t < L; ++t)
    for (int64_t i = 0; i < Hkv * D; ++i) {
      kc[(table[t / PS] * PS + t % PS) * Hkv * D + i] = k[t * Hkv * D + i];
      vc[(table[t / PS] * PS + t % PS) * Hkv * D + i] = v[t * Hkv * D + i];
    }
  std::vector<int32_t> prev{0}, lens{static_cast<int32_t>(L)};
  auto tkc = da::TensorView::of(kc.data(), {P, PS, Hkv, D});
  auto tvc = da::TensorView::of(vc.data(), {P, PS, Hkv, D});
  auto tpc = da::TensorView::of(pooled.data(), {P, 1, Hkv, D});
  auto ttable = da::TensorView::of(table.data(), {1, P});
  auto tprev = da::TensorView::of(prev.data(), {1});
  auto tlens = da::TensorView::of(lens.data(), {1});
  CHECK(ctx.pool_keys_paged_workspace_size(cfg, tkc, tpc, ttable, tlens) < (size_t(1) << 30), "pool workspace size");
  ctx.pool_keys_paged(cfg, tkc, tpc, ttable, tprev, tlens);
  // Block j (16 tokens) starts in page table[2j], slot 0: the mean of its keys.
  double perr = 0;
  for (int64_t j = 0; j < L / B; ++j)
    for (int64_t x = 0; x < D; ++x) {
      double m = 0;
      for (int64_t t = j * B; t < (j + 1) * B; ++t) m += k[t * D + x];
      perr = std::max(perr, std::fabs(m / B - pooled[table[j * B / PS] * D + x]));
    }
  CHECK(perr < 1e-6, "pooled keys differ from block means: %g", perr);

  std::vector<float> q1(q.end() - Hq * D, q.end()), o1(Hq * D, kSentinel), lse1(Hq, kSentinel);
  auto tq1 = da::TensorView::of(q1.data(), {1, 1, Hq, D});
  auto to1 = da::TensorView::of(o1.data(), {1, 1, Hq, D});
  auto tlse1 = da::TensorView::of(lse1.data(), {1, Hq, 1});
  size_t wsz = ctx.decode_workspace_size(cfg, tq1, tkc, tpc, ttable, tlens);
  CHECK(wsz < (size_t(1) << 30), "decode workspace size %zu", wsz);
  ctx.decode(cfg, tq1, tkc, tvc, tpc, ttable, tlens, nullptr, to1, &tlse1);
  double err = 0;
  for (int64_t i = 0; i < Hq * D; ++i) err = std::max(err, double(std::fabs(o1[i] - o[(L - 1) * Hq * D + i])));
  CHECK(err < 1e-5, "decode vs forward last row: max err %g", err);

  // Error path: a block-table entry out of range. Nothing written.
  std::vector<int32_t> bad = table;
  bad[3] = static_cast<int32_t>(P + 7);
  std::fill(o1.begin(), o1.end(), kSentinel);
  auto tbad = da::TensorView::of(bad.data(), {1, P});
  expect_status("decode: block_table out of range", da::Status::OutOfRange,
                [&] { ctx.decode(cfg, tq1, tkc, tvc, tpc, tbad, tlens, nullptr, to1); });
  CHECK(untouched(o1), "decode wrote o on error");
  std::vector<int32_t> too_long{static_cast<int32_t>(P * PS + 1)};
  expect_status("decode: seq_len beyond the pages", da::Status::OutOfRange, [&] {
    ctx.decode(cfg, tq1, tkc, tvc, tpc, ttable, da::TensorView::of(too_long.data(), {1}), nullptr, to1);
  });
  CHECK(untouched(o1), "decode wrote o on error");
  std::vector<float> pooled_copy = pooled;
  std::vector<int32_t> prev_bad{static_cast<int32_t>(L + 1)};
  expect_status("pool_keys_paged: prev > seq", da::Status::OutOfRange, [&] {
    ctx.pool_keys_paged(cfg, tkc, tpc, ttable, da::TensorView::of(prev_bad.data(), {1}), tlens);
  });
  CHECK(std::memcmp(pooled_copy.data(), pooled.data(), pooled.size() * 4) == 0, "pool wrote on error");
  expect_status("decode: non-causal config", da::Status::InvalidConfig,
                [&] { ctx.decode(da::Config(cfg).causal(false), tq1, tkc, tvc, tpc, ttable, tlens, nullptr, to1); });
}

// Every error: the right status, a message, and outputs untouched.
static void test_errors(da::Context& ctx) {
  std::mt19937 rng(5);
  Dims s{1, 40, 40, 2, 1, 8};
  auto q = randn<float>(rng, s.qn()), k = randn<float>(rng, s.kn()), v = randn<float>(rng, s.kn());
  std::vector<double> k64(k.begin(), k.end());
  std::vector<float> o(s.qn(), kSentinel), lse(s.sn(), kSentinel), tau(s.sn(), kSentinel);
  auto tq = da::TensorView::of(q.data(), {s.n, s.lq, s.hq, s.d});
  auto tk = da::TensorView::of(k.data(), {s.n, s.lk, s.hkv, s.d});
  auto tv = da::TensorView::of(v.data(), {s.n, s.lk, s.hkv, s.d});
  auto to = da::TensorView::of(o.data(), {s.n, s.lq, s.hq, s.d});
  auto tlse = da::TensorView::of(lse.data(), {s.n, s.hq, s.lq});
  auto ttau = da::TensorView::of(tau.data(), {s.n, s.hq, s.lq});
  da::Config good = da::Config().block_size(16);
  auto fwd = [&](const da::Config& cfg, const da::TensorView& q_, const da::TensorView& k_, const da::TensorView& o_,
                 da::Workspace ws = {}) { ctx.forward(cfg, q_, k_, tv, nullptr, nullptr, o_, &tlse, &ttau, ws); };
  auto all_untouched = [&](const char* what) {
    CHECK(untouched(o) && untouched(lse) && untouched(tau), "%s: an output was written", what);
  };

  std::string msg = expect_status("block_size 48", da::Status::InvalidConfig, [&] { fwd(da::Config().block_size(48), tq, tk, to); });
  CHECK(msg.find("block_size") != std::string::npos, "message should name block_size: %s", msg.c_str());
  all_untouched("block_size 48");
  // config.alpha is a config field: INVALID_CONFIG (head_alpha values: INVALID_ARGUMENT).
  expect_status("alpha 3", da::Status::InvalidConfig, [&] { fwd(da::Config(good).alpha(3.f), tq, tk, to); });
  all_untouched("alpha 3");
  expect_status("alpha NaN", da::Status::InvalidConfig,
                [&] { fwd(da::Config(good).alpha(std::numeric_limits<float>::quiet_NaN()), tq, tk, to); });
  expect_status("causal with n_local 0", da::Status::InvalidConfig, [&] { fwd(da::Config(good).n_local(0), tq, tk, to); });
  expect_status("selection 7", da::Status::InvalidConfig, [&] {
    da::Config c(good);
    c.raw().selection = 7;
    fwd(c, tq, tk, to);
  });
  expect_status("wrong struct_size", da::Status::InvalidConfig, [&] {
    da::Config c(good);
    c.raw().struct_size = 8;
    fwd(c, tq, tk, to);
  });
  all_untouched("config errors");
  expect_status("q rank 3", da::Status::InvalidShape,
                [&] { fwd(good, da::TensorView::of(q.data(), {s.lq, s.hq, s.d}), tk, to); });
  expect_status("Hq not a multiple of Hkv", da::Status::InvalidShape, [&] {
    auto q3 = da::TensorView::of(q.data(), {1, 1, 3, s.d});
    auto k2 = da::TensorView::of(k.data(), {1, 20, 2, s.d});
    auto v2 = da::TensorView::of(v.data(), {1, 20, 2, s.d});
    ctx.forward(good, q3, k2, v2, da::TensorView::of(o.data(), {1, 1, 3, s.d}));
  });
  expect_status("o shape differs from q", da::Status::InvalidShape,
                [&] { fwd(good, tq, tk, da::TensorView::of(o.data(), {s.n, s.lq - 1, s.hq, s.d})); });
  expect_status("k f64, q f32", da::Status::InvalidDtype,
                [&] { fwd(good, tq, da::TensorView::of(k64.data(), {s.n, s.lk, s.hkv, s.d}), to); });
  expect_status("i32 q", da::Status::InvalidDtype, [&] {
    fwd(good, da::TensorView(q.data(), da::DType::I32, {s.n, s.lq, s.hq, s.d}), tk, to);
  });
  expect_status("q last dim stride 2", da::Status::InvalidStride, [&] {
    fwd(good, da::TensorView::of(q.data(), {s.n, s.lq / 2, s.hq, s.d}, {s.lq * s.hq * s.d, s.hq * s.d * 2, s.d * 2, 2}),
        tk, da::TensorView::of(o.data(), {s.n, s.lq / 2, s.hq, s.d}));
  });
  expect_status("negative stride", da::Status::InvalidStride, [&] {
    fwd(good, da::TensorView::of(q.data(), {s.n, s.lq, s.hq, s.d}, {0, -s.hq * s.d, s.d, 1}), tk, to);
  });
  expect_status("overlapping output rows", da::Status::InvalidStride, [&] {
    fwd(good, tq, tk, da::TensorView::of(o.data(), {s.n, s.lq, s.hq, s.d}, {0, 0, s.d, 1}));
  });
  expect_status("o aliases q", da::Status::InvalidArgument, [&] {
    std::vector<float> qo = q;
    auto t = da::TensorView::of(qo.data(), {s.n, s.lq, s.hq, s.d});
    ctx.forward(good, t, tk, tv, t);
  });
  expect_status("misaligned data", da::Status::Misaligned, [&] {
    auto p = reinterpret_cast<const unsigned char*>(q.data()) + 2;
    fwd(good, da::TensorView(p, da::DType::F32, {s.n, s.lq - 1, s.hq, s.d}), tk,
        da::TensorView::of(o.data(), {s.n, s.lq - 1, s.hq, s.d}));
  });
  expect_status("NULL data with elements", da::Status::NullPointer,
                [&] { fwd(good, da::TensorView(nullptr, da::DType::F32, {s.n, s.lq, s.hq, s.d}), tk, to); });
  all_untouched("tensor errors");

  size_t need = ctx.forward_workspace_size(good, tq, tk, tv);
  std::vector<unsigned char> wsbuf(need + 512);
  void* base = wsbuf.data();
  size_t space = wsbuf.size();
  unsigned char* aligned = static_cast<unsigned char*>(std::align(256, need + 1, base, space));
  if (need > 0) {
    expect_status("workspace too small", da::Status::WorkspaceTooSmall,
                  [&] { fwd(good, tq, tk, to, da::Workspace{aligned, need - 1}); });
  }
  expect_status("misaligned workspace", da::Status::Misaligned,
                [&] { fwd(good, tq, tk, to, da::Workspace{aligned + 8, need + 1}); });
  expect_status("NULL workspace with a size", da::Status::NullPointer,
                [&] { fwd(good, tq, tk, to, da::Workspace{nullptr, 64}); });
  all_untouched("workspace errors");

  // Client-side checks of the wrapper.
  expect_status("rank 7 view", da::Status::InvalidShape,
                [&] { da::TensorView(q.data(), da::DType::F32, {1, 1, 1, 1, 1, 1, 1}); });
  expect_status("strides/shape mismatch", da::Status::InvalidShape,
                [&] { da::TensorView(q.data(), da::DType::F32, {1, 2}, {1}); });

  // Backward errors: pooled_k without d_pooled_k; nothing written.
  fwd(good, tq, tk, to);  // now o, lse, tau are valid
  std::vector<float> dq(s.qn(), kSentinel), dk(s.kn(), kSentinel), dv(s.kn(), kSentinel);
  std::vector<float> pk((40 + 15) / 16 * s.hkv * s.d, 0.f);
  auto tpk = da::TensorView::of(pk.data(), {s.n, (40 + 15) / 16, s.hkv, s.d});
  auto tdq = da::TensorView::of(dq.data(), {s.n, s.lq, s.hq, s.d});
  auto tdk = da::TensorView::of(dk.data(), {s.n, s.lk, s.hkv, s.d});
  auto tdv = da::TensorView::of(dv.data(), {s.n, s.lk, s.hkv, s.d});
  expect_status("backward: pooled_k without d_pooled_k", da::Status::NullPointer,
                [&] { ctx.backward(good, tq, tk, tv, &tpk, nullptr, to, to, tlse, ttau, tdq, tdk, tdv, nullptr); });
  expect_status("backward: lse wrong shape", da::Status::InvalidShape, [&] {
    ctx.backward(good, tq, tk, tv, to, to, da::TensorView::of(lse.data(), {s.n, s.hq, s.lq - 1}), ttau, tdq, tdk, tdv);
  });
  expect_status("backward: head_alpha wrong length", da::Status::InvalidShape, [&] {
    std::vector<float> ha(s.hq + 1, 1.5f);
    auto tha = da::TensorView::of(ha.data(), {s.hq + 1});
    ctx.backward(good, tq, tk, tv, nullptr, &tha, to, to, tlse, ttau, tdq, tdk, tdv, nullptr);
  });
  CHECK(untouched(dq) && untouched(dk) && untouched(dv), "backward wrote a gradient on error");
  expect_status("head_alpha out of [1, 2]", da::Status::InvalidArgument, [&] {
    std::vector<float> ha(s.hq, 2.5f);
    auto tha = da::TensorView::of(ha.data(), {s.hq});
    std::fill(o.begin(), o.end(), kSentinel);
    ctx.forward(good, tq, tk, tv, nullptr, &tha, to, nullptr, nullptr);
  });
  CHECK(untouched(o), "head_alpha error: o written");
}

// merge_states: attention over all keys equals the merge of attention over two disjoint
// key halves (non-causal with every block local is plain softmax attention); a part with
// lse = -inf contributes nothing.
static void test_merge_states(da::Context& ctx) {
  std::mt19937 rng(6);
  const int64_t Lq = 7, Lk = 50, A = 20, H = 2, D = 8;
  auto q = randn<float>(rng, Lq * H * D), k = randn<float>(rng, Lk * H * D), v = randn<float>(rng, Lk * H * D);
  da::Config cfg = da::Config().block_size(16).causal(false).n_local(64);
  std::vector<float> full(Lq * H * D), full_lse(H * Lq), parts(2 * Lq * H * D), parts_lse(2 * H * Lq);
  auto fwd = [&](int64_t from, int64_t to, float* o, float* lse) {
    auto tlse = da::TensorView::of(lse, {1, H, Lq});
    ctx.forward(cfg, da::TensorView::of(q.data(), {1, Lq, H, D}),
                da::TensorView::of(k.data() + from * H * D, {1, to - from, H, D}),
                da::TensorView::of(v.data() + from * H * D, {1, to - from, H, D}),
                da::TensorView::of(o, {1, Lq, H, D}), &tlse);
  };
  fwd(0, Lk, full.data(), full_lse.data());
  fwd(0, A, parts.data(), parts_lse.data());
  fwd(A, Lk, parts.data() + Lq * H * D, parts_lse.data() + H * Lq);
  std::vector<float> merged(Lq * H * D, kSentinel), merged_lse(H * Lq, kSentinel);
  auto tml = da::TensorView::of(merged_lse.data(), {1, H, Lq});
  ctx.merge_states(da::TensorView::of(parts.data(), {2, 1, Lq, H, D}), da::TensorView::of(parts_lse.data(), {2, 1, H, Lq}),
                   da::TensorView::of(merged.data(), {1, Lq, H, D}), &tml);
  double err = 0, lerr = 0;
  for (size_t i = 0; i < merged.size(); ++i) err = std::max(err, double(std::fabs(merged[i] - full[i])));
  for (size_t i = 0; i < merged_lse.size(); ++i) lerr = std::max(lerr, double(std::fabs(merged_lse[i] - full_lse[i])));
  CHECK(err < 1e-5 && lerr < 1e-5, "merge of two key halves vs full attention: o err %g, lse err %g", err, lerr);

  // A part with lse = -inf contributes nothing.
  std::vector<float> p2 = parts, l2 = parts_lse;
  for (int64_t i = 0; i < H * Lq; ++i) l2[H * Lq + i] = -INFINITY;
  ctx.merge_states(da::TensorView::of(p2.data(), {2, 1, Lq, H, D}), da::TensorView::of(l2.data(), {2, 1, H, Lq}),
                   da::TensorView::of(merged.data(), {1, Lq, H, D}));
  err = 0;
  for (size_t i = 0; i < merged.size(); ++i) err = std::max(err, double(std::fabs(merged[i] - parts[i])));
  CHECK(err < 1e-6, "merge with an empty part: err %g", err);

  // Errors: lse_parts with the wrong layout; o untouched.
  std::fill(merged.begin(), merged.end(), kSentinel);
  expect_status("merge: lse_parts shape", da::Status::InvalidShape, [&] {
    ctx.merge_states(da::TensorView::of(parts.data(), {2, 1, Lq, H, D}), da::TensorView::of(parts_lse.data(), {2, 1, Lq, H}),
                     da::TensorView::of(merged.data(), {1, Lq, H, D}));
  });
  expect_status("merge: o_parts rank 4", da::Status::InvalidShape, [&] {
    ctx.merge_states(da::TensorView::of(parts.data(), {2, Lq, H, D}), da::TensorView::of(parts_lse.data(), {2, 1, H, Lq}),
                     da::TensorView::of(merged.data(), {1, Lq, H, D}));
  });
  CHECK(untouched(merged), "merge wrote o on error");
}

int main() {
  std::printf("dashattn %s (C++ wrapper test)\n", da::version_string());
  try {
    test_version();
    test_context_ownership();
    da::Context ctx = da::Context::cpu();
    test_short_context_is_dense(ctx);
    test_forward_invariants(ctx);
    test_backward(ctx);
    test_decode(ctx);
    test_errors(ctx);
    test_merge_states(ctx);
  } catch (const std::exception& e) {
    std::printf("FAIL: unexpected exception: %s\n", e.what());
    ++g_failures;
  }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
