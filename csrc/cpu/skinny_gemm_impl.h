// Bodies of the skinny float32 matrix products of skinny_gemm.h. No include guard:
// skinny_gemm.cpp includes this file once per instruction set, inside a namespace,
// with SG_ACC (vector accumulators kept in registers) defined.
//
#include "lanes8_impl.h"

#define SG_AI static inline __attribute__((always_inline))

// Non-temporal store of 8 floats as two 16-byte halves: p must be 16-byte aligned.
SG_AI void st_nt(float* p, vf v) {
#if defined(__x86_64__)
  __m128 lo, hi;
  __builtin_memcpy(&lo, &v, 16);
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
  _mm_stream_ps(p, lo);
  _mm_stream_ps(p + 4, hi);
#else
  st(p, v);
#endif
}

// Non-temporal store of the upper 4 lanes of v at p (16-byte aligned).
SG_AI void st_nt_hi(float* p, vf v) {
#if defined(__x86_64__)
  __m128 hi;
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
  _mm_stream_ps(p, hi);
#else
  __builtin_memcpy(p, reinterpret_cast<const char*>(&v) + 16, 16);
#endif
}

// ---- z = x @ wt (+ bias): x (rows, C), wt (C, ldw) packed, z (rows, ldz) ----------

template <int HV, int RB>
SG_AI void dot_rows(const float* x, int64_t C, const float* wt, int64_t ldw, const float* bias,
                    float* z, int64_t ldz) {
  vf acc[RB][HV];
  for (int v = 0; v < HV; ++v) {
    const vf b = bias ? ld(bias + 8 * v) : bc(0.0f);
    for (int i = 0; i < RB; ++i) acc[i][v] = b;
  }
  for (int64_t c = 0; c < C; ++c) {
    if ((c & 15) == 0)  // the rows kRowsAhead blocks ahead (skinny_gemm.h)
      for (int i = 0; i < RB; ++i)
        __builtin_prefetch(x + (kRowsAhead * RB + i) * C + c, 0, kRowsHint);
    vf w[HV];
    for (int v = 0; v < HV; ++v) w[v] = ld(wt + c * ldw + 8 * v);
    for (int i = 0; i < RB; ++i) {
      const vf xb = bc(x[i * C + c]);
      for (int v = 0; v < HV; ++v) acc[i][v] += xb * w[v];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < HV; ++v) st(z + i * ldz + 8 * v, acc[i][v]);
}

template <int HV>
static void dot_hv(const float* x, int64_t R, int64_t C, const float* wt, int64_t ldw,
                   const float* bias, float* z, int64_t ldz) {
  constexpr int RB = SG_ACC / HV > 0 ? SG_ACC / HV : 1;
  int64_t r = 0;
  for (; r + RB <= R; r += RB) dot_rows<HV, RB>(x + r * C, C, wt, ldw, bias, z + r * ldz, ldz);
  for (; r < R; ++r) dot_rows<HV, 1>(x + r * C, C, wt, ldw, bias, z + r * ldz, ldz);
}

#ifdef SG_PAIRS
// ---- rows_dot in column pairs (skinny_gemm.h: pair_groups) ------------------------

// RB rows: lanes 2 k and 2 k + 1 of vector v gather column 4 v + k over the even and the
// odd c; one broadcast of (x[r, c], x[r, c + 1]) feeds the row's V fused multiply-adds.
template <int V, int RB>
SG_AI void dot_pairs(const float* x, int64_t C, const float* wi, const float* bi, int64_t h,
                     float* z, int64_t ldz, StreamFetch& fetch) {
  __m256 acc[RB][V];
  for (int v = 0; v < V; ++v) {
    const __m256 b = _mm256_loadu_ps(bi + 8 * v);
    for (int i = 0; i < RB; ++i) acc[i][v] = b;
  }
  const int64_t C2 = C / 2;
  for (int64_t c2 = 0; c2 < C2; ++c2) {
    fetch.step(c2, 8 * RB);  // skinny_gemm.h: StreamFetch
    __m256 w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm256_loadu_ps(wi + (c2 * V + v) * 8);
    for (int i = 0; i < RB; ++i) {
      double pair;
      __builtin_memcpy(&pair, x + i * C + 2 * c2, sizeof pair);
      const __m256 xb = _mm256_castpd_ps(_mm256_set1_pd(pair));
      for (int v = 0; v < V; ++v) acc[i][v] = _mm256_fmadd_ps(xb, w[v], acc[i][v]);
    }
  }
  if (C % 2 == 1) {  // the last column: the even lanes only (the odd ones add 0 * 0)
    const __m256 even = _mm256_castsi256_ps(_mm256_set_epi32(0, -1, 0, -1, 0, -1, 0, -1));
    __m256 w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm256_loadu_ps(wi + (C2 * V + v) * 8);
    for (int i = 0; i < RB; ++i) {
      const __m256 xb = _mm256_and_ps(_mm256_set1_ps(x[i * C + C - 1]), even);
      for (int v = 0; v < V; ++v) acc[i][v] = _mm256_fmadd_ps(xb, w[v], acc[i][v]);
    }
  }
  float t[RB][V * 8];  // all stores first, at constant indices: acc stays in registers
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(t[i] + 8 * v, acc[i][v]);
  for (int i = 0; i < RB; ++i)
    for (int64_t j = 0; j < h; ++j) z[i * ldz + j] = t[i][2 * j] + t[i][2 * j + 1];
}

template <int V>
static void rows_dot_pairs(const float* x, int64_t R, int64_t C, const float* wt, int64_t hp,
                           const float* bias, int64_t h, float* z, int64_t ldz) {
  constexpr int RB = V == 1 ? 8 : (V == 3 ? 4 : 2);
  const PairWeights pw = pack_pairs(wt, C, hp, bias, V);
  StreamFetch fetch(x, R * C);
  int64_t r = 0;
  for (; r + RB <= R; r += RB)
    dot_pairs<V, RB>(x + r * C, C, pw.w, pw.bias, h, z + r * ldz, ldz, fetch);
  for (; r < R; ++r) dot_pairs<V, 1>(x + r * C, C, pw.w, pw.bias, h, z + r * ldz, ldz, fetch);
}
#endif

// hp (columns of wt and z to produce) is a multiple of 8; h <= hp columns are used.
static void rows_dot_impl(const float* x, int64_t R, int64_t C, const float* wt, int64_t h,
                          int64_t hp, const float* bias, float* z, int64_t ldz) {
#ifdef SG_PAIRS
  switch (pair_groups(h)) {
    case 1: return rows_dot_pairs<1>(x, R, C, wt, hp, bias, h, z, ldz);
    case 3: return rows_dot_pairs<3>(x, R, C, wt, hp, bias, h, z, ldz);
    case 5: return rows_dot_pairs<5>(x, R, C, wt, hp, bias, h, z, ldz);
    default: break;
  }
#endif
  (void)h;
  for (int64_t j0 = 0; j0 < hp; j0 += 32) {
    const int64_t hv = std::min<int64_t>(4, (hp - j0) / 8);
    const float* b = bias ? bias + j0 : nullptr;
    switch (hv) {
      case 1: dot_hv<1>(x, R, C, wt + j0, hp, b, z + j0, ldz); break;
      case 2: dot_hv<2>(x, R, C, wt + j0, hp, b, z + j0, ldz); break;
      case 3: dot_hv<3>(x, R, C, wt + j0, hp, b, z + j0, ldz); break;
      default: dot_hv<4>(x, R, C, wt + j0, hp, b, z + j0, ldz); break;
    }
  }
}

// ---- y = g @ w: g (rows, ldg) with h used columns, w (h, C), y (rows, C) ----------

// acc[i] = y[i, C-8 .. C) for RB rows: the last 8 columns as one full vector (C >= 8).
template <int RB>
SG_AI void expand_last8(const float* g, int64_t ldg, int64_t h, const float* w, int64_t C,
                        vf* acc) {
  for (int i = 0; i < RB; ++i) acc[i] = bc(0.0f);
  for (int64_t j = 0; j < h; ++j) {
    const vf wv = ld(w + j * C + (C - 8));
    for (int i = 0; i < RB; ++i) acc[i] += bc(g[i * ldg + j]) * wv;
  }
}

template <int CV, int RB, bool NT = false>
SG_AI void expand_tile(const float* g, int64_t ldg, int64_t h, const float* w, int64_t C,
                       float* y) {
  vf acc[RB][CV];
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < CV; ++v) acc[i][v] = bc(0.0f);
  for (int64_t j = 0; j < h; ++j) {
    vf wv[CV];
    for (int v = 0; v < CV; ++v) wv[v] = ld(w + j * C + 8 * v);
    for (int i = 0; i < RB; ++i) {
      const vf gb = bc(g[i * ldg + j]);
      for (int v = 0; v < CV; ++v) acc[i][v] += gb * wv[v];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < CV; ++v) {
      if constexpr (NT)
        st_nt(y + i * C + 8 * v, acc[i][v]);
      else
        st(y + i * C + 8 * v, acc[i][v]);
    }
}

// Rows of y written straight from the registers with non-temporal stores, each row
// front to back (so the write-combining buffers fill whole lines). Needs C a multiple
// of 4, C >= 8 and y 16-byte aligned: every store is then 16-byte aligned.
template <int RB>
SG_AI void expand_rows_nt(const float* g, int64_t ldg, int64_t h, const float* w, int64_t C,
                          float* y) {
  constexpr int CV = SG_ACC / RB > 3 ? 3 : (SG_ACC / RB > 0 ? SG_ACC / RB : 1);
  int64_t c = 0;
  for (; c + 8 * CV <= C; c += 8 * CV) expand_tile<CV, RB, true>(g, ldg, h, w + c, C, y + c);
  for (; c + 8 <= C; c += 8) expand_tile<1, RB, true>(g, ldg, h, w + c, C, y + c);
  if (c < C) {  // C - c == 4: the upper half of the vector ending at C
    vf acc[RB];
    expand_last8<RB>(g, ldg, h, w, C, acc);
    for (int i = 0; i < RB; ++i) st_nt_hi(y + i * C + c, acc[i]);
  }
}

template <int RB>
SG_AI void expand_rows(const float* g, int64_t ldg, int64_t h, const float* w, int64_t C,
                       float* y) {
  constexpr int CV = SG_ACC / RB > 3 ? 3 : (SG_ACC / RB > 0 ? SG_ACC / RB : 1);
  int64_t c = 0;
  for (; c + 8 * CV <= C; c += 8 * CV) expand_tile<CV, RB>(g, ldg, h, w + c, C, y + c);
  for (; c + 8 <= C; c += 8) expand_tile<1, RB>(g, ldg, h, w + c, C, y + c);
  if (c < C) {
    const int64_t rem = C - c;
    if (C >= 8) {
      // The last 8 columns as one full vector ending at C: every load stays in bounds, and
      // only the rem new columns are stored.
      vf acc[RB];
      expand_last8<RB>(g, ldg, h, w, C, acc);
      for (int i = 0; i < RB; ++i) {
        float tmp[8];
        st(tmp, acc[i]);
        __builtin_memcpy(y + i * C + c, tmp + (8 - rem), sizeof(float) * rem);
      }
      return;
    }
    vf acc[RB];
    for (int i = 0; i < RB; ++i) acc[i] = bc(0.0f);
    for (int64_t j = 0; j < h; ++j) {
      float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      __builtin_memcpy(tmp, w + j * C + c, sizeof(float) * rem);
      const vf wv = ld(tmp);
      for (int i = 0; i < RB; ++i) acc[i] += bc(g[i * ldg + j]) * wv;
    }
    for (int i = 0; i < RB; ++i) {
      float tmp[8];
      st(tmp, acc[i]);
      __builtin_memcpy(y + i * C + c, tmp, sizeof(float) * rem);
    }
  }
}

static void expand_impl(const float* g, int64_t ldg, int64_t R, int64_t h, const float* w,
                        int64_t C, float* y, bool stream) {
  constexpr int RB = SG_ACC >= 12 ? 4 : 2;
  if (!stream) {
    int64_t r = 0;
    for (; r + RB <= R; r += RB) expand_rows<RB>(g + r * ldg, ldg, h, w, C, y + r * C);
    for (; r < R; ++r) expand_rows<1>(g + r * ldg, ldg, h, w, C, y + r * C);
    return;
  }
  // Streaming stores: no read-for-ownership of the destination lines, straight from the
  // registers. When this path was added (a1af522; one thread, 36864 rows) it was about
  // 1.15x faster than staging at C = 180, h = 12 and 1.2x slower at C = 576, h = 24,
  // where w does not stay in L1; on a Zen 4 EPYC from memory it is faster at both
  // (C = 576, h = 24, 4096 rows: 0.71-0.73 ms against 0.93-1.04 at two threads,
  // 1.39-1.47 against 1.96-2.00 in three of four rounds at one; benchmarks/RESULTS.md).
  if (C % 4 == 0 && C >= 8 && (reinterpret_cast<uintptr_t>(y) & 15) == 0) {
    int64_t r = 0;
    for (; r + RB <= R; r += RB) expand_rows_nt<RB>(g + r * ldg, ldg, h, w, C, y + r * C);
    for (; r < R; ++r) expand_rows_nt<1>(g + r * ldg, ldg, h, w, C, y + r * C);
    return;
  }
  // Otherwise rows are produced in a staging buffer in cache, then copied out with
  // streaming stores.
  float stage[RB * 1024];
  const int64_t rows_per = std::max<int64_t>(1, (RB * 1024) / std::max<int64_t>(C, 1));
  if (C > RB * 1024) {
    for (int64_t r = 0; r < R; ++r) expand_rows<1>(g + r * ldg, ldg, h, w, C, y + r * C);
    return;
  }
  int64_t r = 0;
  while (r < R) {
    const int64_t n = std::min(rows_per, R - r);
    int64_t i = 0;
    for (; i + RB <= n; i += RB) expand_rows<RB>(g + (r + i) * ldg, ldg, h, w, C, stage + i * C);
    for (; i < n; ++i) expand_rows<1>(g + (r + i) * ldg, ldg, h, w, C, stage + i * C);
    stream_copy(y + r * C, stage, n * C);
    r += n;
  }
}

// ---- p = g^T @ x: g (rows, ldg) with h used columns, x (rows, C), p (h, C) --------

template <int CV, int JG>
SG_AI void outer_tile(const float* g, int64_t ldg, int64_t R, const float* x, int64_t C,
                      float* p, bool add, LineFetch& fetch) {
  vf acc[JG][CV];
  for (int jj = 0; jj < JG; ++jj)
    for (int v = 0; v < CV; ++v) acc[jj][v] = add ? ld(p + jj * C + 8 * v) : bc(0.0f);
  for (int64_t r = 0; r < R; ++r) {
    vf xv[CV];
    fetch.row();
    for (int v = 0; v < CV; ++v) xv[v] = ld(x + r * C + 8 * v);
    const float* gr = g + r * ldg;
    for (int jj = 0; jj < JG; ++jj) {
      const vf gb = bc(gr[jj]);
      for (int v = 0; v < CV; ++v) acc[jj][v] += gb * xv[v];
    }
  }
  for (int jj = 0; jj < JG; ++jj)
    for (int v = 0; v < CV; ++v) st(p + jj * C + 8 * v, acc[jj][v]);
}

// Columns per tile of outer_group<JG>.
template <int JG>
constexpr int outer_cv() { return SG_ACC / JG >= 2 ? 2 : 1; }

// Tiles of one group of JG rows of p (C / (8 CV) + (C % (8 CV)) / 8 of them, each
// fetching as it goes), then the columns left, fewer than 8.
template <int JG>
static void outer_group(const float* g, int64_t ldg, int64_t R, const float* x, int64_t C,
                        float* p, bool add, LineFetch& fetch) {
  constexpr int CV = outer_cv<JG>();
  int64_t c = 0;
  for (; c + 8 * CV <= C; c += 8 * CV) outer_tile<CV, JG>(g, ldg, R, x + c, C, p + c, add, fetch);
  for (; c + 8 <= C; c += 8) outer_tile<1, JG>(g, ldg, R, x + c, C, p + c, add, fetch);
  if (c < C && C >= 8) {
    // The last 8 columns as one full vector ending at C (loads in bounds); the lanes of
    // columns before c are computed but never stored, so in `add` mode the columns the
    // tiles above already updated are not added twice.
    const int64_t rem = C - c, c8 = C - 8;
    vf acc[JG];
    for (int jj = 0; jj < JG; ++jj) acc[jj] = add ? ld(p + jj * C + c8) : bc(0.0f);
    for (int64_t r = 0; r < R; ++r) {
      const vf xv = ld(x + r * C + c8);
      const float* gr = g + r * ldg;
      for (int jj = 0; jj < JG; ++jj) acc[jj] += bc(gr[jj]) * xv;
    }
    for (int jj = 0; jj < JG; ++jj) {
      float tmp[8];
      st(tmp, acc[jj]);
      __builtin_memcpy(p + jj * C + c, tmp + (8 - rem), sizeof(float) * rem);
    }
  } else if (c < C) {
    const int64_t rem = C - c;
    vf acc[JG];
    for (int jj = 0; jj < JG; ++jj) {
      float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (add) __builtin_memcpy(tmp, p + jj * C + c, sizeof(float) * rem);
      acc[jj] = ld(tmp);
    }
    for (int64_t r = 0; r < R; ++r) {
      float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      __builtin_memcpy(tmp, x + r * C + c, sizeof(float) * rem);
      const vf xv = ld(tmp);
      const float* gr = g + r * ldg;
      for (int jj = 0; jj < JG; ++jj) acc[jj] += bc(gr[jj]) * xv;
    }
    for (int jj = 0; jj < JG; ++jj) {
      float tmp[8];
      st(tmp, acc[jj]);
      __builtin_memcpy(p + jj * C + c, tmp, sizeof(float) * rem);
    }
  }
}

static void outer_impl(const float* g, int64_t ldg, int64_t R, int64_t h, const float* x,
                       int64_t C, float* p) {
  // Sub-blocks of rows that fit in L1/L2, accumulated into p in row order. The tiles
  // walk a sub-block by column strips, each over all its rows, while the next sub-block
  // is fetched a few lines per row.
  constexpr int JG = SG_ACC >= 12 ? 6 : 3;
  const auto tiles = [C](int cv) { return C / (8 * cv) + (C % (8 * cv)) / 8; };
  const int64_t passes = (h / JG) * tiles(outer_cv<JG>()) + (h % JG) * tiles(outer_cv<1>());
  outer_blocks(g, ldg, R, x, C, passes,
               [&](const float* gs, int64_t n, const float* xs, bool add, LineFetch& fetch) {
                 int64_t j = 0;
                 for (; j + JG <= h; j += JG)
                   outer_group<JG>(gs + j, ldg, n, xs, C, p + j * C, add, fetch);
                 for (; j < h; ++j) outer_group<1>(gs + j, ldg, n, xs, C, p + j * C, add, fetch);
               });
}

#undef SG_AI
