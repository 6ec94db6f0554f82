// Times csrc/cpu/small_fft.h's 2-D real transforms alone, on one thread, as
// global_branch calls them for one group of planes after another: rfft2 of `planes`
// H x W planes, then irfft2 of the result, `repeats` times (both buffers stay in the
// caches after the first pass: 192 planes of 48 x 48 are 1.8 MB of input).
//
//   bench_small_fft [H W planes repeats]   (default: 48 48 192 400, edt-train's planes)
//
// Prints the build in use (avx2 or baseline) and, per transform, the minimum and the mean
// over the repeats, per call and per plane. To compare two revisions, build each (the
// standalone CMake build) and run the two binaries in turns: the machine's speed moves
// more between minutes than a small change does.
#include "cpu/small_fft.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace fft = adaptir::cpu::fft;

int main(int argc, char** argv) {
  const long H = argc > 1 ? std::atol(argv[1]) : 48;
  const long W = argc > 2 ? std::atol(argv[2]) : 48;
  const long planes = argc > 3 ? std::atol(argv[3]) : 192;
  const long repeats = argc > 4 ? std::atol(argv[4]) : 400;
  if (argc > 5 || planes < 1 || repeats < 1 || !fft::supported(H, W)) {
    std::fprintf(stderr,
                 "usage: bench_small_fft [H W planes repeats]; H and W at most %ld with no "
                 "prime factor but 2, 3, 5; planes, repeats >= 1\n",
                 static_cast<long>(fft::kMaxSide));
    return 2;
  }
  const long HW = H * W, HWf = H * (W / 2 + 1);
  std::vector<float> in(static_cast<size_t>(planes * HW)), spec(static_cast<size_t>(planes * 2 * HWf)),
      out(static_cast<size_t>(planes * HW));
  unsigned state = 12345u;
  for (float& v : in) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
  }
  double best[2] = {1e30, 1e30}, sum[2] = {0.0, 0.0};
  for (long r = 0; r <= repeats; ++r) {  // the first pass warms the caches and the plans
    const auto t0 = std::chrono::steady_clock::now();
    fft::rfft2(in.data(), spec.data(), planes, H, W);
    const auto t1 = std::chrono::steady_clock::now();
    fft::irfft2(spec.data(), out.data(), planes, H, W);
    const auto t2 = std::chrono::steady_clock::now();
    if (r == 0) continue;
    const double a = std::chrono::duration<double, std::micro>(t1 - t0).count();
    const double b = std::chrono::duration<double, std::micro>(t2 - t1).count();
    best[0] = std::min(best[0], a);
    best[1] = std::min(best[1], b);
    sum[0] += a;
    sum[1] += b;
  }
  // The round trip must give back the input (a broken build is not timed silently).
  double err = 0.0;
  for (size_t i = 0; i < in.size(); ++i) err = std::max(err, static_cast<double>(std::abs(out[i] - in[i])));
  std::printf("small_fft (%s build), %ld planes of %ld x %ld, %ld repeats, round-trip max error %.2e\n",
              fft::uses_avx2() ? "avx2" : "baseline", planes, H, W, repeats, err);
  const char* names[2] = {"rfft2", "irfft2"};
  for (int k = 0; k < 2; ++k)
    std::printf("  %-7s min %9.1f us  mean %9.1f us   per plane: min %.3f us\n", names[k], best[k],
                sum[k] / static_cast<double>(repeats), best[k] / static_cast<double>(planes));
  return err < 1e-4 ? 0 : 1;
}
