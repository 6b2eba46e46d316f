// The ABI-safe bridge to Python (and any TorchScript user): the op
//   kiln::compile_torchscript(str in_path, str out_path, str spec) -> str report_json
// loads the module saved at in_path, compiles it and saves the result to out_path (nothing is
// written with dry_run). No torch type crosses a language boundary: Python saves, calls, loads.
//
// spec: one setting per line, "key value...":
//   input <dtype> <min> <opt> <max>   dims like 1x3x224x224 ("scalar" for rank 0), one line per input
//   precision fp16 | bf16 | tf32 | fp32
//   min_block_size N
//   torch_executed_op aten.gelu.default
//   require_full_compilation 0|1
//   device cuda | cuda:N | cpu
//   workspace_bytes N
//   optimization_level N
//   dry_run 0|1
// Errors raise RuntimeError whose message starts with "KilnError: ".
#include <torch/library.h>
#include <torch/script.h>

#include <sstream>

#include "core/error.h"
#include "torchscript/compile.h"

namespace kiln::torchscript {
namespace {

std::vector<int64_t> parse_dims(const std::string& text) {
  std::vector<int64_t> dims;
  if (text == "scalar") return dims;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, 'x')) {
    try {
      size_t used = 0;
      dims.push_back(std::stoll(part, &used));
      KILN_CHECK(used == part.size(), "");
    } catch (const std::exception&) {
      KILN_FAIL("input shape '" << text << "' is not like 1x3x224x224");
    }
  }
  return dims;
}

int64_t parse_int(const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    int64_t v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  KILN_FAIL(key << " needs an integer, got '" << text << "'");
}

CompileSpec parse_spec(const std::string& text, bool* dry) {
  CompileSpec spec;
  spec.enabled_precisions.clear();
  spec.enabled_precisions.insert(Precision::kFP32);
  std::stringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::stringstream ss(line);
    std::string key;
    if (!(ss >> key)) continue;
    std::vector<std::string> words;
    for (std::string w; ss >> w;) words.push_back(w);
    auto one = [&]() -> const std::string& {
      KILN_CHECK(words.size() == 1, "compile spec: '" << key << "' takes one value, got '" << line << "'");
      return words[0];
    };
    if (key == "input") {
      KILN_CHECK(words.size() == 4, "compile spec: 'input' takes dtype min opt max, got '" << line << "'");
      spec.inputs.push_back(InputSpec::range(parse_dims(words[1]), parse_dims(words[2]), parse_dims(words[3]),
                                             parse_dtype(words[0])));
    } else if (key == "precision") {
      spec.enabled_precisions.insert(parse_precision(one()));
    } else if (key == "min_block_size") {
      spec.min_block_size = parse_int(key, one());
    } else if (key == "torch_executed_op") {
      spec.torch_executed_ops.push_back(one());
    } else if (key == "require_full_compilation") {
      spec.require_full_compilation = parse_int(key, one()) != 0;
    } else if (key == "device") {
      spec.device = one();
    } else if (key == "workspace_bytes") {
      spec.workspace_bytes = static_cast<size_t>(parse_int(key, one()));
    } else if (key == "optimization_level") {
      spec.optimization_level = static_cast<int>(parse_int(key, one()));
    } else if (key == "dry_run") {
      *dry = parse_int(key, one()) != 0;
    } else {
      KILN_FAIL("compile spec: unknown setting '" << key << "'");
    }
  }
  return spec;
}

std::string compile_torchscript(const std::string& in_path, const std::string& out_path,
                                const std::string& spec_text) {
  try {
    bool dry = false;
    CompileSpec spec = parse_spec(spec_text, &dry);
    torch::jit::Module module;
    try {
      module = torch::jit::load(in_path);
    } catch (const c10::Error& e) {
      KILN_FAIL("cannot load TorchScript module " << in_path << ": " << e.what_without_backtrace());
    }
    if (dry) return dry_run(module, spec).to_json();
    CompileReport report;
    torch::jit::Module compiled = compile(module, spec, &report);
    compiled.save(out_path);
    return report.to_json();
  } catch (const kiln::Error& e) {
    TORCH_CHECK(false, "KilnError: ", e.what());
  }
}

}  // namespace
}  // namespace kiln::torchscript

TORCH_LIBRARY_FRAGMENT(kiln, m) {
  m.def("compile_torchscript(str in_path, str out_path, str spec) -> str",
        &kiln::torchscript::compile_torchscript);
}
