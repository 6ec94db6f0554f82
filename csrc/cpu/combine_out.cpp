// CPU kernels of adaptir_cpp::combine_out and its backward (SPEC 5 step 5).
//
// Forward, per fixed block of backbone rows: v (rows, h) is built in cache from l, g,
// sg, cg, cs, and out = v @ tail_w^T is written straight into the output's rows
// (through a float buffer only when out_dtype is float16/bfloat16).
// Backward, per block: the grad_out block is read once from memory for grad_v =
// grad_out @ tail_w and, from cache, for the block's partial of grad_tail_w =
// grad_out^T v (v rebuilt in cache); grad_l, grad_g, grad_sg and the per-sample sums
// for grad_cg and grad_cs follow from grad_v in the same block. Partials are summed in
// block order. In (L, N, C), where a block holds too few positions per sample for long
// channel runs (common.h: run_blocks), float32 builds all of v first and runs grad_v's
// channel pass after the products, each in longer blocks of its own. float32 uses the skinny kernels of skinny_gemm.h and the row kernel of
// combine_rows.h, float64 ATen's mm and the scalar loop below.
#include "combine_out.h"

#include "combine_rows.h"
#include "common.h"
#include "row_planes.h"
#include "skinny_gemm.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

namespace adaptir::cpu {
namespace {

constexpr const char* kFwd = "combine_out";
constexpr const char* kBwd = "combine_out_backward";

struct Dims {
  Layout layout;
  int64_t N, h, H, W, HW, C;
};

Dims check_args(const char* op, const at::Tensor& l, const at::Tensor& g, const at::Tensor& sg,
                const at::Tensor& cg, const at::Tensor& cs, const at::Tensor& tail_w,
                c10::string_view layout) {
  Dims d;
  d.layout = parse_layout(layout, op);
  check_cpu(l, op, "l");
  check_floating(l, op, "l");
  TORCH_CHECK(l.dim() == 4, op, ": l must have shape (N, h, H, W), got ", l.sizes());
  d.N = l.size(0);
  d.h = l.size(1);
  d.H = l.size(2);
  d.W = l.size(3);
  d.HW = d.H * d.W;
  check_like(g, l, op, "g", "l");
  TORCH_CHECK(g.sizes() == l.sizes(), op, ": g must have l's shape ", l.sizes(), ", got ",
              g.sizes());
  check_like(sg, l, op, "sg", "l");
  TORCH_CHECK(sg.dim() == 3 && sg.size(0) == d.N && sg.size(1) == d.H && sg.size(2) == d.W, op,
              ": sg must have shape (N, H, W) = (", d.N, ", ", d.H, ", ", d.W, "), got ",
              sg.sizes());
  check_like(cg, l, op, "cg", "l");
  TORCH_CHECK(cg.dim() == 2 && cg.size(0) == d.N && cg.size(1) == d.h, op,
              ": cg must have shape (N, h) = (", d.N, ", ", d.h, "), got ", cg.sizes());
  check_like(cs, l, op, "cs", "l");
  TORCH_CHECK(cs.dim() == 2 && cs.size(0) == d.N && cs.size(1) == d.h, op,
              ": cs must have shape (N, h) = (", d.N, ", ", d.h, "), got ", cs.sizes());
  check_like(tail_w, l, op, "tail_w", "l");
  TORCH_CHECK(tail_w.dim() == 2 && tail_w.size(1) == d.h, op,
              ": tail_w must have shape (C, h) with h=", d.h, ", got ", tail_w.sizes());
  d.C = tail_w.size(0);
  return d;
}

std::vector<int64_t> out_shape(const Dims& d) {
  if (d.layout == Layout::NHWC) return {d.N, d.H, d.W, d.C};
  return {d.HW, d.N, d.C};
}

struct Inputs {
  at::Tensor l, g, sg, cg, cs, tail_w;
};

Inputs contiguous(const at::Tensor& l, const at::Tensor& g, const at::Tensor& sg,
                  const at::Tensor& cg, const at::Tensor& cs, const at::Tensor& tail_w) {
  return {l.contiguous(), g.contiguous(), sg.contiguous(),
          cg.contiguous(), cs.contiguous(), tail_w.contiguous()};
}

// t[i] = s (c l[i] + sg[i] g[i]): one channel run of v, float32.
ADAPTIR_CLONES
void v_run(const float* __restrict l, const float* __restrict g, const float* __restrict sg,
           int64_t n, float s, float c, float* __restrict t) {
  for (int64_t i = 0; i < n; ++i) t[i] = s * (c * l[i] + sg[i] * g[i]);
}

// v rows of one block, (rows, ldv) row-major, from the hidden tensors. float32: each
// channel's run of positions is computed contiguously into tmp (h x (p1 - p0) floats),
// then transposed into the rows 8 x 8 at a time (row_planes.h); the same values.
// float64 (gradcheck) writes the rows directly and takes no tmp.
template <typename scalar_t>
void gather_v(const RowBlocks& rb, const RowBlocks::Block& k, const Dims& d, const Inputs& in,
              scalar_t* v, int64_t ldv, scalar_t* tmp) {
  const scalar_t* l = in.l.const_data_ptr<scalar_t>();
  const scalar_t* g = in.g.const_data_ptr<scalar_t>();
  const scalar_t* sg = in.sg.const_data_ptr<scalar_t>();
  const scalar_t* cg = in.cg.const_data_ptr<scalar_t>();
  const scalar_t* cs = in.cs.const_data_ptr<scalar_t>();
  const int64_t h = d.h, HW = d.HW, np = k.p1 - k.p0, rs = k.pstride * ldv;
  for (int64_t n = k.n0; n < k.n1; ++n) {
    const scalar_t* sgr = sg + n * HW + k.p0;
    scalar_t* vr = v + rb.noff(k, n) * ldv;
    for (int64_t j = 0; j < h; ++j) {
      const int64_t plane = (n * h + j) * HW + k.p0;
      const scalar_t* lr = l + plane;
      const scalar_t* gr = g + plane;
      const scalar_t s = cs[n * h + j], c = cg[n * h + j];
      if constexpr (std::is_same_v<scalar_t, float>) {
        v_run(lr, gr, sgr, np, s, c, tmp + j * np);
      } else {
        scalar_t* vc = vr + j;
        for (int64_t i = 0; i < np; ++i) vc[i * rs] = s * (c * lr[i] + sgr[i] * gr[i]);
      }
    }
    if constexpr (std::is_same_v<scalar_t, float>) row_planes::to_rows(tmp, np, h, np, vr, rs, ldv);
  }
}

// All of v's rows, (N HW, ldv), in parallel over the blocks vb (float32).
template <typename scalar_t>
void gather_v_all(const RowBlocks& vb, const Dims& d, const Inputs& in, scalar_t* v, int64_t ldv) {
  const int64_t vb_rows = vb.get(0).rows;
  parallel_items(vb.count, [&](ItemQueue& queue) {
    at::Tensor tbuf = Scratch::get(4, d.h, vb_rows, in.l.options());
    for (int64_t b; queue.pop(b);) {
      const RowBlocks::Block k = vb.get(b);
      gather_v<scalar_t>(vb, k, d, in, v + k.row0 * ldv, ldv, tbuf.data_ptr<scalar_t>());
    }
  });
}

template <typename scalar_t, typename io_t>
void forward_impl(const Dims& d, const Inputs& in, at::Tensor& out) {
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const RowBlocks rb(d.layout, d.N, d.HW, row_block_rows(d.C));
  const auto opts = in.l.options();
  const int64_t C = d.C, h = d.h, ldv = kF32 ? gemm::padded(h) : h;
  const at::Tensor wT = in.tail_w.t();
  std::vector<float> wTc;  // (h, C): 8 x 8 transposes of tail_w's rows (row_planes.h)
  if constexpr (kF32) {
    wTc.resize(static_cast<size_t>(h * C));
    row_planes::to_planes(in.tail_w.const_data_ptr<float>(), h, h, h, C, wTc.data(), C);
  }
  at::Tensor out2d = out.view({d.N * d.HW, C});
  const int64_t max_rows = rb.get(0).rows;
  [[maybe_unused]] const bool stream =
      std::is_same_v<scalar_t, io_t> && d.N * d.HW * C * 4 >= gemm::kStreamBytes;
  // float32 in (L, N, C) with short runs in the product's blocks: all of v first, in
  // blocks of longer runs (common.h: run_blocks), then the products read its rows.
  const RowBlocks vb = run_blocks(rb, ldv);
  const bool v_first = kF32 && vb.count != rb.count;
  at::Tensor vall;
  if (v_first) {
    vall = Scratch::get(5, d.N * d.HW, ldv, opts);  // the calling thread's slot 5
    gather_v_all<scalar_t>(vb, d, in, vall.data_ptr<scalar_t>(), ldv);
  }
  parallel_items(rb.count, [&](ItemQueue& queue) {
    at::Tensor vbuf, tbuf;
    if (!v_first) {
      vbuf = Scratch::get(1, max_rows, ldv, opts);
      if constexpr (kF32) tbuf = Scratch::get(4, h, max_rows, opts);  // gather_v's runs
    }
    scalar_t* tmp = tbuf.defined() ? tbuf.data_ptr<scalar_t>() : nullptr;
    at::Tensor obuf;
    if constexpr (!std::is_same_v<scalar_t, io_t>) obuf = Scratch::get(2, max_rows, C, opts);
    for (int64_t b; queue.pop(b);) {
      const RowBlocks::Block k = rb.get(b);
      scalar_t* v;
      if (v_first) {
        v = vall.data_ptr<scalar_t>() + k.row0 * ldv;
      } else {
        v = vbuf.data_ptr<scalar_t>();
        gather_v<scalar_t>(rb, k, d, in, v, ldv, tmp);
      }
      scalar_t* o = std::is_same_v<scalar_t, io_t>
                        ? reinterpret_cast<scalar_t*>(out2d.data_ptr<io_t>() + k.row0 * C)
                        : obuf.data_ptr<scalar_t>();
      if constexpr (kF32) {
        gemm::expand(v, ldv, k.rows, h, wTc.data(), C, o, stream);
      } else {
        at::Tensor ob = at::from_blob(o, {k.rows, C}, opts);
        at::cpu::mm_out(ob, at::from_blob(v, {k.rows, ldv}, opts), wT);
      }
      if constexpr (!std::is_same_v<scalar_t, io_t>)
        convert_n<io_t, scalar_t>(o, out2d.data_ptr<io_t>() + k.row0 * C, k.rows * C);
    }
  });
}

template <typename scalar_t, typename io_t>
void backward_impl(const Dims& d, const at::Tensor& go, const Inputs& in, at::Tensor& gl,
                   at::Tensor& gg, at::Tensor& gsg, at::Tensor& gcg, at::Tensor& gcs,
                   at::Tensor& gT) {
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const RowBlocks rb(d.layout, d.N, d.HW, row_block_rows(d.C));
  const auto opts = in.l.options();
  const int64_t N = d.N, h = d.h, HW = d.HW, C = d.C, ldv = kF32 ? gemm::padded(h) : h;
  const at::Tensor go2d = go.view({N * HW, C});
  // Per-block partials of grad_tail_w^T, (h, C) each.
  at::Tensor tpart = Scratch::get(0, rb.count * h, C, opts);
  const int64_t max_rows = rb.get(0).rows;
  // tail_w (C, h) packed to (C, ldv) for grad_v = grad_out @ tail_w.
  std::vector<float> wpk;
  if constexpr (kF32) {
    wpk.assign(static_cast<size_t>(C * ldv), 0.0f);
    const float* tw = in.tail_w.const_data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < h; ++j) wpk[c * ldv + j] = tw[c * h + j];
  }

  const scalar_t* l = in.l.const_data_ptr<scalar_t>();
  const scalar_t* g = in.g.const_data_ptr<scalar_t>();
  const scalar_t* sg = in.sg.const_data_ptr<scalar_t>();
  const scalar_t* cg = in.cg.const_data_ptr<scalar_t>();
  const scalar_t* cs = in.cs.const_data_ptr<scalar_t>();
  scalar_t* glp = gl.data_ptr<scalar_t>();
  scalar_t* ggp = gg.data_ptr<scalar_t>();
  scalar_t* gsgp = gsg.data_ptr<scalar_t>();

  // grad_v's channel pass over one block k of blocks B: grad_l, grad_g, grad_sg and the
  // block's per-sample partials pb of grad_cg, grad_cs, from the block's grad_v rows gv.
  const auto channel_pass = [&](const RowBlocks& B, const RowBlocks::Block& k, const scalar_t* gv,
                                double* pb, scalar_t* tmp, std::vector<double>& acc) {
    const int64_t np = k.p1 - k.p0, rs = k.pstride * ldv;
    for (int64_t n = k.n0; n < k.n1; ++n) {
      const scalar_t* sgr = sg + n * HW + k.p0;
      const scalar_t* gvr = gv + B.noff(k, n) * ldv;
      std::fill(acc.begin(), acc.begin() + np, 0.0);
      if constexpr (kF32) {
        // grad_v's columns of this sample as channel runs.
        float* cols = tmp;
        row_planes::to_planes(gvr, rs, ldv, h, np, cols, np);
        for (int64_t j = 0; j < h; ++j) {
          const int64_t plane = (n * h + j) * HW + k.p0;
          combine_rows::backward_channel(cols + j * np, l + plane, g + plane, sgr, cs[n * h + j],
                                         cg[n * h + j], np, glp + plane, ggp + plane,
                                         acc.data(), pb + (n * h + j) * 2);
        }
      } else {
        for (int64_t j = 0; j < h; ++j) {
          const int64_t plane = (n * h + j) * HW + k.p0;
          const scalar_t* lr = l + plane;
          const scalar_t* gr = g + plane;
          scalar_t* glr = glp + plane;
          scalar_t* ggr = ggp + plane;
          const scalar_t s = cs[n * h + j], c = cg[n * h + j];
          const scalar_t* gvc = gvr + j;
          double s_cg[4] = {0, 0, 0, 0}, s_cs[4] = {0, 0, 0, 0};
          for (int64_t i = 0; i < np; ++i) {
            const scalar_t gvi = gvc[i * rs];
            const scalar_t gvs = gvi * s;
            glr[i] = gvs * c;
            ggr[i] = gvs * sgr[i];
            acc[i] += gvs * gr[i];
            s_cg[i & 3] += gvs * lr[i];
            s_cs[i & 3] += gvi * (c * lr[i] + sgr[i] * gr[i]);
          }
          pb[(n * h + j) * 2] = (s_cg[0] + s_cg[1]) + (s_cg[2] + s_cg[3]);
          pb[(n * h + j) * 2 + 1] = (s_cs[0] + s_cs[1]) + (s_cs[2] + s_cs[3]);
        }
      }
      scalar_t* gso = gsgp + n * HW + k.p0;
      for (int64_t i = 0; i < np; ++i) gso[i] = static_cast<scalar_t>(acc[i]);
    }
  };

  // float32 in (L, N, C) with short runs in the product's blocks (common.h: run_blocks):
  // v first, in blocks of longer runs; the products write all of grad_v's rows; its
  // channel pass follows in the longer blocks. Otherwise all of it per product block.
  const RowBlocks vb = run_blocks(rb, ldv);
  const bool runs = kF32 && vb.count != rb.count;
  const RowBlocks& cb = runs ? vb : rb;  // the channel pass's blocks
  std::vector<double> part(static_cast<size_t>(cb.count * N * h * 2), 0.0);
  at::Tensor vall, gvall;
  if (runs) {
    vall = Scratch::get(5, N * HW, ldv, opts);  // the calling thread's slots 5 and 6
    gvall = Scratch::get(6, N * HW, ldv, opts);
    gather_v_all<scalar_t>(vb, d, in, vall.data_ptr<scalar_t>(), ldv);
  }

  parallel_items(rb.count, [&](ItemQueue& queue) {
    at::Tensor vbuf, gvbuf, tbuf;
    if (!runs) {
      vbuf = Scratch::get(1, max_rows, ldv, opts);
      gvbuf = Scratch::get(2, max_rows, ldv, opts);
      if constexpr (kF32) tbuf = Scratch::get(4, h, max_rows, opts);  // v's runs, then grad_v's
    }
    scalar_t* tmp = tbuf.defined() ? tbuf.data_ptr<scalar_t>() : nullptr;
    at::Tensor gobuf;
    if constexpr (!std::is_same_v<scalar_t, io_t>) gobuf = Scratch::get(3, max_rows, C, opts);
    std::vector<double> acc(runs ? 0 : static_cast<size_t>(max_rows));
    for (int64_t b; queue.pop(b);) {
      const RowBlocks::Block k = rb.get(b);
      const scalar_t* gob;
      if constexpr (std::is_same_v<scalar_t, io_t>) {
        gob = go2d.const_data_ptr<scalar_t>() + k.row0 * C;
      } else {
        convert_n<scalar_t, io_t>(go2d.const_data_ptr<io_t>() + k.row0 * C,
                                  gobuf.data_ptr<scalar_t>(), k.rows * C);
        gob = gobuf.const_data_ptr<scalar_t>();
      }
      scalar_t* v;
      scalar_t* gv;
      if (runs) {
        v = vall.data_ptr<scalar_t>() + k.row0 * ldv;
        gv = gvall.data_ptr<scalar_t>() + k.row0 * ldv;
      } else {
        v = vbuf.data_ptr<scalar_t>();
        gv = gvbuf.data_ptr<scalar_t>();
        gather_v<scalar_t>(rb, k, d, in, v, ldv, tmp);
      }
      scalar_t* tp = tpart.data_ptr<scalar_t>() + b * h * C;
      if constexpr (kF32) {
        gemm::rows_dot(gob, k.rows, C, wpk.data(), h, ldv, nullptr, gv, ldv);
        gemm::outer(v, ldv, k.rows, h, gob, C, tp);
      } else {
        const at::Tensor gobt = at::from_blob(const_cast<scalar_t*>(gob), {k.rows, C}, opts);
        at::Tensor gvb = gvbuf.narrow(0, 0, k.rows);
        at::cpu::mm_out(gvb, gobt, in.tail_w);
        at::Tensor tpt = at::from_blob(tp, {h, C}, opts);
        at::cpu::mm_out(tpt, vbuf.narrow(0, 0, k.rows).t(), gobt);
      }
      if (!runs) channel_pass(rb, k, gv, part.data() + b * N * h * 2, tmp, acc);
    }
  });
  if (runs) {
    const int64_t vb_rows = vb.get(0).rows;
    parallel_items(vb.count, [&](ItemQueue& queue) {
      at::Tensor tbuf = Scratch::get(4, h, vb_rows, opts);
      std::vector<double> acc(static_cast<size_t>(vb_rows));
      for (int64_t b; queue.pop(b);) {
        const RowBlocks::Block k = vb.get(b);
        channel_pass(vb, k, gvall.const_data_ptr<scalar_t>() + k.row0 * ldv,
                     part.data() + b * N * h * 2, tbuf.data_ptr<scalar_t>(), acc);
      }
    });
  }

  scalar_t* pcg = gcg.data_ptr<scalar_t>();
  scalar_t* pcs = gcs.data_ptr<scalar_t>();
  for (int64_t e = 0; e < N * h; ++e) {
    double a = 0.0, c = 0.0;
    for (int64_t b = 0; b < cb.count; ++b) {
      a += part[(b * N * h + e) * 2];
      c += part[(b * N * h + e) * 2 + 1];
    }
    pcg[e] = static_cast<scalar_t>(a);
    pcs[e] = static_cast<scalar_t>(c);
  }
  // grad_tail_w[c, j] = sum_b tpart[b, j, c], blocks in order.
  scalar_t* gtp = gT.data_ptr<scalar_t>();
  sum_partials_to(tpart.const_data_ptr<scalar_t>(), rb.count, h * C,
                  [&](int64_t e0, int64_t e1, const double* sums) {
                    for (int64_t e = e0; e < e1;) {  // runs of one j: e = j * C + c
                      const int64_t j = e / C, c0 = e % C, n = std::min(e1 - e, C - c0);
                      const double* s = sums + (e - e0);
                      for (int64_t i = 0; i < n; ++i) gtp[(c0 + i) * h + j] = static_cast<scalar_t>(s[i]);
                      e += n;
                    }
                  });
}

template <typename F>
void dispatch_io(at::ScalarType ct, at::ScalarType io, const char* op, const F& f) {
  if (ct == at::kDouble) {
    switch (io) {
      case at::kDouble: return f(double(), double());
      case at::kFloat: return f(double(), float());
      case at::kHalf: return f(double(), c10::Half());
      case at::kBFloat16: return f(double(), c10::BFloat16());
      default: break;
    }
  } else {
    switch (io) {
      case at::kDouble: return f(float(), double());
      case at::kFloat: return f(float(), float());
      case at::kHalf: return f(float(), c10::Half());
      case at::kBFloat16: return f(float(), c10::BFloat16());
      default: break;
    }
  }
  TORCH_CHECK(false, op, ": unsupported dtype ", io);
}

}  // namespace

at::Tensor combine_out(const at::Tensor& l, const at::Tensor& g, const at::Tensor& sg,
                       const at::Tensor& cg, const at::Tensor& cs, const at::Tensor& tail_w,
                       c10::string_view layout, at::ScalarType out_dtype) {
  const Dims d = check_args(kFwd, l, g, sg, cg, cs, tail_w, layout);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kDouble || out_dtype == at::kHalf ||
                  out_dtype == at::kBFloat16,
              kFwd, ": out_dtype must be float32, float64, float16 or bfloat16, got ", out_dtype);
  at::Tensor out = new_output(out_shape(d), l.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  if (d.h == 0) return out.zero_();
  const Inputs in = contiguous(l, g, sg, cg, cs, tail_w);
  dispatch_io(l.scalar_type(), out_dtype, kFwd, [&](auto s, auto io) {
    forward_impl<decltype(s), decltype(io)>(d, in, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
combine_out_backward(const at::Tensor& grad_out, const at::Tensor& l, const at::Tensor& g,
                     const at::Tensor& sg, const at::Tensor& cg, const at::Tensor& cs,
                     const at::Tensor& tail_w, c10::string_view layout) {
  const Dims d = check_args(kBwd, l, g, sg, cg, cs, tail_w, layout);
  check_cpu(grad_out, kBwd, "grad_out");
  check_io_floating(grad_out, kBwd, "grad_out");
  const std::vector<int64_t> shape = out_shape(d);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(shape), kBwd, ": grad_out must have shape ",
              at::IntArrayRef(shape), " for layout '", std::string(layout), "', got ",
              grad_out.sizes());
  const auto opts = l.options();
  at::Tensor gl = new_output(l.sizes(), opts);
  at::Tensor gg = new_output(l.sizes(), opts);
  at::Tensor gsg = new_output(sg.sizes(), opts);
  at::Tensor gcg = new_output(cg.sizes(), opts);
  at::Tensor gcs = new_output(cs.sizes(), opts);
  at::Tensor gT = new_output(tail_w.sizes(), opts);
  if (d.N * d.HW == 0 || d.h == 0 || d.C == 0) {
    for (at::Tensor* t : {&gl, &gg, &gsg, &gcg, &gcs, &gT}) t->zero_();
    return {gl, gg, gsg, gcg, gcs, gT};
  }
  const Inputs in = contiguous(l, g, sg, cg, cs, tail_w);
  const at::Tensor go = grad_out.contiguous();
  dispatch_io(l.scalar_type(), grad_out.scalar_type(), kBwd, [&](auto s, auto io) {
    backward_impl<decltype(s), decltype(io)>(d, go, in, gl, gg, gsg, gcg, gcs, gT);
  });
  return {gl, gg, gsg, gcg, gcs, gT};
}

TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m) {
  m.impl("combine_out", &combine_out);
  m.impl("combine_out_backward", &combine_out_backward);
}

}  // namespace adaptir::cpu
