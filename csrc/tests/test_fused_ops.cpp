// C++ checks of the fused operators against direct double-precision loops: the skinny
// matrix products, project_in (batch statistics, both layouts), local_branch (the
// depthwise conv and the gate), global_branch (the transforms written out as in
// SPEC 4.1), combine_out (forward and backward), the dispatcher route and errors.
#include "cpu/combine_out.h"
#include "cpu/common.h"
#include "cpu/global_branch.h"
#include "cpu/local_branch.h"
#include "cpu/project_in.h"
#include "cpu/row_planes.h"
#include "cpu/skinny_gemm.h"

#include "tests/expect.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using adaptir_test::failures;

#define EXPECT_CLOSE(a, b, tol)                                                                 \
  do {                                                                                          \
    const double err_ = rel_err((a), (b));                                                      \
    if (!(err_ <= (tol))) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s vs %s: relative error %.3g > %g\n", __FILE__, __LINE__, \
                   #a, #b, err_, static_cast<double>(tol));                                     \
      ++failures;                                                                               \
    }                                                                                           \
  } while (0)

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  if (at::isnan(ad).any().item<bool>()) return INFINITY;
  return (ad - bd).norm().item<double>() / std::max(bd.norm().item<double>(), 1e-300);
}

template <typename F>
bool throws_with(F f, const char* needle) {
  try {
    f();
  } catch (const c10::Error& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

// ---- skinny matrix products --------------------------------------------------------

void test_skinny_gemm() {
  at::manual_seed(0);
  namespace gemm = adaptir::cpu::gemm;
  const std::vector<gemm::Build> builds = gemm::builds();
  std::printf("skinny products: builds");
  for (const auto& b : builds) std::printf(" %s", b.name);
  std::printf("\n");
  for (const auto& [R, C, h] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 1}, {7, 13, 3}, {37, 40, 12}, {100, 180, 12}, {65, 576, 24}, {9, 17, 33},
           {300, 9, 5}, {70, 8, 2}, {130, 181, 12}, {29, 64, 16}, {13, 52, 12}, {40, 33, 40},
           {3, 16, 8}, {50, 100, 7}, {33, 45, 20}, {15, 11, 4}, {21, 7, 17}, {5, 1, 12}}) {
    const int64_t hp = gemm::padded(h);
    const at::Tensor x = at::randn({R, C}), w = at::randn({h, C}), g = at::randn({R, hp});
    const at::Tensor bias = at::randn({hp});
    at::Tensor wt = at::zeros({C, hp});
    wt.narrow(1, 0, h).copy_(w.t());
    const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
    const at::Tensor gd = g.narrow(1, 0, h).to(at::kDouble);
    // The dispatching entry points, then every build this CPU runs: each against double
    // precision, and the vector builds bitwise against each other.
    std::vector<std::vector<at::Tensor>> outs;
    for (int64_t k = -1; k < static_cast<int64_t>(builds.size()); ++k) {
      at::Tensor z = at::full({R, hp}, NAN), y = at::full({R, C}, NAN), ys = at::full({R, C}, NAN),
                 p = at::full({h, C}, NAN);
      if (k < 0) {
        gemm::rows_dot(x.data_ptr<float>(), R, C, wt.data_ptr<float>(), h, hp, bias.data_ptr<float>(),
                       z.data_ptr<float>(), hp);
        gemm::expand(g.data_ptr<float>(), hp, R, h, w.data_ptr<float>(), C, y.data_ptr<float>());
        gemm::expand(g.data_ptr<float>(), hp, R, h, w.data_ptr<float>(), C, ys.data_ptr<float>(),
                     /*stream=*/true);
        gemm::outer(g.data_ptr<float>(), hp, R, h, x.data_ptr<float>(), C, p.data_ptr<float>());
      } else {
        const gemm::Build& b = builds[k];
        b.rows_dot(x.data_ptr<float>(), R, C, wt.data_ptr<float>(), h, hp, bias.data_ptr<float>(),
                   z.data_ptr<float>(), hp);
        b.expand(g.data_ptr<float>(), hp, R, h, w.data_ptr<float>(), C, y.data_ptr<float>(), false);
        b.expand(g.data_ptr<float>(), hp, R, h, w.data_ptr<float>(), C, ys.data_ptr<float>(), true);
        b.outer(g.data_ptr<float>(), hp, R, h, x.data_ptr<float>(), C, p.data_ptr<float>());
      }
      EXPECT_CLOSE(z.narrow(1, 0, h), at::addmm(bias.narrow(0, 0, h).to(at::kDouble), xd, wd.t()), 1e-6);
      EXPECT_CLOSE(y, at::mm(gd, wd), 1e-6);
      EXPECT(at::equal(y, ys));
      // Streamed into outputs that start off a 64-byte boundary (the floats up to it and
      // after the last whole burst take another path): the same values, and nothing
      // written before the output.
      for (const int64_t off : {1, 5, 8, 15}) {
        at::Tensor buf = at::full({R * C + off}, NAN);
        float* yo = buf.data_ptr<float>() + off;
        if (k < 0)
          gemm::expand(g.data_ptr<float>(), hp, R, h, w.data_ptr<float>(), C, yo, /*stream=*/true);
        else
          builds[k].expand(g.data_ptr<float>(), hp, R, h, w.data_ptr<float>(), C, yo, true);
        EXPECT(at::equal(buf.narrow(0, off, R * C).view({R, C}), y));
        EXPECT(buf.narrow(0, 0, off).isnan().all().item<bool>());
      }
      EXPECT_CLOSE(p, at::mm(gd.t(), xd), 1e-6);
      outs.push_back({z.narrow(1, 0, h), y, p});
    }
    for (size_t k = 2; k + 1 < outs.size(); ++k)  // outs[1] is the baseline build
      for (size_t t = 0; t < 3; ++t)
        if (!at::equal(outs[k][t], outs[k + 1][t])) {
          std::fprintf(stderr, "skinny products (R %lld, C %lld, h %lld): %s and %s differ in product %zu\n",
                       static_cast<long long>(R), static_cast<long long>(C), static_cast<long long>(h),
                       builds[k - 1].name, builds[k].name, t);
          ++failures;
        }
  }
}

// StreamFetch (skinny_gemm.h), the pace of rows_dot's fetch: kStreamLines lines at the
// start, then one line for each 64 bytes consumed, whatever the bytes per step, never
// past the end of the stream.
void test_stream_fetch() {
  namespace gemm = adaptir::cpu::gemm;
  for (const int64_t bytes : {1, 8, 12, 16, 32, 48, 60, 64}) {
    for (const int64_t steps : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{100}, int64_t{1000}}) {
      const int64_t n = 1 << 16;  // floats: 4096 lines
      std::vector<float> x(n);
      gemm::StreamFetch f(x.data(), n);
      const char* start = reinterpret_cast<const char*>(x.data());
      for (int64_t k = 0; k < steps; ++k) f.step(k, bytes);
      const int64_t lines = gemm::kStreamLines + (steps * bytes + 63) / 64;
      EXPECT(f.next - start == 64 * lines);
    }
  }
  // A short stream: the fetch stops at its end.
  std::vector<float> y(100);  // 400 bytes: 7 lines from its start
  gemm::StreamFetch f(y.data(), 100);
  for (int64_t k = 0; k < 1000; ++k) f.step(k, 64);
  EXPECT(f.next >= f.end && f.next - f.end < 64);
}

// ---- row blocks ------------------------------------------------------------------------

// RowBlocks: every (sample, position) in exactly one block, no block over the target rows
// (or one position, where a position alone is more), the fewest blocks that allows, and
// their positions shared out evenly.
void test_row_blocks() {
  using adaptir::cpu::Layout;
  using adaptir::cpu::RowBlocks;
  for (const Layout layout : {Layout::NHWC, Layout::LNC})
    for (const int64_t N : {1, 2, 5, 16})
      for (const int64_t HW : {1, 7, 117, 256, 1147, 2304})
        for (const int64_t target : {1, 3, 64, 128, 728, 5000}) {
          const RowBlocks rb(layout, N, HW, target);
          const bool nhwc = layout == Layout::NHWC;
          const int64_t per_pos = nhwc ? 1 : N;  // rows per position in a block
          const int64_t most = std::max<int64_t>(1, std::min(HW, target / per_pos));
          const int64_t blocks = (HW + most - 1) / most;  // per sample in nhwc, in all in lnc
          EXPECT(rb.count == (nhwc ? N * blocks : blocks));
          std::vector<int> seen(static_cast<size_t>(N * HW), 0);
          int64_t shortest = HW, longest = 0;
          for (int64_t b = 0; b < rb.count; ++b) {
            const RowBlocks::Block k = rb.get(b);
            const int64_t len = k.p1 - k.p0;
            shortest = std::min(shortest, len);
            longest = std::max(longest, len);
            EXPECT(len >= 1 && len <= most);
            EXPECT(k.rows == len * per_pos);
            EXPECT(k.pstride == per_pos);
            EXPECT(k.row0 == (nhwc ? k.n0 * HW + k.p0 : k.p0 * N));
            EXPECT(nhwc ? k.n1 == k.n0 + 1 : (k.n0 == 0 && k.n1 == N));
            for (int64_t n = k.n0; n < k.n1; ++n)
              for (int64_t p = k.p0; p < k.p1; ++p) ++seen[static_cast<size_t>(n * HW + p)];
          }
          for (const int v : seen) EXPECT(v == 1);
          EXPECT(longest - shortest < blocks);
        }
}

// ---- rows <-> channel planes ------------------------------------------------------

void test_row_planes() {
  at::manual_seed(1);
  namespace rp = adaptir::cpu::row_planes;
  // (h, n, width, row stride): 8-aligned and not, tails, rows narrower than h rounded to 8.
  for (const auto& [h, n, width, rs] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {12, 37, 16, 16}, {12, 64, 16, 48}, {8, 9, 8, 8}, {3, 20, 8, 8}, {24, 17, 24, 24},
           {5, 30, 5, 5}, {12, 13, 12, 36}, {1, 1, 8, 8}, {16, 8, 16, 16}}) {
    const int64_t lp = n + 3;
    const at::Tensor planes = at::randn({h, lp});
    at::Tensor rows = at::full({n * rs + width}, NAN);
    rp::to_rows(planes.data_ptr<float>(), lp, h, n, rows.data_ptr<float>(), rs, width);
    const int64_t h8 = (h + 7) / 8 * 8;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < h; ++j)
        EXPECT(rows[i * rs + j].item<float>() == planes[j][i].item<float>());
      for (int64_t j = h; j < width; ++j) {
        const float z = rows[i * rs + j].item<float>();
        EXPECT(width >= h8 && j < h8 ? z == 0.0f : std::isnan(z));
      }
    }
    at::Tensor back = at::full({h, lp}, NAN);
    rows.narrow(0, 0, n * rs).view({n, rs}).narrow(1, h, width - h).zero_();
    rp::to_planes(rows.data_ptr<float>(), rs, width, h, n, back.data_ptr<float>(), lp);
    EXPECT(at::equal(back.narrow(1, 0, n), planes.narrow(1, 0, n)));
    EXPECT(at::isnan(back.narrow(1, n, lp - n)).all().item<bool>());
  }
}

// ---- project_in ----------------------------------------------------------------------

void test_project_in() {
  at::manual_seed(1);
  const int64_t N = 3, H = 5, W = 7, C = 40, h = 6;
  const double eps = 1e-5;
  const at::Tensor w = at::randn({h, C}, at::kDouble) * 0.3, b = at::randn({h}, at::kDouble);
  const at::Tensor bw = at::rand({h}, at::kDouble) + 0.5, bb = at::randn({h}, at::kDouble);
  const at::Tensor rm = at::randn({h}, at::kDouble), rv = at::rand({h}, at::kDouble) + 0.5;
  for (const char* layout : {"nhwc", "lnc"}) {
    const bool nhwc = std::string(layout) == "nhwc";
    // A large common offset: the variance must not come from E[z^2] - E[z]^2.
    const at::Tensor x = at::randn(nhwc ? at::IntArrayRef{N, H, W, C} : at::IntArrayRef{H * W, N, C}, at::kDouble) + 1e3;
    // z in (N, h, H, W) from explicit loops over the layout.
    const at::Tensor rows = x.reshape({-1, C});
    const at::Tensor zr = at::addmm(b, rows, w.t());
    const at::Tensor z = nhwc ? zr.view({N, H, W, h}).permute({0, 3, 1, 2})
                              : zr.view({H, W, N, h}).permute({2, 3, 0, 1});
    for (const at::ScalarType dt : {at::kDouble, at::kFloat}) {
      const double tol = dt == at::kDouble ? 1e-10 : 1e-4;
      const auto cast = [&](const at::Tensor& t) { return t.to(dt); };
      const auto [u, xhat, mean, var] =
          adaptir::cpu::project_in(cast(x), cast(w), cast(b), cast(bw), cast(bb), cast(rm),
                                   cast(rv), /*training=*/true, eps, layout, H, W);
      const at::Tensor m = z.mean({0, 2, 3}), v = z.var({0, 2, 3}, /*unbiased=*/false);
      EXPECT_CLOSE(mean, m, tol * 1e-3);
      EXPECT_CLOSE(var, v, tol);
      const at::Tensor xh = (z - m.view({1, h, 1, 1})) / (v.view({1, h, 1, 1}) + eps).sqrt();
      EXPECT_CLOSE(xhat, xh, dt == at::kDouble ? 1e-9 : 2e-2);
      EXPECT_CLOSE(u, xh * bw.view({1, h, 1, 1}) + bb.view({1, h, 1, 1}), dt == at::kDouble ? 1e-9 : 2e-2);
      EXPECT(u.is_contiguous() && u.sizes() == at::IntArrayRef({N, h, H, W}));
    }
    // Eval: running statistics.
    const auto [u, xhat, mean, var] =
        adaptir::cpu::project_in(x, w, b, bw, bb, rm, rv, false, eps, layout, H, W);
    EXPECT(at::equal(mean, rm) && at::equal(var, rv));
    EXPECT_CLOSE(xhat, (z - rm.view({1, h, 1, 1})) / (rv.view({1, h, 1, 1}) + eps).sqrt(), 1e-10);
  }
  const at::Tensor x = at::randn({2, 3, 4, C});
  const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
  EXPECT(throws_with(
      [&] { adaptir::cpu::project_in(x, f(w), f(b), f(bw), f(bb), f(rm), f(rv), true, eps, "nchw", 3, 4); },
      "layout must be 'nhwc' or 'lnc'"));
  EXPECT(throws_with(
      [&] { adaptir::cpu::project_in(x, w, f(b), f(bw), f(bb), f(rm), f(rv), true, eps, "nhwc", 3, 4); },
      "weight must have the compute dtype Float, got Double"));
}

// ---- local_branch --------------------------------------------------------------------

void test_local_branch() {
  at::manual_seed(2);
  for (const auto& [N, h, H, W] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {2, 3, 5, 7}, {1, 4, 1, 6}, {2, 2, 6, 1}, {1, 3, 70, 90}}) {
    const at::Tensor u = at::randn({N, h, H, W}, at::kDouble);
    const at::Tensor A = at::randn({h, 2}, at::kDouble), B = at::randn({2, 9}, at::kDouble);
    const at::Tensor cb = at::randn({h}, at::kDouble), siw = at::randn({h}, at::kDouble);
    const at::Tensor sib = at::randn({1}, at::kDouble);
    const at::Tensor K = at::mm(A, B);
    // Direct loops, zero padding.
    at::Tensor l = at::empty({N, h, H, W}, at::kDouble);
    auto la = l.accessor<double, 4>();
    auto ua = u.accessor<double, 4>();
    auto ka = K.accessor<double, 2>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < h; ++c)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            double s = cb[c].item<double>();
            for (int dy = -1; dy <= 1; ++dy)
              for (int dx = -1; dx <= 1; ++dx) {
                const int64_t yy = y + dy, xx = x + dx;
                if (yy >= 0 && yy < H && xx >= 0 && xx < W) s += ka[c][(dy + 1) * 3 + dx + 1] * ua[n][c][yy][xx];
              }
            la[n][c][y][x] = s;
          }
    const at::Tensor sg = at::sigmoid((l * siw.view({1, h, 1, 1})).sum(1) + sib);
    const auto [lo, so] = adaptir::cpu::local_branch(u, A, B, cb, siw, sib);
    EXPECT_CLOSE(lo, l, 1e-12);
    EXPECT_CLOSE(so, sg, 1e-12);
    const auto [lf, sf] = adaptir::cpu::local_branch(u.to(at::kFloat), A.to(at::kFloat), B.to(at::kFloat),
                                                     cb.to(at::kFloat), siw.to(at::kFloat), sib.to(at::kFloat));
    EXPECT_CLOSE(lf, l, 1e-5);
    EXPECT_CLOSE(sf, sg, 1e-5);
  }
}

// ---- global_branch: the transforms written out as SPEC 4.1 ---------------------------

void test_global_branch() {
  at::manual_seed(3);
  const int64_t N = 2, h = 2, H = 5, W = 6, Wf = W / 2 + 1;
  const at::Tensor u = at::randn({N, h, H, W}, at::kDouble);
  const at::Tensor aw = at::rand({h}, at::kDouble) + 0.5, ab = at::randn({h}, at::kDouble) * 0.3;
  const at::Tensor pw = at::rand({h}, at::kDouble) + 0.5, pb = at::randn({h}, at::kDouble) * 0.3;
  const double pi = 3.14159265358979323846, norm = 1.0 / std::sqrt(static_cast<double>(H * W));
  at::Tensor g = at::empty({N, h, H, W}, at::kDouble);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < h; ++c) {
      // Forward half spectrum, gate.
      std::vector<double> Gr(H * Wf), Gi(H * Wf);
      for (int64_t kh = 0; kh < H; ++kh)
        for (int64_t kw = 0; kw < Wf; ++kw) {
          double re = 0, im = 0;
          for (int64_t y = 0; y < H; ++y)
            for (int64_t x = 0; x < W; ++x) {
              const double a = -2 * pi * (static_cast<double>(kh * y) / H + static_cast<double>(kw * x) / W);
              const double v = u[n][c][y][x].item<double>();
              re += v * std::cos(a);
              im += v * std::sin(a);
            }
          re *= norm;
          im *= norm;
          // Bins of a real input that are real: the FFT gives them an exact zero
          // imaginary part, the sums above only a rounding residue (whose sign would
          // flip the angle between pi and -pi).
          if ((kh == 0 || 2 * kh == H) && (kw == 0 || 2 * kw == W)) im = 0.0;
          const double A2 = aw[c].item<double>() * std::hypot(re, im) + ab[c].item<double>();
          const double P2 = pw[c].item<double>() * std::atan2(im, re) + pb[c].item<double>();
          Gr[kh * Wf + kw] = A2 * std::cos(P2);
          Gi[kh * Wf + kw] = A2 * std::sin(P2);
        }
      // SPEC 4.1 inverse, imaginary parts of the kw = 0 and W/2 columns included.
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          double s = 0;
          for (int64_t kh = 0; kh < H; ++kh)
            for (int64_t kw = 0; kw < Wf; ++kw) {
              const double cwt = (kw == 0 || (W % 2 == 0 && kw == W / 2)) ? 1.0 : 2.0;
              const double a = 2 * pi * (static_cast<double>(kh * y) / H + static_cast<double>(kw * x) / W);
              s += cwt * (Gr[kh * Wf + kw] * std::cos(a) - Gi[kh * Wf + kw] * std::sin(a));
            }
          g[n][c][y][x] = std::abs(s * norm);
        }
    }
  const auto [go, gm, sign] = adaptir::cpu::global_branch(u, aw, ab, pw, pb);
  EXPECT_CLOSE(go, g, 1e-11);
  EXPECT_CLOSE(gm, g.mean({2, 3}), 1e-11);
  const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
  const auto [gf, gmf, signf] = adaptir::cpu::global_branch(f(u), f(aw), f(ab), f(pw), f(pb));
  EXPECT_CLOSE(gf, g, 1e-5);
  EXPECT_CLOSE(gmf, g.mean({2, 3}), 1e-5);
  EXPECT(sign.scalar_type() == at::kByte && sign.size(2) == (H * W + 7) / 8);
  // Backward: d/du of sum(w * g) against central differences, from the forward's signs;
  // without them (an empty sign tensor) the same result from the recomputed transform.
  const at::Tensor wg = at::randn_like(g), wm = at::randn({N, h}, at::kDouble);
  const auto grads = adaptir::cpu::global_branch_backward(wg, wm, u, go, sign, aw, ab, pw, pb);
  const auto again = adaptir::cpu::global_branch_backward(
      wg, wm, u, go, at::empty({0}, sign.options()), aw, ab, pw, pb);
  EXPECT(at::equal(std::get<0>(grads), std::get<0>(again)) &&
         at::equal(std::get<1>(grads), std::get<1>(again)) &&
         at::equal(std::get<4>(grads), std::get<4>(again)));
  const at::Tensor gu = std::get<0>(grads);
  auto loss = [&](const at::Tensor& uu) {
    const auto [a, m, s_] = adaptir::cpu::global_branch(uu, aw, ab, pw, pb);
    return (a * wg).sum().item<double>() + (m * wm).sum().item<double>();
  };
  for (int64_t i = 0; i < u.numel(); i += 7) {
    at::Tensor up = u.clone(), um = u.clone();
    up.view(-1)[i] += 1e-6;
    um.view(-1)[i] -= 1e-6;
    const double num = (loss(up) - loss(um)) / 2e-6;
    const double ana = gu.view(-1)[i].item<double>();
    if (std::fabs(num - ana) > 1e-5 * (1 + std::fabs(num))) {
      std::fprintf(stderr, "global_branch grad_u[%ld]: %.10g vs numeric %.10g\n", static_cast<long>(i), ana, num);
      ++failures;
    }
  }
}

// ---- combine_out ---------------------------------------------------------------------

void test_combine_out() {
  at::manual_seed(4);
  const int64_t N = 3, h = 5, H = 4, W = 6, C = 70;
  const at::Tensor l = at::randn({N, h, H, W}, at::kDouble), g = at::randn({N, h, H, W}, at::kDouble);
  const at::Tensor sg = at::rand({N, H, W}, at::kDouble), cg = at::rand({N, h}, at::kDouble);
  const at::Tensor cs = at::randn({N, h}, at::kDouble), tw = at::randn({C, h}, at::kDouble);
  const at::Tensor v = cs.view({N, h, 1, 1}) * (cg.view({N, h, 1, 1}) * l + sg.view({N, 1, H, W}) * g);
  for (const char* layout : {"nhwc", "lnc"}) {
    const bool nhwc = std::string(layout) == "nhwc";
    const at::Tensor vr = nhwc ? v.permute({0, 2, 3, 1}).reshape({-1, h}) : v.permute({2, 3, 0, 1}).reshape({-1, h});
    const at::Tensor ref = at::mm(vr, tw.t()).view(nhwc ? at::IntArrayRef{N, H, W, C} : at::IntArrayRef{H * W, N, C});
    for (const at::ScalarType dt : {at::kDouble, at::kFloat}) {
      const auto c = [&](const at::Tensor& t) { return t.to(dt); };
      for (const at::ScalarType odt : {at::kDouble, at::kFloat, at::kBFloat16}) {
        const at::Tensor out = adaptir::cpu::combine_out(c(l), c(g), c(sg), c(cg), c(cs), c(tw), layout, odt);
        EXPECT(out.scalar_type() == odt && out.sizes() == ref.sizes());
        const double tol = odt == at::kBFloat16 ? 1e-2 : (dt == at::kDouble && odt == at::kDouble ? 1e-12 : 1e-5);
        EXPECT_CLOSE(out, ref, tol);
      }
      // Backward against the closed forms.
      const at::Tensor go = at::randn(ref.sizes(), at::kDouble);
      const auto [gl, gg, gsg, gcg, gcs, gtw] =
          adaptir::cpu::combine_out_backward(c(go), c(l), c(g), c(sg), c(cg), c(cs), c(tw), layout);
      const at::Tensor gor = go.reshape({-1, C});
      const at::Tensor gvr = at::mm(gor, tw);
      const at::Tensor gv = nhwc ? gvr.view({N, H, W, h}).permute({0, 3, 1, 2}) : gvr.view({H, W, N, h}).permute({2, 3, 0, 1});
      const at::Tensor gvc = gv * cs.view({N, h, 1, 1});
      const double tol = dt == at::kDouble ? 1e-11 : 1e-5;
      EXPECT_CLOSE(gtw, at::mm(gor.t(), vr), tol);
      EXPECT_CLOSE(gl, gvc * cg.view({N, h, 1, 1}), tol);
      EXPECT_CLOSE(gg, gvc * sg.view({N, 1, H, W}), tol);
      EXPECT_CLOSE(gsg, (gvc * g).sum(1), tol);
      EXPECT_CLOSE(gcg, (gvc * l).sum({2, 3}), tol);
      EXPECT_CLOSE(gcs, (gv * (cg.view({N, h, 1, 1}) * l + sg.view({N, 1, H, W}) * g)).sum({2, 3}), tol);
    }
  }
  EXPECT(throws_with([&] { adaptir::cpu::combine_out(l, g, sg, cg, cs, tw.narrow(1, 0, 2), "nhwc", at::kFloat); },
                     "tail_w must have shape (C, h) with h=5"));
}

void test_dispatcher() {
  for (const char* op : {"project_in", "local_branch", "global_branch", "combine_out"}) {
    EXPECT(c10::Dispatcher::singleton().findSchema({std::string("adaptir_cpp::") + op, ""}).has_value());
    EXPECT(c10::Dispatcher::singleton()
               .findSchema({std::string("adaptir_cpp::") + op + "_backward", ""})
               .has_value());
  }
  at::manual_seed(5);
  const at::Tensor u = at::randn({2, 3, 4, 5});
  const at::Tensor p = at::rand({3}) + 0.5;
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("adaptir_cpp::global_branch", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const at::Tensor&)>();
  const auto [g1, m1, s1] = op.call(u, p, p, p, p);
  const auto [g2, m2, s2] = adaptir::cpu::global_branch(u, p, p, p, p);
  EXPECT(at::equal(g1, g2) && at::equal(m1, m2) && at::equal(s1, s2));
}

}  // namespace

int main() {
  test_skinny_gemm();
  test_stream_fetch();
  test_row_blocks();
  test_row_planes();
  test_project_in();
  test_local_branch();
  test_global_branch();
  test_combine_out();
  test_dispatcher();
  return adaptir_test::finish("fused ops");
}
