// Reference scatter_elements (see ir/ops/scatter.cpp). Reductions accumulate in double and round
// to the dtype once; a write (reduction none) moves raw bytes, so every dtype is exact, and where
// indices repeat a position the last update in row-major order lands. An index out of range is an
// error naming the layer and the index.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/scatter.h"
#include "ir/ops/shape_values.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

int64_t load_index(const TensorView& t, int64_t i) {
  return t.dtype == DataType::kInt32 ? static_cast<const int32_t*>(t.data)[i]
                                     : static_cast<const int64_t*>(t.data)[i];
}

double identity_of(const std::string& reduction) {
  if (reduction == "mul") return 1;
  if (reduction == "max") return -std::numeric_limits<double>::infinity();
  if (reduction == "min") return std::numeric_limits<double>::infinity();
  return 0;  // add
}

double combine(const std::string& reduction, double acc, double v) {
  if (reduction == "add") return acc + v;
  if (reduction == "mul") return acc * v;
  if (std::isnan(acc) || std::isnan(v)) return std::numeric_limits<double>::quiet_NaN();
  return reduction == "max" ? std::max(acc, v) : std::min(acc, v);
}

class RefScatterElements final : public Kernel {
 public:
  explicit RefScatterElements(const Layer& l)
      : who_(describe(l)),
        axis_(l.attrs.get_int("axis", int64_t{0})),
        reduction_(scatter_reduction(l)),
        include_self_(l.attrs.get_int("include_self", int64_t{1}) != 0) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const Dims& data = in[0].dims;
    const Dims& index = in[1].dims;
    const int64_t rank = static_cast<int64_t>(data.size());
    const int64_t axis = normalize_axis(axis_, rank, who_);
    for (int64_t d = 0; d < rank; ++d) {
      KILN_CHECK(index[d] <= in[2].dims[d], who_ << ": updates " << to_string(in[2].dims)
                                                 << " are smaller than indices " << to_string(index)
                                                 << " in dim " << d);
      KILN_CHECK(d == axis || index[d] <= data[d], who_ << ": indices " << to_string(index)
                                                        << " are larger than data " << to_string(data)
                                                        << " in dim " << d);
    }
    const int64_t total = volume(data);
    const size_t size = dtype_size(in[0].dtype);
    std::memcpy(out[0].data, in[0].data, static_cast<size_t>(total) * size);
    std::vector<int64_t> stride(static_cast<size_t>(rank), 1), update_stride(static_cast<size_t>(rank), 1);
    for (int64_t d = rank - 2; d >= 0; --d) {
      stride[d] = stride[d + 1] * data[d + 1];
      update_stride[d] = update_stride[d + 1] * in[2].dims[d + 1];
    }
    // The position in data of each update, checked before anything is written.
    const int64_t count = volume(index);
    std::vector<int64_t> target(static_cast<size_t>(count)), source(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      int64_t rem = i, pos = 0, src = 0;
      for (int64_t d = rank - 1; d >= 0; --d) {
        int64_t c = rem % index[d];
        rem /= index[d];
        src += c * update_stride[d];
        if (d == axis) {
          c = load_index(in[1], i);
          KILN_CHECK(c >= 0 && c < data[d],
                     who_ << ": index " << c << " is out of range for an axis of size " << data[d]);
        }
        pos += c * stride[d];
      }
      target[static_cast<size_t>(i)] = pos;
      source[static_cast<size_t>(i)] = src;
    }
    if (reduction_ == "none") {
      for (int64_t i = 0; i < count; ++i) {
        std::memcpy(static_cast<uint8_t*>(out[0].data) + target[i] * size,
                    static_cast<const uint8_t*>(in[2].data) + source[i] * size, size);
      }
      return;
    }
    std::vector<double> acc(static_cast<size_t>(total));
    for (int64_t p = 0; p < total; ++p) acc[p] = load_element(in[0], p);
    if (!include_self_) {
      for (int64_t p : target) acc[p] = identity_of(reduction_);
    }
    for (int64_t i = 0; i < count; ++i)
      acc[target[i]] = combine(reduction_, acc[target[i]], load_element(in[2], source[i]));
    for (int64_t p : target) store_element(out[0], p, acc[p]);
  }
  std::string name() const override { return "ref_scatter_elements"; }

 private:
  std::string who_;
  int64_t axis_;
  std::string reduction_;
  bool include_self_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("scatter_elements", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefScatterElements>(l); });
});

}  // namespace kiln
