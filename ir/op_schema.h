// The op registry: one OpSchema per IR op — the single definition of the op. It holds the
// op's input count, its typed attributes with their defaults, its traits (what passes may
// assume of it), and the function that validates a layer and infers its outputs. Validation
// errors name the layer. Called with dynamic dims (-1) at build time and with concrete dims at
// run time, so a schema must accept both.
//
// Each op file registers its schemas itself, at load time, with one local entry:
//   const SchemaRegistration kRegistered{{"where", 3, 3, infer_where, {}, kPointwise}};
// There is no central list of ops.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

enum class AttrType : uint8_t { kInt, kFloat, kInts, kFloats, kString };
const char* attr_type_name(AttrType t);

// One attribute of an op: its name, type and default (none: the attribute is required, or
// optional with a meaning when absent that `doc` states).
struct AttrSpec {
  std::string name;
  AttrType type;
  std::optional<AttrValue> default_value;
  std::string doc;
};

// Traits: facts about an op that passes rely on. Passes ask the schema (`has_trait`), they do
// not keep lists of op names.
enum OpTrait : uint32_t {
  kNoTraits = 0,
  // Elementwise over broadcast inputs; fuse_pointwise may merge it into a fused_pointwise kernel.
  kPointwise = 1u << 0,
  // Its output is its input's bytes under another shape (reshape-like); alias_views may make it
  // a view (alias = 1) that runs no kernel.
  kView = 1u << 1,
  // Commutes with a permutation of every operand's dims: assign_layouts keeps it channels last
  // between channels-last layers.
  kLayoutTransparent = 1u << 2,
  // A GEMM or convolution that may run on TF32 tensor cores when BuilderConfig allows TF32.
  kTf32Capable = 1u << 3,
};

struct OpSchema {
  using InferFn = std::function<std::vector<TensorDesc>(const Layer&, const std::vector<TensorDesc>&)>;
  // Floating-point operations of one run (a multiply-add counts 2) for concrete input and output
  // dims; ops without one count an operation per output element (layer_cost()).
  using FlopsFn = std::function<double(const Layer&, const std::vector<TensorDesc>& in,
                                       const std::vector<TensorDesc>& out)>;
  std::string name;
  int min_inputs = 1;
  int max_inputs = 1;
  InferFn infer;
  // Every attribute the op accepts, with its type and default: those a user gives and those the
  // builder sets (tactic, fused, alias, layout, cubin, ...). check_attributes refuses the rest.
  std::vector<AttrSpec> attributes;
  uint32_t traits = kNoTraits;
  FlopsFn flops;  // the GEMM-like ops' own count; empty for the rest

  const AttrSpec* attribute(const std::string& attr) const;  // nullptr when not declared
};

// What one run of a layer costs, for the roofline (kiln.inspect's profile, the benchmark): its
// floating-point operations and the bytes it reads and writes in device memory, counted as every
// input and output once (weights included; a view that runs no kernel costs nothing). A model,
// not a measurement: caches and re-reads are not in it.
struct LayerCost {
  double flops = 0.0, bytes = 0.0;
};

// The cost of `layer` for concrete (static) input and output descriptions.
LayerCost layer_cost(const Layer& layer, const std::vector<TensorDesc>& in,
                     const std::vector<TensorDesc>& out);

// Attributes every op accepts besides its own: engine-wide annotations that no kernel reads.
//   fused (string): the original layer names a layer computes, comma-separated (fusion passes
//                   set it; kiln.inspect shows it); informational, on any layer.
// An op may declare one too (with its own doc), where a builder pass sets it on that op.
const std::vector<AttrSpec>& engine_attributes();

void register_schema(OpSchema schema);
const OpSchema* find_schema(const std::string& op);  // nullptr when unknown
std::vector<std::string> registered_ops();           // the built-in ops (plugins: core/plugin.h)

// Registers an op file's schemas when its library loads (a namespace-scope object per file).
struct SchemaRegistration {
  SchemaRegistration(std::initializer_list<OpSchema> schemas);
};

// True when `op` is registered and has trait `t`.
bool has_trait(const std::string& op, OpTrait t);

// The schema's default of attribute `attr` of `op`; throws when the op declares no such
// attribute or it has no default (a programming error).
double default_float(const std::string& op, const std::string& attr);
int64_t default_int(const std::string& op, const std::string& attr);

// Validates `layer` against its schema and returns its output descriptions.
std::vector<TensorDesc> infer_layer(const Layer& layer, const std::vector<TensorDesc>& inputs);

// Refuses an attribute of `layer` that neither its op's schema declares nor engine_attributes()
// holds (naming the closest declared one and listing them all), a value of another type, and a
// name or string value that is not UTF-8. An int is accepted where a float is declared (and an
// int list for a float list): the getters widen it; a float is never accepted for an int.
// Network::add_layer and Network::revalidate (so plan loading too) call it, and the builder on
// what it built.
void check_attributes(const Layer& layer);

// A short "layer 'fc1' (matmul)" for messages.
std::string describe(const Layer& layer);

// A layer the builder turned into a view of its input (attribute `alias` = 1): no kernel runs,
// its output shares its input's memory (core/plan.h has the rules).
bool is_alias_layer(const Layer& layer);

}  // namespace kiln
