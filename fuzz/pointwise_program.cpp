// Fuzz target: the fused_pointwise program parser (parse_pointwise_program, ir/ops/fused_pointwise.h)
// and everything that reads a parsed program: its formatter (which must round-trip), the schema's
// validation when the layer is added to a network, the builder, and the reference interpreter
// (kernels/reference/fused_pointwise.cpp), run at build time by fold_constants when the layer's
// inputs are constants and at run time otherwise.
//
// Input: 1 byte input count, then per input a dtype byte and a shape byte; 1 byte output count,
// then one signed byte per output register; 1 byte of flags; the rest is the program text.
// Seeds: valid programs written by fuzz_make_seeds; dictionary pointwise_program.dict.
#include "core/builder.h"
#include "fuzz/fuzz_util.h"
#include "ir/op_schema.h"
#include "ir/ops/fused_pointwise.h"

using namespace kiln;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  static const Dims kShapes[] = {{2, 3}, {1, 3}, {2, 1}, {}, {3}};
  const int num_inputs = 1 + static_cast<int>(r.pick(3));
  std::vector<std::pair<DataType, Dims>> inputs;
  for (int i = 0; i < num_inputs; ++i) {
    DataType dtype = static_cast<DataType>(r.pick(kNumDataTypes));
    inputs.push_back({dtype, kShapes[r.pick(std::size(kShapes))]});
  }
  std::vector<int64_t> outputs;
  for (size_t i = 0, n = 1 + r.pick(3); i < n; ++i) outputs.push_back(static_cast<int8_t>(r.u8()));
  const uint8_t flags = r.u8();
  const bool constant_inputs = flags & 1;
  Layer layer;
  layer.name = "fp";
  layer.op = "fused_pointwise";
  layer.attrs.set("program", r.bytes(r.left())).set("outputs", outputs);
  try {
    PointwiseProgram program = parse_pointwise_program(layer);
    // The formatted program must parse back to itself.
    Layer again = layer;
    const std::string text = format_pointwise_program(program.code);
    again.attrs.set("program", text);
    if (format_pointwise_program(parse_pointwise_program(again).code) != text) __builtin_trap();

    Network net;
    std::vector<TensorId> ids;
    for (int i = 0; i < num_inputs; ++i) {
      const auto& [dtype, dims] = inputs[i];
      const std::string name = "x" + std::to_string(i);
      if (constant_inputs) {
        auto bytes = std::make_shared<const std::vector<uint8_t>>(
            fuzz::pattern_bytes(dtype, volume(dims), static_cast<uint8_t>(flags >> 1) + i));
        ids.push_back(net.add_constant(name, dtype, dims, bytes));
      } else {
        ids.push_back(net.add_input(name, dtype, dims));
      }
    }
    Layer& added = net.add_layer("fused_pointwise", ids, layer.attrs, "fp");
    const std::vector<TensorId> outs = added.outputs;
    for (size_t i = 0; i < outs.size(); ++i) net.mark_output(outs[i], "y" + std::to_string(i));
    BuilderConfig config;
    config.target = BuildTarget::kReference;
    Plan plan = Builder().build(net, config);
    fuzz::check_round_trip(plan);
    fuzz::run_plan_if_small(std::move(plan));
  } catch (const Error&) {
  }
  return 0;
}
