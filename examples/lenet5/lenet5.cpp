// LeNet-5 built layer by layer with Kiln's C++ network API, weights read from the safetensors
// state_dict that examples/lenet5/lenet5_torch.py wrote:
//
//   python examples/lenet5/lenet5_torch.py /tmp/lenet5
//   build/examples/kiln_lenet5 /tmp/lenet5 [reference|cuda]
//
// Compares the output with PyTorch's (rtol/atol 1e-4, FP32); exits 1 on a mismatch and 2 on an
// error.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "core/builder.h"
#include "core/engine.h"
#include "core/safetensors.h"
#include "ir/error.h"
#include "kernels/device.h"

namespace {

using kiln::Attributes;
using kiln::DataType;
using kiln::TensorId;

class WeightSet {
 public:
  explicit WeightSet(const std::string& path) : path_(path), weights_(kiln::load_safetensors(path)) {}

  const kiln::WeightTensor& operator[](const std::string& name) const {
    auto it = weights_.find(name);
    KILN_CHECK(it != weights_.end(), path_ << " has no tensor '" << name << "'");
    KILN_CHECK(it->second.dtype == DataType::kFloat32, "'" << name << "' is not float32");
    return it->second;
  }

  TensorId constant(kiln::Network& net, const std::string& name) const {
    const auto& w = (*this)[name];
    return net.add_constant(name, w.dtype, w.dims, w.data);
  }

 private:
  std::string path_;
  std::map<std::string, kiln::WeightTensor> weights_;
};

kiln::Network build_network(const WeightSet& w) {
  kiln::Network net;
  TensorId x = net.add_input("input", DataType::kFloat32, {-1, 1, 32, 32});  // dynamic batch
  for (const std::string conv : {"conv1", "conv2"}) {
    x = net.add_layer("convolution", {x, w.constant(net, conv + ".weight"), w.constant(net, conv + ".bias")},
                      Attributes{}, conv)
            .outputs[0];
    x = net.add_activation(x, "relu", 0.0, conv + "_relu").outputs[0];
    Attributes pool;
    pool.set("type", std::string("max")).set("kernel", std::vector<int64_t>{2, 2});
    x = net.add_layer("pooling", {x}, pool, conv + "_pool").outputs[0];
  }
  Attributes flatten;
  flatten.set("start_dim", int64_t{1});
  x = net.add_layer("flatten", {x}, flatten, "flatten").outputs[0];
  for (const std::string fc : {"fc1", "fc2", "fc3"}) {
    x = net.add_layer("fully_connected", {x, w.constant(net, fc + ".weight"), w.constant(net, fc + ".bias")},
                      Attributes{}, fc)
            .outputs[0];
    if (fc != "fc3") x = net.add_activation(x, "relu", 0.0, fc + "_relu").outputs[0];
  }
  net.mark_output(x, "logits");
  return net;
}

int run(const std::string& dir, const std::string& target) {
  WeightSet weights(dir + "/lenet5.safetensors");
  WeightSet io(dir + "/lenet5_io.safetensors");
  const auto& input = io["input"];
  const auto& expected = io["output"];

  kiln::BuilderConfig config;
  config.target = target == "cuda" ? kiln::BuildTarget::kCuda : kiln::BuildTarget::kReference;
  config.profiles.push_back({{{"input", {{1, 1, 32, 32}, {4, 1, 32, 32}, {64, 1, 32, 32}}}}});
  kiln::Plan plan = kiln::Builder().build(build_network(weights), config);
  // Through bytes, as an application that saved the plan would load it.
  auto engine = kiln::Engine::create(plan.serialize(),
                                     target == "cuda" ? kiln::Backend::kCuda : kiln::Backend::kReference);
  auto ctx = engine->create_execution_context();
  ctx->set_input_shape("input", input.dims);
  std::vector<float> out(static_cast<size_t>(kiln::volume(ctx->tensor_shape("logits"))));
  const void* in_host = input.data->data();
  const size_t in_bytes = input.data->size(), out_bytes = out.size() * sizeof(float);
  if (target == "cuda") {
    void* d_in = kiln::device_alloc(in_bytes);
    void* d_out = kiln::device_alloc(out_bytes);
    kiln::copy_to_device(d_in, in_host, in_bytes);
    ctx->set_tensor_address("input", d_in);
    ctx->set_tensor_address("logits", d_out);
    ctx->enqueue(nullptr);
    kiln::synchronize_stream(nullptr);
    kiln::copy_to_host(out.data(), d_out, out_bytes);
    kiln::device_free(d_in);
    kiln::device_free(d_out);
  } else {
    ctx->set_tensor_address("input", const_cast<void*>(in_host));
    ctx->set_tensor_address("logits", out.data());
    ctx->enqueue(nullptr);
  }

  KILN_CHECK(out.size() * sizeof(float) == expected.data->size(), "output size differs from PyTorch's");
  const auto* want = reinterpret_cast<const float*>(expected.data->data());
  double max_err = 0;
  bool ok = true;
  for (size_t i = 0; i < out.size(); ++i) {
    double err = std::fabs(double{out[i]} - want[i]);
    max_err = std::max(max_err, err);
    ok &= err <= 1e-4 + 1e-4 * std::fabs(want[i]);
  }
  std::printf("lenet5 c++ %s: max abs err %.3e -> %s\n", target.c_str(), max_err, ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: kiln_lenet5 DATA_DIR [reference|cuda]\n";
    return 2;
  }
  std::string target = argc > 2 ? argv[2] : "reference";
  try {
    return run(argv[1], target);
  } catch (const std::exception& e) {
    std::cerr << "kiln_lenet5: " << e.what() << "\n";
    return 2;
  }
}
