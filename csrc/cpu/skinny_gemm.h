// Skinny float32 matrix products for the backbone-width GEMMs of the fused operators:
// one side is rows x C (C = backbone width, memory-bound), the other C x h with a small
// hidden width h. Single-threaded (called per row block inside a parallel loop), with
// a fixed summation order, so results never depend on the thread count. An AVX-512 or
// AVX2+FMA version is chosen at run time where the CPU has it; the two give bitwise
// equal results (each output element comes from the same chains of fused multiply-adds).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace adaptir::cpu::gemm {

// Columns of a packed operand: h rounded up to a multiple of 8.
inline int64_t padded(int64_t h) { return (h + 7) / 8 * 8; }

// z[r, j] = bias[j] + sum_c x[r, c] wt[c, j] for j < h; x: (R, C) rows of stride C,
// wt: (C, hp) packed (hp = padded(h), zero columns beyond h), bias: hp values or
// nullptr, z: rows of stride ldz >= hp, whose columns [h, hp) may or may not be written.
void rows_dot(const float* x, int64_t R, int64_t C, const float* wt, int64_t h, int64_t hp,
              const float* bias, float* z, int64_t ldz);

// y[r, c] = sum_{j < h} g[r, j] w[j, c]; g rows of stride ldg, w: (h, C), y: (R, C).
// stream: write y with non-temporal stores (for outputs much larger than the caches).
void expand(const float* g, int64_t ldg, int64_t R, int64_t h, const float* w, int64_t C,
            float* y, bool stream = false);

// Outputs at least this large are written with streaming stores.
constexpr int64_t kStreamBytes = int64_t{16} << 20;

// p[j, c] = sum_r g[r, j] x[r, c] for j < h; g rows of stride ldg, x: (R, C), p: (h, C).
void outer(const float* g, int64_t ldg, int64_t R, int64_t h, const float* x, int64_t C,
           float* p);

// ---- shared by the builds --------------------------------------------------------

// Rows per sub-block of outer: rows of x that fit in L1/L2, whose products are added into
// p in row order. Every build uses this, so each element of p is the same chain of
// fused multiply-adds in each (their results are bitwise equal).
inline int64_t outer_block_rows(int64_t C) {
  return std::min<int64_t>(64, std::max<int64_t>(8, (48 * 1024) / (4 * std::max<int64_t>(C, 1))));
}

// rows_dot in 8-column vectors (h a multiple of 8, as at IPT), and every rows_dot of the
// AVX-512 build, fetch the rows kRowsAhead blocks of rows ahead into L2 (prefetcht1). On
// a Xeon, fetching them into L1 three blocks ahead was up to 2x faster than the
// non-temporal hint one block ahead; on an AMD EPYC (Zen 4) fetching into L2 instead was
// 1.1-1.45x faster again, from memory (benchmarks/cpp/bench_skinny_gemm).
constexpr int kRowsAhead = 3;
constexpr int kRowsHint = 2;

// rows_dot in column pairs (h = 12 at EDT) of the AVX2 and baseline builds reads its R
// rows as what they are in memory, one stream of R * C floats, and fetches that stream
// in address order kStreamLines cache lines ahead into L1 (prefetcht0), one line for each
// 64 bytes its row blocks consume. The row blocks walk RB rows side by side, which the
// hardware prefetchers do not follow. At edt-train's shape on an AMD EPYC (Zen 4) with
// two threads, rows_dot from memory took 1.13-1.46x the larger of its time from L1/L2 and
// one read of the rows this way, against 1.34-1.56x fetched per row kRowsAhead blocks
// ahead into L2 (benchmarks/RESULTS.md); a read and arithmetic on registers overlap
// almost fully there (benchmarks/cpp/bench_overlap). The same stream made the 8-column
// rows_dot at ipt-train's shape (C = 576, h = 24) 1.3-1.4x slower from memory: its
// weights, 55 KiB there, do not stay in L1 beside it.
constexpr int64_t kStreamLines = 40;

// Prefetches the cache lines [next, end) into every level, at most `lines` of them,
// advancing next.
inline void prefetch_lines(const char*& next, const char* end, int64_t lines) {
  for (int64_t k = 0; k < lines && next < end; ++k, next += 64) __builtin_prefetch(next, 0, 3);
}

// The stream of rows_dot in column pairs, fetched as described at kStreamLines above.
struct StreamFetch {
  const char* next;
  const char* end;
  // Fetches the first kStreamLines lines of the n floats at x.
  StreamFetch(const float* x, int64_t n)
      : next(reinterpret_cast<const char*>(x)), end(reinterpret_cast<const char*>(x + n)) {
    prefetch_lines(next, end, kStreamLines);
  }
  // One more line, until the end of the stream.
  void line() { prefetch_lines(next, end, 1); }
  // Called once per step that consumes `bytes` (1 to 64) more of the stream, k the step's
  // index: one line for each multiple of 64 bytes that the step's bytes [k * bytes,
  // (k + 1) * bytes) contain.
  void step(int64_t k, int64_t bytes) {
    const int64_t o = (k * bytes) & 63;
    if (o == 0 || o + bytes > 64) line();
  }
};

// The next sub-block of outer's rows, fetched a few lines per row of the tiles that
// compute the current one. Spread this way its misses overlap the arithmetic; fetched
// in one burst per tile, outer ran 1.7-2.1x slower from memory on an AMD EPYC
// (Zen 4), where the burst stalls the loads of the tile.
struct LineFetch {
  const char* next;
  const char* end;
  int64_t per_row;
  void row() { prefetch_lines(next, end, per_row); }
};

// outer's walk over its sub-blocks, shared by the builds: fetches the first sub-block,
// then for each calls block(gs, n, xs, add, fetch), which computes p = (add ? p : 0)
// + gs^T xs over the sub-block's n rows in `passes` passes over its rows (tiles of
// columns and rows of p), calling fetch.row() once per row of each pass; whatever of
// the next sub-block is left is fetched after it.
template <typename Block>
void outer_blocks(const float* g, int64_t ldg, int64_t R, const float* x, int64_t C,
                  int64_t passes, const Block& block) {
  const int64_t sub = outer_block_rows(C);
  for (int64_t e = 0; e < std::min(sub, R) * C; e += 16) __builtin_prefetch(x + e, 0, 3);
  for (int64_t r0 = 0; r0 < R; r0 += sub) {
    const int64_t n = std::min(sub, R - r0);
    const float* xs = x + r0 * C;
    LineFetch fetch;
    fetch.next = reinterpret_cast<const char*>(xs + n * C);
    fetch.end = reinterpret_cast<const char*>(xs + (n + std::min(sub, R - r0 - n)) * C);
    fetch.per_row = (fetch.end - fetch.next) / 64 / (std::max<int64_t>(passes, 1) * n) + 1;
    block(g + r0 * ldg, n, xs, r0 > 0, fetch);
    prefetch_lines(fetch.next, fetch.end, (fetch.end - fetch.next) / 64 + 1);
  }
}

// rows_dot of the vector builds for h with 1-4 columns past a multiple of 8 (h = 12 at
// EDT): vectors of 8 columns would leave 4-7 lanes of the last one idle (a quarter of
// the arithmetic at h = 12). Instead lanes 2 k and 2 k + 1 of a group of 8 gather column
// 4 v + k (v the group) over the even and over the odd c, so one broadcast of the
// adjacent pair (x[r, c], x[r, c + 1]) feeds ceil(h / 4) groups. Each element is
//   z[r, j] = (bias[j] + x[r, 0] wt[0, j] + x[r, 2] wt[2, j] + ...)
//           + (x[r, 1] wt[1, j] + x[r, 3] wt[3, j] + ...),
// each parenthesis one chain of fused multiply-adds in c order, in every vector build.
// At edt-train's (36864, 180) x (180, 12) on an AMD EPYC (Zen 4), two threads, the AVX2
// product took 0.78-0.86 ms from L2 against 0.94-1.06 with vectors of 8 columns, and
// 1.01-1.27 ms from memory against 1.37-1.59 (benchmarks/cpp/bench_skinny_gemm). The
// groups per row (1, 3 or 5), or 0 where rows_dot uses vectors of 8 columns.
inline int pair_groups(int64_t h) {
  const int64_t v = (h + 3) / 4;
  return (h % 8 >= 1 && h % 8 <= 4 && v <= 5) ? static_cast<int>(v) : 0;
}

// wt and the bias packed for the groups, in a buffer of the calling thread.
struct PairWeights {
  const float* w;     // w[(c2 V + v) 8 + 2 k + e] = wt[2 c2 + e, 4 v + k] (0 past C or hp)
  const float* bias;  // V groups: bias[4 v + k] in lane 2 k, 0 in lane 2 k + 1
};

// Packs wt ((C, hp), zero columns beyond h) and bias (hp values or nullptr) for V
// groups; valid until the thread's next call.
inline PairWeights pack_pairs(const float* wt, int64_t C, int64_t hp, const float* bias, int V) {
  thread_local std::vector<float> buf;
  const int64_t C2 = (C + 1) / 2;
  buf.resize(static_cast<size_t>((C2 + 1) * V * 8));
  float* wi = buf.data();
  for (int64_t c2 = 0; c2 <= C2; ++c2)
    for (int64_t j = 0; j < 4 * V; ++j)
      for (int e = 0; e < 2; ++e) {
        const int64_t c = 2 * c2 + e;
        float val = 0.0f;
        if (c2 < C2 && c < C && j < hp) val = wt[c * hp + j];
        if (c2 == C2 && e == 0 && bias && j < hp) val = bias[j];
        wi[(c2 * V + j / 4) * 8 + 2 * (j % 4) + e] = val;
      }
  return {wi, wi + C2 * V * 8};
}

// Whether the AVX2+FMA versions are in use (the AVX-512 ones may be in use instead).
bool uses_avx2();

// Whether the AVX-512 versions are in use.
bool uses_avx512();

// One build of the three products (for tests that compare the builds). expand's
// streaming stores need an _mm_sfence() before another thread reads y.
struct Build {
  const char* name;
  void (*rows_dot)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, const float*,
                   float*, int64_t);
  void (*expand)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*, bool);
  void (*outer)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*);
};

// The builds this process can run: "baseline", then "avx2" where in use and "avx512"
// where the CPU runs it, chosen or not (ADAPTIR_CPU_AVX2=0 / ADAPTIR_CPU_AVX512=0 leave
// them out).
std::vector<Build> builds();

}  // namespace adaptir::cpu::gemm
