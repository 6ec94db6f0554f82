// The body of small_fft.cpp's transforms, included once per instruction set inside its
// own namespace (see small_fft.cpp), with ADAPTIR_FFT_LANES (8 or 16) floats per vector:
// one plane per lane. Uses Plan and Stage from small_fft.h.

constexpr int kVL = ADAPTIR_FFT_LANES;
static_assert(kVL == 8 || kVL == 16, "8 or 16 planes per vector");
typedef float vf __attribute__((vector_size(kVL * sizeof(float))));

// kVL complex values, one per lane.
struct cv {
  vf re, im;
};

#define AI static inline __attribute__((always_inline))

AI vf splat(float x) { return vf{} + x; }
AI vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
AI void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

#if ADAPTIR_FFT_LANES == 8
// r[i][j] <-> r[j][i] for eight rows, in three steps of in-lane and cross-lane shuffles.
AI void transpose8(vf r[8]) {
  const vf t0 = __builtin_shufflevector(r[0], r[1], 0, 8, 1, 9, 4, 12, 5, 13);
  const vf t1 = __builtin_shufflevector(r[0], r[1], 2, 10, 3, 11, 6, 14, 7, 15);
  const vf t2 = __builtin_shufflevector(r[2], r[3], 0, 8, 1, 9, 4, 12, 5, 13);
  const vf t3 = __builtin_shufflevector(r[2], r[3], 2, 10, 3, 11, 6, 14, 7, 15);
  const vf t4 = __builtin_shufflevector(r[4], r[5], 0, 8, 1, 9, 4, 12, 5, 13);
  const vf t5 = __builtin_shufflevector(r[4], r[5], 2, 10, 3, 11, 6, 14, 7, 15);
  const vf t6 = __builtin_shufflevector(r[6], r[7], 0, 8, 1, 9, 4, 12, 5, 13);
  const vf t7 = __builtin_shufflevector(r[6], r[7], 2, 10, 3, 11, 6, 14, 7, 15);
  const vf s0 = __builtin_shufflevector(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13);
  const vf s1 = __builtin_shufflevector(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
  const vf s2 = __builtin_shufflevector(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13);
  const vf s3 = __builtin_shufflevector(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
  const vf s4 = __builtin_shufflevector(t4, t6, 0, 1, 8, 9, 4, 5, 12, 13);
  const vf s5 = __builtin_shufflevector(t4, t6, 2, 3, 10, 11, 6, 7, 14, 15);
  const vf s6 = __builtin_shufflevector(t5, t7, 0, 1, 8, 9, 4, 5, 12, 13);
  const vf s7 = __builtin_shufflevector(t5, t7, 2, 3, 10, 11, 6, 7, 14, 15);
  r[0] = __builtin_shufflevector(s0, s4, 0, 1, 2, 3, 8, 9, 10, 11);
  r[4] = __builtin_shufflevector(s0, s4, 4, 5, 6, 7, 12, 13, 14, 15);
  r[1] = __builtin_shufflevector(s1, s5, 0, 1, 2, 3, 8, 9, 10, 11);
  r[5] = __builtin_shufflevector(s1, s5, 4, 5, 6, 7, 12, 13, 14, 15);
  r[2] = __builtin_shufflevector(s2, s6, 0, 1, 2, 3, 8, 9, 10, 11);
  r[6] = __builtin_shufflevector(s2, s6, 4, 5, 6, 7, 12, 13, 14, 15);
  r[3] = __builtin_shufflevector(s3, s7, 0, 1, 2, 3, 8, 9, 10, 11);
  r[7] = __builtin_shufflevector(s3, s7, 4, 5, 6, 7, 12, 13, 14, 15);
}
#endif

// One step of the kVL x kVL transpose below: rows i and i + S (bit S of i clear) swap
// the blocks whose column has bit S set in row i and clear in row i + S.
template <int S, size_t... J>
AI void swap_blocks(vf& a, vf& b, std::index_sequence<J...>) {
  const vf lo = __builtin_shufflevector(a, b, ((J & S) ? kVL + J - S : J)...);
  const vf hi = __builtin_shufflevector(a, b, ((J & S) ? kVL + J : J + S)...);
  a = lo;
  b = hi;
}
template <int S>
AI void swap_blocks_all(vf r[kVL]) {
  for (int i = 0; i < kVL; ++i)
    if ((i & S) == 0) swap_blocks<S>(r[i], r[i + S], std::make_index_sequence<kVL>{});
}

// r[i][j] <-> r[j][i] for kVL rows: each step swaps one bit of the row and column indices.
AI void transpose(vf r[kVL]) {
#if ADAPTIR_FFT_LANES == 8
  transpose8(r);
#else
  swap_blocks_all<8>(r);
  swap_blocks_all<4>(r);
  swap_blocks_all<2>(r);
  swap_blocks_all<1>(r);
#endif
}

#include "complex_lanes_impl.h"

// Explicit whole-vector loads and stores of cv (a plain struct copy may move 16 bytes at a
// time, which stalls the vector loads that follow it).
AI cv cload(const cv* p) {
  const float* f = reinterpret_cast<const float*>(p);
  return {vload(f), vload(f + kVL)};
}
AI void cstore(cv* p, cv z) {
  float* f = reinterpret_cast<float*>(p);
  vstore(f, z.re);
  vstore(f + kVL, z.im);
}

// i z and -i z.
AI cv times_i(cv z) { return {-z.im, z.re}; }
AI cv times_minus_i(cv z) { return {z.im, -z.re}; }
AI cv add(cv a, cv b) { return {a.re + b.re, a.im + b.im}; }
AI cv sub(cv a, cv b) { return {a.re - b.re, a.im - b.im}; }
AI cv scale(cv a, float s) { return {a.re * s, a.im * s}; }

// In-place P-point DFT of a[0, P); INV: the inverse direction (no normalisation).
template <int P, bool INV>
AI void dft(cv* a) {
  if constexpr (P == 2) {
    const cv b = sub(a[0], a[1]);
    a[0] = add(a[0], a[1]);
    a[1] = b;
  } else if constexpr (P == 3) {
    const float s1 = (INV ? 1.0f : -1.0f) * 0.86602540378443864676f;
    const cv t1 = add(a[1], a[2]);
    const cv t2 = sub(a[0], scale(t1, 0.5f));
    const cv d = times_i(scale(sub(a[1], a[2]), s1));
    a[0] = add(a[0], t1);
    a[1] = add(t2, d);
    a[2] = sub(t2, d);
  } else if constexpr (P == 4) {
    const cv t0 = add(a[0], a[2]), t1 = sub(a[0], a[2]);
    const cv t2 = add(a[1], a[3]), t3 = sub(a[1], a[3]);
    const cv r = INV ? times_i(t3) : times_minus_i(t3);
    a[0] = add(t0, t2);
    a[2] = sub(t0, t2);
    a[1] = add(t1, r);
    a[3] = sub(t1, r);
  } else {
    static_assert(P == 5, "radix 2, 3, 4 or 5");
    const float sg = INV ? 1.0f : -1.0f;
    const float c1 = 0.30901699437494742410f, c2 = -0.80901699437494742410f;
    const float s1 = sg * 0.95105651629515357212f, s2 = sg * 0.58778525229247312917f;
    const cv b1 = add(a[1], a[4]), b2 = add(a[2], a[3]);
    const cv d1 = sub(a[1], a[4]), d2 = sub(a[2], a[3]);
    const cv e1 = add(a[0], add(scale(b1, c1), scale(b2, c2)));
    const cv e2 = add(a[0], add(scale(b1, c2), scale(b2, c1)));
    const cv f1 = times_i(add(scale(d1, s1), scale(d2, s2)));
    const cv f2 = times_i(sub(scale(d1, s2), scale(d2, s1)));
    a[0] = add(a[0], add(b1, b2));
    a[1] = add(e1, f1);
    a[4] = sub(e1, f1);
    a[2] = add(e2, f2);
    a[3] = sub(e2, f2);
  }
}

// A stage whose sub-transforms have length 1: out[q] = DFT of in[0], in[is], ...
template <int P, bool INV>
void stage_leaf(const cv* in, int64_t is, cv* out) {
  cv a[P];
  for (int s = 0; s < P; ++s) a[s] = cload(in + s * is);
  dft<P, INV>(a);
  for (int q = 0; q < P; ++q) cstore(out + q, a[q]);
}

// Combines the P sub-transforms out[s m, (s + 1) m) in place.
template <int P, bool INV>
void stage_combine(cv* out, const Stage& st) {
  const int64_t m = st.m;
  for (int64_t k = 0; k < m; ++k) {
    cv a[P];
    a[0] = cload(out + k);
    for (int s = 1; s < P; ++s) {
      const cv x = cload(out + s * m + k);
      const float c = st.wr[(s - 1) * m + k];
      const float sn = INV ? -st.wi[(s - 1) * m + k] : st.wi[(s - 1) * m + k];
      a[s] = {x.re * c - x.im * sn, x.re * sn + x.im * c};
    }
    dft<P, INV>(a);
    for (int q = 0; q < P; ++q) cstore(out + k + q * m, a[q]);
  }
}

// out[0, n) = DFT of in[0], in[is], ..., in[(n - 1) is] (decimation in time, recursive).
template <bool INV>
void fft(const cv* in, int64_t is, cv* out, const Plan& plan, int level) {
  if (level == plan.count) {  // n = 1
    cstore(out, cload(in));
    return;
  }
  const Stage& st = plan.stages[level];
  if (st.m == 1) {
    switch (st.p) {
      case 2: return stage_leaf<2, INV>(in, is, out);
      case 3: return stage_leaf<3, INV>(in, is, out);
      case 4: return stage_leaf<4, INV>(in, is, out);
      default: return stage_leaf<5, INV>(in, is, out);
    }
  }
  for (int s = 0; s < st.p; ++s) fft<INV>(in + s * is, is * st.p, out + s * st.m, plan, level + 1);
  switch (st.p) {
    case 2: return stage_combine<2, INV>(out, st);
    case 3: return stage_combine<3, INV>(out, st);
    case 4: return stage_combine<4, INV>(out, st);
    default: return stage_combine<5, INV>(out, st);
  }
}

// A 64-byte aligned array of T (vector types need their full alignment, which the
// standard allocator does not give them in a translation unit built for SSE).
template <typename T>
struct Buffer {
  T* data = nullptr;
  int64_t size = 0;
  void fit(int64_t n) {
    if (n <= size) return;
    std::free(data);
    void* p = nullptr;
    if (posix_memalign(&p, 64, sizeof(T) * static_cast<size_t>(n)) != 0) throw std::bad_alloc();
    data = static_cast<T*>(p);
    size = n;
  }
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(data); }
};

// Per-thread scratch, grown as needed.
struct Scratch {
  Buffer<vf> real;   // H * W values, lane = plane
  Buffer<cv> spec;   // H * (W / 2 + 1)
  Buffer<cv> line;   // one line in
  Buffer<cv> line2;  // one line out
  void fit(int64_t H, int64_t W) {
    const int64_t side = std::max(H, W);
    real.fit(H * W);
    spec.fit(H * (W / 2 + 1));
    line.fit(side);
    line2.fit(side);
  }
};

// This thread's scratch, fitted to (H, W).
struct Work {
  vf* X;       // H * W
  cv* S;       // H * (W / 2 + 1)
  cv* line;    // max(H, W)
  cv* line2;   // max(H, W)
};

Work scratch(int64_t H, int64_t W) {
  thread_local Scratch s;
  s.fit(H, W);
  return {s.real.data, s.spec.data, s.line.data, s.line2.data};
}

// Up to kVL planes (lanes) of the forward transform.
void rfft2_lanes(const float* in, float* out, int lanes, int64_t H, int64_t W, const Plan& ph,
                 const Plan& pw) {
  const int64_t HW = H * W, wf = W / 2 + 1, HWf = H * wf;
  const auto [X, S, line, line2] = scratch(H, W);
  const vf zero = splat(0.0f);
  // Planes -> lanes.
  int64_t i = 0;
  for (; i + kVL <= HW; i += kVL) {
    vf r[kVL];
    for (int j = 0; j < kVL; ++j) r[j] = j < lanes ? vload(in + j * HW + i) : zero;
    transpose(r);
    for (int e = 0; e < kVL; ++e) X[i + e] = r[e];
  }
  for (; i < HW; ++i) {
    vf v = zero;
    for (int j = 0; j < lanes; ++j) v[j] = in[j * HW + i];
    X[i] = v;
  }
  // Along W (real input), keeping bins [0, W/2]: rows r and r + 1 as the real and
  // imaginary parts of one complex transform Z, split by Hermitian symmetry:
  // X_r[k] = (Z[k] + conj Z[-k]) / 2, X_r+1[k] = -i (Z[k] - conj Z[-k]) / 2.
  int64_t r = 0;
  for (; r + 1 < H; r += 2) {
    for (int64_t c = 0; c < W; ++c) cstore(line + c, {X[r * W + c], X[(r + 1) * W + c]});
    fft<false>(line, 1, line2, pw, 0);
    for (int64_t k = 0; k < wf; ++k) {
      const cv z = cload(line2 + k), w = cload(line2 + (k == 0 ? 0 : W - k));
      const cv zc = {w.re, -w.im};
      cstore(S + r * wf + k, scale(add(z, zc), 0.5f));
      cstore(S + (r + 1) * wf + k, scale(times_minus_i(sub(z, zc)), 0.5f));
    }
  }
  if (r < H) {
    for (int64_t c = 0; c < W; ++c) cstore(line + c, {X[r * W + c], zero});
    fft<false>(line, 1, line2, pw, 0);
    for (int64_t k = 0; k < wf; ++k) cstore(S + r * wf + k, cload(line2 + k));
  }
  // Along H, scaled by 1 / sqrt(H W).
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HW)));
  for (int64_t k = 0; k < wf; ++k) {  // column k read in place (stride wf) by the first stage
    fft<false>(S + k, wf, line2, ph, 0);
    for (int64_t r = 0; r < H; ++r) cstore(S + r * wf + k, scale(cload(line2 + r), norm));
  }
  // Lanes -> planes, (re, im) interleaved.
  int64_t b = 0;
  for (; b + kVL <= HWf; b += kVL) {
    vf re[kVL], im[kVL];
    for (int e = 0; e < kVL; ++e) {
      const cv z = cload(S + b + e);
      re[e] = z.re;
      im[e] = z.im;
    }
    transpose(re);
    transpose(im);
    for (int j = 0; j < lanes; ++j) {
      float* o = out + j * 2 * HWf + 2 * b;
      vf lo, hi;
      interleave(re[j], im[j], lo, hi);
      vstore(o, lo);
      vstore(o + kVL, hi);
    }
  }
  for (; b < HWf; ++b)
    for (int j = 0; j < lanes; ++j) {
      out[j * 2 * HWf + 2 * b] = S[b].re[j];
      out[j * 2 * HWf + 2 * b + 1] = S[b].im[j];
    }
}

// Up to kVL planes (lanes) of the inverse transform.
void irfft2_lanes(const float* in, float* out, int lanes, int64_t H, int64_t W, const Plan& ph,
                  const Plan& pw) {
  const int64_t HW = H * W, wf = W / 2 + 1, HWf = H * wf;
  const auto [X, S, line, line2] = scratch(H, W);
  const vf zero = splat(0.0f);
  // Planes -> lanes.
  int64_t b = 0;
  for (; b + kVL <= HWf; b += kVL) {
    vf re[kVL], im[kVL];
    for (int j = 0; j < kVL; ++j) {
      if (j < lanes) {
        const float* p = in + j * 2 * HWf + 2 * b;
        const vf lo = vload(p), hi = vload(p + kVL);
        deinterleave(lo, hi, re[j], im[j]);
      } else {
        re[j] = zero;
        im[j] = zero;
      }
    }
    transpose(re);
    transpose(im);
    for (int e = 0; e < kVL; ++e) cstore(S + b + e, {re[e], im[e]});
  }
  for (; b < HWf; ++b) {
    cv z = {zero, zero};
    for (int j = 0; j < lanes; ++j) {
      z.re[j] = in[j * 2 * HWf + 2 * b];
      z.im[j] = in[j * 2 * HWf + 2 * b + 1];
    }
    S[b] = z;
  }
  // Along H (complex).
  for (int64_t k = 0; k < wf; ++k) {  // column k read in place (stride wf) by the first stage
    fft<true>(S + k, wf, line2, ph, 0);
    for (int64_t r = 0; r < H; ++r) cstore(S + r * wf + k, cload(line2 + r));
  }
  // Along W: Hermitian completion of each row (imaginary parts of bins 0 and W/2
  // dropped), inverse transform, real part, scaled by 1 / sqrt(H W).
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HW)));
  // Rows r and r + 1 in one complex transform: Z = A_r + i A_r+1 with A the completed
  // rows, whose inverse is y_r + i y_r+1.
  const bool even = W % 2 == 0 && W > 1;
  int64_t r = 0;
  for (; r + 1 < H; r += 2) {
    const cv* s = S + r * wf;
    const cv* t = S + (r + 1) * wf;
    cstore(line, {cload(s).re, cload(t).re});
    for (int64_t k = 1; k < wf; ++k) {
      const cv a = cload(s + k), b = cload(t + k);
      cstore(line + k, {a.re - b.im, a.im + b.re});
    }
    if (even) cstore(line + W / 2, {cload(s + W / 2).re, cload(t + W / 2).re});
    for (int64_t k = 1; k <= (W - 1) / 2; ++k) {
      const cv a = cload(s + k), b = cload(t + k);
      cstore(line + W - k, {a.re + b.im, b.re - a.im});
    }
    fft<true>(line, 1, line2, pw, 0);
    for (int64_t c = 0; c < W; ++c) {
      const cv y = cload(line2 + c);
      X[r * W + c] = y.re * norm;
      X[(r + 1) * W + c] = y.im * norm;
    }
  }
  if (r < H) {
    const cv* s = S + r * wf;
    cstore(line, {cload(s).re, zero});
    for (int64_t k = 1; k < wf; ++k) cstore(line + k, cload(s + k));
    if (even) cstore(line + W / 2, {cload(s + W / 2).re, zero});
    for (int64_t k = 1; k <= (W - 1) / 2; ++k) {
      const cv z = cload(s + k);
      cstore(line + W - k, {z.re, -z.im});
    }
    fft<true>(line, 1, line2, pw, 0);
    for (int64_t c = 0; c < W; ++c) X[r * W + c] = cload(line2 + c).re * norm;
  }
  // Lanes -> planes.
  int64_t i = 0;
  for (; i + kVL <= HW; i += kVL) {
    vf v[kVL];
    for (int e = 0; e < kVL; ++e) v[e] = X[i + e];
    transpose(v);
    for (int j = 0; j < lanes; ++j) vstore(out + j * HW + i, v[j]);
  }
  for (; i < HW; ++i)
    for (int j = 0; j < lanes; ++j) out[j * HW + i] = X[i][j];
}

void rfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W) {
  const Plan& ph = plan_for(H);
  const Plan& pw = plan_for(W);
  const int64_t HW = H * W, HWf = H * (W / 2 + 1);
  for (int64_t q = 0; q < nq; q += kVL)
    rfft2_lanes(in + q * HW, out + q * 2 * HWf, static_cast<int>(std::min<int64_t>(kVL, nq - q)), H, W,
                ph, pw);
}

void irfft2(const float* in, float* out, int64_t nq, int64_t H, int64_t W) {
  const Plan& ph = plan_for(H);
  const Plan& pw = plan_for(W);
  const int64_t HW = H * W, HWf = H * (W / 2 + 1);
  for (int64_t q = 0; q < nq; q += kVL)
    irfft2_lanes(in + q * 2 * HWf, out + q * HW, static_cast<int>(std::min<int64_t>(kVL, nq - q)), H,
                 W, ph, pw);
}

#undef AI
