// kiln_compile_ts: compiles a TorchScript module with Kiln's C++ API and saves the result.
//
//   kiln_compile_ts IN.ts OUT.ts MIN OPT MAX [cpu|cuda] [MIN_BLOCK_SIZE]
//
// MIN/OPT/MAX: the shape range of the single float32 input, like 1x3x16x16. The output loads
// with torch::jit::load in any app linking Kiln::runtime (examples/cpp) and in Python after
// `import kiln`.
#include <torch/script.h>
#include <torchscript/compile.h>

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> dims(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  for (std::string part; std::getline(ss, part, 'x');) out.push_back(std::stoll(part));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6 || argc > 8) {
    std::cerr << "usage: " << argv[0] << " IN.ts OUT.ts MIN OPT MAX [cpu|cuda] [MIN_BLOCK_SIZE]\n";
    return 2;
  }
  try {
    kiln::torchscript::CompileSpec spec;
    spec.inputs = {kiln::torchscript::InputSpec::range(dims(argv[3]), dims(argv[4]), dims(argv[5]))};
    spec.device = argc > 6 ? argv[6] : "cpu";
    if (argc > 7) spec.min_block_size = std::stoll(argv[7]);
    kiln::torchscript::CompileReport report;
    torch::jit::Module compiled = kiln::torchscript::compile(torch::jit::load(argv[1]), spec, &report);
    compiled.save(argv[2]);
    std::cout << report.text;
  } catch (const std::exception& e) {
    std::cerr << "kiln_compile_ts: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
