// Reference normalizations in double: two-pass statistics (mean, then squared deviations).
#include <algorithm>
#include <cmath>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/normalization.h"
#include "ir/ops/reduce.h"
#include "kernels/kernel.h"
#include "kernels/reduce_geometry.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class RefSoftmax final : public Kernel {
 public:
  explicit RefSoftmax(const Layer& l)
      : layer_(l), log_(l.attrs.get_int("log", default_int(l.op, "log")) != 0) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    AxisGeometry g = make_axis_geometry(x.dims, resolve_axis(layer_, static_cast<int>(x.dims.size()), -1));
    for (int64_t o = 0; o < g.outer; ++o) {
      for (int64_t i = 0; i < g.inner; ++i) {
        int64_t base = o * g.n * g.inner + i;
        auto at = [&](int64_t k) { return load_element(x, base + k * g.inner); };
        double m = -INFINITY, sum = 0;
        for (int64_t k = 0; k < g.n; ++k) m = std::max(m, at(k));
        for (int64_t k = 0; k < g.n; ++k) sum += std::exp(at(k) - m);
        for (int64_t k = 0; k < g.n; ++k) {
          double shifted = at(k) - m;
          store_element(out[0], base + k * g.inner, log_ ? shifted - std::log(sum) : std::exp(shifted) / sum);
        }
      }
    }
  }
  std::string name() const override { return log_ ? "ref_log_softmax" : "ref_softmax"; }

 private:
  Layer layer_;
  bool log_;
};

class RefBatchNorm final : public Kernel {
 public:
  explicit RefBatchNorm(const Layer& l) : eps_(l.attrs.get_float("eps", default_float(l.op, "eps"))) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const Dims& d = in[0].dims;
    int64_t c_count = d[1], inner = 1;
    for (size_t i = 2; i < d.size(); ++i) inner *= d[i];
    int64_t n = volume(d);
    for (int64_t i = 0; i < n; ++i) {
      int64_t c = (i / inner) % c_count;
      double scale = load_element(in[1], c), bias = load_element(in[2], c);
      double mean = load_element(in[3], c), var = load_element(in[4], c);
      store_element(out[0], i, (load_element(in[0], i) - mean) / std::sqrt(var + eps_) * scale + bias);
    }
  }
  std::string name() const override { return "ref_batch_norm"; }

 private:
  double eps_;
};

// layer_norm, rms_norm and group_norm: x is `rows` contiguous rows of `len` elements. Element j of
// row r takes parameter (r % groups) * channels_per_group + j / spatial.
struct RowNormShape {
  int64_t rows, len, groups, channels_per_group, spatial;
};

// With a quantized copy (`copy` non-null), each y value rounded to y's dtype is also quantized
// into *copy as the quantize layer would.
void row_norm(const std::vector<TensorView>& in, const TensorView& y, const RowNormShape& s, double eps,
              bool rms, const QuantizedCopy& c = {}, const TensorView* copy = nullptr) {
  const TensorView& x = in[0];
  for (int64_t r = 0; r < s.rows; ++r) {
    int64_t base = r * s.len;
    double mean = 0, m2 = 0;
    if (!rms) {
      for (int64_t j = 0; j < s.len; ++j) mean += load_element(x, base + j);
      mean /= static_cast<double>(s.len);
    }
    for (int64_t j = 0; j < s.len; ++j)
      m2 += (load_element(x, base + j) - mean) * (load_element(x, base + j) - mean);
    double inv = 1.0 / std::sqrt(m2 / static_cast<double>(s.len) + eps);
    for (int64_t j = 0; j < s.len; ++j) {
      int64_t p = (r % s.groups) * s.channels_per_group + j / s.spatial;
      double v = (load_element(x, base + j) - mean) * inv;
      if (in.size() > 1) v *= load_element(in[1], p);
      if (in.size() > 2) v += load_element(in[2], p);
      store_element(y, base + j, v);
      if (copy) {
        const float r = round_to_dtype(y.dtype, v);
        store_element(
            *copy, base + j,
            c.e4m3 ? static_cast<double>(r * c.inv_scale) : quantize_value(r, c.inv_scale, 0, c.lo, c.hi));
      }
    }
  }
}

// normalized_ndim trailing dims form a row (layer_norm, rms_norm).
RowNormShape trailing_rows(const Dims& d, int64_t k) {
  int64_t len = 1;
  for (size_t i = d.size() - static_cast<size_t>(k); i < d.size(); ++i) len *= d[i];
  return {len == 0 ? 0 : volume(d) / len, len, 1, len, 1};
}

class RefRowNorm final : public Kernel {
 public:
  explicit RefRowNorm(const Layer& l)
      : op_(l.op),
        rms_(l.op == "rms_norm"),
        eps_(l.attrs.get_float("eps", default_float(l.op, "eps"))),
        ndim_(l.attrs.get_int("normalized_ndim", int64_t{1})),
        groups_(l.attrs.get_int("num_groups", int64_t{1})),
        copy_(quantized_copy(l)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const Dims& d = in[0].dims;
    RowNormShape s;
    if (op_ == "group_norm") {
      int64_t spatial = 1;
      for (size_t i = 2; i < d.size(); ++i) spatial *= d[i];
      int64_t cpg = d[1] / groups_;
      s = {d[0] * groups_, cpg * spatial, groups_, cpg, spatial};
    } else {
      s = trailing_rows(d, ndim_);
    }
    if (s.len == 0) return;
    row_norm(in, out[0], s, eps_, rms_, copy_, copy_.on ? &out[1] : nullptr);
  }
  std::string name() const override { return "ref_" + op_; }

 private:
  std::string op_;
  bool rms_;
  double eps_;
  int64_t ndim_, groups_;
  QuantizedCopy copy_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("softmax", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefSoftmax>(l); });
  register_kernel("batch_norm", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefBatchNorm>(l); });
  for (const char* op : {"layer_norm", "group_norm", "rms_norm"}) {
    register_kernel(op, Backend::kReference, [](const Layer& l) { return std::make_unique<RefRowNorm>(l); });
  }
});

}  // namespace kiln
