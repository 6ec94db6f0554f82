// AVX-512 bodies of the skinny float32 matrix products of skinny_gemm.h: 16-float
// vectors, 32 registers, masked loads and stores for the ends of rows. No include
// guard: skinny_gemm.cpp includes this file once, inside namespace avx512 and between
// ADAPTIR_AVX512_BEGIN and ADAPTIR_AVX512_END.
//
// Every output element is the same chain of fused multiply-adds, in the same order, as
// in skinny_gemm_impl.h's AVX2 build (rows_dot: from the bias over c = 0, 1, ..., or
// the even and the odd c apart where skinny_gemm.h's pair_groups says so; expand: from
// zero over j; outer: from zero over the rows), so the two builds give
// bitwise equal results; only the blocking into registers differs.

#define S5_AI static inline __attribute__((always_inline))

// Lanes [0, n) of a 16-float vector, n in [0, 16].
S5_AI __mmask16 lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

// ---- z = x @ wt (+ bias): x (rows, C), wt (C, ldw) packed, z (rows, ldz) ----------

// RB rows, columns [0, 16 * HV) of wt (the last vector masked by `last`).
template <int HV, int RB>
S5_AI void dot_rows(const float* x, int64_t C, const float* wt, int64_t ldw, const float* bias,
                    __mmask16 last, float* z, int64_t ldz) {
  __m512 acc[RB][HV];
  for (int v = 0; v < HV; ++v) {
    const __mmask16 m = v == HV - 1 ? last : lanes(16);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
    for (int i = 0; i < RB; ++i) acc[i][v] = b;
  }
  // The rows kRowsAhead blocks ahead are fetched as it goes (skinny_gemm.h).
  // Row i = 4 a + b is read at xa[a] + b C: RB / 4 moving pointers and three fixed
  // offsets (RB separate row addresses would not fit in the integer registers).
  constexpr int NA = (RB + 3) / 4;
  const float* xa[NA];
  for (int a = 0; a < NA; ++a) xa[a] = x + 4 * a * C;
  const int64_t off[4] = {0, C, 2 * C, 3 * C};
  for (int64_t c = 0; c < C; ++c) {
    if ((c & 15) == 0)
      for (int i = 0; i < RB; ++i)
        __builtin_prefetch(x + (kRowsAhead * RB + i) * C + c, 0, kRowsHint);
    __m512 w[HV];
    for (int v = 0; v < HV; ++v)
      w[v] = _mm512_maskz_loadu_ps(v == HV - 1 ? last : lanes(16), wt + c * ldw + 16 * v);
    for (int i = 0; i < RB; ++i) {
      const __m512 xb = _mm512_set1_ps(xa[i / 4][off[i % 4]]);
      for (int v = 0; v < HV; ++v) acc[i][v] = _mm512_fmadd_ps(xb, w[v], acc[i][v]);
    }
    for (int a = 0; a < NA; ++a) ++xa[a];
  }
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < HV; ++v)
      _mm512_mask_storeu_ps(z + i * ldz + 16 * v, v == HV - 1 ? last : lanes(16), acc[i][v]);
}

template <int HV>
static void dot_hv(const float* x, int64_t R, int64_t C, const float* wt, int64_t ldw,
                   const float* bias, __mmask16 last, float* z, int64_t ldz) {
  constexpr int RB = HV == 1 ? 12 : 8;
  int64_t r = 0;
  for (; r + RB <= R; r += RB)
    dot_rows<HV, RB>(x + r * C, C, wt, ldw, bias, last, z + r * ldz, ldz);
  for (; r < R; ++r) dot_rows<HV, 1>(x + r * C, C, wt, ldw, bias, last, z + r * ldz, ldz);
}

// The lower 8 lanes of v (as _mm512_castps512_ps256, which GCC 12 flags as reading an
// uninitialised value).
S5_AI __m256 low_half(__m512 v) {
  __m256 lo;
  __builtin_memcpy(&lo, &v, sizeof lo);
  return lo;
}

// rows_dot in column pairs (skinny_gemm.h: pair_groups), RB rows: the groups of 8 lanes
// two to a 16-float vector, an odd last one in an 8-float vector; the same lanes, and so
// the same chains, as the AVX2 build's dot_pairs.
template <int V, int RB>
S5_AI void dot_pairs(const float* x, int64_t C, const float* wi, const float* bi, int64_t h,
                     float* z, int64_t ldz) {
  constexpr int NZ = V / 2 > 0 ? V / 2 : 1;  // (V = 1: no 16-float vector is used)
  constexpr bool kZ = V >= 2, kY = V % 2 == 1;
  __m512 az[RB][NZ];
  __m256 ay[RB];
  for (int i = 0; i < RB; ++i) {
    if (kZ)
      for (int q = 0; q < NZ; ++q) az[i][q] = _mm512_loadu_ps(bi + 16 * q);
    if (kY) ay[i] = _mm256_loadu_ps(bi + 16 * (V / 2));
  }
  const int64_t C2 = C / 2;
  for (int64_t c2 = 0; c2 < C2; ++c2) {
    if ((c2 & 7) == 0)  // the rows kRowsAhead blocks ahead (skinny_gemm.h)
      for (int i = 0; i < RB; ++i)
        __builtin_prefetch(x + (kRowsAhead * RB + i) * C + 2 * c2, 0, kRowsHint);
    const float* wc = wi + c2 * V * 8;
    __m512 wz[NZ];
    __m256 wy = _mm256_setzero_ps();
    if (kZ)
      for (int q = 0; q < NZ; ++q) wz[q] = _mm512_loadu_ps(wc + 16 * q);
    if (kY) wy = _mm256_loadu_ps(wc + 16 * (V / 2));
    for (int i = 0; i < RB; ++i) {
      double pair;
      __builtin_memcpy(&pair, x + i * C + 2 * c2, sizeof pair);
      const __m512 xb = _mm512_castpd_ps(_mm512_set1_pd(pair));
      if (kZ)
        for (int q = 0; q < NZ; ++q) az[i][q] = _mm512_fmadd_ps(xb, wz[q], az[i][q]);
      if (kY) ay[i] = _mm256_fmadd_ps(low_half(xb), wy, ay[i]);
    }
  }
  if (C % 2 == 1) {  // the last column: the even lanes only (the odd ones add 0 * 0)
    const float* wc = wi + C2 * V * 8;
    for (int i = 0; i < RB; ++i) {
      const float last = x[i * C + C - 1];
      if (kZ) {
        const __m512 xb = _mm512_maskz_mov_ps(0x5555, _mm512_set1_ps(last));
        for (int q = 0; q < NZ; ++q)
          az[i][q] = _mm512_fmadd_ps(xb, _mm512_loadu_ps(wc + 16 * q), az[i][q]);
      }
      if (kY) {
        const __m256 xb = _mm256_maskz_mov_ps(0x55, _mm256_set1_ps(last));
        ay[i] = _mm256_fmadd_ps(xb, _mm256_loadu_ps(wc + 16 * (V / 2)), ay[i]);
      }
    }
  }
  float t[RB][V * 8];  // all stores first, at constant indices: the sums stay in registers
  for (int i = 0; i < RB; ++i) {
    if (kZ)
      for (int q = 0; q < NZ; ++q) _mm512_storeu_ps(t[i] + 16 * q, az[i][q]);
    if (kY) _mm256_storeu_ps(t[i] + 16 * (V / 2), ay[i]);
  }
  for (int i = 0; i < RB; ++i)
    for (int64_t j = 0; j < h; ++j) z[i * ldz + j] = t[i][2 * j] + t[i][2 * j + 1];
}

template <int V>
static void rows_dot_pairs(const float* x, int64_t R, int64_t C, const float* wt, int64_t hp,
                           const float* bias, int64_t h, float* z, int64_t ldz) {
  constexpr int RB = 8;
  const PairWeights pw = pack_pairs(wt, C, hp, bias, V);
  int64_t r = 0;
  for (; r + RB <= R; r += RB) dot_pairs<V, RB>(x + r * C, C, pw.w, pw.bias, h, z + r * ldz, ldz);
  for (; r < R; ++r) dot_pairs<V, 1>(x + r * C, C, pw.w, pw.bias, h, z + r * ldz, ldz);
}

// hp (columns of wt and z to produce) is a multiple of 8; h <= hp columns are used.
static void rows_dot_impl(const float* x, int64_t R, int64_t C, const float* wt, int64_t h,
                          int64_t hp, const float* bias, float* z, int64_t ldz) {
  switch (pair_groups(h)) {
    case 1: return rows_dot_pairs<1>(x, R, C, wt, hp, bias, h, z, ldz);
    case 3: return rows_dot_pairs<3>(x, R, C, wt, hp, bias, h, z, ldz);
    case 5: return rows_dot_pairs<5>(x, R, C, wt, hp, bias, h, z, ldz);
    default: break;
  }
  for (int64_t j0 = 0; j0 < hp; j0 += 32) {
    const int64_t n = std::min<int64_t>(32, hp - j0);
    const __mmask16 last = lanes(n > 16 ? n - 16 : n);
    const float* b = bias ? bias + j0 : nullptr;
    if (n > 16)
      dot_hv<2>(x, R, C, wt + j0, hp, b, last, z + j0, ldz);
    else
      dot_hv<1>(x, R, C, wt + j0, hp, b, last, z + j0, ldz);
  }
}

// ---- y = g @ w: g (rows, ldg) with h used columns, w (h, C), y (rows, C) ----------

// dst[0, n) = src[0, n) with 64-byte streaming stores where dst is aligned.
S5_AI void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  const int64_t head = ((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63) / 4;
  if ((reinterpret_cast<uintptr_t>(dst) & 3) != 0 || n < 32) {
    std::memcpy(dst, src, sizeof(float) * n);
    return;
  }
  for (; i < head; ++i) dst[i] = src[i];
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}

// Columns [0, 16 * (CV - 1) + n) of RB rows of y; n in [1, 16] columns in the last
// vector.
template <int CV, int RB>
S5_AI void expand_tile(const float* g, int64_t ldg, int64_t h, const float* w, int64_t C,
                       float* y, int64_t n) {
  const __mmask16 last = lanes(n);
  __m512 acc[RB][CV];
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < CV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < h; ++j) {
    __m512 wv[CV];
    for (int v = 0; v < CV; ++v)
      wv[v] = v == CV - 1 ? _mm512_maskz_loadu_ps(last, w + j * C + 16 * v)
                          : _mm512_loadu_ps(w + j * C + 16 * v);
    for (int i = 0; i < RB; ++i) {
      const __m512 gb = _mm512_set1_ps(g[i * ldg + j]);
      for (int v = 0; v < CV; ++v) acc[i][v] = _mm512_fmadd_ps(gb, wv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < CV; ++v) {
      float* p = y + i * C + 16 * v;
      if (v == CV - 1)
        _mm512_mask_storeu_ps(p, last, acc[i][v]);
      else
        _mm512_storeu_ps(p, acc[i][v]);
    }
}

// RB whole rows of y, each front to back, in tiles of up to four vectors.
template <int RB>
S5_AI void expand_rows(const float* g, int64_t ldg, int64_t h, const float* w, int64_t C,
                       float* y) {
  int64_t c = 0;
  for (; c + 64 < C; c += 64) expand_tile<4, RB>(g, ldg, h, w + c, C, y + c, 16);
  const int64_t rem = C - c, nv = (rem + 15) / 16, n = rem - 16 * (nv - 1);
  switch (nv) {
    case 1: expand_tile<1, RB>(g, ldg, h, w + c, C, y + c, n); break;
    case 2: expand_tile<2, RB>(g, ldg, h, w + c, C, y + c, n); break;
    case 3: expand_tile<3, RB>(g, ldg, h, w + c, C, y + c, n); break;
    default: expand_tile<4, RB>(g, ldg, h, w + c, C, y + c, n); break;
  }
}

static void expand_impl(const float* g, int64_t ldg, int64_t R, int64_t h, const float* w,
                        int64_t C, float* y, bool stream) {
  constexpr int RB = 4;
  if (C <= 0) return;
  if (!stream) {
    int64_t r = 0;
    for (; r + RB <= R; r += RB) expand_rows<RB>(g + r * ldg, ldg, h, w, C, y + r * C);
    for (; r < R; ++r) expand_rows<1>(g + r * ldg, ldg, h, w, C, y + r * C);
    return;
  }
  // Streaming stores: each group of RB rows is produced in a staging buffer in L1, then
  // copied out with aligned 64-byte streaming stores while the next group is computed
  // (16-byte stores straight from the registers, as in the AVX2 build, measured about
  // 1.2x slower at C = 180, h = 12 on a Xeon; copying 22 rows at a time, 1.1x slower).
  float stage[RB * 1024];
  if (C > RB * 1024) {
    for (int64_t r = 0; r < R; ++r) expand_rows<1>(g + r * ldg, ldg, h, w, C, y + r * C);
    return;
  }
  const int64_t rows_per = std::min<int64_t>(RB, (RB * 1024) / C);
  int64_t r = 0;
  while (r < R) {
    const int64_t n = std::min(rows_per, R - r);
    int64_t i = 0;
    for (; i + RB <= n; i += RB)
      expand_rows<RB>(g + (r + i) * ldg, ldg, h, w, C, stage + i * C);
    for (; i < n; ++i) expand_rows<1>(g + (r + i) * ldg, ldg, h, w, C, stage + i * C);
    stream_copy(y + r * C, stage, n * C);
    r += n;
  }
}

// ---- p = g^T @ x: g (rows, ldg) with h used columns, x (rows, C), p (h, C) --------

// p[j0 + jj, c0 + ...] for JG rows of p and CV vectors of columns (n in [1, 16] in the
// last), over R rows of g and x; add: continue the sums already in p.
template <int CV, int JG>
S5_AI void outer_tile(const float* g, int64_t ldg, int64_t R, const float* x, int64_t C,
                      float* p, bool add, int64_t n, LineFetch& fetch) {
  const __mmask16 last = lanes(n);
  __m512 acc[JG][CV];
  for (int jj = 0; jj < JG; ++jj)
    for (int v = 0; v < CV; ++v)
      acc[jj][v] = !add ? _mm512_setzero_ps()
                        : _mm512_maskz_loadu_ps(v == CV - 1 ? last : lanes(16), p + jj * C + 16 * v);
  for (int64_t r = 0; r < R; ++r) {
    __m512 xv[CV];
    for (int v = 0; v < CV; ++v)
      xv[v] = v == CV - 1 ? _mm512_maskz_loadu_ps(last, x + r * C + 16 * v)
                          : _mm512_loadu_ps(x + r * C + 16 * v);
    fetch.row();
    const float* gr = g + r * ldg;
    for (int jj = 0; jj < JG; ++jj) {
      const __m512 gb = _mm512_set1_ps(gr[jj]);
      for (int v = 0; v < CV; ++v) acc[jj][v] = _mm512_fmadd_ps(gb, xv[v], acc[jj][v]);
    }
  }
  for (int jj = 0; jj < JG; ++jj)
    for (int v = 0; v < CV; ++v)
      _mm512_mask_storeu_ps(p + jj * C + 16 * v, v == CV - 1 ? last : lanes(16), acc[jj][v]);
}

// Tiles of one group of JG rows of p: ceil(C / 32) of them.
template <int JG>
static void outer_group(const float* g, int64_t ldg, int64_t R, const float* x, int64_t C,
                        float* p, bool add, LineFetch& fetch) {
  int64_t c = 0;
  for (; c + 32 < C; c += 32) outer_tile<2, JG>(g, ldg, R, x + c, C, p + c, add, 16, fetch);
  const int64_t rem = C - c;
  if (rem > 16)
    outer_tile<2, JG>(g, ldg, R, x + c, C, p + c, add, rem - 16, fetch);
  else
    outer_tile<1, JG>(g, ldg, R, x + c, C, p + c, add, rem, fetch);
}

static void outer_impl(const float* g, int64_t ldg, int64_t R, int64_t h, const float* x,
                       int64_t C, float* p) {
  // Sub-blocks of rows that fit in L1/L2, accumulated into p in row order; within one,
  // twelve rows of p at a time take two vectors of columns over all its rows, while the
  // next sub-block is fetched a few lines per row.
  constexpr int JG = 12;
  if (C <= 0) return;
  const int64_t groups = h / JG + (h % JG) / 4 + h % 4;
  outer_blocks(g, ldg, R, x, C, groups * ((C + 31) / 32),
               [&](const float* gs, int64_t n, const float* xs, bool add, LineFetch& fetch) {
                 int64_t j = 0;
                 for (; j + JG <= h; j += JG)
                   outer_group<JG>(gs + j, ldg, n, xs, C, p + j * C, add, fetch);
                 for (; j + 4 <= h; j += 4)
                   outer_group<4>(gs + j, ldg, n, xs, C, p + j * C, add, fetch);
                 for (; j < h; ++j) outer_group<1>(gs + j, ldg, n, xs, C, p + j * C, add, fetch);
               });
}

#undef S5_AI
