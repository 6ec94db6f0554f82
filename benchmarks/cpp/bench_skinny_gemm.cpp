// Times the three skinny products of csrc/cpu/skinny_gemm.h alone, for every build this
// CPU runs (avx512, avx2, baseline), the way the fused operators call them: row blocks
// of a (rows, C) matrix, h hidden columns, the blocks shared out among `threads` threads
// (OpenMP, dynamic: as parallel_items does in the module).
//
//   bench_skinny_gemm [C h rows block repeats threads]   (default: 180 12 36864 364 15 1, edt-train)
//
// Two cases per build:
//   hot: every call works on its thread's first row block (its C-wide rows stay in
//        L1/L2);
//   mem: the calls walk all rows, as they do inside the module, after a pass over a
//        64 MiB buffer has pushed the C-wide side out of the caches; expand then writes
//        with streaming stores.
// Prints the minimum over `repeats` passes and the arithmetic rate 2 * rows * C * h / t,
// after the core's float32 FMA peak at 256 and 512 bits (twelve independent chains of
// fused multiply-adds, where the CPU has the instructions) to compare the rates with,
// and the time of one read and of one streaming write of the (rows, C) matrix in the
// same blocks on the same threads: a product from memory costs at least its read (or
// write), and at most about that plus its time from L1/L2.
#include "cpu/skinny_gemm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

using adaptir::cpu::gemm::Build;

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
// GFLOP/s of twelve independent FMA chains of LANES-float vectors, the best of five
// passes. The body is spelled out per width (a lambda would not inherit the function's
// target); the empty asm keeps each chain a real FMA per step, in a register.
#define ADAPTIR_STEP(V)    \
  do {                     \
    V = FMA(V, m, b);      \
    __asm__("" : "+v"(V)); \
  } while (0)
#define ADAPTIR_FMA_PEAK(VEC, SET1, FMA, FIRST, LANES)                                  \
  constexpr long kIters = 20000000;                                                   \
  double best = 0.0;                                                                  \
  for (int pass = 0; pass < 5; ++pass) {                                              \
    VEC a0 = SET1(0.5f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, \
        a8 = a0, a9 = a0, a10 = a0, a11 = a0;                                         \
    const VEC m = SET1(0.9999f), b = SET1(1e-6f);                                     \
    const auto t0 = std::chrono::steady_clock::now();                                 \
    for (long k = 0; k < kIters; ++k) {                                               \
      ADAPTIR_STEP(a0); ADAPTIR_STEP(a1); ADAPTIR_STEP(a2); ADAPTIR_STEP(a3);         \
      ADAPTIR_STEP(a4); ADAPTIR_STEP(a5); ADAPTIR_STEP(a6); ADAPTIR_STEP(a7);         \
      ADAPTIR_STEP(a8); ADAPTIR_STEP(a9); ADAPTIR_STEP(a10); ADAPTIR_STEP(a11);       \
    }                                                                                 \
    const std::chrono::duration<double> t = std::chrono::steady_clock::now() - t0;    \
    volatile float sink = FIRST(a0) + FIRST(a1) + FIRST(a2) + FIRST(a3) + FIRST(a4) +  \
                          FIRST(a5) + FIRST(a6) + FIRST(a7) + FIRST(a8) + FIRST(a9) +  \
                          FIRST(a10) + FIRST(a11);                                    \
    (void)sink;                                                                       \
    best = std::max(best, 2.0 * (LANES) * 12 * kIters / t.count() * 1e-9);            \
  }                                                                                   \
  return best;

__attribute__((target("avx2,fma"))) static double peak256() {
#define FMA _mm256_fmadd_ps
  ADAPTIR_FMA_PEAK(__m256, _mm256_set1_ps, FMA, _mm256_cvtss_f32, 8)
#undef FMA
}

__attribute__((target("avx512f"))) static double peak512() {
#define FMA _mm512_fmadd_ps
  ADAPTIR_FMA_PEAK(__m512, _mm512_set1_ps, FMA, _mm512_cvtss_f32, 16)
#undef FMA
}
#undef ADAPTIR_FMA_PEAK
#undef ADAPTIR_STEP

static void print_peaks() {
  __builtin_cpu_init();
  std::printf("FMA peak, one thread:");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    std::printf(" 256-bit %.0f GFLOP/s", peak256());
  if (__builtin_cpu_supports("avx512f")) std::printf(", 512-bit %.0f GFLOP/s", peak512());
  std::printf("\n");
}
#else
static void print_peaks() {}
#endif

// Calls body(r0, n, thread) for every block of `rows` rows on `threads` threads.
template <typename F>
static void blocks(int64_t rows, int64_t block, int threads, const F& body) {
  const int64_t count = (rows + block - 1) / block;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
  for (int64_t b = 0; b < count; ++b) {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    body(b * block, std::min(block, rows - b * block), t);
  }
}

// Sum of n floats (the compiler vectorises it); a read pass over memory.
static float sum_floats(const float* a, int64_t n) {
  float s[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) s[k] += a[i + k];
  for (; i < n; ++i) s[0] += a[i];
  float t = 0.0f;
  for (const float v : s) t += v;
  return t;
}

// dst[0, n) = v with streaming stores where dst is 16-byte aligned.
static void stream_fill(float* dst, int64_t n, float v) {
  int64_t i = 0;
#if defined(__x86_64__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = v;
  const __m128 vv = _mm_set1_ps(v);
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, vv);
  _mm_sfence();
#endif
  for (; i < n; ++i) dst[i] = v;
}

int main(int argc, char** argv) {
  const auto arg = [&](int i, int64_t d) { return argc > i ? std::atoll(argv[i]) : d; };
  const int64_t C = arg(1, 180), h = arg(2, 12), rows = arg(3, 36864), block = arg(4, 364);
  const int repeats = static_cast<int>(arg(5, 15));
  const int threads = static_cast<int>(arg(6, 1));
  if (C < 1 || h < 1 || rows < 1 || block < 1 || repeats < 1 || threads < 1 || threads > 256) {
    std::fprintf(stderr, "usage: %s [C h rows block repeats threads], all positive, threads <= 256\n",
                 argv[0]);
    return 2;
  }
#ifndef _OPENMP
  if (threads > 1) {
    std::fprintf(stderr, "%s: built without OpenMP, so one thread only\n", argv[0]);
    return 2;
  }
#endif
  const int64_t hp = adaptir::cpu::gemm::padded(h);
  std::vector<float> x(rows * C), y(rows * C), wt(C * hp, 0.0f), w(h * C), z(rows * hp),
      p(threads * h * C);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 97) * 0.01f;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < h; ++j) wt[c * hp + j] = static_cast<float>((c + j) % 13) * 0.1f;
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 11) * 0.1f;
  for (size_t i = 0; i < z.size(); ++i) z[i] = static_cast<float>(i % 7) * 0.1f;
  const double flops = 2.0 * static_cast<double>(rows) * C * h;
  const double bytes = 4.0 * static_cast<double>(rows) * C;
  print_peaks();
  std::printf("C %lld, h %lld, rows %lld in blocks of %lld, min of %d, %d thread%s\n",
              static_cast<long long>(C), static_cast<long long>(h),
              static_cast<long long>(rows), static_cast<long long>(block), repeats, threads,
              threads == 1 ? "" : "s");
  // Written before each timed pass from memory, so that the pass finds nothing of x or
  // y in the caches (inside the module, other C-wide passes run in between).
  std::vector<float> evict(size_t{16} << 20, 0.0f);
  const auto flush = [&] {
    for (size_t i = 0; i < evict.size(); i += 16) evict[i] += 1.0f;
  };
  const auto seconds = [](const auto& t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  {
    std::vector<float> partial(static_cast<size_t>(threads) * 16, 0.0f);
    double best_read = 1e30, best_write = 1e30;
    for (int rep = 0; rep < repeats; ++rep) {
      flush();
      auto t0 = std::chrono::steady_clock::now();
      blocks(rows, block, threads, [&](int64_t r0, int64_t n, int t) {
        partial[t * 16] += sum_floats(x.data() + r0 * C, n * C);
      });
      best_read = std::min(best_read, seconds(t0));
      flush();
      t0 = std::chrono::steady_clock::now();
      blocks(rows, block, threads, [&](int64_t r0, int64_t n, int) {
        stream_fill(y.data() + r0 * C, n * C, 1.0f);
      });
      best_write = std::min(best_write, seconds(t0));
    }
    std::printf("memory    read %7.3f ms %5.1f GB/s   streaming write %7.3f ms %5.1f GB/s   (checksum %g)\n",
                best_read * 1e3, bytes / best_read * 1e-9, best_write * 1e3, bytes / best_write * 1e-9,
                static_cast<double>(partial[0] + evict[0]));
  }
  for (const Build& b : adaptir::cpu::gemm::builds()) {
    for (const bool hot : {true, false}) {
      double best[3] = {1e30, 1e30, 1e30};
      for (int rep = 0; rep < repeats; ++rep)
        for (int op = 0; op < 3; ++op) {
          if (!hot) flush();
          const auto t0 = std::chrono::steady_clock::now();
          blocks(rows, block, threads, [&](int64_t r0, int64_t n, int t) {
            // hot: each thread keeps to its own first block (n rows of it).
            const int64_t at = hot ? std::min<int64_t>(t * block, rows - n) : r0;
            if (op == 0)
              b.rows_dot(x.data() + at * C, n, C, wt.data(), h, hp, nullptr, z.data() + at * hp, hp);
            else if (op == 1)
              b.expand(z.data() + at * hp, hp, n, h, w.data(), C, y.data() + at * C, !hot);
            else
              b.outer(z.data() + at * hp, hp, n, h, x.data() + at * C, C, p.data() + t * h * C);
          });
          best[op] = std::min(best[op], seconds(t0));
        }
      std::printf("%-9s %s  rows_dot %7.3f ms %4.0f GFLOP/s   expand %7.3f ms %4.0f GFLOP/s   "
                  "outer %7.3f ms %4.0f GFLOP/s\n",
                  b.name, hot ? "hot" : "mem", best[0] * 1e3, flops / best[0] * 1e-9,
                  best[1] * 1e3, flops / best[1] * 1e-9, best[2] * 1e3, flops / best[2] * 1e-9);
    }
  }
  // Keep the results observable.
  double s = 0.0;
  for (const float v : p) s += v;
  std::printf("(checksum %g)\n", s + z[0] + y[rows * C - 1]);
  return 0;
}
