// Bodies of the tile kernels of depthwise_tiles.h. No include guard:
// depthwise_tiles.cpp includes this file once per instruction set, inside a namespace.
//
// A padded buffer row holds one image row at column offset kOff with zeros on both
// sides: kOff zeros before it, and zeros from W up to the row stride S = Wp + 16
// (Wp = W rounded up to 8 lanes). Rows outside the image are all zeros. The 3x3
// taps at x - 1, x, x + 1 are then three unaligned 8-lane loads, with no edge cases.

#include "lanes8_impl.h"

#define DW_AI static inline __attribute__((always_inline))

DW_AI vf keep(vf v, vi mask) { return reinterpret_cast<vf>(reinterpret_cast<vi>(v) & mask); }

// The lanes of v summed in double, in a fixed order.
DW_AI double hsum(vf v) {
  float t[8];
  st(t, v);
  return ((double(t[0]) + t[1]) + (double(t[2]) + t[3])) +
         ((double(t[4]) + t[5]) + (double(t[6]) + t[7]));
}

// The spatial gate's sigmoid, 1 / (1 + exp(-v)), in 8 lanes: within a few ulps of the
// exact value, 1 for v > 87 and about 6e-39 for v < -88 (exactly 0 there in libm).
DW_AI vf sigmoid8(vf v) { return bc(1.0f) / (bc(1.0f) + vexp(-v)); }

constexpr int64_t kOff = 8;

struct Geom {
  int64_t H, W, Wp, S, nv, last;  // last: columns of the last 8-lane chunk inside W
  vi tail;                         // all ones on the lanes of the last chunk inside W
  Geom(int64_t H_, int64_t W_) : H(H_), W(W_) {
    Wp = (W + 7) / 8 * 8;
    S = Wp + 16;
    nv = Wp / 8;
    last = W - (Wp - 8);
    for (int k = 0; k < 8; ++k) tail[k] = k < last ? -1 : 0;
  }
};

// Rows [r0, r1) of an H x W plane (zeros outside [0, H)) into padded rows at dst.
DW_AI void pad_rows(const float* plane, const Geom& g, int64_t r0, int64_t r1, float* dst) {
  for (int64_t r = r0; r < r1; ++r) {
    float* d = dst + (r - r0) * g.S;
    if (r < 0 || r >= g.H) {
      std::memset(d, 0, sizeof(float) * g.S);
      continue;
    }
    std::memset(d, 0, sizeof(float) * kOff);
    std::memcpy(d + kOff, plane + r * g.W, sizeof(float) * g.W);
    std::memset(d + kOff + g.W, 0, sizeof(float) * (g.S - kOff - g.W));
  }
}

// acc + sum_{a, b < 3} k[3a + b] * row_a[x + b - 1] for the 8 columns at p_a = row_a + x.
DW_AI vf taps9(const float* p0, const float* p1, const float* p2, const vf* k, vf acc) {
  acc += k[0] * ld(p0 - 1);
  acc += k[1] * ld(p0);
  acc += k[2] * ld(p0 + 1);
  acc += k[3] * ld(p1 - 1);
  acc += k[4] * ld(p1);
  acc += k[5] * ld(p1 + 1);
  acc += k[6] * ld(p2 - 1);
  acc += k[7] * ld(p2);
  acc += k[8] * ld(p2 + 1);
  return acc;
}

// taps9 for two consecutive output rows at once, statement by statement (two independent
// chains of nine FMAs, each with taps9's order): rows q0..q2 give *a0, rows q1..q3 *a1.
DW_AI void taps9x2(const float* q0, const float* q1, const float* q2, const float* q3,
                   const vf* k, vf b, vf* a0, vf* a1) {
  vf x = b, y = b;
  x += k[0] * ld(q0 - 1);
  y += k[0] * ld(q1 - 1);
  x += k[1] * ld(q0);
  y += k[1] * ld(q1);
  x += k[2] * ld(q0 + 1);
  y += k[2] * ld(q1 + 1);
  x += k[3] * ld(q1 - 1);
  y += k[3] * ld(q2 - 1);
  x += k[4] * ld(q1);
  y += k[4] * ld(q2);
  x += k[5] * ld(q1 + 1);
  y += k[5] * ld(q2 + 1);
  x += k[6] * ld(q2 - 1);
  y += k[6] * ld(q3 - 1);
  x += k[7] * ld(q2);
  y += k[7] * ld(q3);
  x += k[8] * ld(q2 + 1);
  y += k[8] * ld(q3 + 1);
  *a0 = x;
  *a1 = y;
}

// Chunk v of an image row of W columns.
DW_AI void store_chunk(float* row, const Geom& g, int64_t v, vf val) {
  if (v + 1 < g.nv || g.last == 8) {
    st(row + 8 * v, val);
    return;
  }
  float t[8];
  st(t, val);
  std::memcpy(row + 8 * v, t, sizeof(float) * g.last);
}

DW_AI vf load_chunk(const float* row, const Geom& g, int64_t v) {
  if (v + 1 < g.nv || g.last == 8) return ld(row + 8 * v);
  float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(t, row + 8 * v, sizeof(float) * g.last);
  return ld(t);
}

static int64_t forward_work_impl(int64_t, int64_t, int64_t W, int64_t y0, int64_t y1) {
  const int64_t Wp = (W + 7) / 8 * 8, R = y1 - y0;
  return (R + 2) * (Wp + 16) + R * Wp;
}

static int64_t backward_work_impl(int64_t h, int64_t H, int64_t W, int64_t y0, int64_t y1) {
  const int64_t Wp = (W + 7) / 8 * 8, S = Wp + 16;
  const int64_t Rh = std::min(H, y1 + 1) - std::max<int64_t>(0, y0 - 1);
  return h * (Rh + 2) * S + h * Rh * Wp + Rh * Wp + (Rh + 2) * S;
}

static void forward_tile_impl(const float* u, int64_t h, int64_t H, int64_t W, int64_t y0,
                              int64_t y1, const float* K, const float* bias, const float* siw,
                              float sib, float* l, float* sg, float* work) {
  const Geom g(H, W);
  const int64_t R = y1 - y0, HW = H * W;
  float* P = work;                // rows y0 - 1 .. y1 of one channel, padded
  float* s = P + (R + 2) * g.S;   // R x Wp: the gate's pre-activation
  std::memset(s, 0, sizeof(float) * R * g.Wp);
  for (int64_t c = 0; c < h; ++c) {
    pad_rows(u + c * HW, g, y0 - 1, y1 + 1, P);
    vf k[9];
    for (int t = 0; t < 9; ++t) k[t] = bc(K[c * 9 + t]);
    const vf b = bc(bias[c]), w = bc(siw[c]);
    float* lc = l + c * HW;
    int64_t y = y0;
    // Two rows at a time: the two chains of taps overlap (the same values as one row at
    // a time).
    for (; y + 2 <= y1; y += 2) {
      const float* p0 = P + (y - y0) * g.S + kOff;
      float* srow = s + (y - y0) * g.Wp;
      float* orow = lc + y * W;
      for (int64_t v = 0; v < g.nv; ++v) {
        vf a0, a1;
        taps9x2(p0 + 8 * v, p0 + g.S + 8 * v, p0 + 2 * g.S + 8 * v, p0 + 3 * g.S + 8 * v, k, b,
                &a0, &a1);
        st(srow + 8 * v, ld(srow + 8 * v) + w * a0);
        st(srow + g.Wp + 8 * v, ld(srow + g.Wp + 8 * v) + w * a1);
        store_chunk(orow, g, v, a0);
        store_chunk(orow + W, g, v, a1);
      }
    }
    for (; y < y1; ++y) {
      const float* p0 = P + (y - y0) * g.S + kOff;
      float* srow = s + (y - y0) * g.Wp;
      float* orow = lc + y * W;
      for (int64_t v = 0; v < g.nv; ++v) {
        const vf acc = taps9(p0 + 8 * v, p0 + g.S + 8 * v, p0 + 2 * g.S + 8 * v, k, b);
        st(srow + 8 * v, ld(srow + 8 * v) + w * acc);
        store_chunk(orow, g, v, acc);
      }
    }
  }
  const vf bs = bc(sib);
  for (int64_t y = y0; y < y1; ++y) {
    const float* srow = s + (y - y0) * g.Wp;
    float* o = sg + y * W;
    for (int64_t v = 0; v < g.nv; ++v) store_chunk(o, g, v, sigmoid8(ld(srow + 8 * v) + bs));
  }
}

static void backward_tile_impl(const float* u, const float* gl, const float* gsg, int64_t h,
                               int64_t H, int64_t W, int64_t y0, int64_t y1, const float* K,
                               const float* bias, const float* siw, float sib, const float* l_in,
                               const float* sg_in, float* gu, double* part, float* work) {
  const Geom g(H, W);
  const int64_t HW = H * W, S = g.S, Wp = g.Wp, nv = g.nv;
  const int64_t ya = std::max<int64_t>(0, y0 - 1), yb = std::min(H, y1 + 1), Rh = yb - ya;
  const int64_t UP = (Rh + 2) * S;
  float* U = work;            // h planes of rows ya - 1 .. yb, padded
  float* L = U + h * UP;      // h planes of l on rows ya .. yb - 1, Wp columns, zero beyond W
  float* s = L + h * Rh * Wp; // Rh x Wp: gate pre-activation, then grad of it
  float* G = s + Rh * Wp;     // rows ya - 1 .. yb of grad_l + grad_s * siw[c], padded
  std::memset(s, 0, sizeof(float) * Rh * Wp);
  std::memset(G, 0, sizeof(float) * UP);

  const bool given = l_in != nullptr;
  // 1. l on rows ya .. yb - 1 and the gate's pre-activation (with l and sg given: only
  // the padded rows of u).
  for (int64_t c = 0; c < h; ++c) {
    float* Uc = U + c * UP;
    pad_rows(u + c * HW, g, ya - 1, yb + 1, Uc);
    if (given) continue;
    vf k[9];
    for (int t = 0; t < 9; ++t) k[t] = bc(K[c * 9 + t]);
    const vf b = bc(bias[c]), w = bc(siw[c]);
    for (int64_t i = 0; i < Rh; ++i) {
      const float* p0 = Uc + i * S + kOff;
      float* lrow = L + (c * Rh + i) * Wp;
      float* srow = s + i * Wp;
      for (int64_t v = 0; v < nv; ++v) {
        vf acc = taps9(p0 + 8 * v, p0 + S + 8 * v, p0 + 2 * S + 8 * v, k, b);
        if (v + 1 == nv) acc = keep(acc, g.tail);
        st(lrow + 8 * v, acc);
        st(srow + 8 * v, ld(srow + 8 * v) + w * acc);
      }
    }
  }
  // 2. grad_s = grad_sg * sg (1 - sg), in place; zero beyond W stays zero.
  for (int64_t i = 0; i < Rh; ++i) {
    float* srow = s + i * Wp;
    const float* gsr = gsg + (ya + i) * W;
    if (given) {
      const float* sgr = sg_in + (ya + i) * W;
      for (int64_t x = 0; x < W; ++x) srow[x] = gsr[x] * sgr[x] * (1.0f - sgr[x]);
      continue;
    }
    // Zero beyond W stays zero (grad_sg reads as zero there).
    for (int64_t v = 0; v < nv; ++v) {
      const vf sv = sigmoid8(ld(srow + 8 * v) + bc(sib));
      st(srow + 8 * v, load_chunk(gsr, g, v) * sv * (1.0f - sv));
    }
  }
  const int64_t o0 = y0 - ya, o1 = y1 - ya;  // own rows, in s / L row numbers
  {
    double gsib = 0.0;
    for (int64_t i = o0; i < o1; ++i) {
      vf a = bc(0.0f);
      for (int64_t v = 0; v < nv; ++v) a += ld(s + i * Wp + 8 * v);
      gsib += hsum(a);
    }
    part[h * kPer] = gsib;
  }

  // 3. Per channel: G, grad_u, and the parameter partials.
  for (int64_t c = 0; c < h; ++c) {
    const float* Uc = U + c * UP;
    const float* lc = L + c * Rh * Wp;
    const float* glc = gl + c * HW;
    const vf w = bc(siw[c]);
    double gsiw = 0.0, gcb = 0.0;
    for (int64_t i = 0; i < Rh; ++i) {
      const float* srow = s + i * Wp;
      const float* glr = glc + (ya + i) * W;
      const float* lr = given ? l_in + c * HW + (ya + i) * W : nullptr;
      float* grow = G + (i + 1) * S + kOff;
      const bool own = i >= o0 && i < o1;
      vf a_siw = bc(0.0f), a_cb = bc(0.0f);
      for (int64_t v = 0; v < nv; ++v) {
        const vf sv = ld(srow + 8 * v);
        const vf gv = load_chunk(glr, g, v) + sv * w;
        st(grow + 8 * v, gv);
        // The given l is read as the recomputed one is kept: zero beyond W.
        a_siw += sv * (given ? load_chunk(lr, g, v) : ld(lc + i * Wp + 8 * v));
        a_cb += gv;
      }
      if (own) {
        gsiw += hsum(a_siw);
        gcb += hsum(a_cb);
      }
    }
    // grad_u[y][x] = sum_{a, b} K[2 - a][2 - b] G[y + a - 1][x + b - 1]: the flipped kernel.
    vf kf[9];
    for (int t = 0; t < 9; ++t) kf[t] = bc(K[c * 9 + 8 - t]);
    float* guc = gu + c * HW;
    for (int64_t y = y0; y < y1; ++y) {
      const float* q0 = G + (y - ya) * S + kOff;  // row y - 1
      float* orow = guc + y * W;
      for (int64_t v = 0; v < nv; ++v)
        store_chunk(orow, g, v, taps9(q0 + 8 * v, q0 + S + 8 * v, q0 + 2 * S + 8 * v, kf, bc(0.0f)));
    }
    // grad_K[a][b] = sum_{y own, x} G[y][x] u[y + a - 1][x + b - 1], in float over at
    // most 8 rows at a time, then in double.
    double dk[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t yr = y0; yr < y1; yr += 8) {
      vf acc[9];
      for (int t = 0; t < 9; ++t) acc[t] = bc(0.0f);
      const int64_t ye = std::min(y1, yr + 8);
      for (int64_t y = yr; y < ye; ++y) {
        const float* grow = G + (y - ya + 1) * S + kOff;
        const float* u0 = Uc + (y - ya) * S + kOff;  // row y - 1
        const float* u1 = u0 + S;
        const float* u2 = u1 + S;
        for (int64_t v = 0; v < nv; ++v) {
          const int64_t x = 8 * v;
          const vf gv = ld(grow + x);
          acc[0] += gv * ld(u0 + x - 1);
          acc[1] += gv * ld(u0 + x);
          acc[2] += gv * ld(u0 + x + 1);
          acc[3] += gv * ld(u1 + x - 1);
          acc[4] += gv * ld(u1 + x);
          acc[5] += gv * ld(u1 + x + 1);
          acc[6] += gv * ld(u2 + x - 1);
          acc[7] += gv * ld(u2 + x);
          acc[8] += gv * ld(u2 + x + 1);
        }
      }
      for (int t = 0; t < 9; ++t) dk[t] += hsum(acc[t]);
    }
    double* pc = part + c * kPer;
    for (int t = 0; t < 9; ++t) pc[t] = dk[t];
    pc[9] = gcb;
    pc[10] = gsiw;
  }
}

#undef DW_AI
