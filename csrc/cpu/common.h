// Shared helpers for the CPU kernels: argument checks, dtype handling and a
// deterministic chunked parallel loop with fixed-order reductions.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace adaptir::cpu {

// ---- argument checks --------------------------------------------------------

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ",
              t.device());
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
              name, " must be float32 or float64, got ", t.scalar_type());
}

// `t` must share dtype and device with `ref` (the op's main input).
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  check_cpu(t, op, name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; they must match");
}

// A per-channel parameter: any shape with exactly `len` elements (so conv weights
// of shape (h, 1, 1, 1) can be passed as they are).
inline void check_channel_param(const at::Tensor& t, int64_t len, const at::Tensor& ref,
                                const char* op, const char* name, const char* ref_name) {
  check_like(t, ref, op, name, ref_name);
  TORCH_CHECK(t.numel() == len, op, ": ", name, " must have ", len,
              " elements (one per channel, dim 1 of ", ref_name, "), got shape ",
              t.sizes());
}

// ---- accumulation -----------------------------------------------------------

// Reductions accumulate in double whatever the storage type.
template <typename T>
using acc_t = double;

// ---- deterministic parallel loops ------------------------------------------

// Work split into fixed-size chunks of each (n, c) plane. The split depends only
// on the sizes, never on the thread count, so per-chunk partial sums reduced in
// a fixed order give bit-identical results for any number of threads.
struct PlaneChunks {
  int64_t planes = 0;     // N * C
  int64_t plane_len = 0;  // elements per plane
  int64_t chunk = 0;      // elements per chunk
  int64_t per_plane = 0;  // chunks per plane

  PlaneChunks(int64_t planes_, int64_t plane_len_, int64_t chunk_len)
      : planes(planes_), plane_len(plane_len_) {
    chunk = std::max<int64_t>(1, std::min(chunk_len, plane_len_));
    per_plane = plane_len_ == 0 ? 0 : (plane_len_ + chunk - 1) / chunk;
  }
  int64_t items() const { return planes * per_plane; }
};

// Calls fn(plane, begin, end, item) for every chunk, in parallel over chunks.
// `begin`/`end` are element offsets inside the plane; `item` indexes partials.
template <typename F>
void parallel_plane_chunks(const PlaneChunks& pc, const F& fn) {
  if (pc.items() == 0) return;
  // One chunk per task is already coarse enough (chunk_len elements).
  at::parallel_for(0, pc.items(), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t plane = item / pc.per_plane;
      const int64_t k = item % pc.per_plane;
      const int64_t begin = k * pc.chunk;
      const int64_t end = std::min(pc.plane_len, begin + pc.chunk);
      fn(plane, begin, end, item);
    }
  });
}

// Per-chunk partial sums, `width` doubles per chunk item, laid out [item][width].
// reduce_channels sums them per channel c over (n, chunk) in a fixed order:
// out[c * width + j] = sum_n sum_k partial[((n * C + c) * per_plane + k) * width + j].
class ChannelPartials {
 public:
  ChannelPartials(const PlaneChunks& pc, int64_t width)
      : pc_(pc), width_(width), data_(static_cast<size_t>(pc.items() * width), 0.0) {}

  double* at(int64_t item) { return data_.data() + item * width_; }

  std::vector<double> reduce_channels(int64_t N, int64_t C) const {
    std::vector<double> out(static_cast<size_t>(C * width_), 0.0);
    for (int64_t c = 0; c < C; ++c) {
      double* o = out.data() + c * width_;
      for (int64_t n = 0; n < N; ++n) {
        const double* p = data_.data() + (n * C + c) * pc_.per_plane * width_;
        for (int64_t k = 0; k < pc_.per_plane; ++k)
          for (int64_t j = 0; j < width_; ++j) o[j] += p[k * width_ + j];
      }
    }
    return out;
  }

 private:
  PlaneChunks pc_;
  int64_t width_;
  std::vector<double> data_;
};

// Copies reduced per-channel sums (column j of a [C][width] array) into a tensor
// of `dst`'s dtype and element count.
template <typename scalar_t>
void store_channel_sums(const std::vector<double>& sums, int64_t C, int64_t width,
                        int64_t j, at::Tensor& dst) {
  scalar_t* d = dst.data_ptr<scalar_t>();
  for (int64_t c = 0; c < C; ++c) d[c] = static_cast<scalar_t>(sums[c * width + j]);
}

// |x + iy| without spurious underflow/overflow of the squares: float goes through
// double, double uses hypot (as std::abs(complex) does).
inline float magnitude(float x, float y) {
  return static_cast<float>(std::sqrt(static_cast<double>(x) * x + static_cast<double>(y) * y));
}
inline double magnitude(double x, double y) { return std::hypot(x, y); }

}  // namespace adaptir::cpu
