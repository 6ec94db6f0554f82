// CPU kernels of adaptir_cpp::project_in and its backward (SPEC 5 step 1).
//
// Forward: z = x @ weight^T + bias on x viewed as (rows, C) in the backbone's row
// order, one fixed block of rows per work item (x read once, no permute copy), with
// the block's batch statistics (two-pass inside the block, in double) merged across
// blocks in block order (Chan et al.); then xhat and u are written in (N, h, H, W).
// Eval mode normalises each block right after its product, except in (L, N, C) where a
// product block holds too few positions per sample for long channel runs.
// Backward: per-channel sums of grad_u and grad_u * xhat; then per row block, the
// (rows, h) block of grad_z is formed in cache (in (L, N, C) with short channel runs:
// all of grad_z first, in longer blocks) and gives grad_x = grad_z @ weight
// (grad_x written once) and a partial of grad_weight = grad_z^T x (x read once);
// partials are summed in block order.
// float32 uses the skinny kernels of skinny_gemm.h, float64 ATen's CPU mm.
#include "project_in.h"

#include "common.h"
#include "row_planes.h"
#include "skinny_gemm.h"

#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

namespace adaptir::cpu {
namespace {

constexpr const char* kFwd = "project_in";
constexpr const char* kBwd = "project_in_backward";

struct Geometry {
  Layout layout;
  int64_t N, H, W, HW, C, rows;
};

Geometry check_backbone(const char* op, const at::Tensor& x, const char* name,
                        c10::string_view layout, int64_t H, int64_t W) {
  check_cpu(x, op, name);
  check_io_floating(x, op, name);
  Geometry g;
  g.layout = parse_layout(layout, op);
  TORCH_CHECK(H >= 1 && W >= 1, op, ": H and W must be positive, got H=", H, ", W=", W);
  g.H = H;
  g.W = W;
  g.HW = H * W;
  if (g.layout == Layout::NHWC) {
    TORCH_CHECK(x.dim() == 4, op, ": layout 'nhwc' expects ", name,
                " of shape (N, H, W, C), got shape ", x.sizes());
    TORCH_CHECK(x.size(1) == H && x.size(2) == W, op, ": ", name, " of shape ", x.sizes(),
                " does not match H=", H, ", W=", W);
    g.N = x.size(0);
  } else {
    TORCH_CHECK(x.dim() == 3, op, ": layout 'lnc' expects ", name,
                " of shape (L, N, C) with L = H*W, got shape ", x.sizes());
    TORCH_CHECK(x.size(0) == g.HW, op, ": ", name, " of shape ", x.sizes(),
                " has L=", x.size(0), " but H*W=", g.HW);
    g.N = x.size(1);
  }
  g.C = x.size(-1);
  g.rows = g.N * g.HW;
  return g;
}

void check_vector(const at::Tensor& t, int64_t h, at::ScalarType ct, const char* op,
                  const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK(t.scalar_type() == ct, op, ": ", name, " must have the compute dtype ", ct,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == h, op, ": ", name, " must have shape (", h,
              "), got ", t.sizes());
}

void check_weight(const at::Tensor& w, int64_t C, at::ScalarType ct, const char* op) {
  check_cpu(w, op, "weight");
  TORCH_CHECK(w.scalar_type() == ct, op, ": weight must have the compute dtype ", ct,
              ", got ", w.scalar_type());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == C, op, ": weight must have shape (h, C) with C=",
              C, ", got ", w.sizes());
  TORCH_CHECK(w.size(0) >= 1, op, ": weight must have at least one row");
}

void check_hidden(const at::Tensor& t, const Geometry& g, int64_t h, at::ScalarType ct,
                  const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK(t.scalar_type() == ct, op, ": ", name, " must have the compute dtype ", ct,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4 && t.size(0) == g.N && t.size(1) == h && t.size(2) == g.H &&
                  t.size(3) == g.W,
              op, ": ", name, " must have shape (N, h, H, W) = (", g.N, ", ", h, ", ", g.H,
              ", ", g.W, "), got ", t.sizes());
}

// Copies block rows of x (storage dtype io_t) into a compute-dtype buffer.
template <typename scalar_t, typename io_t>
at::Tensor block_input(const at::Tensor& x2d, const RowBlocks::Block& k, at::Tensor& buf,
                       int64_t C) {
  if constexpr (std::is_same_v<scalar_t, io_t>) {
    return x2d.narrow(0, k.row0, k.rows);
  } else {
    const io_t* src = x2d.const_data_ptr<io_t>() + k.row0 * C;
    convert_n<scalar_t, io_t>(src, buf.data_ptr<scalar_t>(), k.rows * C);
    return buf.narrow(0, 0, k.rows);
  }
}

// Batch statistics of one block of z (rows of stride ldz), float32: sum[j] and, about
// the block mean sum[j] / rows, m2[j], in double, each one chain over the rows in order
// (as the scalar loops of forward_impl do for float64). Four channels per vector.
template <int Q>
__attribute__((always_inline)) inline void block_stats_q(const float* z, int64_t rows,
                                                         int64_t ldz, double* sum, double* m2) {
  typedef double vd __attribute__((vector_size(32)));
  typedef float vf4 __attribute__((vector_size(16)));
  vd acc[Q], mean[Q];
  for (int q = 0; q < Q; ++q) acc[q] = vd{0.0, 0.0, 0.0, 0.0};
  for (int64_t r = 0; r < rows; ++r)
    for (int q = 0; q < Q; ++q) {
      vf4 v;
      __builtin_memcpy(&v, z + r * ldz + 4 * q, sizeof v);
      acc[q] += __builtin_convertvector(v, vd);
    }
  const double n = static_cast<double>(rows);
  for (int q = 0; q < Q; ++q) {
    __builtin_memcpy(sum + 4 * q, &acc[q], sizeof acc[q]);
    mean[q] = acc[q] / vd{n, n, n, n};
    acc[q] = vd{0.0, 0.0, 0.0, 0.0};
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int q = 0; q < Q; ++q) {
      vf4 v;
      __builtin_memcpy(&v, z + r * ldz + 4 * q, sizeof v);
      const vd d = __builtin_convertvector(v, vd) - mean[q];
      acc[q] += d * d;
    }
  for (int q = 0; q < Q; ++q) __builtin_memcpy(m2 + 4 * q, &acc[q], sizeof acc[q]);
}

ADAPTIR_CLONES
void block_stats(const float* z, int64_t rows, int64_t h, int64_t ldz, double* sum, double* m2) {
  int64_t j = 0;
  for (; j + 16 <= h; j += 16) block_stats_q<4>(z + j, rows, ldz, sum + j, m2 + j);
  switch ((h - j) / 4) {
    case 3: block_stats_q<3>(z + j, rows, ldz, sum + j, m2 + j); break;
    case 2: block_stats_q<2>(z + j, rows, ldz, sum + j, m2 + j); break;
    case 1: block_stats_q<1>(z + j, rows, ldz, sum + j, m2 + j); break;
    default: break;
  }
  j += (h - j) / 4 * 4;
  for (; j < h; ++j) {
    double s = 0.0, q = 0.0;
    for (int64_t r = 0; r < rows; ++r) s += z[r * ldz + j];
    sum[j] = s;
    const double mean = s / static_cast<double>(rows);
    for (int64_t r = 0; r < rows; ++r) {
      const double d = z[r * ldz + j] - mean;
      q += d * d;
    }
    m2[j] = q;
  }
}

// xo = (zc - m) is, uo = xo w + b over n values of one channel run, float32.
ADAPTIR_CLONES
void normalise_run(const float* __restrict zc, int64_t n, float m, float is, float w, float b,
                   float* __restrict xo, float* __restrict uo) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = (zc[i] - m) * is;
    xo[i] = v;
    uo[i] = v * w + b;
  }
}

// Backward, float32: s0[k] += a[i], s1[k] += a[i] b[i] (in double) for i in [begin, end)
// with i % 4 == k past whole groups of four, the rest into k = 0 (as the float64 loop).
ADAPTIR_CLONES
void grad_sums(const float* a, const float* b, int64_t begin, int64_t end, double* s0,
               double* s1) {
  typedef double vd __attribute__((vector_size(32)));
  typedef float vf4 __attribute__((vector_size(16)));
  vd p0 = {0.0, 0.0, 0.0, 0.0}, p1 = {0.0, 0.0, 0.0, 0.0};
  int64_t i = begin;
  for (; i + 4 <= end; i += 4) {
    vf4 va, vb;
    __builtin_memcpy(&va, a + i, sizeof va);
    __builtin_memcpy(&vb, b + i, sizeof vb);
    const vd da = __builtin_convertvector(va, vd);
    p0 += da;
    p1 += da * __builtin_convertvector(vb, vd);
  }
  __builtin_memcpy(s0, &p0, sizeof p0);
  __builtin_memcpy(s1, &p1, sizeof p1);
  for (; i < end; ++i) {
    s0[0] += a[i];
    s1[0] += static_cast<double>(a[i]) * b[i];
  }
}

// Backward, float32: t[i] = s (a[i] - sa - c[i] sb), one channel run of grad_z.
ADAPTIR_CLONES
void grad_z_run(const float* __restrict a, const float* __restrict c, int64_t n, float s,
                float sa, float sb, float* __restrict t) {
  for (int64_t i = 0; i < n; ++i) t[i] = s * (a[i] - sa - c[i] * sb);
}

// Writes u and xhat for one block from z (rows of stride ldz). float32 first turns each
// sample's rows into channel runs in tmp (h * (p1 - p0) floats; 8 x 8 transposes), so
// the loops below read consecutive values instead of one per row of z.
template <typename scalar_t>
void normalise_block(const RowBlocks& rb, const RowBlocks::Block& k, const scalar_t* z,
                     int64_t h, int64_t ldz, const scalar_t* mean, const scalar_t* invstd,
                     const scalar_t* bw, const scalar_t* bb, scalar_t* u, scalar_t* xhat,
                     scalar_t* tmp) {
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const int64_t HW = rb.HW, np = k.p1 - k.p0, rs = k.pstride * ldz;
  for (int64_t n = k.n0; n < k.n1; ++n) {
    const scalar_t* zr = z + (k.row0 + rb.noff(k, n)) * ldz;
    if constexpr (kF32) row_planes::to_planes(zr, rs, ldz, h, np, tmp, np);
    const int64_t step = kF32 ? 1 : rs;
    for (int64_t j = 0; j < h; ++j) {
      const scalar_t* zc = kF32 ? tmp + j * np : zr + j;
      const scalar_t m = mean[j], is = invstd[j], w = bw[j], b = bb[j];
      scalar_t* xo = xhat + (n * h + j) * HW + k.p0;
      scalar_t* uo = u + (n * h + j) * HW + k.p0;
      if constexpr (kF32) {
        normalise_run(zc, np, m, is, w, b, xo, uo);
        continue;
      }
      for (int64_t i = 0; i < np; ++i) {
        const scalar_t v = (zc[i * step] - m) * is;
        xo[i] = v;
        uo[i] = v * w + b;
      }
    }
  }
}

// Packed (C, hp) transpose of a (h, C) weight (hp = gemm::padded(h)), zero columns
// beyond h: 8 x 8 transposes (row_planes.h), each row of w one channel's run.
std::vector<float> pack_transposed(const float* w, int64_t h, int64_t C, int64_t hp) {
  std::vector<float> wt(static_cast<size_t>(C * hp), 0.0f);
  row_planes::to_rows(w, C, h, C, wt.data(), hp, hp);
  return wt;
}

template <typename scalar_t, typename io_t>
void forward_impl(const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
                  const at::Tensor& bias, const at::Tensor& bn_w, const at::Tensor& bn_b,
                  const at::Tensor& rmean, const at::Tensor& rvar, bool training, double eps,
                  at::Tensor& u, at::Tensor& xhat, at::Tensor& mean_out, at::Tensor& var_out) {
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const int64_t h = weight.size(0), C = g.C;
  const auto opts = weight.options();
  const RowBlocks rb(g.layout, g.N, g.HW, row_block_rows(C));
  const at::Tensor x2d = x.view({g.rows, C});
  // z rows of stride ldz: padded for the float kernels.
  const int64_t ldz = kF32 ? gemm::padded(h) : h;
  at::Tensor z = Scratch::get(0, g.rows, ldz, opts);
  scalar_t* zp = z.data_ptr<scalar_t>();
  std::vector<float> wt, bp;
  at::Tensor wT;
  if constexpr (kF32) {
    wt = pack_transposed(weight.const_data_ptr<float>(), h, C, ldz);
    bp.assign(static_cast<size_t>(ldz), 0.0f);
    std::copy(bias.const_data_ptr<float>(), bias.const_data_ptr<float>() + h, bp.begin());
  } else {
    wT = weight.t();
  }

  std::vector<scalar_t> mean(h), invstd(h);
  const scalar_t* bw = bn_w.const_data_ptr<scalar_t>();
  const scalar_t* bb = bn_b.const_data_ptr<scalar_t>();
  if (!training) {
    const scalar_t* rm = rmean.const_data_ptr<scalar_t>();
    const scalar_t* rv = rvar.const_data_ptr<scalar_t>();
    for (int64_t j = 0; j < h; ++j) {
      mean[j] = rm[j];
      invstd[j] = scalar_t(1) / std::sqrt(rv[j] + static_cast<scalar_t>(eps));
    }
  }
  scalar_t* up = u.data_ptr<scalar_t>();
  scalar_t* xp = xhat.data_ptr<scalar_t>();

  // Per block: (sum, M2 about the block mean) per channel, in double.
  std::vector<double> part(training ? static_cast<size_t>(rb.count * 2 * h) : 0);
  const int64_t max_rows = rb.get(0).rows;
  // xhat and u are written in blocks of their own (common.h: run_blocks: longer channel
  // runs in (L, N, C)) after all of z, or, in eval mode where these are the product's,
  // right after each block's product.
  const RowBlocks nb = run_blocks(rb, ldz);
  const bool normalise_after = training || nb.count != rb.count;
  parallel_items(rb.count, [&](ItemQueue& queue) {
    at::Tensor buf;
    if constexpr (!std::is_same_v<scalar_t, io_t>) buf = Scratch::get(1, max_rows, C, opts);
    at::Tensor tbuf;  // float32 eval: normalise_block's channel runs
    if (kF32 && !normalise_after) tbuf = Scratch::get(2, h, max_rows, opts);
    scalar_t* tmp = tbuf.defined() ? tbuf.data_ptr<scalar_t>() : nullptr;
    std::vector<double> acc(h);
    for (int64_t b; queue.pop(b);) {
      const RowBlocks::Block k = rb.get(b);
      const at::Tensor xb = block_input<scalar_t, io_t>(x2d, k, buf, C);
      scalar_t* zr = zp + k.row0 * ldz;
      if constexpr (kF32) {
        gemm::rows_dot(xb.const_data_ptr<float>(), k.rows, C, wt.data(), h, ldz, bp.data(), zr,
                       ldz);
      } else {
        at::Tensor zb = z.narrow(0, k.row0, k.rows);
        at::cpu::addmm_out(zb, bias, xb, wT);
      }
      if (training) {
        double* pb = part.data() + b * 2 * h;
        if constexpr (kF32) {
          block_stats(zr, k.rows, h, ldz, pb, pb + h);
        } else {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t r = 0; r < k.rows; ++r)
            for (int64_t j = 0; j < h; ++j) acc[j] += zr[r * ldz + j];
          for (int64_t j = 0; j < h; ++j) {
            pb[j] = acc[j];
            acc[j] /= static_cast<double>(k.rows);
          }
          double* m2 = pb + h;
          for (int64_t j = 0; j < h; ++j) m2[j] = 0.0;
          for (int64_t r = 0; r < k.rows; ++r)
            for (int64_t j = 0; j < h; ++j) {
              const double d = zr[r * ldz + j] - acc[j];
              m2[j] += d * d;
            }
        }
      } else if (!normalise_after) {
        normalise_block(rb, k, zp, h, ldz, mean.data(), invstd.data(), bw, bb, up, xp, tmp);
      }
    }
  });

  scalar_t* mo = mean_out.data_ptr<scalar_t>();
  scalar_t* vo = var_out.data_ptr<scalar_t>();
  if (!training) {
    std::copy(rmean.const_data_ptr<scalar_t>(), rmean.const_data_ptr<scalar_t>() + h, mo);
    std::copy(rvar.const_data_ptr<scalar_t>(), rvar.const_data_ptr<scalar_t>() + h, vo);
  } else {
    // Chan et al.: merge (count, mean, M2) block by block, in block order.
    for (int64_t j = 0; j < h; ++j) {
      double cnt = 0.0, m = 0.0, m2 = 0.0;
      for (int64_t b = 0; b < rb.count; ++b) {
        const double nr = static_cast<double>(rb.get(b).rows);
        const double* pb = part.data() + b * 2 * h;
        const double mb = pb[j] / nr;
        const double tot = cnt + nr;
        const double d = mb - m;
        m += d * nr / tot;
        m2 += pb[h + j] + d * d * cnt * nr / tot;
        cnt = tot;
      }
      const double var = m2 / cnt;
      mo[j] = static_cast<scalar_t>(m);
      vo[j] = static_cast<scalar_t>(var);
      mean[j] = mo[j];
      invstd[j] = scalar_t(1) / std::sqrt(vo[j] + static_cast<scalar_t>(eps));
    }
  }
  if (!normalise_after) return;
  const int64_t nb_rows = nb.get(0).rows;
  parallel_items(nb.count, [&](ItemQueue& queue) {
    at::Tensor tbuf;
    if constexpr (kF32) tbuf = Scratch::get(2, h, nb_rows, opts);
    scalar_t* tmp = kF32 ? tbuf.data_ptr<scalar_t>() : nullptr;
    for (int64_t b; queue.pop(b);)
      normalise_block(nb, nb.get(b), zp, h, ldz, mean.data(), invstd.data(), bw, bb, up, xp, tmp);
  });
}

template <typename scalar_t, typename io_t>
void backward_impl(const Geometry& g, const at::Tensor& grad_u, const at::Tensor& x,
                   const at::Tensor& xhat, const at::Tensor& weight, const at::Tensor& bn_w,
                   const at::Tensor& var, bool training, double eps, at::Tensor& grad_x,
                   at::Tensor& grad_w, at::Tensor& grad_b, at::Tensor& grad_bnw,
                   at::Tensor& grad_bnb) {
  const int64_t h = weight.size(0), C = g.C, HW = g.HW, N = g.N;
  const auto opts = weight.options();
  const scalar_t* gu = grad_u.const_data_ptr<scalar_t>();
  const scalar_t* xh = xhat.const_data_ptr<scalar_t>();

  // Pass 1: per-channel sums of grad_u and grad_u * xhat.
  const PlaneChunks pc(N * h, HW, 4096);
  ChannelPartials cp(pc, 2);
  parallel_items(pc.items(), [&](ItemQueue& queue) {
    for (int64_t item; queue.pop(item);) {
      const int64_t plane = item / pc.per_plane, begin = (item % pc.per_plane) * pc.chunk;
      const int64_t end = std::min(pc.plane_len, begin + pc.chunk);
      const scalar_t* a = gu + plane * HW;
      const scalar_t* b = xh + plane * HW;
      double s0[4] = {0, 0, 0, 0}, s1[4] = {0, 0, 0, 0};
      if constexpr (std::is_same_v<scalar_t, float>) {
        grad_sums(a, b, begin, end, s0, s1);
      } else {
        int64_t i = begin;
        for (; i + 4 <= end; i += 4)
          for (int k = 0; k < 4; ++k) {
            s0[k] += a[i + k];
            s1[k] += static_cast<double>(a[i + k]) * b[i + k];
          }
        for (; i < end; ++i) {
          s0[0] += a[i];
          s1[0] += static_cast<double>(a[i]) * b[i];
        }
      }
      double* p = cp.at(item);
      p[0] = (s0[0] + s0[1]) + (s0[2] + s0[3]);
      p[1] = (s1[0] + s1[1]) + (s1[2] + s1[3]);
    }
  });
  const std::vector<double> sums = cp.reduce_channels(N, h);
  store_channel_sums<scalar_t>(sums, h, 2, 0, grad_bnb);
  store_channel_sums<scalar_t>(sums, h, 2, 1, grad_bnw);

  // grad_z = scale * (grad_u - ca - xhat * cb) per channel.
  std::vector<scalar_t> scale(h), ca(h), cb(h);
  const scalar_t* bw = bn_w.const_data_ptr<scalar_t>();
  const scalar_t* vp = var.const_data_ptr<scalar_t>();
  const double m = static_cast<double>(N * HW);
  for (int64_t j = 0; j < h; ++j) {
    const scalar_t invstd = scalar_t(1) / std::sqrt(vp[j] + static_cast<scalar_t>(eps));
    scale[j] = bw[j] * invstd;
    ca[j] = training ? static_cast<scalar_t>(sums[j * 2] / m) : scalar_t(0);
    cb[j] = training ? static_cast<scalar_t>(sums[j * 2 + 1] / m) : scalar_t(0);
  }

  // Pass 2: per row block, grad_z in cache -> grad_x block, grad_weight partial.
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const int64_t ldz = kF32 ? gemm::padded(h) : h;
  const RowBlocks rb(g.layout, N, HW, row_block_rows(C));
  const at::Tensor x2d = x.view({g.rows, C});
  at::Tensor gx2d = grad_x.view({g.rows, C});
  at::Tensor wpart = Scratch::get(0, rb.count * h, C, opts);
  std::vector<double> bpart(static_cast<size_t>(rb.count * h));
  const int64_t max_rows = rb.get(0).rows;
  [[maybe_unused]] const bool stream =
      std::is_same_v<scalar_t, io_t> && g.rows * C * 4 >= gemm::kStreamBytes;
  // grad_z's rows of one block k of blocks B, from channel runs of grad_u and xhat.
  const auto grad_z_block = [&](const RowBlocks& B, const RowBlocks::Block& k, scalar_t* gz,
                                scalar_t* tmp) {
    const int64_t np = k.p1 - k.p0, rs = k.pstride * ldz;
    for (int64_t n = k.n0; n < k.n1; ++n) {
      scalar_t* zr = gz + B.noff(k, n) * ldz;
      for (int64_t j = 0; j < h; ++j) {
        const scalar_t* a = gu + (n * h + j) * HW + k.p0;
        const scalar_t* c = xh + (n * h + j) * HW + k.p0;
        const scalar_t s = scale[j], sa = ca[j], sb = cb[j];
        if constexpr (kF32) {  // channel runs, then transposed into the rows
          grad_z_run(a, c, np, s, sa, sb, tmp + j * np);
        } else {
          scalar_t* zc = zr + j;
          for (int64_t i = 0; i < np; ++i) zc[i * rs] = s * (a[i] - sa - c[i] * sb);
        }
      }
      if constexpr (kF32) row_planes::to_rows(tmp, np, h, np, zr, rs, ldz);
    }
  };
  // float32 in (L, N, C) with short runs in the product's blocks (common.h: run_blocks):
  // all of grad_z first, in blocks of longer runs; the products read its rows.
  const RowBlocks zb = run_blocks(rb, ldz);
  const bool z_first = kF32 && zb.count != rb.count;
  at::Tensor gzall;
  if (z_first) {
    gzall = Scratch::get(5, g.rows, ldz, opts);  // the calling thread's slot 5
    const int64_t zb_rows = zb.get(0).rows;
    parallel_items(zb.count, [&](ItemQueue& queue) {
      at::Tensor tbuf = Scratch::get(4, h, zb_rows, opts);
      for (int64_t b; queue.pop(b);) {
        const RowBlocks::Block k = zb.get(b);
        grad_z_block(zb, k, gzall.data_ptr<scalar_t>() + k.row0 * ldz, tbuf.data_ptr<scalar_t>());
      }
    });
  }
  parallel_items(rb.count, [&](ItemQueue& queue) {
    at::Tensor gzbuf, tbuf;
    if (!z_first) {
      gzbuf = Scratch::get(1, max_rows, ldz, opts);
      if constexpr (kF32) tbuf = Scratch::get(4, h, max_rows, opts);
    }
    at::Tensor xbuf, gxbuf;
    if constexpr (!std::is_same_v<scalar_t, io_t>) {
      xbuf = Scratch::get(2, max_rows, C, opts);
      gxbuf = Scratch::get(3, max_rows, C, opts);
    }
    for (int64_t b; queue.pop(b);) {
      const RowBlocks::Block k = rb.get(b);
      scalar_t* gz;
      if (z_first) {
        gz = gzall.data_ptr<scalar_t>() + k.row0 * ldz;
      } else {
        gz = gzbuf.data_ptr<scalar_t>();
        grad_z_block(rb, k, gz, tbuf.defined() ? tbuf.data_ptr<scalar_t>() : nullptr);
      }
      double* bp = bpart.data() + b * h;
      for (int64_t j = 0; j < h; ++j) bp[j] = 0.0;
      for (int64_t r = 0; r < k.rows; ++r)
        for (int64_t j = 0; j < h; ++j) bp[j] += gz[r * ldz + j];
      const at::Tensor xb = block_input<scalar_t, io_t>(x2d, k, xbuf, C);
      scalar_t* gxo = std::is_same_v<scalar_t, io_t>
                          ? reinterpret_cast<scalar_t*>(gx2d.data_ptr<io_t>() + k.row0 * C)
                          : gxbuf.data_ptr<scalar_t>();
      if constexpr (kF32) {
        gemm::outer(gz, ldz, k.rows, h, xb.const_data_ptr<float>(), C,
                    wpart.data_ptr<float>() + b * h * C);
        gemm::expand(gz, ldz, k.rows, h, weight.const_data_ptr<float>(), C, gxo, stream);
      } else {
        const at::Tensor gzb = at::from_blob(gz, {k.rows, ldz}, opts);
        at::Tensor wp = wpart.narrow(0, b * h, h);
        at::cpu::mm_out(wp, gzb.t(), xb);
        at::Tensor gxb = at::from_blob(gxo, {k.rows, C}, opts);
        at::cpu::mm_out(gxb, gzb, weight);
      }
      if constexpr (!std::is_same_v<scalar_t, io_t>)
        convert_n<io_t, scalar_t>(gxo, gx2d.data_ptr<io_t>() + k.row0 * C, k.rows * C);
    }
  });

  // Fixed-order sums of the per-block partials.
  scalar_t* gw = grad_w.data_ptr<scalar_t>();
  sum_partials_to(wpart.const_data_ptr<scalar_t>(), rb.count, h * C,
                  [&](int64_t e0, int64_t e1, const double* sums) {
                    for (int64_t e = e0; e < e1; ++e) gw[e] = static_cast<scalar_t>(sums[e - e0]);
                  });
  scalar_t* gb = grad_b.data_ptr<scalar_t>();
  for (int64_t j = 0; j < h; ++j) {
    double s = 0.0;
    for (int64_t b = 0; b < rb.count; ++b) s += bpart[b * h + j];
    gb[j] = static_cast<scalar_t>(s);
  }
}

// Dispatches on (compute dtype, storage dtype of x).
template <typename F>
void dispatch_io(at::ScalarType io, const char* op, const F& f) {
  switch (io) {
    case at::kDouble: f(double(), double()); break;
    case at::kFloat: f(float(), float()); break;
    case at::kHalf: f(float(), c10::Half()); break;
    case at::kBFloat16: f(float(), c10::BFloat16()); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", io);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_in(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, bool training, double eps, c10::string_view layout,
    int64_t H, int64_t W) {
  const Geometry g = check_backbone(kFwd, x, "x", layout, H, W);
  const at::ScalarType ct = compute_type(x.scalar_type());
  check_weight(weight, g.C, ct, kFwd);
  const int64_t h = weight.size(0);
  check_vector(bias, h, ct, kFwd, "bias");
  check_vector(bn_weight, h, ct, kFwd, "bn_weight");
  check_vector(bn_bias, h, ct, kFwd, "bn_bias");
  check_vector(running_mean, h, ct, kFwd, "running_mean");
  check_vector(running_var, h, ct, kFwd, "running_var");
  TORCH_CHECK(!training || g.rows > 1, kFwd,
              ": training-mode batch statistics need more than one value per channel, got N*H*W=",
              g.rows);
  const auto opts = weight.options();
  at::Tensor u = new_output({g.N, h, H, W}, opts);
  at::Tensor xhat = new_output({g.N, h, H, W}, opts);
  at::Tensor mean = new_output({h}, opts);
  at::Tensor var = new_output({h}, opts);
  if (g.rows == 0) {
    mean.copy_(running_mean);
    var.copy_(running_var);
    return {u, xhat, mean, var};
  }
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const at::Tensor bc = bias.contiguous(), bwc = bn_weight.contiguous(), bbc = bn_bias.contiguous();
  const at::Tensor rmc = running_mean.contiguous(), rvc = running_var.contiguous();
  dispatch_io(x.scalar_type(), kFwd, [&](auto s, auto io) {
    using scalar_t = decltype(s);
    using io_t = decltype(io);
    forward_impl<scalar_t, io_t>(g, xc, wc, bc, bwc, bbc, rmc, rvc, training, eps, u, xhat,
                                 mean, var);
  });
  return {u, xhat, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_in_backward(
    const at::Tensor& grad_u, const at::Tensor& x, const at::Tensor& xhat,
    const at::Tensor& weight, const at::Tensor& bn_weight, const at::Tensor& var,
    bool training, double eps, c10::string_view layout, int64_t H, int64_t W) {
  const Geometry g = check_backbone(kBwd, x, "x", layout, H, W);
  const at::ScalarType ct = compute_type(x.scalar_type());
  check_weight(weight, g.C, ct, kBwd);
  const int64_t h = weight.size(0);
  check_hidden(grad_u, g, h, ct, kBwd, "grad_u");
  check_hidden(xhat, g, h, ct, kBwd, "xhat");
  check_vector(bn_weight, h, ct, kBwd, "bn_weight");
  check_vector(var, h, ct, kBwd, "var");
  const auto opts = weight.options();
  at::Tensor grad_x = new_output(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_w = new_output({h, g.C}, opts);
  at::Tensor grad_b = new_output({h}, opts);
  at::Tensor grad_bnw = new_output({h}, opts);
  at::Tensor grad_bnb = new_output({h}, opts);
  if (g.rows == 0) {
    grad_w.zero_();
    grad_b.zero_();
    grad_bnw.zero_();
    grad_bnb.zero_();
    return {grad_x, grad_w, grad_b, grad_bnw, grad_bnb};
  }
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const at::Tensor guc = grad_u.contiguous(), xhc = xhat.contiguous();
  const at::Tensor bwc = bn_weight.contiguous(), vc = var.contiguous();
  dispatch_io(x.scalar_type(), kBwd, [&](auto s, auto io) {
    using scalar_t = decltype(s);
    using io_t = decltype(io);
    backward_impl<scalar_t, io_t>(g, guc, xc, xhc, wc, bwc, vc, training, eps, grad_x, grad_w,
                                  grad_b, grad_bnw, grad_bnb);
  });
  return {grad_x, grad_w, grad_b, grad_bnw, grad_bnb};
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("project_in", &project_in);
  m.impl("project_in_backward", &project_in_backward);
}

}  // namespace adaptir::cpu
