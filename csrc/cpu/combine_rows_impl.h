// Body of combine_rows.h. No include guard: combine_rows.cpp includes this file once
// per instruction set, inside a namespace.

#include "lanes8_impl.h"

typedef float vf4 __attribute__((vector_size(16)));
typedef double vd __attribute__((vector_size(32)));

#define CR_AI static inline __attribute__((always_inline))

CR_AI vd ldd(const double* p) {
  vd v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
CR_AI void std_(double* p, vd v) { __builtin_memcpy(p, &v, sizeof v); }

// The lower and upper four lanes of v in double.
CR_AI vd lo(vf v) {
  vf4 h;
  __builtin_memcpy(&h, &v, sizeof h);
  return __builtin_convertvector(h, vd);
}
CR_AI vd hi(vf v) {
  vf4 h;
  __builtin_memcpy(&h, reinterpret_cast<const char*>(&v) + sizeof h, sizeof h);
  return __builtin_convertvector(h, vd);
}

static void backward_channel_impl(const float* gv, const float* l, const float* g,
                                  const float* sg, float s, float c, int64_t n, float* gl,
                                  float* gg, double* acc, double* sums) {
  const vf S = bc(s), Cv = bc(c);
  vd cg0 = {0, 0, 0, 0}, cg1 = cg0, cs0 = cg0, cs1 = cg0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vf gvi = ld(gv + i), lv = ld(l + i), gvv = ld(g + i), sgv = ld(sg + i);
    const vf gvs = gvi * S;
    st(gl + i, gvs * Cv);
    st(gg + i, gvs * sgv);
    const vf t = gvs * gvv;
    std_(acc + i, ldd(acc + i) + lo(t));
    std_(acc + i + 4, ldd(acc + i + 4) + hi(t));
    const vf a = gvs * lv;
    cg0 += lo(a);
    cg1 += hi(a);
    const vf b = gvi * (Cv * lv + sgv * gvv);
    cs0 += lo(b);
    cs1 += hi(b);
  }
  double r_cg = ((cg0[0] + cg1[0]) + (cg0[1] + cg1[1])) + ((cg0[2] + cg1[2]) + (cg0[3] + cg1[3]));
  double r_cs = ((cs0[0] + cs1[0]) + (cs0[1] + cs1[1])) + ((cs0[2] + cs1[2]) + (cs0[3] + cs1[3]));
  for (; i < n; ++i) {
    const float gvs = gv[i] * s;
    gl[i] = gvs * c;
    gg[i] = gvs * sg[i];
    acc[i] += gvs * g[i];
    r_cg += gvs * l[i];
    r_cs += gv[i] * (c * l[i] + sg[i] * g[i]);
  }
  sums[0] = r_cg;
  sums[1] = r_cs;
}

#undef CR_AI
