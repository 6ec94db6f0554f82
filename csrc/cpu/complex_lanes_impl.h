// Complex values split into real and imaginary vectors and back: (re, im) pairs of
// interleaved floats <-> one vector of real parts and one of imaginary parts, for float
// vectors of any width. No include guard: small_fft_impl.h and gate_lanes_impl.h include
// it inside their own namespace, after their `vf`.

constexpr size_t kComplexLanes = sizeof(vf) / sizeof(float);

template <size_t... J>
static inline __attribute__((always_inline)) vf interleave_lo(vf re, vf im, std::index_sequence<J...>) {
  return __builtin_shufflevector(re, im, ((J % 2) ? kComplexLanes + J / 2 : J / 2)...);
}
template <size_t... J>
static inline __attribute__((always_inline)) vf interleave_hi(vf re, vf im, std::index_sequence<J...>) {
  return __builtin_shufflevector(
      re, im, ((J % 2) ? kComplexLanes + kComplexLanes / 2 + J / 2 : kComplexLanes / 2 + J / 2)...);
}
template <size_t... J>
static inline __attribute__((always_inline)) vf even_lanes(vf lo, vf hi, std::index_sequence<J...>) {
  return __builtin_shufflevector(lo, hi, (2 * J)...);
}
template <size_t... J>
static inline __attribute__((always_inline)) vf odd_lanes(vf lo, vf hi, std::index_sequence<J...>) {
  return __builtin_shufflevector(lo, hi, (2 * J + 1)...);
}

// The first and the second kComplexLanes floats of (re[j], im[j]) pairs.
static inline __attribute__((always_inline)) void interleave(vf re, vf im, vf& lo, vf& hi) {
  lo = interleave_lo(re, im, std::make_index_sequence<kComplexLanes>{});
  hi = interleave_hi(re, im, std::make_index_sequence<kComplexLanes>{});
}
// The real and imaginary parts of the 2 kComplexLanes interleaved floats lo, hi.
static inline __attribute__((always_inline)) void deinterleave(vf lo, vf hi, vf& re, vf& im) {
  re = even_lanes(lo, hi, std::make_index_sequence<kComplexLanes>{});
  im = odd_lanes(lo, hi, std::make_index_sequence<kComplexLanes>{});
}
