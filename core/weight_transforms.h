// Weight transforms: the computations that builder passes apply to constants (BatchNorm folding,
// transposes, dtype conversion, channels-last permutation, concatenation, ...), each registered
// by name so that refit (core/refit.h) replays exactly the code the build ran. A pass that
// derives a constant from constants calls add_derived_constant (or records derived_lineage for a
// value it computed through a layer's reference kernel); the result's lineage (ir/lineage.h) then
// names the transform, its attributes and its inputs' lineages.
//
// Transforms (inputs -> result; attributes):
//   reshape         x -> the same bytes with dims `dims`
//   transpose2d     [k, n] -> [n, k]
//   convert         x -> x as dtype `dtype` (store_element's rounding)
//   nhwc            rank <= 4 x, padded with leading ones to rank 4 -> NCHW permuted to NHWC
//   pad_channels    [.., c] -> [.., `channels`] (zeros after c)
//   concat_rows     [r_i, ...] (same trailing dims) -> [sum r_i, ...]
//   bn_fold_weight  w, gamma, beta, mean, var -> w * s[out channel] (`eps`, `producer`, `groups`)
//   bn_fold_bias    gamma, beta, mean, var[, b] -> (b * s) + shift, in dtype `dtype` (`eps`); with
//                   `input_mean` ("relu" or "linear"; `producer`, `groups`), three more inputs w,
//                   gamma', beta' (the batch norm before the convolution): less the average of
//                   what rounding w * s to w's dtype adds, over an input of mean beta' (or that of
//                   relu(N(beta', gamma'^2)))
//   bn_scale        gamma, beta, mean, var -> s with dims `dims`, dtype `dtype` (`eps`)
//   bn_shift        gamma, beta, mean, var -> beta - mean * s, likewise
//   layer           the reference kernel of op `Lineage::name` (its attributes), output `output`
// with s = gamma / sqrt(var + eps), shift = beta - mean * s (in double, as fold_batch_norm).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ir/lineage.h"
#include "ir/network.h"

namespace kiln {

using Bytes = std::shared_ptr<const std::vector<uint8_t>>;

// A constant's value: its bytes owned (`data`), or borrowed from the caller, who keeps them alive
// for the call (a refit reads a framework's weight tensors in place instead of copying them).
// Transforms read through bytes() and size(); owned() gives bytes a plan may keep.
struct ConstantValue {
  DataType dtype = DataType::kFloat32;
  Dims dims;
  Bytes data;
  const uint8_t* borrowed = nullptr;
  size_t borrowed_size = 0;

  const uint8_t* bytes() const { return data ? data->data() : borrowed; }
  size_t size() const { return data ? data->size() : borrowed_size; }
  bool has_bytes() const { return data || borrowed; }
  Bytes owned() const {
    return data ? data : std::make_shared<const std::vector<uint8_t>>(borrowed, borrowed + borrowed_size);
  }
};

// True for the name of a registered transform.
bool is_weight_transform(const std::string& transform);

// Computes transform `node` (its transform, name, attributes and output) over `inputs`.
ConstantValue apply_weight_transform(const Lineage& node, const std::vector<ConstantValue>& inputs);

// transform(inputs) over constant tensors, with the result's lineage (nullptr when no input derives
// from a refittable weight). For passes that write the result into another network.
struct DerivedConstant {
  ConstantValue value;
  LineagePtr lineage;
};
DerivedConstant derive_constant(const std::string& transform, const Attributes& attrs,
                                const std::vector<const Tensor*>& inputs);

// Adds constant `name` = transform(inputs) to `net` and records its lineage when an input derives
// from a refittable weight. Inputs must be constants.
TensorId add_derived_constant(Network& net, const std::string& name, const std::string& transform,
                              const Attributes& attrs, const std::vector<TensorId>& inputs);

// The lineage of a value (dtype, dims) that `transform` (`name`, `attrs`, `output`) computed from
// the constants `inputs`; nullptr when none of them derives from a refittable weight.
LineagePtr derived_lineage(const Network& net, const std::string& transform, const std::string& name,
                           const Attributes& attrs, int64_t output, const std::vector<TensorId>& inputs,
                           DataType dtype, const Dims& dims);

// The lineage of a constant whose value a pass folded into the engine's structure or attributes
// (so refit cannot replay it): nullptr when no input derives from a weight. It holds only the
// weights ("source" nodes) its inputs derive from, which refit names when it refuses.
LineagePtr blocked_lineage(const Network& net, const std::vector<TensorId>& inputs, const std::string& why,
                           DataType dtype, const Dims& dims);

// True when constant `t` derives from a refittable weight (its value may change at refit): passes
// that read constant values to decide structure (inline a scalar, drop a mask, merge equal
// constants) leave such constants alone.
inline bool derives_from_weight(const Tensor& t) { return t.lineage != nullptr; }

// float32 -> float16 bits of n elements, each exactly float_to_half_bits (kernels/reference/
// host_access.h), vectorized where the CPU has F16C: the "convert" transform's loop.
void floats_to_halves(const float* src, uint16_t* dst, int64_t n);
// dst[i] = float16(float(double(src[i]) * s)) over float16 bits (bn_fold_weight of a 16-bit
// weight); with `vectorized`, 8 at a time where the CPU has F16C (the same bits either way).
void scale_halves(const uint16_t* src, double s, uint16_t* dst, int64_t n, bool vectorized = true);

}  // namespace kiln
