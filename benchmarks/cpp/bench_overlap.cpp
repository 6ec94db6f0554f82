// Whether this machine overlaps a stream read from memory with arithmetic on registers,
// the question behind SPEC 5.1's floor, which adds the C-wide passes' memory time to the
// products' arithmetic time.
//
//   bench_overlap [C rows repeats threads]   (default: 180 36864 15 2, edt-train's x)
//
// A (rows, C) float32 matrix is split into one contiguous part per thread (OpenMP). Per
// 64-byte line of its part, a thread adds the line's 16 floats into two vector sums,
// then runs K rounds of twelve independent fused multiply-add chains on registers
// (K * 192 flops per line). Cases, each the minimum and median over `repeats` passes,
// every pass after a 64 MiB walk has pushed the matrix out of the caches:
//   read      K = 0: the read alone;
//   arith K   the same loop over a 16 KiB buffer that stays in L1: the arithmetic alone;
//   both K    the matrix from memory with K rounds per line, hardware prefetch only;
//   both K pf the same, plus a software prefetch 16 lines ahead.
// Where "both" comes out near the larger of read and arith, the core overlaps the two;
// near their sum, it does not. The last column gives both / max(read, arith) from the
// minima.
// The same question for a write (the C-wide outputs, written with streaming stores), on
// a second, 64-byte aligned matrix of the same size:
//   write        K = 0: each line written with two 32-byte streaming stores, in order;
//   write K      K rounds per line, then the line's stores;
//   write K x16  16 K rounds, then the stores of 16 consecutive lines in a row;
// their last column is time / max(write, arith).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int64_t kLineFloats = 16;
constexpr int64_t kHotLines = 256;  // 16 KiB

// One pass over `lines` lines of a; returns a value that depends on every load and FMA.
template <int K, bool kPrefetch>
__attribute__((target("avx2,fma"), noinline)) float pass(const float* a, int64_t lines) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 c[12];
  for (int i = 0; i < 12; ++i) c[i] = _mm256_set1_ps(0.001f * static_cast<float>(i));
  const __m256 m = _mm256_set1_ps(0.9999f), b = _mm256_set1_ps(1e-4f);
  for (int64_t l = 0; l < lines; ++l) {
    if (kPrefetch) __builtin_prefetch(a + (l + 16) * kLineFloats, 0, 3);
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + l * kLineFloats));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + l * kLineFloats + 8));
    for (int k = 0; k < K; ++k) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) c[i] = _mm256_fmadd_ps(c[i], m, b);
    }
  }
  __m256 t = _mm256_add_ps(s0, s1);
  for (int i = 0; i < 12; ++i) t = _mm256_add_ps(t, c[i]);
  float o[8];
  _mm256_storeu_ps(o, t);
  return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}

// K rounds of the same arithmetic per line, every line of y (64-byte aligned) written with
// streaming stores: line by line (B = 1) or B lines at a time after their B * K rounds.
template <int K, int B>
__attribute__((target("avx2,fma"), noinline)) float write_pass(float* y, int64_t lines) {
  __m256 c[12];
  for (int i = 0; i < 12; ++i) c[i] = _mm256_set1_ps(0.001f * static_cast<float>(i));
  const __m256 m = _mm256_set1_ps(0.9999f), b = _mm256_set1_ps(1e-4f);
  for (int64_t l = 0; l < lines;) {
    const int n = l + B <= lines ? B : 1;  // the last lines one at a time
    for (int k = 0; k < K * n; ++k) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) c[i] = _mm256_fmadd_ps(c[i], m, b);
    }
    for (int q = 0; q < n; ++q) {
      _mm256_stream_ps(y + (l + q) * kLineFloats, c[q % 12]);
      _mm256_stream_ps(y + (l + q) * kLineFloats + 8, c[(q + 1) % 12]);
    }
    l += n;
  }
  _mm_sfence();
  __m256 t = c[0];
  for (int i = 1; i < 12; ++i) t = _mm256_add_ps(t, c[i]);
  float o[8];
  _mm256_storeu_ps(o, t);
  return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}

// The same arithmetic per line over the L1-resident buffer, `lines` lines in all.
template <int K>
float hot_pass(const float* hot, int64_t lines) {
  float s = 0.0f;
  for (int64_t l = 0; l < lines; l += kHotLines) s += pass<K, false>(hot, std::min(kHotLines, lines - l));
  return s;
}

struct Timing {
  double min_ms, median_ms;
};

}  // namespace

int main(int argc, char** argv) {
  const auto arg = [&](int i, int64_t d) { return argc > i ? std::atoll(argv[i]) : d; };
  const int64_t C = arg(1, 180), rows = arg(2, 36864);
  const int repeats = static_cast<int>(arg(3, 15));
  const int threads = static_cast<int>(arg(4, 2));
  if (C < 1 || rows < 1 || repeats < 1 || threads < 1 || threads > 256) {
    std::fprintf(stderr, "usage: %s [C rows repeats threads], all positive, threads <= 256\n", argv[0]);
    return 2;
  }
#ifndef _OPENMP
  if (threads > 1) {
    std::fprintf(stderr, "%s: built without OpenMP, so one thread only\n", argv[0]);
    return 2;
  }
#endif
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::fprintf(stderr, "%s: needs AVX2 and FMA\n", argv[0]);
    return 2;
  }
  const int64_t lines = rows * C / kLineFloats;
  const int64_t per_thread = lines / threads;
  if (per_thread < 1) {
    std::fprintf(stderr, "%s: fewer 64-byte lines than threads\n", argv[0]);
    return 2;
  }
  // 16 lines of slack past the end for the prefetch.
  std::vector<float> a(static_cast<size_t>((lines + 16) * kLineFloats));
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 97) * 0.01f;
  // The written matrix: 64-byte aligned for the streaming stores.
  std::vector<float> ybuf(static_cast<size_t>((lines + 16) * kLineFloats), 0.0f);
  float* const y = ybuf.data() + ((64 - (reinterpret_cast<uintptr_t>(ybuf.data()) & 63)) & 63) / 4;
  std::vector<float> hot(static_cast<size_t>(threads * kHotLines * kLineFloats), 0.5f);
  std::vector<char> evict(size_t{64} << 20, 1);
  volatile float sink = 0.0f;

  const auto run = [&](bool from_memory, auto&& body) {
    std::vector<double> ms;
    for (int r = 0; r < repeats; ++r) {
      if (from_memory)
        for (size_t i = 0; i < evict.size(); i += 64) evict[i] = static_cast<char>(evict[i] + 1);
      const auto t0 = std::chrono::steady_clock::now();
      float s = 0.0f;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : s)
#endif
      {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        s += body(t);
      }
      const std::chrono::duration<double, std::milli> d = std::chrono::steady_clock::now() - t0;
      ms.push_back(d.count());
      sink = sink + s;
    }
    std::sort(ms.begin(), ms.end());
    return Timing{ms.front(), ms[ms.size() / 2]};
  };
  const auto part = [&](int t) { return a.data() + t * per_thread * kLineFloats; };
  const auto hot_of = [&](int t) { return hot.data() + t * kHotLines * kLineFloats; };

  const double bytes = static_cast<double>(per_thread * threads * kLineFloats * 4);
  std::printf("%lld x %lld float32 (%.1f MB), %d threads, min and median of %d passes\n",
              static_cast<long long>(rows), static_cast<long long>(C), bytes * 1e-6, threads, repeats);
  const Timing read = run(true, [&](int t) { return pass<0, false>(part(t), per_thread); });
  std::printf("read           min %7.3f ms  median %7.3f ms  %5.1f GB/s\n", read.min_ms,
              read.median_ms, bytes / read.min_ms * 1e-6);

  // K rounds alone, then the pass over memory (alone: `mem`) with them in two forms,
  // printed as "<name> K=<K>" and "<name> K=<K><suffix>", each against the larger of
  // the two alone (`ratio` / max).
  const auto row = [&](int K, const Timing& mem, const char* name, const char* suffix,
                       const char* ratio, auto hot_body, auto one_body, auto two_body) {
    const Timing arith = run(false, hot_body);
    const Timing one = run(true, one_body);
    const Timing two = run(true, two_body);
    const double flops = static_cast<double>(per_thread * threads) * K * 192.0;
    const double larger = std::max(mem.min_ms, arith.min_ms);
    std::printf("arith K=%d      min %7.3f ms  median %7.3f ms  %5.0f GFLOP/s\n", K, arith.min_ms,
                arith.median_ms, flops / arith.min_ms * 1e-6);
    char label[32];
    std::snprintf(label, sizeof label, "%s K=%d", name, K);
    std::printf("%-14s min %7.3f ms  median %7.3f ms  %s / max %.2f  (sum / max %.2f)\n", label,
                one.min_ms, one.median_ms, ratio, one.min_ms / larger,
                (mem.min_ms + arith.min_ms) / larger);
    std::snprintf(label, sizeof label, "%s K=%d%s", name, K, suffix);
    std::printf("%-14s min %7.3f ms  median %7.3f ms  %s / max %.2f\n", label, two.min_ms,
                two.median_ms, ratio, two.min_ms / larger);
  };
#define ADAPTIR_ROW(K)                                                          \
  row(K, read, "both", " pf", "both",                                         \
      [&](int t) { return hot_pass<K>(hot_of(t), per_thread); },              \
      [&](int t) { return pass<K, false>(part(t), per_thread); },             \
      [&](int t) { return pass<K, true>(part(t), per_thread); })
  ADAPTIR_ROW(1);
  ADAPTIR_ROW(2);
  ADAPTIR_ROW(3);
  ADAPTIR_ROW(4);
#undef ADAPTIR_ROW

  const auto ypart = [&](int t) { return y + t * per_thread * kLineFloats; };
  const Timing write = run(true, [&](int t) { return write_pass<0, 1>(ypart(t), per_thread); });
  std::printf("write          min %7.3f ms  median %7.3f ms  %5.1f GB/s\n", write.min_ms,
              write.median_ms, bytes / write.min_ms * 1e-6);
#define ADAPTIR_WROW(K)                                                         \
  row(K, write, "write", " x16", "time",                                      \
      [&](int t) { return hot_pass<K>(hot_of(t), per_thread); },              \
      [&](int t) { return write_pass<K, 1>(ypart(t), per_thread); },          \
      [&](int t) { return write_pass<K, 16>(ypart(t), per_thread); })
  ADAPTIR_WROW(1);
  ADAPTIR_WROW(2);
  ADAPTIR_WROW(3);
#undef ADAPTIR_WROW
  std::printf("(checksum %g)\n", static_cast<double>(sink));
  return 0;
}

#else
int main(int, char** argv) {
  std::fprintf(stderr, "%s: x86-64 with GCC or Clang only\n", argv[0]);
  return 2;
}
#endif
