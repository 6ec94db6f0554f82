// Plans and run-time selection between the AVX-512, AVX2+FMA and baseline builds of
// small_fft_impl.h.
#include "small_fft.h"

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#pragma GCC diagnostic ignored "-Wpsabi"

namespace adaptir::cpu::fft {
namespace {

// The radices of n, 4 first (fewest stages), then 2, 3, 5; empty if another prime divides n.
std::vector<int> radices(int64_t n) {
  std::vector<int> out;
  while (n % 4 == 0) {
    out.push_back(4);
    n /= 4;
  }
  for (int p : {2, 3, 5})
    while (n % p == 0) {
      out.push_back(p);
      n /= p;
    }
  if (n != 1) out.clear();
  return out;
}

struct OwnedPlan {
  Plan plan;
  std::vector<std::vector<float>> wr, wi;
};

}  // namespace

bool supported(int64_t H, int64_t W) {
  // Checked by every global_branch call for each plane group: plain divisions, no plan.
  auto ok = [](int64_t n) {
    if (n < 1 || n > kMaxSide) return false;
    for (int64_t p : {2, 3, 5})
      while (n % p == 0) n /= p;
    return n == 1;
  };
  return ok(H) && ok(W);
}

const Plan& plan_for(int64_t n) {
  static std::mutex mu;
  static std::map<int64_t, std::unique_ptr<OwnedPlan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(n);
  if (it != cache.end()) return it->second->plan;
  auto owned = std::make_unique<OwnedPlan>();
  const std::vector<int> ps = n == 1 ? std::vector<int>{} : radices(n);
  Plan& plan = owned->plan;
  plan.n = n;
  plan.count = static_cast<int>(ps.size());
  owned->wr.resize(ps.size());
  owned->wi.resize(ps.size());
  int64_t len = n;
  for (size_t l = 0; l < ps.size(); ++l) {
    const int p = ps[l];
    const int64_t m = len / p;
    std::vector<float>& wr = owned->wr[l];
    std::vector<float>& wi = owned->wi[l];
    wr.resize(static_cast<size_t>((p - 1) * m));
    wi.resize(wr.size());
    for (int s = 1; s < p; ++s)
      for (int64_t k = 0; k < m; ++k) {
        // exp(-2 pi i s k / len), the angle reduced exactly in integers first.
        const int64_t e = (s * k) % len;
        const double a = -2.0 * M_PI * static_cast<double>(e) / static_cast<double>(len);
        wr[(s - 1) * m + k] = static_cast<float>(std::cos(a));
        wi[(s - 1) * m + k] = static_cast<float>(std::sin(a));
      }
    plan.stages[l] = Stage{p, len, m, wr.data(), wi.data()};
    len = m;
  }
  const Plan& out = owned->plan;
  cache.emplace(n, std::move(owned));
  return out;
}

}  // namespace adaptir::cpu::fft

#ifdef ADAPTIR_AVX2_BUILDS
#define ADAPTIR_FFT_LANES 16
ADAPTIR_AVX512_BEGIN
namespace adaptir::cpu::fft::avx512 {
#include "small_fft_impl.h"
}  // namespace adaptir::cpu::fft::avx512
ADAPTIR_AVX512_END
#undef ADAPTIR_FFT_LANES

#define ADAPTIR_FFT_LANES 8
ADAPTIR_AVX2_BEGIN
namespace adaptir::cpu::fft::avx2 {
#include "small_fft_impl.h"
}  // namespace adaptir::cpu::fft::avx2
ADAPTIR_AVX2_END
#undef ADAPTIR_FFT_LANES
#endif

#define ADAPTIR_FFT_LANES 8
namespace adaptir::cpu::fft::base {
#include "small_fft_impl.h"
}  // namespace adaptir::cpu::fft::base
#undef ADAPTIR_FFT_LANES

namespace adaptir::cpu::fft {

// isa.h's answers are false where the vector builds are not compiled.
bool uses_avx2() { return cpu_has_avx2_fma(); }

bool uses_avx512() { return cpu_has_avx512(); }

int64_t lanes() { return uses_avx512() ? 16 : 8; }

void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (uses_avx512()) return avx512::rfft2(in, out, nq, H, W);
  if (uses_avx2()) return avx2::rfft2(in, out, nq, H, W);
#endif
  base::rfft2(in, out, nq, H, W);
}

void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W) {
#ifdef ADAPTIR_AVX2_BUILDS
  if (uses_avx512()) return avx512::irfft2(in, out, nq, H, W);
  if (uses_avx2()) return avx2::irfft2(in, out, nq, H, W);
#endif
  base::irfft2(in, out, nq, H, W);
}

}  // namespace adaptir::cpu::fft
