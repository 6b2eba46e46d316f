// ONNX file -> Kiln plan, from C++ alone: parse (kiln::onnx::parse), build, save.
//
//   kiln_onnx_to_plan MODEL.onnx OUT.plan [--target reference|cuda] [--fp16]
//                     [--shapes name:min:opt:max ...]      (dims as 1x3x224x224)
//
// Dynamic dims (-1 after parsing) need a --shapes range for their input. Exit status 0 on
// success, 1 on a Kiln error (printed), 2 on bad arguments.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/plan.h"
#include "ir/error.h"
#include "onnx_parser/parser.h"

namespace {

kiln::Dims parse_dims(const std::string& text) {  // "1x3x224x224"
  kiln::Dims d;
  std::stringstream s(text);
  std::string part;
  while (std::getline(s, part, 'x')) d.push_back(std::stoll(part));
  return d;
}

int usage() {
  std::cerr << "usage: kiln_onnx_to_plan MODEL.onnx OUT.plan [--target reference|cuda] [--fp16] "
               "[--shapes name:min:opt:max ...]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string model = argv[1], out = argv[2];
  kiln::BuilderConfig config;
  config.target = kiln::BuildTarget::kAuto;
  kiln::OptimizationProfile profile;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--target" && i + 1 < argc) {
      const std::string t = argv[++i];
      if (t == "reference")
        config.target = kiln::BuildTarget::kReference;
      else if (t == "cuda")
        config.target = kiln::BuildTarget::kCuda;
      else
        return usage();
    } else if (a == "--fp16") {
      kiln::enable_precision(config.precision, "fp16");
    } else if (a == "--shapes") {
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
        const std::string spec = argv[++i];  // name:min:opt:max
        const size_t c3 = spec.rfind(':'), c2 = spec.rfind(':', c3 - 1), c1 = spec.rfind(':', c2 - 1);
        if (c1 == std::string::npos || c2 == std::string::npos || c3 == std::string::npos) return usage();
        profile.inputs[spec.substr(0, c1)] = {parse_dims(spec.substr(c1 + 1, c2 - c1 - 1)),
                                              parse_dims(spec.substr(c2 + 1, c3 - c2 - 1)),
                                              parse_dims(spec.substr(c3 + 1))};
      }
    } else {
      return usage();
    }
  }
  try {
    kiln::onnx::ParseInfo info;
    kiln::Network net = kiln::onnx::parse(model, {}, &info);
    if (!profile.inputs.empty()) config.profiles.push_back(profile);
    const kiln::Plan plan = kiln::Builder().build(net, config);
    plan.save(out);
    std::cout << model << ": opset " << info.opset << ", " << net.layers().size() << " layers parsed; plan "
              << out << "\n";
  } catch (const kiln::Error& e) {
    std::cerr << "kiln_onnx_to_plan: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
