// Reference convolution and transposed convolution: direct loops over every output element and its
// window, accumulating in double. 1d and 2d run as 3d with leading spatial dims of size 1.
// The fused epilogue (bias, residual, activation) is applied to the double sum before the one
// rounding to the output dtype: this defines the fused layer's result. A quantized convolution
// (int8 x and weight) scales the exact integer sum per channel, then adds the bias.
#include <array>
#include <functional>

#include "ir/ops/convolution.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/reference/pointwise_math.h"

namespace kiln {
namespace {

// Spatial geometry padded to three dims (missing leading dims: size 1, kernel 1, stride 1, pad 0).
struct Window3 {
  std::array<int64_t, 3> in{1, 1, 1}, out{1, 1, 1}, kernel{1, 1, 1};
  std::array<int64_t, 3> stride{1, 1, 1}, pad{0, 0, 0}, dilation{1, 1, 1};
};

Window3 window3(const ConvGeometry& g, const Dims& x, const Dims& w, const Dims& y) {
  Window3 r;
  for (int i = 0; i < g.spatial; ++i) {
    int j = 3 - g.spatial + i;
    r.in[j] = x[2 + i];
    r.out[j] = y[2 + i];
    r.kernel[j] = w[2 + i];
    r.stride[j] = g.strides[i];
    r.pad[j] = g.pads[i];
    r.dilation[j] = g.dilations[i];
  }
  return r;
}

class RefConvolution final : public Kernel {
 public:
  RefConvolution(Layer layer, bool transposed) : layer_(std::move(layer)), transposed_(transposed) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    // Channels-last layers index the same canonical [N, C, spatial...] element at another offset.
    const bool last = channels_last(layer_);
    const Dims xd = last ? channels_first_dims(x.dims) : x.dims;
    const Dims wd = last ? channels_first_dims(w.dims) : w.dims;
    const Dims yd = last ? channels_first_dims(y.dims) : y.dims;
    const ConvEpilogue e = conv_epilogue(layer_, in.size());
    // A quantized layer: input 2 holds the per-channel scale (row 0) and the bias (row 1); the
    // int8 products sum exactly in the double.
    const bool quantized = conv_quantized(layer_);
    const TensorView* bias = e.has_bias && !quantized ? &in[2] : nullptr;
    const TensorView* scale_bias = quantized ? &in[2] : nullptr;
    // A requantizing layer rounds its value to out_dtype, then quantizes it; with an int8 copy it
    // writes both: y the rounded value, output 1 the int8 tensor.
    const bool requantize = layer_.attrs.has("output_inv_scale");
    const bool int8_copy = layer_.attrs.get_int("int8_copy", int64_t{0}) != 0;
    const TensorView* int8_y = int8_copy ? &out[1] : &y;
    const DataType rounding = quantized ? conv_out_dtype(layer_) : y.dtype;
    const float inv_scale = static_cast<float>(layer_.attrs.get_float("output_inv_scale", 0.0));
    const int64_t q_lo = layer_.attrs.get_int("output_quant_min", int64_t{-128});
    const int64_t q_hi = layer_.attrs.get_int("output_quant_max", int64_t{127});
    const TensorView* residual = e.residual ? &in[static_cast<size_t>(e.residual_input)] : nullptr;
    // An int8 residual (calibrated builds) adds residual * residual_scale.
    const bool int8_residual = layer_.attrs.has("residual_scale");
    const double residual_scale = int8_residual ? layer_.attrs.get_float("residual_scale", layer_.name) : 1.0;
    std::function<double(double)> act = [](double v) { return v; };
    if (e.activation != "none") act = activation_fn(e.activation, e.alpha, e.beta, e.threshold);
    const ConvGeometry g = conv_geometry(layer_, static_cast<int>(xd.size()) - 2);
    const Window3 s = window3(g, xd, wd, yd);
    const int64_t n = xd[0], c = xd[1], k = yd[1];
    const int64_t cg = c / g.groups, kg = k / g.groups;  // channels per group
    const int64_t in_size = s.in[0] * s.in[1] * s.in[2], out_size = s.out[0] * s.out[1] * s.out[2];
    const int64_t taps = s.kernel[0] * s.kernel[1] * s.kernel[2];
    // Offset of element (batch, channel, pixel) of a [batch, channels, pixels] tensor.
    auto at = [last](int64_t batch, int64_t channel, int64_t pixel, int64_t channels, int64_t pixels) {
      return last ? (batch * pixels + pixel) * channels + channel
                  : (batch * channels + channel) * pixels + pixel;
    };
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t ko = 0; ko < k; ++ko) {
        const int64_t group = ko / kg;
        for (int64_t o = 0; o < out_size; ++o) {
          const std::array<int64_t, 3> op = {o / (s.out[1] * s.out[2]), o / s.out[2] % s.out[1],
                                             o % s.out[2]};
          double acc = bias ? load_element(*bias, ko) : 0.0;
          for (int64_t t = 0; t < taps; ++t) {
            const std::array<int64_t, 3> tp = {t / (s.kernel[1] * s.kernel[2]), t / s.kernel[2] % s.kernel[1],
                                               t % s.kernel[2]};
            int64_t ip[3];
            bool inside = true;
            for (int d = 0; d < 3 && inside; ++d) {
              if (transposed_) {  // output o receives input i where i*stride - pad + t*dilation == o
                int64_t num = op[d] + s.pad[d] - tp[d] * s.dilation[d];
                inside = num >= 0 && num % s.stride[d] == 0 && num / s.stride[d] < s.in[d];
                ip[d] = inside ? num / s.stride[d] : 0;
              } else {
                ip[d] = op[d] * s.stride[d] - s.pad[d] + tp[d] * s.dilation[d];
                inside = ip[d] >= 0 && ip[d] < s.in[d];
              }
            }
            if (!inside) continue;
            const int64_t pixel = (ip[0] * s.in[1] + ip[1]) * s.in[2] + ip[2];
            for (int64_t ci = 0; ci < cg; ++ci) {
              const int64_t channel = group * cg + ci;
              // convolution weight [K, C/g, taps]; deconvolution weight [C, K/g, taps]
              const int64_t widx =
                  transposed_ ? (channel * kg + ko % kg) * taps + t : at(ko, ci, t, cg, taps);
              acc += load_element(x, at(b, channel, pixel, c, in_size)) * load_element(w, widx);
            }
          }
          if (scale_bias) acc = acc * load_element(*scale_bias, ko) + load_element(*scale_bias, k + ko);
          const int64_t yi = at(b, ko, o, k, out_size);
          if (residual) {
            acc += int8_residual ? load_element(*residual, yi) * residual_scale : load_element(*residual, yi);
          }
          if (requantize) {
            const double v = round_to_dtype(rounding, act(acc));
            store_element(*int8_y, yi, quantize_value(v, inv_scale, 0, q_lo, q_hi));
            if (int8_copy) store_element(y, yi, v);
            continue;
          }
          store_element(y, yi, act(acc));
        }
      }
    }
  }
  std::string name() const override { return transposed_ ? "ref_deconvolution" : "ref_convolution"; }

 private:
  Layer layer_;
  bool transposed_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("convolution", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefConvolution>(l, false); });
  register_kernel("deconvolution", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefConvolution>(l, true); });
});

}  // namespace kiln
