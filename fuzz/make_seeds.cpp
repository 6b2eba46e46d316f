// Writes the seed corpus of every fuzz target (tools/fuzz.sh runs it before fuzzing), so that no
// binary blob is committed and the seeds follow the current plan format:
//   <dir>/plan/               plans of small networks built for the reference backend
//   <dir>/safetensors/        safetensors files with every dtype, metadata and empty tensors
//   <dir>/pointwise_program/  fused_pointwise programs in the target's encoding
//   <dir>/network/            Network-building call streams in the target's encoding
//   <dir>/plan.dict, <dir>/pointwise_program.dict   libFuzzer dictionaries: the op, attribute
//                             and value names of the registry and fuzz::kNames, the program syntax
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

#include "core/builder.h"
#include "core/plan.h"
#include "fuzz/fuzz_util.h"
#include "ir/error.h"
#include "ir/network.h"
#include "ir/op_schema.h"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

TensorId constant(Network& net, const std::string& name, DataType dtype, const Dims& dims,
                  float start = 0.1f) {
  std::vector<uint8_t> bytes(static_cast<size_t>(tensor_bytes(dims, dtype_size(dtype))));
  const int64_t n = volume(dims);
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* p = bytes.data() + i * static_cast<int64_t>(dtype_size(dtype));
    if (dtype == DataType::kFloat32) {
      float v = start * static_cast<float>(i % 7 - 3);
      std::memcpy(p, &v, 4);
    } else if (dtype == DataType::kInt64) {
      int64_t v = i % 2;
      std::memcpy(p, &v, 8);
    } else if (dtype == DataType::kInt32) {
      int32_t v = static_cast<int32_t>(i % 2);
      std::memcpy(p, &v, 4);
    }
  }
  return net.add_constant(name, dtype, dims, bytes.data(), bytes.size());
}

TensorId layer(Network& net, const std::string& op, const std::vector<TensorId>& in, Attributes a = {}) {
  return net.add_layer(op, in, std::move(a)).outputs[0];
}

// Small networks covering the op families; each becomes one plan seed.
std::vector<std::pair<std::string, std::function<void(Network&, BuilderConfig&)>>> networks() {
  using P = std::function<void(Network&, BuilderConfig&)>;
  return {
      {"mlp", P([](Network& net, BuilderConfig& c) {
         TensorId x = net.add_input("x", DataType::kFloat32, {-1, 6});
         TensorId y = net.add_matmul(x, constant(net, "w", DataType::kFloat32, {6, 4})).outputs[0];
         y = net.add_elementwise(y, constant(net, "b", DataType::kFloat32, {4}), "add").outputs[0];
         y = net.add_activation(y, "leaky_relu", 0.1).outputs[0];
         net.mark_output(y, "y");
         c.profiles.push_back({{{"x", {{1, 6}, {2, 6}, {3, 6}}}}});
       })},
      {"conv", P([](Network& net, BuilderConfig&) {
         TensorId x = net.add_input("x", DataType::kFloat32, {1, 2, 6, 6});
         TensorId y = layer(net, "convolution",
                            {x, constant(net, "w", DataType::kFloat32, {4, 2, 3, 3}),
                             constant(net, "b", DataType::kFloat32, {4})},
                            Attributes().set("pads", std::vector<int64_t>{1, 1}));
         y = layer(
             net, "batch_norm",
             {y, constant(net, "s", DataType::kFloat32, {4}), constant(net, "bb", DataType::kFloat32, {4}),
              constant(net, "m", DataType::kFloat32, {4}), constant(net, "v", DataType::kFloat32, {4}, 1.f)});
         y = net.add_activation(y, "relu").outputs[0];
         y = layer(net, "pooling", {y},
                   Attributes().set("type", std::string("max")).set("kernel", std::vector<int64_t>{2, 2}));
         y = layer(net, "flatten", {y}, Attributes().set("start_dim", int64_t{1}));
         y = layer(net, "softmax", {y});
         net.mark_output(y, "y");
       })},
      {"attention", P([](Network& net, BuilderConfig&) {
         TensorId q = net.add_input("q", DataType::kFloat32, {1, 2, 4, 8});
         TensorId k = net.add_input("k", DataType::kFloat32, {1, 2, 4, 8});
         TensorId v = net.add_input("v", DataType::kFloat32, {1, 2, 4, 8});
         TensorId y = layer(net, "attention", {q, k, v}, Attributes().set("causal", int64_t{1}));
         y = layer(net, "layer_norm", {y});
         net.mark_output(y, "y");
       })},
      {"shapes", P([](Network& net, BuilderConfig& c) {
         TensorId x = net.add_input("x", DataType::kFloat32, {-1, 6});
         TensorId s = layer(net, "shape", {x});
         TensorId b = layer(net, "gather", {s, constant(net, "i0", DataType::kInt64, {1})});
         const int64_t six_value = 6;
         TensorId six = net.add_constant("six", DataType::kInt64, {1}, &six_value, sizeof(six_value));
         TensorId shape = layer(net, "concat", {b, six});
         TensorId y = layer(net, "reshape", {x, shape});
         y = layer(net, "reduce", {y},
                   Attributes().set("op", std::string("sum")).set("axes", std::vector<int64_t>{-1}));
         y = layer(net, "unsqueeze", {y}, Attributes().set("axes", std::vector<int64_t>{0}));
         net.mark_output(y, "y");
         c.profiles.push_back({{{"x", {{1, 6}, {2, 6}, {4, 6}}}}});
       })},
      {"pointwise", P([](Network& net, BuilderConfig&) {
         TensorId a = net.add_input("a", DataType::kFloat32, {2, 3});
         TensorId b = net.add_input("b", DataType::kFloat32, {1, 3});
         TensorId y = net.add_elementwise(a, b, "mul").outputs[0];
         y = net.add_activation(y, "sigmoid").outputs[0];
         TensorId m = net.add_elementwise(y, b, "gt").outputs[0];
         y = layer(net, "where", {m, y, a});
         y = layer(net, "cast", {y}, Attributes().set("to", std::string("int32")));
         net.mark_output(y, "y");
       })},
      {"indexing", P([](Network& net, BuilderConfig&) {
         TensorId ids = net.add_input("ids", DataType::kInt64, {2, 3});
         TensorId y = layer(net, "embedding", {constant(net, "table", DataType::kFloat32, {5, 4}), ids});
         y = layer(net, "slice", {y},
                   Attributes()
                       .set("axes", std::vector<int64_t>{2})
                       .set("starts", std::vector<int64_t>{1})
                       .set("ends", std::vector<int64_t>{3}));
         y = layer(net, "pad", {y}, Attributes().set("pads", std::vector<int64_t>{1, 1}));
         y = layer(net, "cumsum", {y}, Attributes().set("axis", int64_t{1}));
         Layer& top = net.add_layer("topk", {y}, Attributes().set("k", int64_t{2}));
         net.mark_output(top.outputs[0], "values");
         net.mark_output(top.outputs[1], "indices");
       })},
      {"generate", P([](Network& net, BuilderConfig&) {
         TensorId x = net.add_input("x", DataType::kFloat32, {1, 1, 2, 2});
         TensorId y =
             layer(net, "resize", {x},
                   Attributes().set("mode", std::string("nearest")).set("scales", std::vector<double>{2, 2}));
         TensorId r = layer(net, "arange", {},
                            Attributes().set("end", int64_t{4}).set("dtype", std::string("float32")));
         y = net.add_elementwise(y, r, "add").outputs[0];
         net.mark_output(y, "y");
       })},
  };
}

void write_plans(const fs::path& dir) {
  for (const auto& [name, make] : networks()) {
    try {
      Network net;
      BuilderConfig config;
      config.target = BuildTarget::kReference;
      make(net, config);
      write(dir, name, Builder().build(net, config).serialize());
    } catch (const Error& e) {
      std::cerr << "fuzz_make_seeds: plan seed '" << name << "' not written: " << e.what() << "\n";
    }
  }
}

std::vector<uint8_t> safetensors_file(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8);
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_safetensors(const fs::path& dir) {
  write(dir, "one",
        safetensors_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})",
                         std::vector<uint8_t>(16, 0x3f)));
  write(dir, "dtypes",
        safetensors_file(
            R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},)"
            R"("b":{"dtype":"BF16","shape":[1,1],"data_offsets":[6,8]},)"
            R"("c":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},)"
            R"("d":{"dtype":"I32","shape":[],"data_offsets":[24,28]},)"
            R"("e\u00e9\"q":{"dtype":"BOOL","shape":[4],"data_offsets":[28,32]},)"
            R"("f":{"dtype":"I8","shape":[0,3],"data_offsets":[32,32]}})",
            std::vector<uint8_t>(32, 1)));
  write(dir, "empty", safetensors_file("{}", {}));
  write(dir, "spaces",
        safetensors_file("{ \"x\" : { \"shape\" : [ 1 ] , \"dtype\" : \"F32\" , "
                         "\"data_offsets\" : [ 0 , 4 ] } }   ",
                         std::vector<uint8_t>(4, 0)));
}

// fuzz/pointwise_program.cpp's encoding: input count - 1, (dtype, shape) per input, output count
// - 1, one register per output, flags (bit 0: constant inputs), the program text.
void write_programs(const fs::path& dir) {
  struct Seed {
    std::vector<std::pair<DataType, int>> inputs;  // dtype, index into the target's shapes
    std::vector<int8_t> outputs;
    std::string program;
  };
  const Seed seeds[] = {
      {{{DataType::kFloat32, 0}, {DataType::kFloat32, 1}},
       {3},
       "input 0 float32; input 1 float32; elementwise add %0 %1; activation relu 0 0 0 %2"},
      {{{DataType::kFloat32, 0}},
       {4, 2},
       "input 0 float32; const float32 0.5; elementwise mul %0 %1; unary exp %2; cast int32 %3"},
      {{{DataType::kBool, 2}, {DataType::kFloat32, 0}, {DataType::kFloat32, 3}},
       {3},
       "input 0 bool; input 1 float32; input 2 float32; where %0 %1 %2"},
      {{{DataType::kFloat16, 0}},
       {3},
       "input 0 float16; cast float32 %0; activation gelu 0 0 0 %1; cast float16 %2"},
      {{{DataType::kBFloat16, 4}},
       {2},
       "input 0 bfloat16; const bfloat16 -1.5; elementwise max %0 %1; activation clip -1 1 20 %2"},
      {{{DataType::kInt32, 0}},
       {2, 3},
       "input 0 int32; const int32 3; elementwise floor_div %0 %1; elementwise pow %0 %1; "
       "elementwise eq %2 %3"},
      {{{DataType::kFloat32, 0}},
       {1},
       "input 0 float32; activation softplus 1 1 20 %0; unary sign %1; unary not %0"},
  };
  int n = 0;
  for (const Seed& s : seeds) {
    for (uint8_t flags : {0, 1, 7}) {
      std::vector<uint8_t> b{static_cast<uint8_t>(s.inputs.size() - 1)};
      for (const auto& [dtype, shape] : s.inputs) {
        b.push_back(static_cast<uint8_t>(dtype));
        b.push_back(static_cast<uint8_t>(shape));
      }
      b.push_back(static_cast<uint8_t>(s.outputs.size() - 1));
      for (int8_t o : s.outputs) b.push_back(static_cast<uint8_t>(o));
      b.push_back(flags);
      b.insert(b.end(), s.program.begin(), s.program.end());
      write(dir, "seed" + std::to_string(n++), b);
    }
  }
}

// fuzz/network.cpp's encoding, per call: the call (0 input, 1 constant, 2 layer, 3 output), then
// its choices. One stream per op: a float32 [2, 3] input, a float32 [3] constant, an int64 [2]
// constant, one layer of the op on the first tensors, that layer's output marked.
void write_networks(const fs::path& dir) {
  std::vector<std::string> ops = registered_ops();
  std::sort(ops.begin(), ops.end());
  for (size_t i = 0; i < ops.size(); ++i) {
    const OpSchema* schema = find_schema(ops[i]);
    std::vector<uint8_t> b = {0,
                              2,
                              2,
                              3,
                              static_cast<uint8_t>(DataType::kFloat32),  // input [2, 3]
                              1,
                              static_cast<uint8_t>(DataType::kFloat32),
                              1,
                              3,
                              0,  // constant [3]
                              1,
                              static_cast<uint8_t>(DataType::kInt64),
                              1,
                              2,
                              0,  // constant [2]
                              2,
                              static_cast<uint8_t>(i)};
    const int lo = std::max(schema->min_inputs, 0);
    const int hi = std::min(std::max(schema->max_inputs, 0), lo + 4);
    if (hi > lo) b.push_back(0);  // no optional inputs
    for (int k = 0; k < lo; ++k) b.push_back(static_cast<uint8_t>(k % 3));
    b.push_back(0);                // no attributes
    b.insert(b.end(), {3, 3, 1});  // mark tensor 3 (the layer's first output) as an output
    write(dir, ops[i], b);
  }
}

// One libFuzzer dictionary entry per token: "token", with quotes, backslashes and other bytes
// outside printable ASCII escaped as \xNN.
void write_dict(const fs::path& path, const std::vector<std::string>& tokens) {
  std::ofstream out(path);
  for (const std::string& t : tokens) {
    if (t.empty()) continue;
    out << '"';
    for (unsigned char c : t) {
      if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\x%02x", c);
        out << buf;
      } else {
        out << c;
      }
    }
    out << "\"\n";
  }
}

void write_dicts(const fs::path& root) {
  std::vector<std::string> names(std::begin(fuzz::kNames), std::end(fuzz::kNames));
  std::vector<std::string> plan = names;
  plan.push_back("KILNPLAN");
  for (const std::string& op : registered_ops()) {
    plan.push_back(op);
    for (const AttrSpec& a : find_schema(op)->attributes) plan.push_back(a.name);
  }
  std::sort(plan.begin(), plan.end());
  plan.erase(std::unique(plan.begin(), plan.end()), plan.end());
  write_dict(root / "plan.dict", plan);
  std::vector<std::string> program = names;
  for (const char* t : {"input ", "const ", "elementwise ", "activation ", "unary ", "cast ", "where ", "%0",
                        "%1", "%2", "%3", "; ", " 0 0 0 ", "nan", "inf", "-inf", "1e30", "0x1p-3"}) {
    program.push_back(t);
  }
  write_dict(root / "pointwise_program.dict", program);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_make_seeds <corpus dir>\n";
    return 2;
  }
  const fs::path root = argv[1];
  write_plans(root / "plan");
  write_safetensors(root / "safetensors");
  write_programs(root / "pointwise_program");
  write_networks(root / "network");
  write_dicts(root);
  return 0;
}
