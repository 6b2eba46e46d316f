// Reference indexing ops (see ir/ops/indexing.cpp). Elements are moved as raw bytes, so every
// dtype is exact; an index out of range (after wrapping a negative one, where the layer wraps) is
// an error naming the layer and the index.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/indexing.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

using indexing::axis_view;
using indexing::AxisView;

int64_t load_index(const TensorView& t, int64_t i) {
  return t.dtype == DataType::kInt32 ? static_cast<const int32_t*>(t.data)[i]
                                     : static_cast<const int64_t*>(t.data)[i];
}

int64_t index_or_fail(int64_t i, int64_t n, bool wrap, const std::string& who) {
  const int64_t w = indexing::resolve_index(i, n, wrap);
  KILN_CHECK(w >= 0, who << ": index " << i << " is out of range for an axis of size " << n
                         << (i < 0 && !wrap ? " (negative indices do not count from the end here)" : ""));
  return w;
}

void copy_element(const TensorView& dst, int64_t i, const TensorView& src, int64_t j) {
  const size_t s = dtype_size(dst.dtype);
  std::memcpy(static_cast<uint8_t*>(dst.data) + i * s, static_cast<const uint8_t*>(src.data) + j * s, s);
}

// gather and embedding (a gather along axis 0 of the weight).
class RefGather final : public Kernel {
 public:
  RefGather(const Layer& l, int64_t axis)
      : who_(describe(l)), axis_(axis), wrap_(indexing::wraps_negative_indices(l)), name_("ref_" + l.op) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const int64_t rank = static_cast<int64_t>(in[0].dims.size());
    const AxisView v = axis_view(in[0].dims, indexing::normalize_axis(axis_, rank, who_));
    const int64_t count = volume(in[1].dims);
    for (int64_t p = 0; p < count; ++p) {
      const int64_t j = index_or_fail(load_index(in[1], p), v.n, wrap_, who_);
      for (int64_t o = 0; o < v.outer; ++o) {
        for (int64_t k = 0; k < v.inner; ++k) {
          copy_element(out[0], (o * count + p) * v.inner + k, in[0], (o * v.n + j) * v.inner + k);
        }
      }
    }
  }
  std::string name() const override { return name_; }

 private:
  std::string who_;
  int64_t axis_;
  bool wrap_;
  std::string name_;
};

class RefGatherElements final : public Kernel {
 public:
  explicit RefGatherElements(const Layer& l)
      : who_(describe(l)),
        axis_(l.attrs.get_int("axis", int64_t{0})),
        wrap_(indexing::wraps_negative_indices(l)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const Dims& data = in[0].dims;
    const Dims& index = in[1].dims;
    const int64_t rank = static_cast<int64_t>(data.size());
    const int64_t axis = indexing::normalize_axis(axis_, rank, who_);
    std::vector<int64_t> stride(rank, 1);
    for (int64_t d = rank - 2; d >= 0; --d) stride[d] = stride[d + 1] * data[d + 1];
    const int64_t count = volume(index);
    for (int64_t i = 0; i < count; ++i) {
      int64_t rem = i, src = 0;
      for (int64_t d = rank - 1; d >= 0; --d) {
        int64_t c = rem % index[d];
        rem /= index[d];
        if (d == axis) c = index_or_fail(load_index(in[1], i), data[d], wrap_, who_);
        src += c * stride[d];
      }
      copy_element(out[0], i, in[0], src);
    }
  }
  std::string name() const override { return "ref_gather_elements"; }

 private:
  std::string who_;
  int64_t axis_;
  bool wrap_;
};

class RefPad final : public Kernel {
 public:
  explicit RefPad(const Layer& l)
      : pads_(l.attrs.get_ints("pads", describe(l))),
        mode_(l.attrs.has("mode") ? l.attrs.get_string("mode", describe(l)) : "constant"),
        value_(l.attrs.get_float("value", 0.0)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const Dims& xd = in[0].dims;
    const Dims& yd = out[0].dims;
    const int64_t rank = static_cast<int64_t>(xd.size());
    const std::vector<int64_t> p = indexing::resolve_pads(pads_, rank);
    uint64_t fill = 0;  // the pad value in the output dtype, as raw bytes
    store_element({&fill, out[0].dtype, {1}}, 0, value_);
    const size_t es = dtype_size(out[0].dtype);
    const int64_t count = volume(yd);
    for (int64_t i = 0; i < count; ++i) {
      int64_t rem = i, src = 0, stride = 1;
      bool inside = true;
      for (int64_t d = rank - 1; d >= 0; --d) {
        int64_t c = rem % yd[d] - p[2 * d];
        rem /= yd[d];
        const int64_t n = xd[d];
        if (c < 0 || c >= n) {
          if (mode_ == "constant") {
            inside = false;
          } else if (mode_ == "reflect") {
            c = c < 0 ? -c : 2 * (n - 1) - c;
          } else {
            c = c < 0 ? 0 : n - 1;
          }
        }
        src += c * stride;
        stride *= n;
      }
      if (inside) {
        copy_element(out[0], i, in[0], src);
      } else {
        std::memcpy(static_cast<uint8_t*>(out[0].data) + i * es, &fill, es);
      }
    }
  }
  std::string name() const override { return "ref_pad_" + mode_; }

 private:
  std::vector<int64_t> pads_;
  std::string mode_;
  double value_;
};

// Floating types accumulate in float32, integers in int64 (as the CUDA kernel does).
class RefCumsum final : public Kernel {
 public:
  explicit RefCumsum(const Layer& l)
      : who_(describe(l)),
        axis_(l.attrs.get_int("axis", who_)),
        exclusive_(l.attrs.get_int("exclusive", int64_t{0}) != 0),
        reverse_(l.attrs.get_int("reverse", int64_t{0}) != 0) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const int64_t rank = static_cast<int64_t>(in[0].dims.size());
    const AxisView v = axis_view(in[0].dims, indexing::normalize_axis(axis_, rank, who_));
    const bool floating = is_floating(in[0].dtype);
    for (int64_t o = 0; o < v.outer; ++o) {
      for (int64_t k = 0; k < v.inner; ++k) {
        float fsum = 0.f;
        int64_t isum = 0;
        for (int64_t s = 0; s < v.n; ++s) {
          const int64_t j = reverse_ ? v.n - 1 - s : s;
          const int64_t e = (o * v.n + j) * v.inner + k;
          if (floating) {
            const float x = static_cast<float>(load_element(in[0], e));
            if (!exclusive_) fsum += x;
            store_element(out[0], e, fsum);
            if (exclusive_) fsum += x;
          } else {
            const int64_t x = load_index(in[0], e);
            if (!exclusive_) isum = wrapping_add(isum, x);
            store_int(out[0], e, isum);
            if (exclusive_) isum = wrapping_add(isum, x);
          }
        }
      }
    }
  }
  std::string name() const override { return "ref_cumsum"; }

 private:
  // int64 sums wrap, as torch's do (in unsigned arithmetic: a signed overflow is undefined).
  static int64_t wrapping_add(int64_t a, int64_t b) {
    return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  }
  static void store_int(const TensorView& t, int64_t i, int64_t v) {
    if (t.dtype == DataType::kInt32) {
      static_cast<int32_t*>(t.data)[i] = static_cast<int32_t>(v);  // wraps like int32 arithmetic
    } else {
      static_cast<int64_t*>(t.data)[i] = v;
    }
  }
  std::string who_;
  int64_t axis_;
  bool exclusive_, reverse_;
};

// Order of top-k results: best first (largest or smallest value; NaN counts as the largest, as in
// torch), ties by ascending index.
template <typename K>
bool ranks_before(K a, int64_t ia, K b, int64_t ib, bool largest) {
  const bool na = a != a, nb = b != b;  // NaN tests; false for integers
  if (na || nb) {
    if (na && nb) return ia < ib;
    return largest ? na : nb;
  }
  if (a != b) return largest ? a > b : a < b;
  return ia < ib;
}

class RefTopk final : public Kernel {
 public:
  explicit RefTopk(const Layer& l)
      : who_(describe(l)),
        axis_(l.attrs.get_int("axis", int64_t{-1})),
        largest_(l.attrs.get_int("largest", int64_t{1}) != 0) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const int64_t rank = static_cast<int64_t>(in[0].dims.size());
    const int64_t axis = indexing::normalize_axis(axis_, rank, who_);
    const AxisView v = axis_view(in[0].dims, axis);
    const int64_t k = out[0].dims[axis];
    KILN_CHECK(k <= v.n, who_ << ": k = " << k << " exceeds the size " << v.n << " of axis " << axis);
    if (in[0].dtype == DataType::kInt64) {
      select<int64_t>(in, out, v, k, [&](int64_t e) { return static_cast<const int64_t*>(in[0].data)[e]; });
    } else {
      select<double>(in, out, v, k, [&](int64_t e) { return load_element(in[0], e); });
    }
  }
  std::string name() const override { return "ref_topk"; }

 private:
  template <typename K, typename Load>
  void select(const std::vector<TensorView>& in, const std::vector<TensorView>& out, const AxisView& v,
              int64_t k, Load load) const {
    std::vector<int64_t> order(static_cast<size_t>(v.n));
    std::vector<K> key(static_cast<size_t>(v.n));
    for (int64_t o = 0; o < v.outer; ++o) {
      for (int64_t i = 0; i < v.inner; ++i) {
        for (int64_t j = 0; j < v.n; ++j) key[j] = load((o * v.n + j) * v.inner + i);
        std::iota(order.begin(), order.end(), int64_t{0});
        std::sort(order.begin(), order.end(),
                  [&](int64_t a, int64_t b) { return ranks_before<K>(key[a], a, key[b], b, largest_); });
        for (int64_t j = 0; j < k; ++j) {
          const int64_t dst = (o * k + j) * v.inner + i;
          copy_element(out[0], dst, in[0], (o * v.n + order[j]) * v.inner + i);
          static_cast<int64_t*>(out[1].data)[dst] = order[j];
        }
      }
    }
  }
  std::string who_;
  int64_t axis_;
  bool largest_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("gather", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefGather>(l, l.attrs.get_int("axis", int64_t{0}));
  });
  register_kernel("embedding", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefGather>(l, 0); });
  register_kernel("gather_elements", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefGatherElements>(l); });
  register_kernel("pad", Backend::kReference, [](const Layer& l) { return std::make_unique<RefPad>(l); });
  register_kernel("cumsum", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefCumsum>(l); });
  register_kernel("topk", Backend::kReference, [](const Layer& l) { return std::make_unique<RefTopk>(l); });
});

}  // namespace kiln
