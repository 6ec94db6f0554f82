// C++ checks of small_fft.h against ATen's FFT in double precision: every supported side
// pair, group sizes that fill eight lanes, fewer, and more, both builds (AVX2+FMA where
// the CPU has it, and the baseline), inverse of non-Hermitian half spectra, and the
// supported() rule.
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
  if (fft::uses_avx2()) builds.push_back({&fft::rfft2, &fft::irfft2, "avx2"});
  else std::printf("this CPU has no AVX2+FMA: only the baseline build is checked\n");
  for (const Build& b : builds) {
    double worst = 0.0;
    for (int64_t H : sides)
      for (int64_t W : sides) check_pair(H, W, (H * 7 + W) % 3 == 0 ? 8 : 3, b.fwd, b.inv, b.name, worst);
    // Several blocks of eight with a partial last one, at the training sizes.
    for (int64_t nq : {1, 11, 24}) {
      check_pair(48, 48, nq, b.fwd, b.inv, b.name, worst);
      check_pair(16, 16, nq, b.fwd, b.inv, b.name, worst);
      check_pair(45, 64, nq, b.fwd, b.inv, b.name, worst);
    }
    std::printf("%s build: worst max-relative error %.3g\n", b.name, worst);
  }
}

}  // namespace

int main() {
  test_supported();
  test_transforms();
  return adaptir_test::finish("small_fft");
}
