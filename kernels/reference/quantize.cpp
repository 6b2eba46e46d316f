// Reference quantize / dequantize / fake_quantize (see ir/ops/quantize.cpp), in float32 exactly
// as torch computes them: 1 / scale rounded to float32, x * that in float32, nearbyint (half to
// even), + zero point, clamp; back: (q - zero point) * scale in float32. Format e4m3: x * (1 /
// scale) rounded to float8 e4m3fn (ir/float8.h), back: q * scale. Narrow formats (fake_quantize):
// round_minifloat(x * (1 / scale)) * scale (ir/minifloat.h).
#include <algorithm>
#include <cmath>

#include "ir/error.h"
#include "ir/float8.h"
#include "ir/minifloat.h"
#include "ir/op_schema.h"
#include "ir/ops/quantize.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class RefQuantization final : public Kernel {
 public:
  explicit RefQuantization(const Layer& l) : layer_(l) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    const int64_t count = volume(in[1].dims);
    const QuantParams p = quant_params(layer_, x.dims.size(), count);
    int64_t inner = 1;
    if (p.per_channel) {
      for (size_t d = static_cast<size_t>(p.axis) + 1; d < x.dims.size(); ++d) inner *= x.dims[d];
      KILN_CHECK(x.dims[static_cast<size_t>(p.axis)] == count,
                 describe(layer_) << ": " << count << " per-channel scales for a dim of "
                                  << x.dims[static_cast<size_t>(p.axis)]);
    }
    const float* scale = static_cast<const float*>(in[1].data);
    const bool has_zp = in.size() == 3;
    const int64_t n = volume(x.dims);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = p.per_channel ? (i / inner) % count : 0;
      const float s = scale[c];
      const int64_t zp = has_zp ? static_cast<int64_t>(load_element(in[2], c)) : 0;
      const float v = static_cast<float>(load_element(x, i));
      if (p.minifloat) {
        const float inv = p.has_inv_scale ? p.inv_scale : 1.0f / s;
        store_element(out[0], i, static_cast<double>(round_minifloat(v * inv, p.format, p.saturate) * s));
        continue;
      }
      if (p.e4m3) {  // FP8: no zero point, no range; load/store_element convert float8
        const float inv = p.has_inv_scale ? p.inv_scale : 1.0f / s;
        const float y = layer_.op == "dequantize" ? v * s
                        : layer_.op == "quantize" ? v * inv
                                                  : e4m3_to_float(float_to_e4m3(v * inv)) * s;
        store_element(out[0], i, static_cast<double>(y));
        continue;
      }
      if (layer_.op == "dequantize") {
        store_element(out[0], i, static_cast<double>((v - static_cast<float>(zp)) * s));
        continue;
      }
      const double q =
          quantize_value(v, p.has_inv_scale ? p.inv_scale : 1.0f / s, zp, p.quant_min, p.quant_max);
      if (layer_.op == "quantize") {
        store_element(out[0], i, q);
      } else {
        store_element(out[0], i, static_cast<double>(static_cast<float>(q - static_cast<double>(zp)) * s));
      }
    }
  }
  std::string name() const override { return "ref_" + layer_.op; }

 private:
  Layer layer_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  for (const char* op : {"quantize", "dequantize", "fake_quantize"}) {
    register_kernel(op, Backend::kReference,
                    [](const Layer& l) { return std::make_unique<RefQuantization>(l); });
  }
});

}  // namespace kiln
