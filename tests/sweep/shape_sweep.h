// Seeded shape generators for the shape-sweep oracles: the CPU sweep (tests/unit/test_cpu_sweep.cpp,
// small shapes against a double-precision reference, run in CI) and the GPU sweep (large shapes
// against the CPU backend). Header-only; C++17 so that any test, CUDA ones included, can use it.
//
// Invariants:
// - Deterministic everywhere. The generator is splitmix64 with integer-only range reduction (no
//   std::uniform_int_distribution, no floating-point log/exp), so a seed gives the same shapes on
//   every compiler and standard library.
// - Prefix-stable. Shape i of a list is drawn from its own stream keyed by (seed, kind, i), so
//   conv_shapes(seed, 10, lim) is the first ten of conv_shapes(seed, 150, lim), and a failure
//   reproduces from the seed, the limits and its index.
// - Every family is present. Shape i belongs to family i % (number of families), so any list at
//   least that long holds one of each (kConvFamilies, kLinearFamilies, ...).
// - Every shape is legal for dptrain's layers (valid()) and within its limits: the batch is drawn
//   last, capped by the element and FLOP limits, so a caller asks for small shapes (CPU reference)
//   or large ones (GPU) with the same generator.
//
// Padding: a convolution's padding is 0..3 and at most k - 1, so every output reads at least one
// pixel, except that with ConvLimits::wide_padding (the default) the kernel-1 shapes of family
// Corner may take padding 3: their border outputs read only padding and must be the bias alone
// (PyTorch and dptrain allow it; a backend that does not sets wide_padding = false). Pooling
// padding is at most half the window, as nn.MaxPool2d requires.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace dptrain::sweep {

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// splitmix64 (Steele, Lea and Flood, 2014): a 64-bit state, one add and two multiply-xorshifts per
/// draw. Every method is integer arithmetic or exact conversions, so results never depend on the
/// platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  /// Uniform in [lo, hi] (both included; lo when hi <= lo). Rejection keeps it unbiased.
  int64_t uniform(int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    const uint64_t range = static_cast<uint64_t>(hi - lo) + 1;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;  // a multiple of range
    uint64_t r = next();
    while (r >= limit) r = next();
    return lo + static_cast<int64_t>(r % range);
  }
  int uniform_int(int lo, int hi) { return static_cast<int>(uniform(lo, hi)); }

  /// Uniform double in [0, 1), 53 random bits.
  double unit() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  bool chance(double p) { return unit() < p; }

  /// Log-uniform in [lo, hi] (lo >= 1): an octave [2^e, 2^(e+1)) is picked uniformly among those
  /// that meet the range, then a value in it; so 1..8192 puts as many draws below 16 as above 4096.
  int64_t log_uniform(int64_t lo, int64_t hi) {
    lo = std::max<int64_t>(lo, 1);
    if (hi <= lo) return lo;
    const int e = static_cast<int>(uniform(floor_log2(lo), floor_log2(hi)));
    const int64_t a = std::max(lo, int64_t{1} << e), b = std::min(hi, (int64_t{1} << (e + 1)) - 1);
    return uniform(a, b);
  }

  template <typename T>
  const T& pick(const std::vector<T>& v) {
    if (v.empty()) throw std::invalid_argument("sweep::Rng::pick: empty list");
    return v[static_cast<size_t>(uniform(0, static_cast<int64_t>(v.size()) - 1))];
  }

  static int floor_log2(int64_t v) {
    int e = 0;
    while (v > 1) v >>= 1, ++e;
    return e;
  }

 private:
  uint64_t state_;
};

/// The stream of shape `index` of list `kind` for `seed`: unrelated streams for neighbouring
/// seeds, kinds and indices.
inline Rng shape_stream(uint64_t seed, uint64_t kind, uint64_t index) {
  Rng mix(seed ^ (kind * 0xd1b54a32d192ed03ull));
  const uint64_t a = mix.next();
  Rng mix2(a ^ (index * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull));
  return Rng(mix2.next());
}

// ---------------------------------------------------------------------------------------------
// Edge values
// ---------------------------------------------------------------------------------------------

/// Counts on either side of the powers of two where blocks, warps, tiles and grids end (and the
/// issue's 1, 2, 31, 32, 33, ..., 8191, 8192).
inline const std::vector<int64_t>& edge_counts() {
  static const std::vector<int64_t> v{1,    2,    3,    4,    5,    7,    8,    9,    15,   16,   17,  31,  32,
                                      33,   63,   64,   65,   127,  128,  129,  255,  256,  257,  511, 512, 513,
                                      1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, 8191, 8192};
  return v;
}

/// Channel counts: multiples of 32 (what the tiled 3x3 kernels need) and their neighbours, primes,
/// tiny counts (what the direct kernels serve).
inline const std::vector<int>& edge_channels() {
  static const std::vector<int> v{1,  2,  3,  4,  5,  7,  8,   9,   15,  16,  17,  31,  32,  33,
                                  48, 63, 64, 65, 96, 97, 127, 128, 129, 160, 191, 192, 255, 256};
  return v;
}

/// Class counts of the fused classifier/loss: around warp and block sizes, and the usual 10, 100, 1000.
inline const std::vector<int>& edge_classes() {
  static const std::vector<int> v{2,   3,   4,   7,   10,  16,  17,  31,  32,  33,  63,  64,  65,
                                  100, 127, 128, 129, 255, 256, 257, 511, 512, 513, 999, 1000};
  return v;
}

/// The members of `values` in [lo, hi].
template <typename T>
std::vector<T> within(const std::vector<T>& values, int64_t lo, int64_t hi) {
  std::vector<T> out;
  for (const T& v : values)
    if (v >= lo && v <= hi) out.push_back(v);
  return out;
}

/// An edge count in [lo, hi] with probability p_edge (when one exists), else log-uniform.
inline int64_t edge_or_log_uniform(Rng& r, int64_t lo, int64_t hi, double p_edge) {
  if (hi <= lo) return std::max<int64_t>(lo, 1);
  const std::vector<int64_t> edges = within(edge_counts(), lo, hi);
  if (!edges.empty() && r.chance(p_edge)) return r.pick(edges);
  return r.log_uniform(lo, hi);
}

/// A channel count in [1, max]: an edge channel count, a multiple of 32, or uniform.
inline int pick_channels(Rng& r, int max) {
  max = std::max(max, 1);
  const double u = r.unit();
  if (u < 0.45) {
    const std::vector<int> e = within(edge_channels(), 1, max);
    if (!e.empty()) return r.pick(e);
  }
  if (u < 0.65 && max >= 32) return 32 * r.uniform_int(1, max / 32);
  return r.uniform_int(1, max);
}

// ---------------------------------------------------------------------------------------------
// Convolutions (with an optional max pooling after them)
// ---------------------------------------------------------------------------------------------

/// One convolution, NCHW input n x c x h x w, oc filters of k x k, then (pool_k > 0) a max pooling
/// of the convolution's output.
struct ConvShape {
  int n = 1, c = 1, h = 5, w = 5, oc = 1, k = 1, stride = 1, pad = 0;
  int pool_k = 0, pool_stride = 0, pool_pad = 0;  ///< pool_k == 0: no pooling

  int oh() const { return (h + 2 * pad - k) / stride + 1; }
  int ow() const { return (w + 2 * pad - k) / stride + 1; }
  bool has_pool() const { return pool_k > 0; }
  int pool_oh() const { return (oh() + 2 * pool_pad - pool_k) / pool_stride + 1; }
  int pool_ow() const { return (ow() + 2 * pool_pad - pool_k) / pool_stride + 1; }
  /// Pooling windows that tile the convolution's output exactly (stride = window, no padding,
  /// sides divisible): what the fused convolution + pooling kernels serve.
  bool pool_tiles() const {
    return has_pool() && pool_k == pool_stride && pool_pad == 0 && oh() % pool_k == 0 && ow() % pool_k == 0;
  }

  int64_t input_elems() const { return int64_t{n} * c * h * w; }
  int64_t output_elems() const { return int64_t{n} * oc * oh() * ow(); }
  int64_t weight_elems() const { return int64_t{oc} * c * k * k; }
  /// Multiply-adds of one pass (forward, input gradient or weight gradient) times two.
  int64_t flops() const { return 2 * output_elems() * c * k * k; }

  /// Legal for dptrain's conv2d and maxpool2d layers (and PyTorch's).
  bool valid() const {
    if (n < 1 || c < 1 || oc < 1 || h < 1 || w < 1 || k < 1 || stride < 1 || pad < 0) return false;
    if (h + 2 * pad < k || w + 2 * pad < k) return false;
    if (!has_pool()) return pool_k == 0 && pool_stride == 0 && pool_pad == 0;
    return pool_stride >= 1 && pool_pad >= 0 && 2 * pool_pad <= pool_k && oh() + 2 * pool_pad >= pool_k &&
           ow() + 2 * pool_pad >= pool_k;
  }

  /// One line for failure messages, e.g.
  /// "conv n=8 c=33x7x9 oc=31 k=3 s=1 p=1 -> 31x7x9 | pool k=2 s=2 p=0 -> 3x4 (overlaps/ragged)".
  std::string str() const {
    std::string s = "conv n=" + std::to_string(n) + " c=" + std::to_string(c) + "x" + std::to_string(h) + "x" +
                    std::to_string(w) + " oc=" + std::to_string(oc) + " k=" + std::to_string(k) +
                    " s=" + std::to_string(stride) + " p=" + std::to_string(pad) + " -> " + std::to_string(oc) + "x" +
                    std::to_string(oh()) + "x" + std::to_string(ow());
    if (has_pool())
      s += " | pool k=" + std::to_string(pool_k) + " s=" + std::to_string(pool_stride) +
           " p=" + std::to_string(pool_pad) + " -> " + std::to_string(pool_oh()) + "x" + std::to_string(pool_ow()) +
           (pool_tiles() ? " (tiles)" : " (overlaps/ragged)");
    return s;
  }

  auto tie() const { return std::tie(n, c, h, w, oc, k, stride, pad, pool_k, pool_stride, pool_pad); }
  friend bool operator==(const ConvShape& a, const ConvShape& b) { return a.tie() == b.tie(); }
  friend bool operator!=(const ConvShape& a, const ConvShape& b) { return !(a == b); }
};

/// What conv_shapes may generate. Element and FLOP caps bound the batch; a family whose smallest
/// sample breaks them is redrawn.
struct ConvLimits {
  int max_batch = 8192;
  int max_channels = 256;                 ///< input and output channels
  int min_image = 5, max_image = 64;      ///< input height and width
  int64_t max_input = int64_t{1} << 27;   ///< n * c * h * w
  int64_t max_output = int64_t{1} << 27;  ///< n * oc * oh * ow
  int64_t max_flops = int64_t{1} << 40;   ///< ConvShape::flops()
  bool wide_padding = true;               ///< allow padding >= k (family Corner)

  /// The CPU sweep's shapes: a naive double-precision reference checks each in milliseconds.
  static ConvLimits small() {
    ConvLimits l;
    l.max_batch = 8;
    l.max_channels = 40;
    l.min_image = 5;
    l.max_image = 20;
    l.max_input = 32000;
    l.max_output = 32000;
    l.max_flops = 40'000'000;
    return l;
  }
  /// Wide channels on tiny images, for the CPU sweep.
  static ConvLimits small_wide() {
    ConvLimits l = small();
    l.max_batch = 4;
    l.max_channels = 256;
    l.max_image = 8;
    l.max_input = 40000;
    l.max_output = 40000;
    l.max_flops = 40'000'000;
    return l;
  }
  /// The full range (batch to 8192, channels to 256, images to 64), capped at 128M
  /// elements per tensor (512 MiB in float32).
  static ConvLimits large() { return ConvLimits{}; }
};

/// The families conv_shapes cycles through (shape i is family i % kConvFamilies).
enum class ConvFamily : int {
  General = 0,      ///< k 1..7, stride 1..3, padding 0..min(3, k-1), any channels; sometimes pooled
  Fast3x3,          ///< k 3, stride 1, padding 0..2, channels multiples of 32 or one off (the tiled/mma kernels)
  Direct,           ///< c * k * k <= 32 (the direct kernels: first convolutions)
  TilingPool,       ///< then a pooling of 2, 3 or 4 whose windows tile the output (fused conv + pool)
  OverlappingPool,  ///< then a pooling whose windows overlap, skip pixels, pad or leave a ragged edge
  Corner,           ///< k 1 or 7, stride 1 or 3, padding 0 or 3 (wider than k - 1 where allowed)
  LargeBatch,       ///< a batch at the top edges under the caps, small samples
};
constexpr int kConvFamilies = 7;

inline const char* to_string(ConvFamily f) {
  switch (f) {
    case ConvFamily::General: return "general";
    case ConvFamily::Fast3x3: return "fast3x3";
    case ConvFamily::Direct: return "direct";
    case ConvFamily::TilingPool: return "tiling-pool";
    case ConvFamily::OverlappingPool: return "overlapping-pool";
    case ConvFamily::Corner: return "corner";
    case ConvFamily::LargeBatch: return "large-batch";
  }
  return "?";
}

/// The family of shape `index` in a conv_shapes list.
inline ConvFamily conv_family(int index) { return static_cast<ConvFamily>(index % kConvFamilies); }

namespace detail {

inline int draw_conv_pad(Rng& r, int k) { return r.uniform_int(0, std::min(3, k - 1)); }

/// A side in [lo, hi] for the convolution (at least k - 2 * pad), or -1 when none fits.
inline int draw_side(Rng& r, int lo, int hi, int k, int pad) {
  lo = std::max(lo, k - 2 * pad);
  return lo > hi ? -1 : r.uniform_int(lo, hi);
}

/// Moves h and w (inside [min_image, max_image]) until the convolution's output sides are
/// multiples of pk, then sets a tiling pooling. False when no size fits.
inline bool attach_tiling_pool(ConvShape& s, int pk, const ConvLimits& lim) {
  auto fix = [&](int& side) {
    const int start = side;
    for (int step = 0; step <= lim.max_image - lim.min_image; ++step)
      for (int cand : {start + step, start - step}) {
        if (cand < lim.min_image || cand > lim.max_image || cand + 2 * s.pad < s.k) continue;
        const int o = (cand + 2 * s.pad - s.k) / s.stride + 1;
        if (o >= pk && o % pk == 0) {
          side = cand;
          return true;
        }
      }
    return false;
  };
  if (!fix(s.h) || !fix(s.w)) return false;
  s.pool_k = s.pool_stride = pk;
  s.pool_pad = 0;
  return true;
}

/// A pooling whose windows do not tile the output (kernel, stride, padding), as the CPU and the
/// general pooling kernels serve. False when the draw happens to tile or does not fit.
inline bool attach_overlapping_pool(Rng& r, ConvShape& s) {
  static const std::vector<std::tuple<int, int, int>> kinds{{3, 2, 1}, {3, 2, 0}, {2, 1, 0}, {3, 1, 1}, {2, 2, 0},
                                                            {3, 3, 0}, {2, 2, 1}, {4, 2, 2}, {5, 3, 2}, {2, 3, 0}};
  const auto [k, st, p] = r.pick(kinds);
  s.pool_k = k;
  s.pool_stride = st;
  s.pool_pad = p;
  return s.valid() && !s.pool_tiles();
}

/// The largest batch the limits admit for this sample shape (0: none).
inline int64_t max_conv_batch(const ConvShape& s, const ConvLimits& lim) {
  ConvShape one = s;
  one.n = 1;
  int64_t m = lim.max_batch;
  m = std::min(m, lim.max_input / std::max<int64_t>(one.input_elems(), 1));
  m = std::min(m, lim.max_output / std::max<int64_t>(one.output_elems(), 1));
  m = std::min(m, lim.max_flops / std::max<int64_t>(one.flops(), 1));
  return m;
}

/// One draw of family f (the batch is set by the caller); an invalid shape means "draw again".
inline ConvShape draw_conv(Rng& r, ConvFamily f, const ConvLimits& lim) {
  ConvShape s;
  const int max_c = lim.max_channels;
  auto sides = [&]() {
    s.h = draw_side(r, lim.min_image, lim.max_image, s.k, s.pad);
    s.w = r.chance(0.5) ? s.h : draw_side(r, lim.min_image, lim.max_image, s.k, s.pad);
  };
  auto invalid = [&]() {
    s.h = -1;
    return s;
  };
  switch (f) {
    case ConvFamily::General: {
      s.k = r.uniform_int(1, 7);
      s.stride = r.uniform_int(1, 3);
      s.pad = draw_conv_pad(r, s.k);
      s.c = pick_channels(r, max_c);
      s.oc = pick_channels(r, max_c);
      sides();
      if (s.h < 0 || s.w < 0) return invalid();
      if (r.chance(0.3)) {
        const bool ok = r.chance(0.5) ? attach_tiling_pool(s, r.uniform_int(2, 3), lim) : attach_overlapping_pool(r, s);
        if (!ok) s.pool_k = s.pool_stride = s.pool_pad = 0;
      }
      break;
    }
    case ConvFamily::Fast3x3: {
      s.k = 3;
      s.stride = 1;
      s.pad = r.uniform_int(0, 2);
      auto channels = [&]() {
        std::vector<int> mult, near;
        for (int m = 32; m <= max_c; m += 32) mult.push_back(m);
        for (int m = 32; m <= max_c + 1; m += 32) {
          near.push_back(m - 1);
          if (m + 1 <= max_c) near.push_back(m + 1);
        }
        if (!mult.empty() && r.chance(0.7)) return r.pick(mult);
        return near.empty() ? pick_channels(r, max_c) : r.pick(near);
      };
      s.c = channels();
      s.oc = channels();
      sides();
      if (s.h < 0 || s.w < 0) return invalid();
      if (r.chance(0.4) && !attach_tiling_pool(s, 2, lim)) s.pool_k = s.pool_stride = s.pool_pad = 0;
      break;
    }
    case ConvFamily::Direct: {
      static const std::vector<int> ks{1, 1, 2, 3, 3, 4, 5};
      s.k = r.pick(ks);
      s.stride = r.uniform_int(1, 3);
      s.pad = draw_conv_pad(r, s.k);
      const int cmax = std::min(max_c, 32 / (s.k * s.k));
      s.c = r.chance(0.4) ? cmax : r.uniform_int(1, cmax);
      s.oc = pick_channels(r, max_c);
      sides();
      if (s.h < 0 || s.w < 0) return invalid();
      break;
    }
    case ConvFamily::TilingPool:
    case ConvFamily::OverlappingPool: {
      s.k = r.uniform_int(1, 5);
      s.stride = r.uniform_int(1, 2);
      s.pad = draw_conv_pad(r, s.k);
      s.c = pick_channels(r, max_c);
      s.oc = pick_channels(r, max_c);
      sides();
      if (s.h < 0 || s.w < 0) return invalid();
      static const std::vector<int> pks{2, 2, 3, 4};
      const bool ok =
          f == ConvFamily::TilingPool ? attach_tiling_pool(s, r.pick(pks), lim) : attach_overlapping_pool(r, s);
      if (!ok) return invalid();
      break;
    }
    case ConvFamily::Corner: {
      s.k = r.chance(0.5) ? 1 : 7;
      s.stride = r.chance(0.5) ? 1 : 3;
      const int pad_cap = lim.wide_padding ? 3 : std::min(3, s.k - 1);
      s.pad = r.chance(0.5) ? 0 : pad_cap;
      s.c = pick_channels(r, max_c);
      s.oc = pick_channels(r, max_c);
      sides();
      if (s.h < 0 || s.w < 0) return invalid();
      break;
    }
    case ConvFamily::LargeBatch: {
      s.k = r.uniform_int(1, 5);
      s.stride = r.uniform_int(1, 2);
      s.pad = draw_conv_pad(r, s.k);
      s.c = r.uniform_int(1, std::min(max_c, 8));
      s.oc = r.uniform_int(1, std::min(max_c, 8));
      s.h = draw_side(r, lim.min_image, std::min(lim.max_image, lim.min_image + 8), s.k, s.pad);
      s.w = draw_side(r, lim.min_image, std::min(lim.max_image, lim.min_image + 8), s.k, s.pad);
      if (s.h < 0 || s.w < 0) return invalid();
      break;
    }
  }
  return s;
}

}  // namespace detail

/// `count` convolution shapes for `seed` within `lim`; shape i is family conv_family(i). Throws
/// std::invalid_argument when the limits admit no shape of a family (1000 draws fail).
inline std::vector<ConvShape> conv_shapes(uint64_t seed, int count, const ConvLimits& lim) {
  std::vector<ConvShape> out;
  for (int i = 0; i < count; ++i) {
    Rng r = shape_stream(seed, 1, static_cast<uint64_t>(i));
    const ConvFamily f = conv_family(i);
    bool done = false;
    for (int attempt = 0; attempt < 1000 && !done; ++attempt) {
      ConvShape s = detail::draw_conv(r, f, lim);
      if (s.h < 1) continue;
      s.n = 1;
      if (!s.valid() || s.oh() < 1 || s.ow() < 1) continue;
      const int64_t max_n = detail::max_conv_batch(s, lim);
      if (max_n < 1) continue;
      if (f == ConvFamily::LargeBatch) {
        // The largest edge count under the cap, or the cap itself.
        const std::vector<int64_t> edges = within(edge_counts(), std::max<int64_t>(1, max_n / 4), max_n);
        s.n = static_cast<int>(edges.empty() || r.chance(0.25) ? max_n : r.pick(edges));
      } else {
        s.n = static_cast<int>(edge_or_log_uniform(r, 1, max_n, 0.35));
      }
      out.push_back(s);
      done = true;
    }
    if (!done)
      throw std::invalid_argument(std::string("conv_shapes: the limits admit no shape of family ") + to_string(f));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Linear layers
// ---------------------------------------------------------------------------------------------

/// y[rows, out] = x[rows, in] W[out, in]^T + b.
struct LinearShape {
  int rows = 1, in = 1, out = 1;
  int64_t flops() const { return 2 * int64_t{rows} * in * out; }
  bool valid() const { return rows >= 1 && in >= 1 && out >= 1; }
  std::string str() const {
    return "linear rows=" + std::to_string(rows) + " in=" + std::to_string(in) + " out=" + std::to_string(out);
  }
  auto tie() const { return std::tie(rows, in, out); }
  friend bool operator==(const LinearShape& a, const LinearShape& b) { return a.tie() == b.tie(); }
  friend bool operator!=(const LinearShape& a, const LinearShape& b) { return !(a == b); }
};

struct LinearLimits {
  int max_rows = 8192, max_in = 10000, max_out = 1000;
  int64_t max_elems = int64_t{1} << 27;  ///< rows * in, rows * out and in * out
  int64_t max_flops = int64_t{1} << 40;  ///< LinearShape::flops()

  static LinearLimits small() {
    LinearLimits l;
    l.max_rows = 1100;
    l.max_in = 700;
    l.max_out = 300;
    l.max_elems = 200'000;
    l.max_flops = 8'000'000;
    return l;
  }
  static LinearLimits large() { return LinearLimits{}; }
};

/// General (log-uniform sides); EdgeRows (rows at an edge count); Skinny (out <= 32: the skinny
/// GEMMs and the fused classifier backward); Mnist (mnist_cnn's fc1 and fc2 sides: in 9216 or 128).
enum class LinearFamily : int { General = 0, EdgeRows, Skinny, Mnist };
constexpr int kLinearFamilies = 4;

inline std::vector<LinearShape> linear_shapes(uint64_t seed, int count, const LinearLimits& lim) {
  std::vector<LinearShape> out;
  for (int i = 0; i < count; ++i) {
    Rng r = shape_stream(seed, 2, static_cast<uint64_t>(i));
    const auto f = static_cast<LinearFamily>(i % kLinearFamilies);
    bool done = false;
    for (int attempt = 0; attempt < 1000 && !done; ++attempt) {
      LinearShape s;
      switch (f) {
        case LinearFamily::General:
        case LinearFamily::EdgeRows:
          s.in = static_cast<int>(edge_or_log_uniform(r, 1, lim.max_in, 0.4));
          s.out = static_cast<int>(edge_or_log_uniform(r, 1, lim.max_out, 0.4));
          break;
        case LinearFamily::Skinny:
          s.in = static_cast<int>(edge_or_log_uniform(r, 1, lim.max_in, 0.4));
          s.out = static_cast<int>(edge_or_log_uniform(r, 1, std::min(lim.max_out, 32), 0.5));
          break;
        case LinearFamily::Mnist: {
          const bool fc1 = r.chance(0.5);
          s.in = std::min(lim.max_in, fc1 ? 9216 : 128);
          s.out = std::min(lim.max_out, fc1 ? 128 : 10);
          break;
        }
      }
      int64_t max_rows = lim.max_rows;
      max_rows = std::min(max_rows, lim.max_elems / s.in);
      max_rows = std::min(max_rows, lim.max_elems / s.out);
      max_rows = std::min(max_rows, lim.max_flops / std::max<int64_t>(2 * int64_t{s.in} * s.out, 1));
      if (max_rows < 1 || int64_t{s.in} * s.out > lim.max_elems) continue;
      s.rows = static_cast<int>(edge_or_log_uniform(r, 1, max_rows, f == LinearFamily::EdgeRows ? 1.0 : 0.3));
      out.push_back(s);
      done = true;
    }
    if (!done) throw std::invalid_argument("linear_shapes: the limits admit no shape");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy (the fused classifier/loss)
// ---------------------------------------------------------------------------------------------

struct LossShape {
  int rows = 1, classes = 2;
  bool valid() const { return rows >= 1 && classes >= 2; }
  std::string str() const { return "loss rows=" + std::to_string(rows) + " classes=" + std::to_string(classes); }
  auto tie() const { return std::tie(rows, classes); }
  friend bool operator==(const LossShape& a, const LossShape& b) { return a.tie() == b.tie(); }
  friend bool operator!=(const LossShape& a, const LossShape& b) { return !(a == b); }
};

struct LossLimits {
  int max_rows = 8192, max_classes = 1000;
  int64_t max_elems = int64_t{1} << 27;  ///< rows * classes

  static LossLimits small() {
    LossLimits l;
    l.max_rows = 8192;
    l.max_elems = 400'000;
    return l;
  }
  static LossLimits large() { return LossLimits{}; }
};

/// Edge (classes at an edge count: 2, 10, 31..33, ..., 999, 1000); Uniform (2..max_classes);
/// Few (2 or 3 half the time, else up to 33: one warp holds a row); Many (the top tenth of the range, 900..1000 by
/// default).
enum class LossFamily : int { Edge = 0, Uniform, Few, Many };
constexpr int kLossFamilies = 4;

/// Rows at edge counts or log-uniform under the element cap.
inline std::vector<LossShape> loss_shapes(uint64_t seed, int count, const LossLimits& lim) {
  if (lim.max_classes < 2) throw std::invalid_argument("loss_shapes: max_classes must be >= 2");
  std::vector<LossShape> out;
  for (int i = 0; i < count; ++i) {
    Rng r = shape_stream(seed, 3, static_cast<uint64_t>(i));
    LossShape s;
    switch (static_cast<LossFamily>(i % kLossFamilies)) {
      case LossFamily::Edge: s.classes = r.pick(within(edge_classes(), 2, lim.max_classes)); break;
      case LossFamily::Uniform: s.classes = r.uniform_int(2, lim.max_classes); break;
      case LossFamily::Few: s.classes = r.uniform_int(2, r.chance(0.5) ? 3 : std::min(33, lim.max_classes)); break;
      case LossFamily::Many:
        s.classes = r.uniform_int(std::max(2, lim.max_classes - lim.max_classes / 10), lim.max_classes);
        break;
    }
    const int64_t max_rows = std::min<int64_t>(lim.max_rows, lim.max_elems / s.classes);
    if (max_rows < 1) throw std::invalid_argument("loss_shapes: the limits admit no shape");
    s.rows = static_cast<int>(edge_or_log_uniform(r, 1, max_rows, 0.4));
    out.push_back(s);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Max pooling on its own
// ---------------------------------------------------------------------------------------------

struct PoolShape {
  int n = 1, c = 1, h = 1, w = 1, k = 1, stride = 1, pad = 0;
  int oh() const { return (h + 2 * pad - k) / stride + 1; }
  int ow() const { return (w + 2 * pad - k) / stride + 1; }
  bool tiles() const { return k == stride && pad == 0 && h % k == 0 && w % k == 0; }
  int64_t input_elems() const { return int64_t{n} * c * h * w; }
  int64_t output_elems() const { return int64_t{n} * c * oh() * ow(); }
  bool valid() const {
    return n >= 1 && c >= 1 && h >= 1 && w >= 1 && k >= 1 && stride >= 1 && pad >= 0 && 2 * pad <= k &&
           h + 2 * pad >= k && w + 2 * pad >= k;
  }
  std::string str() const {
    return "pool n=" + std::to_string(n) + " c=" + std::to_string(c) + "x" + std::to_string(h) + "x" +
           std::to_string(w) + " k=" + std::to_string(k) + " s=" + std::to_string(stride) +
           " p=" + std::to_string(pad) + " -> " + std::to_string(oh()) + "x" + std::to_string(ow()) +
           (tiles() ? " (tiles)" : " (overlaps/ragged)");
  }
  auto tie() const { return std::tie(n, c, h, w, k, stride, pad); }
  friend bool operator==(const PoolShape& a, const PoolShape& b) { return a.tie() == b.tie(); }
  friend bool operator!=(const PoolShape& a, const PoolShape& b) { return !(a == b); }
};

struct PoolLimits {
  int max_batch = 8192, max_channels = 256;
  int min_image = 1, max_image = 64;
  int64_t max_elems = int64_t{1} << 27;  ///< n * c * h * w

  static PoolLimits small() {
    PoolLimits l;
    l.max_batch = 64;
    l.max_channels = 64;
    l.max_image = 30;
    l.max_elems = 60'000;
    return l;
  }
  static PoolLimits large() { return PoolLimits{}; }
};

/// Tiling (window = stride 2..4, no padding, divisible sides); Overlapping (mnist-style 3/2/1 and
/// friends on sides that do not divide); General (window 1..7, stride 1..3, any legal padding).
enum class PoolFamily : int { Tiling = 0, Overlapping, General };
constexpr int kPoolFamilies = 3;

inline std::vector<PoolShape> pool_shapes(uint64_t seed, int count, const PoolLimits& lim) {
  std::vector<PoolShape> out;
  for (int i = 0; i < count; ++i) {
    Rng r = shape_stream(seed, 4, static_cast<uint64_t>(i));
    const auto f = static_cast<PoolFamily>(i % kPoolFamilies);
    bool done = false;
    for (int attempt = 0; attempt < 1000 && !done; ++attempt) {
      PoolShape s;
      switch (f) {
        case PoolFamily::Tiling: {
          s.k = s.stride = r.uniform_int(2, 4);
          const int lo = (lim.min_image + s.k - 1) / s.k, hi = lim.max_image / s.k;
          if (lo > hi) continue;
          s.h = s.k * r.uniform_int(lo, hi);
          s.w = r.chance(0.5) ? s.h : s.k * r.uniform_int(lo, hi);
          break;
        }
        case PoolFamily::Overlapping: {
          static const std::vector<std::tuple<int, int, int>> kinds{{3, 2, 1}, {3, 2, 0}, {2, 1, 0}, {3, 1, 1},
                                                                    {2, 2, 0}, {3, 3, 0}, {2, 2, 1}, {4, 2, 2}};
          std::tie(s.k, s.stride, s.pad) = r.pick(kinds);
          s.h = r.uniform_int(lim.min_image, lim.max_image);
          s.w = r.chance(0.5) ? s.h : r.uniform_int(lim.min_image, lim.max_image);
          if (s.tiles()) continue;
          break;
        }
        case PoolFamily::General: {
          s.k = r.uniform_int(1, 7);
          s.stride = r.uniform_int(1, 3);
          s.pad = r.uniform_int(0, s.k / 2);
          s.h = r.uniform_int(lim.min_image, lim.max_image);
          s.w = r.chance(0.5) ? s.h : r.uniform_int(lim.min_image, lim.max_image);
          break;
        }
      }
      s.c = pick_channels(r, lim.max_channels);
      if (!s.valid()) continue;
      const int64_t per = int64_t{s.c} * s.h * s.w;
      const int64_t max_n = std::min<int64_t>(lim.max_batch, lim.max_elems / per);
      if (max_n < 1) continue;
      s.n = static_cast<int>(edge_or_log_uniform(r, 1, max_n, 0.35));
      out.push_back(s);
      done = true;
    }
    if (!done) throw std::invalid_argument("pool_shapes: the limits admit no shape");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Average pooling (avgpool2d, global_avgpool)
// ---------------------------------------------------------------------------------------------

/// An average pooling: a max pooling's shape (the same legality: nn.AvgPool2d also wants padding
/// at most half the window), or, when global, the whole h x w plane (global_avgpool).
struct AvgPoolShape {
  PoolShape pool;
  bool global = false;
  int oh() const { return global ? 1 : pool.oh(); }
  int ow() const { return global ? 1 : pool.ow(); }
  int kh() const { return global ? pool.h : pool.k; }
  int kw() const { return global ? pool.w : pool.k; }
  int stride() const { return global ? 1 : pool.stride; }
  int pad() const { return global ? 0 : pool.pad; }
  int64_t output_elems() const { return int64_t{pool.n} * pool.c * oh() * ow(); }
  std::string str() const {
    if (!global) return "avg" + pool.str();
    return "global_avgpool n=" + std::to_string(pool.n) + " c=" + std::to_string(pool.c) + "x" +
           std::to_string(pool.h) + "x" + std::to_string(pool.w) + " -> 1x1";
  }
};

/// pool_shapes' list (its three families) with every fourth shape global.
inline std::vector<AvgPoolShape> avgpool_shapes(uint64_t seed, int count, const PoolLimits& lim) {
  std::vector<AvgPoolShape> out;
  const std::vector<PoolShape> pools = pool_shapes(seed, count, lim);
  for (size_t i = 0; i < pools.size(); ++i) out.push_back({pools[i], i % 4 == 3});
  return out;
}

// ---------------------------------------------------------------------------------------------
// Element-wise layers (ReLU, dropout)
// ---------------------------------------------------------------------------------------------

struct ElementwiseShape {
  int n = 1, c = 1, h = 1, w = 1;
  int64_t sample_elems() const { return int64_t{c} * h * w; }
  int64_t elems() const { return int64_t{n} * sample_elems(); }
  bool valid() const { return n >= 1 && c >= 1 && h >= 1 && w >= 1; }
  std::string str() const {
    return "elementwise n=" + std::to_string(n) + " sample=" + std::to_string(c) + "x" + std::to_string(h) + "x" +
           std::to_string(w) + " (" + std::to_string(elems()) + " elements)";
  }
  auto tie() const { return std::tie(n, c, h, w); }
  friend bool operator==(const ElementwiseShape& a, const ElementwiseShape& b) { return a.tie() == b.tie(); }
  friend bool operator!=(const ElementwiseShape& a, const ElementwiseShape& b) { return !(a == b); }
};

struct ElementwiseLimits {
  int max_batch = 8192;
  int64_t max_sample = 1 << 20;          ///< c * h * w
  int64_t max_elems = int64_t{1} << 28;  ///< n * c * h * w

  static ElementwiseLimits small() {
    ElementwiseLimits l;
    l.max_batch = 300;
    l.max_sample = 20'000;
    l.max_elems = 200'000;
    return l;
  }
  static ElementwiseLimits large() { return ElementwiseLimits{}; }
};

/// The largest side of a layer's shape (kMaxSide in io/layer_types.h: the layers refuse larger).
constexpr int64_t kMaxLayerSide = int64_t{1} << 16;

/// A flat sample of `count` values as c x h x 1 with both sides within kMaxLayerSide: c = count
/// where it fits, else the largest c = count / h over the smallest such h; false where count has
/// no such factors (a prime past the bound).
inline bool lay_out_flat(int64_t count, ElementwiseShape& s) {
  for (int64_t h = (count + kMaxLayerSide - 1) / kMaxLayerSide; h <= kMaxLayerSide; ++h) {
    if (count % h != 0) continue;
    s.c = static_cast<int>(count / h);
    s.h = static_cast<int>(h);
    s.w = 1;
    return true;
  }
  return false;
}

/// Flat samples (a count at an edge or log-uniform: ragged groups of four, block edges; laid out
/// as c x h x 1 within the layers' side bound) and image-like samples (channels x 1..64 x 1..64);
/// the batch at an edge count or log-uniform.
inline std::vector<ElementwiseShape> elementwise_shapes(uint64_t seed, int count, const ElementwiseLimits& lim) {
  std::vector<ElementwiseShape> out;
  for (int i = 0; i < count; ++i) {
    Rng r = shape_stream(seed, 5, static_cast<uint64_t>(i));
    bool done = false;
    for (int attempt = 0; attempt < 1000 && !done; ++attempt) {
      ElementwiseShape s;
      if (i % 2 == 0) {
        if (!lay_out_flat(edge_or_log_uniform(r, 1, lim.max_sample, 0.5), s)) continue;
      } else {
        s.c = pick_channels(r, 256);
        s.h = r.uniform_int(1, 64);
        s.w = r.chance(0.5) ? s.h : r.uniform_int(1, 64);
      }
      if (s.sample_elems() > lim.max_sample) continue;
      const int64_t max_n = std::min<int64_t>(lim.max_batch, lim.max_elems / s.sample_elems());
      if (max_n < 1) continue;
      s.n = static_cast<int>(edge_or_log_uniform(r, 1, max_n, 0.35));
      out.push_back(s);
      done = true;
    }
    if (!done) throw std::invalid_argument("elementwise_shapes: the limits admit no shape");
  }
  return out;
}

}  // namespace dptrain::sweep
