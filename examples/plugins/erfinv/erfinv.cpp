// An example Kiln plugin: erfinv (the inverse error function, torch.erfinv), an op Kiln has no
// built-in layer for, with a CUDA kernel (erfinv.cu) and a CPU implementation for the reference
// backend. Field "scale" (default 1): the layer computes scale * erfinv(x). Built as its own
// shared library (CMakeLists.txt); kiln.load_plugin_library(path) registers it.
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/plugin.h"
#include "erfinv.h"

namespace kiln_example {
namespace {

using kiln::DataType;

// erfinv in double: Giles' single-precision polynomial ("Approximating the erfinv function",
// GPU Computing Gems, 2011) as the start, then two Newton steps on erf(x) = y.
double erfinv(double y) {
  if (std::isnan(y) || y < -1 || y > 1) return std::numeric_limits<double>::quiet_NaN();
  if (y == 1 || y == -1) return y * std::numeric_limits<double>::infinity();
  double w = -std::log((1.0 - y) * (1.0 + y)), x;
  if (w < 5) {
    w -= 2.5;
    x = 2.81022636e-08;
    for (double c : {3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                     -0.00417768164, 0.246640727, 1.50140941})
      x = c + x * w;
  } else {
    w = std::sqrt(w) - 3;
    x = -0.000200214257;
    for (double c : {0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                     0.00943887047, 1.00167406, 2.83297682})
      x = c + x * w;
  }
  x *= y;
  const double two_over_sqrt_pi = 1.1283791670955126;
  for (int step = 0; step < 2; ++step) x -= (std::erf(x) - y) / (two_over_sqrt_pi * std::exp(-x * x));
  return x;
}

class ErfinvLayer : public kiln::PluginLayer {
 public:
  explicit ErfinvLayer(double scale) : scale_(scale) {}

  std::vector<kiln::PluginTensorDesc> outputs(const std::vector<kiln::PluginTensorDesc>& in) const override {
    const DataType t = in.at(0).dtype;
    if (t != DataType::kFloat32 && t != DataType::kFloat16 && t != DataType::kBFloat16)
      throw std::invalid_argument("erfinv takes float32, float16 or bfloat16");
    return {in[0]};
  }

  void enqueue(const std::vector<kiln::PluginTensor>& in, const std::vector<kiln::PluginTensor>& out,
               void* /*workspace*/, void* stream) const override {
    launch_erfinv(in[0].data, out[0].data, count(in[0]), static_cast<int>(in[0].dtype),
                  static_cast<float>(scale_), stream);
  }

  void run_cpu(const std::vector<kiln::PluginTensor>& in,
               const std::vector<kiln::PluginTensor>& out) const override {
    const int64_t n = count(in[0]);
    if (in[0].dtype == DataType::kFloat32) {
      const auto* x = static_cast<const float*>(in[0].data);
      auto* y = static_cast<float*>(out[0].data);
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(scale_ * erfinv(x[i]));
      return;
    }
    const bool half = in[0].dtype == DataType::kFloat16;
    const auto* x = static_cast<const uint16_t*>(in[0].data);
    auto* y = static_cast<uint16_t*>(out[0].data);
    for (int64_t i = 0; i < n; ++i) {
      const float v = half ? kiln::half_to_float(x[i]) : kiln::bfloat16_to_float(x[i]);
      const auto r = static_cast<float>(scale_ * erfinv(v));
      y[i] = half ? kiln::float_to_half(r) : kiln::float_to_bfloat16(r);
    }
  }

 private:
  static int64_t count(const kiln::PluginTensor& t) {
    int64_t n = 1;
    for (int64_t d : t.dims) n *= d;
    return n;
  }
  double scale_;
};

class ErfinvCreator : public kiln::PluginCreator {
 public:
  std::string name() const override { return "erfinv"; }
  std::string version() const override { return "1"; }
  std::string plugin_namespace() const override { return "kiln_example"; }
  std::vector<kiln::PluginField> fields() const override {
    return {{"scale", kiln::PluginField::Type::kFloat, kiln::AttrValue{1.0}, "multiplies the result"}};
  }
  bool has_cuda() const override { return KILN_EXAMPLE_CUDA != 0; }
  bool has_cpu() const override { return true; }
  std::unique_ptr<kiln::PluginLayer> create(const kiln::Attributes& fields, int /*tactic*/) const override {
    return std::make_unique<ErfinvLayer>(fields.get_float("scale", "kiln_example::erfinv"));
  }
};

KILN_REGISTER_PLUGIN(ErfinvCreator);

}  // namespace
}  // namespace kiln_example
