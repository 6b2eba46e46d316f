// Reference pooling and adaptive pooling with torch's window and divisor rules, one output element
// at a time, in double. 1d and 2d run as 3d with leading spatial dims of size 1. Max pooling
// propagates NaN like torch. Channels-last layers (layout nhwc) read and write the same canonical
// elements at their channels-last offsets.
#include <array>
#include <cmath>
#include <limits>

#include "ir/ops/convolution.h"
#include "ir/ops/pooling.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

using Int3 = std::array<int64_t, 3>;

// Spatial dims of `d` (from index 2) padded in front to three, with `fill` for the missing ones.
Int3 spatial3(const std::vector<int64_t>& d, size_t first, int64_t fill) {
  Int3 r{fill, fill, fill};
  size_t n = d.size() - first;
  for (size_t i = 0; i < n; ++i) r[3 - n + i] = d[first + i];
  return r;
}

Int3 unflatten(int64_t i, const Int3& size) {
  return {i / (size[1] * size[2]), i / size[2] % size[1], i % size[2]};
}

// Half-open windows per dim, [lo, hi), already clipped to the input, visited with `step`.
struct Window {
  Int3 lo, hi, step;
};

// Offsets of (sample, channel) planes and of their pixels in a [N, C, pixels] tensor stored
// channels first or last.
struct PlaneLayout {
  int64_t channels, pixels;
  bool last;
  int64_t base(int64_t plane) const {
    return last ? plane / channels * pixels * channels + plane % channels : plane * pixels;
  }
  int64_t stride() const { return last ? channels : 1; }
};

double reduce_window(const TensorView& x, const PlaneLayout& layout, int64_t plane, const Int3& in,
                     const Window& w, int type) {
  const int64_t base = layout.base(plane), stride = layout.stride();
  double acc = type == kPoolMax ? -std::numeric_limits<double>::infinity() : 0.0;
  for (int64_t a = w.lo[0]; a < w.hi[0]; a += w.step[0]) {
    for (int64_t b = w.lo[1]; b < w.hi[1]; b += w.step[1]) {
      for (int64_t c = w.lo[2]; c < w.hi[2]; c += w.step[2]) {
        double v = load_element(x, base + ((a * in[1] + b) * in[2] + c) * stride);
        if (type == kPoolAvg) {
          acc += v;
        } else if (v > acc || std::isnan(v)) {
          acc = v;
        }
      }
    }
  }
  return acc;
}

class RefPooling final : public Kernel {
 public:
  explicit RefPooling(Layer layer) : layer_(std::move(layer)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView &x = in[0], &y = out[0];
    const bool last = channels_last(layer_);
    const Dims xd = last ? channels_first_dims(x.dims) : x.dims,
               yd = last ? channels_first_dims(y.dims) : y.dims;
    const PoolGeometry g = pool_geometry(layer_, static_cast<int>(xd.size()) - 2);
    const Int3 isz = spatial3(xd, 2, 1), osz = spatial3(yd, 2, 1);
    const Int3 k = spatial3(g.kernel, 0, 1), s = spatial3(g.strides, 0, 1), p = spatial3(g.pads, 0, 0),
               d = spatial3(g.dilations, 0, 1);
    const int64_t planes = xd[0] * xd[1];
    const int64_t in_size = isz[0] * isz[1] * isz[2], out_size = osz[0] * osz[1] * osz[2];
    const PlaneLayout xl{xd[1], in_size, last}, yl{xd[1], out_size, last};
    for (int64_t pl = 0; pl < planes; ++pl) {
      for (int64_t o = 0; o < out_size; ++o) {
        const Int3 op = unflatten(o, osz);
        Window w;
        int64_t padded_count = 1, count = 1;
        for (int i = 0; i < 3; ++i) {
          int64_t start = op[i] * s[i] - p[i];
          if (g.type == kPoolMax) {                                      // taps start + j*d inside the input
            int64_t first = start < 0 ? (-start + d[i] - 1) / d[i] : 0;  // first tap index >= 0
            int64_t last = std::min(k[i], start >= isz[i] ? 0 : (isz[i] - 1 - start) / d[i] + 1);
            w.lo[i] = start + first * d[i];
            w.hi[i] = first < last ? start + (last - 1) * d[i] + 1 : w.lo[i];
            w.step[i] = d[i];
          } else {  // torch avg_pool: the divisor counts padding up to the padded input's end
            int64_t end = std::min(start + k[i], isz[i] + p[i]);
            padded_count *= end - start;
            w.lo[i] = std::max<int64_t>(start, 0);
            w.hi[i] = std::min(end, isz[i]);
            count *= std::max<int64_t>(w.hi[i] - w.lo[i], 0);
            w.step[i] = 1;
          }
        }
        double v = reduce_window(x, xl, pl, isz, w, g.type);
        if (g.type == kPoolAvg) {
          v /= static_cast<double>(g.divisor_override > 0 ? g.divisor_override
                                   : g.count_include_pad  ? padded_count
                                                          : count);
        }
        store_element(y, yl.base(pl) + o * yl.stride(), v);
      }
    }
  }
  std::string name() const override { return "ref_pooling"; }

 private:
  Layer layer_;
};

class RefAdaptivePooling final : public Kernel {
 public:
  RefAdaptivePooling(int type, bool last) : type_(type), last_(last) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView &x = in[0], &y = out[0];
    const Dims xd = last_ ? channels_first_dims(x.dims) : x.dims,
               yd = last_ ? channels_first_dims(y.dims) : y.dims;
    const Int3 isz = spatial3(xd, 2, 1), osz = spatial3(yd, 2, 1);
    const int64_t planes = xd[0] * xd[1];
    const int64_t in_size = isz[0] * isz[1] * isz[2], out_size = osz[0] * osz[1] * osz[2];
    const PlaneLayout xl{xd[1], in_size, last_}, yl{xd[1], out_size, last_};
    for (int64_t pl = 0; pl < planes; ++pl) {
      for (int64_t o = 0; o < out_size; ++o) {
        const Int3 op = unflatten(o, osz);
        Window w;
        int64_t count = 1;
        for (int i = 0; i < 3; ++i) {
          w.lo[i] = op[i] * isz[i] / osz[i];                       // floor(i * in / out)
          w.hi[i] = ((op[i] + 1) * isz[i] + osz[i] - 1) / osz[i];  // ceil((i + 1) * in / out)
          w.step[i] = 1;
          count *= w.hi[i] - w.lo[i];
        }
        double v = reduce_window(x, xl, pl, isz, w, type_);
        if (type_ == kPoolAvg) v /= static_cast<double>(count);
        store_element(y, yl.base(pl) + o * yl.stride(), v);
      }
    }
  }
  std::string name() const override { return "ref_adaptive_pooling"; }

 private:
  int type_;
  bool last_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("pooling", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefPooling>(l); });
  register_kernel("adaptive_pooling", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefAdaptivePooling>(adaptive_pool_type(l), channels_last(l));
  });
});

}  // namespace kiln
