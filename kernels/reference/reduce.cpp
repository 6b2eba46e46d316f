// Reference reductions: floating math in double, integer math in int64 (wrapping), over the
// geometry the CUDA kernels use as well; var is two-pass (mean, then squared deviations).
#include <algorithm>
#include <cmath>
#include <limits>

#include "ir/error.h"
#include "ir/ops/reduce.h"
#include "kernels/kernel.h"
#include "kernels/reduce_geometry.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

enum ReduceOp : int { kSum, kMean, kMax, kMin, kProd, kVar };
enum ArgOp : int { kArgmax, kArgmin };

int64_t load_int(const TensorView& t, int64_t i) {
  return t.dtype == DataType::kInt32 ? static_cast<const int32_t*>(t.data)[i]
                                     : static_cast<const int64_t*>(t.data)[i];
}

void store_int(const TensorView& t, int64_t i, int64_t v) {
  if (t.dtype == DataType::kInt32) {
    static_cast<int32_t*>(t.data)[i] = static_cast<int32_t>(static_cast<uint32_t>(v));  // wraps
  } else {
    static_cast<int64_t*>(t.data)[i] = v;
  }
}

// max/min that propagate NaN, as torch does.
double max_nan(double a, double b) { return std::isnan(a) || a > b ? a : b; }
double min_nan(double a, double b) { return std::isnan(a) || a < b ? a : b; }

class RefReduce final : public Kernel {
 public:
  RefReduce(const Layer& l)
      : layer_(l),
        op_(variant_code(reduce_ops(), l.attrs.get_string("op", l.name))),
        correction_(l.attrs.get_int("correction", int64_t{1})) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    ReduceGeometry g = make_reduce_geometry(x.dims, reduced_axes(layer_, static_cast<int>(x.dims.size())));
    bool integral = !is_floating(x.dtype);
    for (int64_t o = 0; o < g.num_out; ++o) {
      int64_t base = axes_offset(g.kept, o);
      if (integral) {
        store_int(out[0], o, reduce_int(x, base, g));
      } else {
        store_element(out[0], o, reduce_float(x, base, g));
      }
    }
  }
  std::string name() const override { return "ref_reduce"; }

 private:
  double reduce_float(const TensorView& x, int64_t base, const ReduceGeometry& g) const {
    auto at = [&](int64_t r) { return load_element(x, base + axes_offset(g.red, r)); };
    double n = static_cast<double>(g.num_red);
    double acc = op_ == kProd  ? 1.0
                 : op_ == kMax ? -std::numeric_limits<double>::infinity()
                 : op_ == kMin ? std::numeric_limits<double>::infinity()
                               : 0.0;
    for (int64_t r = 0; r < g.num_red; ++r) {
      double v = at(r);
      acc = op_ == kProd ? acc * v : op_ == kMax ? max_nan(acc, v) : op_ == kMin ? min_nan(acc, v) : acc + v;
    }
    if (op_ == kMean) return acc / n;  // 0/0 = NaN over an empty axis, as torch
    if (op_ != kVar) return acc;
    double mean = acc / n, m2 = 0;
    for (int64_t r = 0; r < g.num_red; ++r) m2 += (at(r) - mean) * (at(r) - mean);
    return m2 / std::max(0.0, n - static_cast<double>(correction_));
  }

  int64_t reduce_int(const TensorView& x, int64_t base, const ReduceGeometry& g) const {
    // Unsigned arithmetic: sums and products wrap instead of overflowing (undefined for int64_t).
    uint64_t acc = op_ == kProd ? 1 : 0;
    int64_t best = op_ == kMax ? std::numeric_limits<int64_t>::min() : std::numeric_limits<int64_t>::max();
    for (int64_t r = 0; r < g.num_red; ++r) {
      int64_t v = load_int(x, base + axes_offset(g.red, r));
      if (op_ == kProd) acc *= static_cast<uint64_t>(v);
      if (op_ == kSum) acc += static_cast<uint64_t>(v);
      if (op_ == kMax) best = std::max(best, v);
      if (op_ == kMin) best = std::min(best, v);
    }
    return op_ == kMax || op_ == kMin ? best : static_cast<int64_t>(acc);
  }

  Layer layer_;
  int op_;
  int64_t correction_;
};

class RefArgReduce final : public Kernel {
 public:
  RefArgReduce(const Layer& l)
      : layer_(l), op_(variant_code(arg_reduce_ops(), l.attrs.get_string("op", l.name))) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    int rank = static_cast<int>(x.dims.size());
    AxisGeometry g = make_axis_geometry(x.dims, resolve_axis(layer_, rank, 0));
    auto* y = static_cast<int64_t*>(out[0].data);
    bool integral = !is_floating(x.dtype);
    for (int64_t o = 0; o < g.outer; ++o) {
      for (int64_t i = 0; i < g.inner; ++i) {
        int64_t base = o * g.n * g.inner + i, best = 0;
        for (int64_t k = 1; k < g.n; ++k) {
          if (integral
                  ? better(load_int(x, base + k * g.inner), load_int(x, base + best * g.inner))
                  : better(load_element(x, base + k * g.inner), load_element(x, base + best * g.inner))) {
            best = k;
          }
        }
        y[o * g.inner + i] = best;
      }
    }
  }
  std::string name() const override { return "ref_arg_reduce"; }

 private:
  // Whether a later element v replaces the best so far: strictly better, or the first NaN.
  template <typename V>
  bool better(V v, V best) const {
    if (v != v || best != best) return v != v && best == best;
    return op_ == kArgmax ? v > best : v < best;
  }

  Layer layer_;
  int op_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("reduce", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefReduce>(l); });
  register_kernel("arg_reduce", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefArgReduce>(l); });
});

}  // namespace kiln
