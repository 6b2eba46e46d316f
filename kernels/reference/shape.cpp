// Reference shape ops: element copies in plain loops. reshape/flatten/squeeze/unsqueeze keep the
// row-major order (one memcpy); the others walk a StridedCopy element by element.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ir/ops/shape.h"
#include "ir/ops/shape_values.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/strided_copy.h"

namespace kiln {
namespace {

void run_copy(const StridedCopy& c, const TensorView& src, const TensorView& dst) {
  const size_t size = dtype_size(src.dtype);
  const int64_t n = copy_count(c);
  const auto* s = static_cast<const uint8_t*>(src.data);
  auto* d = static_cast<uint8_t*>(dst.data);
  for (int64_t i = 0; i < n; ++i) {
    int64_t so = c.src_offset, dof = c.dst_offset, rem = i;
    for (int k = c.rank - 1; k >= 0; --k) {
      int64_t idx = rem % c.dims[k];
      rem /= c.dims[k];
      so += idx * c.src_strides[k];
      dof += idx * c.dst_strides[k];
    }
    std::memcpy(d + dof * size, s + so * size, size);
  }
}

class RefCopy final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    size_t bytes = static_cast<size_t>(volume(out[0].dims)) * dtype_size(out[0].dtype);
    if (bytes) std::memcpy(out[0].data, in[0].data, bytes);
  }
  std::string name() const override { return "ref_copy"; }
};

class RefTranspose final : public Kernel {
 public:
  explicit RefTranspose(Layer layer) : layer_(std::move(layer)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    auto perm = resolve_perm(layer_, static_cast<int64_t>(in[0].dims.size()));
    run_copy(transpose_copy(in[0].dims, perm), in[0], out[0]);
  }
  std::string name() const override { return "ref_transpose"; }

 private:
  Layer layer_;
};

class RefSlice final : public Kernel {
 public:
  explicit RefSlice(Layer layer) : layer_(std::move(layer)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    run_copy(slice_copy(in[0].dims, resolve_slice(layer_, in[0].dims)), in[0], out[0]);
  }
  std::string name() const override { return "ref_slice"; }

 private:
  Layer layer_;
};

class RefExpand final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    run_copy(expand_copy(in[0].dims, out[0].dims), in[0], out[0]);
  }
  std::string name() const override { return "ref_expand"; }
};

class RefConcat final : public Kernel {
 public:
  explicit RefConcat(int64_t axis) : axis_(axis) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const int64_t axis = axis_ < 0 ? axis_ + static_cast<int64_t>(out[0].dims.size()) : axis_;
    int64_t offset = 0;
    for (const auto& x : in) {
      run_copy(part_copy(x.dims, out[0].dims, axis, offset, /*part_is_dst=*/false), x, out[0]);
      offset += x.dims[axis];
    }
  }
  std::string name() const override { return "ref_concat"; }

 private:
  int64_t axis_;
};

class RefSplit final : public Kernel {
 public:
  explicit RefSplit(int64_t axis) : axis_(axis) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const int64_t axis = axis_ < 0 ? axis_ + static_cast<int64_t>(in[0].dims.size()) : axis_;
    int64_t offset = 0;
    for (const auto& y : out) {
      run_copy(part_copy(y.dims, in[0].dims, axis, offset, /*part_is_dst=*/true), in[0], y);
      offset += y.dims[axis];
    }
  }
  std::string name() const override { return "ref_split"; }

 private:
  int64_t axis_;
};

class RefShape final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    auto* y = static_cast<int64_t*>(out[0].data);
    for (size_t d = 0; d < in[0].dims.size(); ++d) y[d] = in[0].dims[d];
  }
  std::string name() const override { return "ref_shape"; }
};

class RefSpaceToDepth final : public Kernel {
 public:
  explicit RefSpaceToDepth(Layer layer) : layer_(std::move(layer)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const SpaceToDepth g = resolve_space_to_depth(layer_, in[0].dims);
    const size_t size = dtype_size(in[0].dtype);
    const auto* x = static_cast<const uint8_t*>(in[0].data);
    auto* y = static_cast<uint8_t*>(out[0].data);
    const int64_t oc = 4 * g.channels;
    for (int64_t n = 0; n < g.n; ++n) {
      for (int64_t k = 0; k < oc; ++k) {
        const int64_t dy = k / (2 * g.channels), dx = k / g.channels % 2, c = k % g.channels;
        for (int64_t i = 0; i < g.hs; ++i) {
          for (int64_t j = 0; j < g.ws; ++j) {
            const int64_t r = 2 * i + dy - g.top, q = 2 * j + dx - g.left;
            const int64_t dst =
                g.nhwc ? ((n * g.hs + i) * g.ws + j) * oc + k : ((n * oc + k) * g.hs + i) * g.ws + j;
            const bool inside = c < g.c && r >= 0 && r < g.h && q >= 0 && q < g.w;
            const int64_t src = ((n * g.c + c) * g.h + r) * g.w + q;
            if (g.quantized) {  // as a per-tensor quantize of the folded value (the padding's 0 too)
              const float v = inside ? static_cast<float>(load_element(in[0], src)) : 0.f;
              const float t = std::nearbyint(v * g.inv_scale);
              const float lo = static_cast<float>(g.quant_min), hi = static_cast<float>(g.quant_max);
              y[dst] = static_cast<uint8_t>(static_cast<int8_t>(t != t ? lo : std::clamp(t, lo, hi)));
            } else if (inside) {
              std::memcpy(y + dst * size, x + src * size, size);
            } else {
              std::memset(y + dst * size, 0, size);
            }
          }
        }
      }
    }
  }
  std::string name() const override { return "ref_space_to_depth"; }

 private:
  Layer layer_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  for (const char* op : {"reshape", "flatten", "squeeze", "unsqueeze"}) {
    register_kernel(op, Backend::kReference, [](const Layer&) { return std::make_unique<RefCopy>(); });
  }
  register_kernel("transpose", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefTranspose>(l); });
  register_kernel("slice", Backend::kReference, [](const Layer& l) { return std::make_unique<RefSlice>(l); });
  register_kernel("expand", Backend::kReference, [](const Layer&) { return std::make_unique<RefExpand>(); });
  register_kernel("concat", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefConcat>(l.attrs.get_int("axis", 0)); });
  register_kernel("split", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefSplit>(l.attrs.get_int("axis", 0)); });
  register_kernel("shape", Backend::kReference, [](const Layer&) { return std::make_unique<RefShape>(); });
  register_kernel("space_to_depth", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefSpaceToDepth>(l); });
});

}  // namespace kiln
