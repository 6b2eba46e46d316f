// Fuzz target: network construction from a byte stream. The bytes are read as a sequence of
// Network-building calls: add an input (dtype, dims, some dynamic with a profile range), add a
// constant (dtype, dims, data), add a layer (an op picked from the schema registry, inputs
// picked from the tensors so far, attributes picked from the op's schema with values of the
// declared type or, sometimes, of another type or under an unknown name), mark an output. A
// refused call must leave the network usable. Then the network is built for the reference
// backend, its plan round-tripped, and the engine run when it is small (fuzz_util.h).
// Seeds: streams written by fuzz_make_seeds; dictionary network.dict.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/builder.h"
#include "fuzz/fuzz_util.h"
#include "ir/op_schema.h"

using namespace kiln;

namespace {

// Names that no schema declares, to check that unknown attributes are handled.
const char* const kUnknownNames[] = {"transpose_B", "axis_", "bogus"};

int64_t pick_int(fuzz::Reader& r) {
  static const int64_t kInts[] = {0,
                                  1,
                                  2,
                                  3,
                                  4,
                                  -1,
                                  -2,
                                  8,
                                  5,
                                  6,
                                  int64_t{1} << 31,
                                  -(int64_t{1} << 31),
                                  int64_t{1} << 62,
                                  std::numeric_limits<int64_t>::max(),
                                  std::numeric_limits<int64_t>::min()};
  size_t k = r.pick(std::size(kInts) + 1);
  return k < std::size(kInts) ? kInts[k] : r.raw<int64_t>();
}

double pick_float(fuzz::Reader& r) {
  static const double kFloats[] = {0.0,  1.0,  -1.0,  0.5,      1e-5,      2.0, 20.0,
                                   -0.0, 1e30, -1e30, INFINITY, -INFINITY, NAN};
  size_t k = r.pick(std::size(kFloats) + 1);
  return k < std::size(kFloats) ? kFloats[k] : r.raw<double>();
}

AttrValue pick_value(fuzz::Reader& r, AttrType type) {
  switch (type) {
    case AttrType::kInt:
      return pick_int(r);
    case AttrType::kFloat:
      return pick_float(r);
    case AttrType::kInts: {
      std::vector<int64_t> v(r.pick(5));
      for (auto& x : v) x = pick_int(r);
      return v;
    }
    case AttrType::kFloats: {
      std::vector<double> v(r.pick(5));
      for (auto& x : v) x = pick_float(r);
      return v;
    }
    case AttrType::kString:
      break;
  }
  size_t k = r.pick(std::size(fuzz::kNames) + 1);
  return k < std::size(fuzz::kNames) ? std::string(fuzz::kNames[k]) : r.bytes(r.pick(9));
}

DataType pick_dtype(fuzz::Reader& r) { return static_cast<DataType>(r.pick(kNumDataTypes)); }

Dims pick_dims(fuzz::Reader& r, int max_rank, bool allow_dynamic) {
  Dims d(r.pick(max_rank + 1));
  for (auto& x : d) {
    uint8_t b = r.u8();
    x = allow_dynamic && b % 8 == 7 ? kDynamic : b % 5;  // 0..4, some zero-size
  }
  return d;
}

constexpr int kMaxCalls = 24;
constexpr size_t kMaxLayerInputs = 4;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::string> kOps = [] {
    std::vector<std::string> ops = registered_ops();
    std::sort(ops.begin(), ops.end());  // a stable numbering for the corpus
    return ops;
  }();
  fuzz::Reader r(data, size);
  Network net;
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  // Folding is exercised on small constants; a fill of 64 MiB folded, serialized and
  // checksummed per execution would make this target ten times slower and test nothing more.
  config.max_folded_constant_bytes = int64_t{1} << 20;
  config.profiles.emplace_back();
  std::vector<TensorId> tensors;
  for (int call = 0; call < kMaxCalls && !r.empty(); ++call) {
    try {
      switch (r.pick(4)) {
        case 0: {  // an input; a dynamic dim gets the range [1, 1..4]
          const std::string name = "in" + std::to_string(call);
          Dims dims = pick_dims(r, 4, true);
          TensorId id = net.add_input(name, pick_dtype(r), dims);
          tensors.push_back(id);
          if (!is_static(dims)) {
            ShapeRange range{dims, dims, dims};
            for (size_t i = 0; i < dims.size(); ++i) {
              if (dims[i] != kDynamic) continue;
              range.min[i] = 1;
              range.max[i] = 1 + static_cast<int64_t>(r.pick(4));
              range.opt[i] = range.max[i];
            }
            config.profiles[0].inputs[name] = range;
          }
          break;
        }
        case 1: {  // a constant: patterned values, or raw bytes from the input when it has them
          DataType dtype = pick_dtype(r);
          Dims dims = pick_dims(r, 3, false);
          const uint8_t how = r.u8();
          const int64_t bytes = tensor_bytes(dims, dtype_size(dtype));
          std::vector<uint8_t> v;
          if (how % 2 && static_cast<int64_t>(r.left()) >= bytes) {
            std::string s = r.bytes(static_cast<size_t>(bytes));
            v.assign(s.begin(), s.end());
          } else {
            v = fuzz::pattern_bytes(dtype, volume(dims), how >> 1);
          }
          tensors.push_back(net.add_constant("c" + std::to_string(call), dtype, dims, v.data(), v.size()));
          break;
        }
        case 2: {  // a layer of any registered op
          const std::string& op = kOps[r.pick(kOps.size())];
          const OpSchema* schema = find_schema(op);
          if (tensors.empty() || !schema) break;
          const size_t lo = static_cast<size_t>(std::max(schema->min_inputs, 0));
          const size_t hi =
              std::min(static_cast<size_t>(std::max(schema->max_inputs, 0)), lo + kMaxLayerInputs);
          std::vector<TensorId> inputs(lo + (hi > lo ? r.pick(hi - lo + 1) : 0));
          for (auto& t : inputs) t = tensors[r.pick(tensors.size())];
          Attributes attrs;
          for (size_t i = 0, n = r.pick(schema->attributes.size() + 2); i < n; ++i) {
            const uint8_t how = r.u8();
            if (how % 16 == 15 || schema->attributes.empty()) {  // an unknown name
              attrs.set(kUnknownNames[how % std::size(kUnknownNames)], pick_value(r, AttrType::kInt));
              continue;
            }
            const AttrSpec& spec = schema->attributes[r.pick(schema->attributes.size())];
            // Mostly the declared type; sometimes another one.
            AttrType type = how % 8 == 7 ? static_cast<AttrType>(r.pick(5)) : spec.type;
            attrs.set(spec.name, pick_value(r, type));
          }
          Layer& layer = net.add_layer(op, inputs, attrs);
          for (TensorId t : layer.outputs) tensors.push_back(t);
          break;
        }
        case 3: {  // an output, sometimes renamed
          if (tensors.empty()) break;
          TensorId t = tensors[r.pick(tensors.size())];
          net.mark_output(t, r.u8() % 2 ? "out" + std::to_string(call) : "");
          break;
        }
      }
    } catch (const Error&) {
      // a refused call; the network must stay usable for the calls that follow
    }
  }
  try {
    if (net.outputs().empty() && !tensors.empty()) net.mark_output(tensors.back(), "y");
    if (config.profiles[0].inputs.empty()) config.profiles.clear();
    Plan plan = Builder().build(net, config);
    fuzz::check_round_trip(plan);
    fuzz::run_plan_if_small(std::move(plan));
  } catch (const Error&) {
  }
  return 0;
}
