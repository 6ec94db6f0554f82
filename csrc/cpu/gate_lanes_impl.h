// The spectral gate's vector code (forward, and backward with its parameter sums) on
// float32 vectors of ADAPTIR_GATE_LANES (8 or 16) lanes, one complex element per lane;
// global_branch.cpp includes it once per width inside its own namespace, after its Gate.
// Every lane's arithmetic is the same at both widths, and the backward's sums add the same
// values in the same order, so both widths give bitwise the same results when neither
// contracts a * b + c into a fused multiply-add.

constexpr int kLanes = ADAPTIR_GATE_LANES;
static_assert(kLanes == 8 || kLanes == 16, "8 or 16 lanes");
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
constexpr int64_t L = kLanes;
// The gate backward's parameter sums accumulate in 8-lane vectors at either width, element
// blocks of eight in order, so that both widths add the same values in the same order.
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));

#define AI static inline __attribute__((always_inline))

AI vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
AI void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
AI vf splat(float x) { return vf{} + x; }
AI vf vabs(vf x) { return (vf)((vi)x & 0x7fffffff); }

#include "complex_lanes_impl.h"

AI void load_complex(const float* p, vf& re, vf& im) {
  deinterleave(load(p), load(p + L), re, im);
}
AI void store_complex(float* p, vf re, vf im) {
  vf lo, hi;
  interleave(re, im, lo, hi);
  store(p, lo);
  store(p + L, hi);
}

// acc += the first `halves` groups of eight lanes of x, in lane order.
AI void add_halves(v8& acc, vf x, int halves) {
#if ADAPTIR_GATE_LANES == 8
  (void)halves;
  acc += x;
#else
  acc += __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
  if (halves > 1) acc += __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
#endif
}

// The functions below work on K independent vectors at once, statement by statement:
// the gate's dependency chains are long (divisions, Newton steps, polynomials), and
// with one vector at a time the core mostly waits on their latency. Each lane's
// arithmetic does not depend on K.
#define EACH for (int k = 0; k < K; ++k)

// sqrt(m) for m in [1, 2]: bit-level estimate of 1/sqrt, three Newton steps.
template <int K>
AI void sqrt_1_2(const vf* m, vf* out) {
  vf y[K], hm[K];
  EACH {
    y[k] = (vf)(0x5f3759df - ((vi)m[k] >> 1));
    hm[k] = m[k] * 0.5f;
  }
  for (int step = 0; step < 3; ++step) EACH y[k] = y[k] * (1.5f - hm[k] * y[k] * y[k]);
  EACH out[k] = m[k] * y[k];
}

// |x + iy| and atan2(y, x), with std::atan2's signed-zero results (atan2(0, -0) = pi).
template <int K>
AI void polar(const vf* x, const vf* y, vf* mag, vf* ang) {
  vf mx[K], t0[K], m[K], root[K], t[K], r[K];
  vi swp[K], big[K];
  EACH {
    const vf ax = vabs(x[k]), ay = vabs(y[k]);
    swp[k] = ay > ax;
    mx[k] = swp[k] ? ay : ax;
    const vf mn = swp[k] ? ax : ay;
    const vf den = (mx[k] == 0.0f) ? splat(1.0f) : mx[k];
    t0[k] = mn / den;
  }
  EACH m[k] = 1.0f + t0[k] * t0[k];
  sqrt_1_2<K>(m, root);
  EACH {
    mag[k] = mx[k] * root[k];
    big[k] = t0[k] > 0.41421356237309503f;
    t[k] = big[k] ? (t0[k] - 1.0f) / (t0[k] + 1.0f) : t0[k];
  }
  EACH {
    const vf z = t[k] * t[k];
    r[k] = (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z -
            3.33329491539e-1f) * z * t[k] + t[k];
  }
  EACH {
    r[k] = r[k] + (big[k] ? splat(0.78539816339744830962f) : splat(0.0f));
    r[k] = swp[k] ? 1.57079632679489661923f - r[k] : r[k];
    r[k] = ((vi)x[k] < 0) ? 3.14159265358979323846f - r[k] : r[k];
    ang[k] = (vf)(((vi)r[k] & 0x7fffffff) | ((vi)y[k] & (vi{} + static_cast<int32_t>(0x80000000u))));
  }
}

// sin and cos for |v| < 8192 (Cody-Waite reduction by pi/2, minimax polynomials).
template <int K>
AI void sincos(const vf* v, vf* s, vf* c) {
  vf r[K], z[K], ps[K], pc[K];
  vi qi[K];
  EACH {
    const vf q = (v[k] * 0.63661977236758134308f + 12582912.0f) - 12582912.0f;
    r[k] = ((v[k] - q * 1.5703125f) - q * 4.837512969970703125e-4f) - q * 7.54978995489188216e-8f;
    qi[k] = __builtin_convertvector(q, vi);
    z[k] = r[k] * r[k];
  }
  EACH ps[k] = ((-1.9515295891e-4f * z[k] + 8.3321608736e-3f) * z[k] - 1.6666654611e-1f) * z[k] * r[k] + r[k];
  EACH pc[k] = ((2.443315711809948e-5f * z[k] - 1.388731625493765e-3f) * z[k] + 4.166664568298827e-2f) *
                   z[k] * z[k] - 0.5f * z[k] + 1.0f;
  EACH {
    const vi odd = (qi[k] & 1) != 0;
    const vf ss = odd ? pc[k] : ps[k], cc = odd ? ps[k] : pc[k];
    s[k] = (vf)((vi)ss ^ ((qi[k] & 2) << 30));
    c[k] = (vf)((vi)cc ^ (((qi[k] + 1) & 2) << 30));
  }
}

// K blocks of L complex elements of the gate forward.
template <int K>
AI void gate_forward_k(const float* src, float* dst, const Gate& p) {
  vf ur[K], ui[K], a[K], ph[K], arg[K], s[K], c[K];
  EACH load_complex(src + 2 * L * k, ur[k], ui[k]);
  polar<K>(ur, ui, a, ph);
  EACH arg[k] = ph[k] * p.wp + p.bp;
  sincos<K>(arg, s, c);
  EACH {
    const vf a2 = a[k] * p.wa + p.ba;
    store_complex(dst + 2 * L * k, a2 * c[k], a2 * s[k]);
  }
}

// K blocks of L complex elements of the gate backward; accumulates the c-weighted sums,
// eight elements after eight (add_halves; `halves` < 2 leaves out the upper eight of a
// padded 16-lane block, which hold no elements).
template <int K>
AI void gate_backward_k(float* gp, const float* up, const float* wp, const Gate& p, v8* acc,
                        int halves = 2) {
  vf ur[K], ui[K], a[K], ph[K], arg[K], s[K], c[K];
  EACH load_complex(up + 2 * L * k, ur[k], ui[k]);
  polar<K>(ur, ui, a, ph);
  EACH arg[k] = ph[k] * p.wp + p.bp;
  sincos<K>(arg, s, c);
  vf da2[K], dp2[K];
  EACH {
    vf gr, gi;
    load_complex(gp + 2 * L * k, gr, gi);
    const vf a2 = a[k] * p.wa + p.ba;
    da2[k] = gr * c[k] + gi * s[k];
    dp2[k] = a2 * (gi * c[k] - gr * s[k]);
  }
  EACH {
    const vf w = load(wp + L * k);
    add_halves(acc[0], w * da2[k] * a[k], halves);
    add_halves(acc[1], w * da2[k], halves);
    add_halves(acc[2], w * dp2[k] * ph[k], halves);
    add_halves(acc[3], w * dp2[k], halves);
  }
  EACH {
    const vi nz = a[k] != 0.0f;
    const vf safe = nz ? a[k] : splat(1.0f);
    const vf da = p.wa * da2[k] / safe;
    const vf dp = p.wp * dp2[k] / (safe * safe);
    const vf zero = splat(0.0f);
    store_complex(gp + 2 * L * k, nz ? da * ur[k] - dp * ui[k] : zero,
                  nz ? da * ui[k] + dp * ur[k] : zero);
  }
}

// Blocks per step of the gate loops.
constexpr int kGateBlocks = 4;

// G = gate(U) for n complex elements; in and out may be the same buffer.
AI void gate_forward_lanes(const float* in, float* out, int64_t n, const Gate& p) {
  int64_t i = 0;
  for (; i + kGateBlocks * L <= n; i += kGateBlocks * L)
    gate_forward_k<kGateBlocks>(in + 2 * i, out + 2 * i, p);
  for (; i + L <= n; i += L) gate_forward_k<1>(in + 2 * i, out + 2 * i, p);
  if (i < n) {
    float src[2 * L] = {}, dst[2 * L];
    std::memcpy(src, in + 2 * i, sizeof(float) * 2 * (n - i));
    gate_forward_k<1>(src, dst, p);
    std::memcpy(out + 2 * i, dst, sizeof(float) * 2 * (n - i));
  }
}

// In place on g (GY in, J^T GY out); u: the spectrum; cw: per-element c-weights. Adds the
// c-weighted sums (amp_w, amp_b, pha_w, pha_b) into sums.
AI void gate_backward_lanes(float* g, const float* u, const float* cw, int64_t n, const Gate& p,
                            double* sums) {
  v8 acc[4] = {};
  int64_t i = 0;
  for (; i + kGateBlocks * L <= n; i += kGateBlocks * L)
    gate_backward_k<kGateBlocks>(g + 2 * i, u + 2 * i, cw + i, p, acc);
  for (; i + L <= n; i += L) gate_backward_k<1>(g + 2 * i, u + 2 * i, cw + i, p, acc);
  if (i < n) {
    float gb[2 * L] = {}, ub[2 * L] = {}, wb[L] = {};
    std::memcpy(gb, g + 2 * i, sizeof(float) * 2 * (n - i));
    std::memcpy(ub, u + 2 * i, sizeof(float) * 2 * (n - i));
    std::memcpy(wb, cw + i, sizeof(float) * (n - i));
    gate_backward_k<1>(gb, ub, wb, p, acc, n - i > 8 ? 2 : 1);
    std::memcpy(g + 2 * i, gb, sizeof(float) * 2 * (n - i));
  }
  for (int k = 0; k < 4; ++k) {
    double t = 0.0;
    for (int j = 0; j < 8; ++j) t += acc[k][j];
    sums[k] += t;
  }
}

#undef EACH
#undef AI
