// Shared helpers for the CPU kernels: argument checks, dtype handling and a
// deterministic chunked parallel loop with fixed-order reductions.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>
#include <c10/util/ParallelGuard.h>
#include <c10/util/string_view.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#if defined(__linux__)
#include <unistd.h>
#endif
#include <mutex>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// A function compiled twice, for AVX2 (without FMA, so no a * b + c is contracted: both
// versions round alike) and for the baseline, the CPU picking one at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define ADAPTIR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ADAPTIR_CLONES
#endif

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

// ---- elementwise ------------------------------------------------------------

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
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


// Rows per row block of the C-wide operators (project_in, combine_out): a block of x
// (rows, C) of half a core's L2 cache, within [256 KiB, 512 KiB] (256 KiB where the
// size is unknown), at least 64 rows. Each work item takes one block; its products, its
// partial sums and the h-wide passes of its rows stay in L2. On an AMD EPYC (Zen 4,
// 1 MiB of L2 per core) 512 KiB blocks ran forward+backward 1.04x faster at edt-train
// and 1.07x at ipt-train than 256 KiB ones (benchmarks/RESULTS.md); machines with
// 512 KiB of L2, such as the Zen 3 EPYC where 256 KiB was chosen, keep 256 KiB.
inline int64_t row_block_rows(int64_t C) {
  static const int64_t bytes = [] {
    int64_t l2 = 0;
#if defined(__linux__) && defined(_SC_LEVEL2_CACHE_SIZE)
    l2 = static_cast<int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
    return std::clamp<int64_t>(l2 / 2, int64_t{256} << 10, int64_t{512} << 10);
  }();
  return std::max<int64_t>(64, bytes / (4 * std::max<int64_t>(C, 1)));
}
}  // namespace adaptir::cpu

// ---- output allocation with optional NaN poisoning ---------------------------

namespace adaptir::cpu {

// While set (tests, via adaptir_cpp::set_poison), every output the kernels
// allocate is NaN-filled first, so an element a kernel forgets to write shows up.
inline std::atomic<bool>& poison_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline void set_poison(bool on) { poison_flag().store(on); }
inline bool poison_enabled() { return poison_flag().load(std::memory_order_relaxed); }

// Outputs of 64 KiB or more come from a bounded process-wide cache of the buffers of
// freed outputs: a fresh allocation of that size is page-faulted and zeroed by the OS on
// first touch, which costs about as much as a pass over the tensor. glibc's malloc
// gives such blocks back to the OS when they are freed at the top of its heap (or
// maps them afresh above its mmap threshold): at ipt-train, whose hidden-width tensors
// are 384 KiB, a process running only the adapter page-faulted up to about 900 times
// (3.5 MB) per training step with a 1 MiB lower bound here, and not at all with this
// one (benchmarks/bench_page_faults.py). A buffer goes back to the cache when its
// tensor dies. The cache holds at most ADAPTIR_OUTPUT_CACHE_MB megabytes (default 256;
// 0 turns it off).
class OutputCache {
 public:
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();  // never destroyed: deleters may run late
    return *cache;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    int64_t numel = 1;
    for (const int64_t s : sizes) numel *= s;
    const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
    if (bytes < kMinBytes || cap_ == 0) return at::empty(sizes, options);
    const size_t cls = (bytes + kGrain - 1) / kGrain * kGrain;
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();  // the most recently freed block: likely still cached
        it->second.pop_back();
        held_ -= cls;
      }
    }
    if (ptr == nullptr) {
      ptr = std::aligned_alloc(4096, cls);
      TORCH_CHECK(ptr != nullptr, "adaptir: out of memory allocating ", cls, " bytes");
    }
    // A normal resizable CPU storage: growing it later reallocates through the default
    // CPU allocator, and this block goes back to the cache.
    auto* ctx = new Block{ptr, cls};
    c10::Storage storage(c10::Storage::use_byte_size_t(), bytes,
                         c10::DataPtr(ptr, ctx, &OutputCache::release, at::Device(at::kCPU)),
                         c10::GetDefaultCPUAllocator(), /*resizable=*/true);
    at::Tensor t = at::empty({0}, options.device(at::kCPU));
    t.set_(storage, 0, sizes, c10::contiguous_strides(sizes));
    return t;
  }

 private:
  static constexpr size_t kMinBytes = size_t{64} << 10;
  static constexpr size_t kGrain = size_t{64} << 10;

  OutputCache() {
    size_t mb = 256;
    if (const char* env = std::getenv("ADAPTIR_OUTPUT_CACHE_MB")) mb = std::strtoull(env, nullptr, 10);
    cap_ = mb << 20;
  }

  struct Block {
    void* ptr;
    size_t cls;
  };

  static void release(void* ctx) {
    const Block* b = static_cast<Block*>(ctx);
    instance().give(b->ptr, b->cls);
    delete b;
  }

  void give(void* ptr, size_t cls) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_ + cls <= cap_) {
        free_[cls].push_back(ptr);
        held_ += cls;
        return;
      }
    }
    std::free(ptr);
  }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t held_ = 0;
  size_t cap_ = 0;
};

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = OutputCache::instance().empty(sizes, options);
  if (poison_enabled() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// Thread-local scratch memory for temporaries, reused across calls: large fresh
// allocations are page-faulted (and zeroed by the OS) on every call otherwise. A slot
// keeps at most kScratchMax bytes; larger requests get a fresh tensor.
constexpr size_t kScratchMax = size_t{32} << 20;

class Scratch {
 public:
  // A (rows, cols) tensor of `options`' dtype on thread-local memory of slot `slot`
  // (0 <= slot < 8); its contents are unspecified. Valid until the same thread asks
  // for the same slot again.
  static at::Tensor get(int slot, int64_t rows, int64_t cols, const at::TensorOptions& options) {
    const size_t bytes = static_cast<size_t>(rows * cols) * options.dtype().itemsize();
    if (bytes == 0 || bytes > kScratchMax) return at::empty({rows, cols}, options);
    Buf& b = bufs()[slot];
    if (b.size < bytes) {
      std::free(b.ptr);
      b.size = (bytes + 4095) / 4096 * 4096;
      b.ptr = std::aligned_alloc(64, b.size);
      TORCH_CHECK(b.ptr != nullptr, "adaptir: out of memory for a ", b.size, "-byte scratch buffer");
    }
    return at::from_blob(b.ptr, {rows, cols}, options);
  }

 private:
  struct Buf {
    void* ptr = nullptr;
    size_t size = 0;
    ~Buf() { std::free(ptr); }
  };
  static Buf* bufs() {
    static thread_local Buf slots[8];
    return slots;
  }
};

// ---- dtypes -----------------------------------------------------------------

// x, out, grad_out, grad_x may be float32/64, float16 or bfloat16.
inline void check_io_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op,
              ": ", name, " must be float32, float64, float16 or bfloat16, got ", s);
}

// The dtype the adapter computes in for an input of dtype s.
inline at::ScalarType compute_type(at::ScalarType s) {
  return s == at::kDouble ? at::kDouble : at::kFloat;
}

// Elementwise conversion between storage and compute types.
template <typename dst_t, typename src_t>
inline void convert_n(const src_t* src, dst_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(static_cast<float>(src[i]));
}
template <>
inline void convert_n<float, float>(const float* src, float* dst, int64_t n) {
  std::copy(src, src + n, dst);
}
template <>
inline void convert_n<double, double>(const double* src, double* dst, int64_t n) {
  std::copy(src, src + n, dst);
}

// ---- the backbone layouts ---------------------------------------------------

// Row r of the (rows, C) view of x: "nhwc" r = n * HW + p, "lnc" r = p * N + n.
enum class Layout { NHWC, LNC };

inline Layout parse_layout(c10::string_view layout, const char* op) {
  if (layout == "nhwc") return Layout::NHWC;
  if (layout == "lnc") return Layout::LNC;
  TORCH_CHECK(false, op, ": layout must be 'nhwc' or 'lnc', got '", std::string(layout), "'");
}

// The size of each part when `total` items are shared out evenly over the fewest parts of
// at most `most` items, and at least min(min_parts, total) parts: ceil(total / parts),
// so the last part is shorter by fewer items than there are parts. 1 when total is 0.
inline int64_t even_part(int64_t total, int64_t most, int64_t min_parts = 1) {
  if (total <= 0) return 1;
  most = std::max<int64_t>(most, 1);
  const int64_t parts = std::max((total + most - 1) / most, std::min(min_parts, total));
  return (total + parts - 1) / parts;
}

// Fixed blocks of consecutive rows of the backbone tensor. A block covers the
// positions [p0, p1) of one sample n ("nhwc") or of all samples ("lnc"); inside
// the block, the row of (n, p) is (p - p0) * pstride + noff(n). The split depends
// only on the sizes, so per-block partial sums reduce identically for any thread count.
// A block holds at most target_rows rows; the positions are shared out evenly over as
// few blocks as that allows (the last one shorter by fewer positions than there are
// blocks), so that a few blocks keep two threads equally busy: at EDT's 48 x 48 and 728
// target rows, four blocks of 576 positions per sample rather than three of 728 and one
// of 120.
struct RowBlocks {
  Layout layout;
  int64_t N, HW, pchunk, per_sample, count;

  RowBlocks(Layout layout_, int64_t N_, int64_t HW_, int64_t target_rows)
      : layout(layout_), N(N_), HW(HW_) {
    pchunk = even_part(HW, layout == Layout::NHWC ? target_rows
                                                  : target_rows / std::max<int64_t>(N, 1));
    const int64_t blocks = HW == 0 ? 0 : (HW + pchunk - 1) / pchunk;
    if (layout == Layout::NHWC) {
      per_sample = blocks;
      count = N * per_sample;
    } else {
      per_sample = 0;
      count = N == 0 ? 0 : blocks;
    }
  }

  struct Block {
    int64_t row0, rows;  // first row and row count in the (rows, C) view
    int64_t n0, n1;      // samples covered
    int64_t p0, p1;      // positions covered
    int64_t pstride;     // rows between consecutive positions
  };

  Block get(int64_t b) const {
    Block k;
    if (layout == Layout::NHWC) {
      const int64_t n = b / per_sample;
      k.p0 = (b % per_sample) * pchunk;
      k.p1 = std::min(HW, k.p0 + pchunk);
      k.n0 = n;
      k.n1 = n + 1;
      k.row0 = n * HW + k.p0;
      k.rows = k.p1 - k.p0;
      k.pstride = 1;
    } else {
      k.p0 = b * pchunk;
      k.p1 = std::min(HW, k.p0 + pchunk);
      k.n0 = 0;
      k.n1 = N;
      k.row0 = k.p0 * N;
      k.rows = (k.p1 - k.p0) * N;
      k.pstride = N;
    }
    return k;
  }

  // Row inside the block of sample n's first position.
  int64_t noff(const Block& k, int64_t n) const { return layout == Layout::NHWC ? 0 : n; }
};

// Row blocks for a pass over hidden-width rows (`width` floats each) that turns them into
// channel runs (or back), given the product's blocks rb. In the (L, N, C) layout a
// product block holds row_block_rows(C) / N positions (14 at IPT's C = 576, N = 16), so
// each channel run would be that short; these blocks hold at least kMinRun positions
// where 256 KiB of rows allow it. In (N, H, W, C) the product's blocks are kept.
constexpr int64_t kMinRun = 64;
inline RowBlocks run_blocks(const RowBlocks& rb, int64_t width) {
  if (rb.layout == Layout::NHWC || rb.pchunk >= kMinRun || rb.count == 0) return rb;
  const int64_t rows = rb.pchunk * rb.N;
  const int64_t fit = (int64_t{256} << 10) / (4 * std::max<int64_t>(width, 1));
  return RowBlocks(rb.layout, rb.N, rb.HW, std::max(rows, std::min(fit, kMinRun * rb.N)));
}

// Work items handed out one at a time from a shared counter.
class ItemQueue {
 public:
  explicit ItemQueue(int64_t count) : count_(count) {}
  // Next item index into `item`; false once all items are taken.
  bool pop(int64_t& item) {
    item = next_.fetch_add(1, std::memory_order_relaxed);
    return item < count_;
  }

 private:
  std::atomic<int64_t> next_{0};
  int64_t count_;
};

// Calls fn(queue) once per worker thread; workers pop items until none are left, so a
// thread that gets descheduled (a loaded machine) only delays the items it holds.
// Results must depend on the item only, never on which thread ran it. The region is
// opened even for a single item, so BLAS calls inside fn always run single-threaded.
template <typename F>
void parallel_items(int64_t count, const F& fn) {
  if (count <= 0) return;
  ItemQueue queue(count);
#ifdef _OPENMP
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  if (threads > 1 && !at::in_parallel_region()) {
    std::atomic_flag failed = ATOMIC_FLAG_INIT;
    std::exception_ptr error;
#pragma omp parallel num_threads(static_cast<int>(threads))
    {
      try {
        c10::ParallelGuard guard(true);
        fn(queue);
      } catch (...) {
        if (!failed.test_and_set()) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  fn(queue);
}

// sum_i a[i] (b[i]) in double with eight interleaved partial sums: a fixed order for
// a given n, and no serial dependency chain.
template <typename T>
inline double sum_n(const T* a, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(a[i + k]);
  for (; i < n; ++i) acc[0] += static_cast<double>(a[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
inline double dot_n(const T* a, const T* b, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(a[i + k]) * static_cast<double>(b[i + k]);
  for (; i < n; ++i) acc[0] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// sum_b parts[b * len + e] for e < len, in double, blocks in order for every element
// (the same order whatever the thread count), handed to store(e0, e1, sums) in chunks of
// consecutive elements: sums[e - e0] for e in [e0, e1). Large sums (the products' weight
// gradients: blocks * len in the hundreds of thousands at IPT's width) run their chunks
// in parallel; store must only write elements of its own chunk.
template <typename scalar_t, typename Store>
void sum_partials_to(const scalar_t* parts, int64_t blocks, int64_t len, const Store& store) {
  constexpr int64_t kChunk = 512;
  const auto run = [&](ItemQueue& queue) {
    double acc[kChunk];
    for (int64_t item; queue.pop(item);) {
      const int64_t e0 = item * kChunk, n = std::min(kChunk, len - e0);
      std::fill(acc, acc + n, 0.0);
      for (int64_t b = 0; b < blocks; ++b) {
        const scalar_t* p = parts + b * len + e0;
        for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(p[i]);
      }
      store(e0, e0 + n, static_cast<const double*>(acc));
    }
  };
  const int64_t items = (len + kChunk - 1) / kChunk;
  if (blocks * len >= (int64_t{1} << 16)) {
    parallel_items(items, run);
  } else {
    ItemQueue queue(items);
    run(queue);
  }
}

// out[e] = sum_b parts[b * len + e] for e < len (sum_partials_to).
template <typename scalar_t>
std::vector<double> sum_partials(const scalar_t* parts, int64_t blocks, int64_t len) {
  std::vector<double> out(static_cast<size_t>(len));
  sum_partials_to(parts, blocks, len, [&](int64_t e0, int64_t e1, const double* sums) {
    std::copy(sums, sums + (e1 - e0), out.begin() + e0);
  });
  return out;
}

}  // namespace adaptir::cpu
