// C++ checks of small_fft.h against ATen's FFT in double precision: every supported side
// pair, group sizes that fill the lanes, fewer, and more, every build the CPU can run
// (AVX-512 with 16 planes per vector, AVX2+FMA with 8, and the baseline), inverse of
// non-Hermitian half spectra, the supported() rule, and the AVX-512 build bitwise equal
// to the AVX2 one.
#include "cpu/isa.h"
#include "cpu/small_fft.h"

#include "tests/expect.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace adaptir::cpu::fft::base {
void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);
void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);
}  // namespace adaptir::cpu::fft::base
#ifdef ADAPTIR_AVX2_BUILDS
namespace adaptir::cpu::fft::avx2 {
void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);
void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);
}  // namespace adaptir::cpu::fft::avx2
namespace adaptir::cpu::fft::avx512 {
void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);
void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W);
}  // namespace adaptir::cpu::fft::avx512
#endif

namespace {

namespace fft = adaptir::cpu::fft;

using adaptir_test::failures;

using Fn = void (*)(const float*, float*, int64_t, int64_t, int64_t);

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  if (at::isnan(a).any().item<bool>()) return INFINITY;
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a.to(at::kDouble) - b).abs().max().item<double>() / scale;
}

void check_pair(int64_t H, int64_t W, int64_t nq, Fn fwd, Fn inv, const char* build, double& worst) {
  const int64_t wf = W / 2 + 1;
  const at::Tensor u = at::randn({nq, H, W}, at::kFloat);
  // Poisoned output: every value must be written.
  at::Tensor U = at::full({nq, H, wf}, NAN, at::TensorOptions().dtype(at::kComplexFloat));
  fwd(u.const_data_ptr<float>(), reinterpret_cast<float*>(U.data_ptr()), nq, H, W);
  const at::Tensor U_ref = at::fft_rfft2(u.to(at::kDouble), std::nullopt, {-2, -1}, "ortho");
  const double e_fwd = max_rel(at::view_as_real(U), at::view_as_real(U_ref));

  // A random half spectrum, not Hermitian in columns 0 and W/2.
  const at::Tensor Z = at::randn({nq, H, wf}, at::TensorOptions().dtype(at::kComplexFloat));
  const at::Tensor Z_before = Z.clone();
  at::Tensor y = at::full({nq, H, W}, NAN, at::kFloat);
  inv(reinterpret_cast<const float*>(Z.const_data_ptr()), y.data_ptr<float>(), nq, H, W);
  const at::Tensor y_ref =
      at::fft_irfft2(Z.to(at::kComplexDouble), at::IntArrayRef{H, W}, {-2, -1}, "ortho");
  const double e_inv = max_rel(y, y_ref);
  EXPECT(at::equal(Z, Z_before));  // the input is not modified

  const double e = std::max(e_fwd, e_inv);
  worst = std::max(worst, e);
  if (!(e < 2e-6)) {
    std::fprintf(stderr, "%s build, H=%ld W=%ld nq=%ld: forward %.3g, inverse %.3g\n", build,
                 static_cast<long>(H), static_cast<long>(W), static_cast<long>(nq), e_fwd, e_inv);
    ++failures;
  }
}

void test_supported() {
  EXPECT(fft::supported(48, 48));
  EXPECT(fft::supported(1, 1));
  EXPECT(fft::supported(64, 45));
  EXPECT(!fft::supported(7, 8));
  EXPECT(!fft::supported(48, 14));
  EXPECT(!fft::supported(65, 8));
  EXPECT(!fft::supported(128, 128));
  EXPECT(!fft::supported(0, 4));
}

void test_transforms() {
  at::manual_seed(0);
  std::vector<int64_t> sides;
  for (int64_t n = 1; n <= fft::kMaxSide; ++n)
    if (fft::supported(n, 1)) sides.push_back(n);
  EXPECT(sides.size() == 27);  // the 5-smooth numbers up to 64
  struct Build {
    Fn fwd, inv;
    const char* name;
  };
  std::vector<Build> builds = {{&fft::base::rfft2, &fft::base::irfft2, "baseline"}};
#ifdef ADAPTIR_AVX2_BUILDS
  if (adaptir::cpu::cpu_has_avx2_fma()) builds.push_back({&fft::avx2::rfft2, &fft::avx2::irfft2, "avx2"});
  else std::printf("this CPU has no AVX2+FMA: its build is not checked\n");
  if (adaptir::cpu::cpu_can_avx512()) builds.push_back({&fft::avx512::rfft2, &fft::avx512::irfft2, "avx512"});
  else std::printf("this CPU has no AVX-512F and VL (or ADAPTIR_CPU_AVX512=0): its build is not checked\n");
#endif
  for (const Build& b : builds) {
    double worst = 0.0;
    for (int64_t H : sides)
      for (int64_t W : sides) check_pair(H, W, (H * 7 + W) % 3 == 0 ? 8 : 3, b.fwd, b.inv, b.name, worst);
    // Several blocks of 8 or 16 planes with a partial last one, at the training sizes.
    for (int64_t nq : {1, 11, 24, 40}) {
      check_pair(48, 48, nq, b.fwd, b.inv, b.name, worst);
      check_pair(16, 16, nq, b.fwd, b.inv, b.name, worst);
      check_pair(45, 64, nq, b.fwd, b.inv, b.name, worst);
    }
    std::printf("%s build: worst max-relative error %.3g\n", b.name, worst);
  }
}

}  // namespace

#ifdef ADAPTIR_AVX2_BUILDS
// The 16-plane AVX-512 build gives the same bits as the 8-plane AVX2 one: each plane's
// arithmetic does not depend on the vector width or on the lane.
void test_avx512_equals_avx2() {
  if (!adaptir::cpu::cpu_can_avx512()) {
    std::printf("this CPU has no AVX-512F and VL (or ADAPTIR_CPU_AVX512=0): the builds' bitwise equality is not checked\n");
    return;
  }
  at::manual_seed(1);
  for (int64_t H : {1, 5, 16, 45, 48, 64})
    for (int64_t W : {1, 6, 16, 27, 48, 64})
      for (int64_t nq : {3, 16, 21}) {
        const int64_t wf = W / 2 + 1;
        const at::Tensor u = at::randn({nq, H, W}, at::kFloat);
        const at::Tensor Z = at::randn({nq, H, 2 * wf}, at::kFloat);
        at::Tensor U8 = at::full({nq, H, 2 * wf}, NAN, at::kFloat), U16 = U8.clone();
        at::Tensor y8 = at::full({nq, H, W}, NAN, at::kFloat), y16 = y8.clone();
        fft::avx2::rfft2(u.const_data_ptr<float>(), U8.data_ptr<float>(), nq, H, W);
        fft::avx512::rfft2(u.const_data_ptr<float>(), U16.data_ptr<float>(), nq, H, W);
        fft::avx2::irfft2(Z.const_data_ptr<float>(), y8.data_ptr<float>(), nq, H, W);
        fft::avx512::irfft2(Z.const_data_ptr<float>(), y16.data_ptr<float>(), nq, H, W);
        const bool same = at::equal(U8, U16) && at::equal(y8, y16);
        if (!same) {
          std::fprintf(stderr, "avx512 and avx2 builds differ: H=%ld W=%ld nq=%ld\n", static_cast<long>(H),
                       static_cast<long>(W), static_cast<long>(nq));
          ++failures;
        }
      }
}
#endif

int main() {
  test_supported();
  test_transforms();
#ifdef ADAPTIR_AVX2_BUILDS
  test_avx512_equals_avx2();
#endif
  return adaptir_test::finish("small_fft");
}
