// Example: forward, backward and a decode step on the CPU backend through dashattn.hpp.
//
//   make -C bindings/cpp example && bindings/cpp/example
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "dashattn.hpp"

namespace da = dashattn;

int main() {
  try {
    std::printf("dashattn %s\n", da::version_string());
    da::Context ctx = da::Context::cpu();

    // One sequence of 256 tokens, 4 query heads sharing 2 KV heads, head dimension 32.
    const int64_t N = 1, L = 256, Hq = 4, Hkv = 2, D = 32, B = 32;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.f, 1.f);
    auto randn = [&](size_t n) {
      std::vector<float> v(n);
      for (float& x : v) x = normal(rng);
      return v;
    };
    std::vector<float> q = randn(N * L * Hq * D), k = randn(N * L * Hkv * D), v = randn(N * L * Hkv * D);
    std::vector<float> o(q.size()), lse(N * Hq * L), tau(N * Hq * L);

    da::Config cfg = da::Config().block_size(static_cast<int32_t>(B)).alpha(1.5f);
    da::TensorView tq(q.data(), da::DType::F32, {N, L, Hq, D});
    da::TensorView tk(k.data(), da::DType::F32, {N, L, Hkv, D});
    da::TensorView tv(v.data(), da::DType::F32, {N, L, Hkv, D});
    da::TensorView to(o.data(), da::DType::F32, {N, L, Hq, D});
    da::TensorView tlse(lse.data(), da::DType::F32, {N, Hq, L});
    da::TensorView ttau(tau.data(), da::DType::F32, {N, Hq, L});

    // Forward with a caller-provided, 256-byte aligned workspace.
    size_t ws_bytes = ctx.forward_workspace_size(cfg, tq, tk, tv);
    std::vector<unsigned char> ws_buf(ws_bytes + 256);
    void* ws_ptr = ws_buf.data();
    size_t space = ws_buf.size();
    ws_ptr = std::align(256, ws_bytes, ws_ptr, space);
    ctx.forward(cfg, tq, tk, tv, nullptr, nullptr, to, &tlse, &ttau, da::Workspace{ws_ptr, ws_bytes});
    std::printf("forward: workspace %zu bytes, o[last row, head 0, 0..3] = %.5f %.5f %.5f %.5f, lse = %.4f\n",
                ws_bytes, o[((L - 1) * Hq) * D + 0], o[((L - 1) * Hq) * D + 1], o[((L - 1) * Hq) * D + 2],
                o[((L - 1) * Hq) * D + 3], lse[L - 1]);

    // Backward of loss = 0.5 * ||o||^2, so d_o = o.
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    da::TensorView tdo(o.data(), da::DType::F32, {N, L, Hq, D});
    da::TensorView tdq(dq.data(), da::DType::F32, {N, L, Hq, D});
    da::TensorView tdk(dk.data(), da::DType::F32, {N, L, Hkv, D});
    da::TensorView tdv(dv.data(), da::DType::F32, {N, L, Hkv, D});
    ctx.backward(cfg, tq, tk, tv, to, tdo, tlse, ttau, tdq, tdk, tdv);
    double gq = 0, gk = 0, gv = 0;
    for (float x : dq) gq += double(x) * x;
    for (float x : dk) gk += double(x) * x;
    for (float x : dv) gv += double(x) * x;
    std::printf("backward: |dq| = %.5f |dk| = %.5f |dv| = %.5f\n", std::sqrt(gq), std::sqrt(gk), std::sqrt(gv));

    // Decode: the same sequence in a paged cache (page_size = B, pages in reverse order),
    // the pooled-key cache filled once, then one decode step for the last token.
    const int64_t P = L / B;  // pages
    std::vector<float> kc(P * B * Hkv * D), vc(P * B * Hkv * D), pooled(P * 1 * Hkv * D);
    std::vector<int32_t> table(P);
    for (int64_t p = 0; p < P; ++p) table[p] = static_cast<int32_t>(P - 1 - p);
    for (int64_t t = 0; t < L; ++t) {
      int64_t page = table[t / B], slot = t % B;
      for (int64_t i = 0; i < Hkv * D; ++i) {
        kc[(page * B + slot) * Hkv * D + i] = k[t * Hkv * D + i];
        vc[(page * B + slot) * Hkv * D + i] = v[t * Hkv * D + i];
      }
    }
    std::vector<int32_t> prev{0}, lens{static_cast<int32_t>(L)};
    da::TensorView tkc(kc.data(), da::DType::F32, {P, B, Hkv, D});
    da::TensorView tvc(vc.data(), da::DType::F32, {P, B, Hkv, D});
    da::TensorView tpc(pooled.data(), da::DType::F32, {P, 1, Hkv, D});
    auto ttable = da::TensorView::of(table.data(), {N, P});
    auto tprev = da::TensorView::of(prev.data(), {N});
    auto tlens = da::TensorView::of(lens.data(), {N});
    ctx.pool_keys_paged(cfg, tkc, tpc, ttable, tprev, tlens);

    std::vector<float> q1(q.end() - Hq * D, q.end()), o1(Hq * D);
    da::TensorView tq1(q1.data(), da::DType::F32, {N, 1, Hq, D});
    da::TensorView to1(o1.data(), da::DType::F32, {N, 1, Hq, D});
    ctx.decode(cfg, tq1, tkc, tvc, tpc, ttable, tlens, nullptr, to1);
    double diff = 0;
    for (int64_t i = 0; i < Hq * D; ++i) diff = std::fmax(diff, std::fabs(o1[i] - o[(L - 1) * Hq * D + i]));
    std::printf("decode: max |o_decode - o_forward[last row]| = %.3g\n", diff);

    // Errors are exceptions carrying the status and the library's message.
    try {
      ctx.forward(da::Config().block_size(48), tq, tk, tv, to);
    } catch (const da::Error& e) {
      std::printf("expected error: status %d (%s): %s\n", e.code(), da::status_string(e.status()),
                  e.message().c_str());
    }
    return diff < 1e-4 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
