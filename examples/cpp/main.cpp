// kiln_infer: loads a TorchScript module (e.g. a Kiln engine saved from Python), runs it on the
// tensors in a file and writes its outputs to another file.
//
//   kiln_infer MODEL.ts INPUT.pt OUTPUT.pt [cpu|cuda]
//
// INPUT.pt: a tensor, or a tuple/list of tensors (one per forward argument), written by Python's
// torch.save. OUTPUT.pt: the forward result (a tensor or a tuple) on the CPU, for torch.load.
// Inputs go to the given device first (default cpu). The program calls no Kiln function: Kiln's
// engine class and op come from libkiln_runtime.so, which CMake's Kiln::runtime links in.
#include <torch/script.h>
#include <torch/serialize.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<char>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// The forward arguments: one tensor, or each tensor of a tuple/list.
std::vector<torch::jit::IValue> read_inputs(const std::string& path, const torch::Device& device) {
  torch::IValue value = torch::pickle_load(read_file(path));
  std::vector<torch::IValue> items;
  if (value.isTensor()) {
    items.push_back(value);
  } else if (value.isTuple()) {
    items = value.toTupleRef().elements().vec();
  } else if (value.isList()) {
    items = value.toListRef().vec();
  } else {
    throw std::runtime_error(path + " holds a " + value.tagKind() +
                             ", not a tensor or a tuple/list of tensors");
  }
  std::vector<torch::jit::IValue> inputs;
  for (const auto& item : items) {
    if (!item.isTensor()) {
      throw std::runtime_error(path + ": every input must be a tensor, found a " + item.tagKind());
    }
    inputs.emplace_back(item.toTensor().to(device));
  }
  return inputs;
}

// The result with every tensor moved to the CPU (a tensor or a tuple of tensors).
torch::IValue to_cpu(const torch::IValue& value) {
  if (value.isTensor()) return value.toTensor().cpu();
  if (value.isTuple()) {
    std::vector<torch::IValue> items;
    for (const auto& item : value.toTupleRef().elements()) items.push_back(to_cpu(item));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  throw std::runtime_error("the module returned a " + value.tagKind() +
                           "; kiln_infer writes tensors and tuples of tensors");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: " << argv[0] << " MODEL.ts INPUT.pt OUTPUT.pt [cpu|cuda]\n";
    return 2;
  }
  const std::string model_path = argv[1], input_path = argv[2], output_path = argv[3];
  try {
    const torch::Device device(argc == 5 ? argv[4] : "cpu");
    torch::jit::Module module = torch::jit::load(model_path);
    module.eval();
    std::vector<torch::jit::IValue> inputs = read_inputs(input_path, device);
    torch::NoGradGuard no_grad;
    torch::IValue output = to_cpu(module.forward(inputs));
    write_file(output_path, torch::pickle_save(output));
  } catch (const c10::Error& e) {
    std::cerr << "kiln_infer: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kiln_infer: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
