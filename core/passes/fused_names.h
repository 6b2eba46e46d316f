// The "fused" layer attribute: the original layer names a fused layer computes, comma-separated,
// shown by plan inspection. Every fusion pass records what it absorbed through these helpers, and
// names the layers it adds with unique_name and the tensors with add_pass_tensor.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

// The original layers `l` stands for: its "fused" list, or its own name when nothing was fused.
inline std::string fused_names(const Layer& l) {
  return l.attrs.has("fused") ? l.attrs.get_string("fused", l.name) : l.name;
}

// Records that `l` now also computes layer `absorbed`.
inline void add_fused_name(Layer& l, const std::string& absorbed) {
  l.attrs.set("fused", fused_names(l) + "," + absorbed);
}

// Every layer and tensor name of `net`: the `used` set for unique_name where a pass's new layers
// must not take a tensor's name either (layer names double as output tensor names).
inline std::set<std::string> names_in_use(const Network& net) {
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);
  for (const auto& t : net.tensors()) names.insert(t.name);
  return names;
}

// How many times layers read each tensor (a layer reading one twice counts twice); network outputs
// are not counted.
inline std::vector<int> reader_counts(const Network& net) {
  std::vector<int> readers(net.tensors().size(), 0);
  for (const auto& l : net.layers()) {
    for (TensorId t : l.inputs) ++readers[static_cast<size_t>(t)];
  }
  return readers;
}

// `base`, or `base_1`, `base_2`, ... : the first name not in `used` (which then holds it). Passes
// that add layers name them so.
inline std::string unique_name(std::set<std::string>& used, const std::string& base) {
  std::string name = base;
  for (int i = 1; used.count(name); ++i) name = base + "_" + std::to_string(i);
  used.insert(name);
  return name;
}

// `base`, or `base_1`, `base_2`, ...: the first tensor name the network does not hold (for a
// constant a pass derives with add_derived_constant).
inline std::string unique_tensor_name(const Network& net, const std::string& base) {
  std::string name = base;
  for (int i = 1; net.find_tensor(name) >= 0; ++i) name = base + "_" + std::to_string(i);
  return name;
}

// A new tensor of `dtype` and `dims` for a pass to write: named `base`, or `base1`, `base2`, ...,
// the first name the network does not hold.
inline TensorId add_pass_tensor(Network& net, const std::string& base, DataType dtype, const Dims& dims) {
  Tensor t;
  t.name = base;
  for (int n = 1; net.find_tensor(t.name) >= 0; ++n) t.name = base + std::to_string(n);
  t.dtype = dtype;
  t.dims = dims;
  return net.restore_tensor(t);
}

// Rewrites the layer list of a pass that replaced layers in place: layer i becomes the layers
// replacement[i] (moved out) when that is not empty, is left out when dropped[i], stays otherwise;
// then the network is compacted. The passes build the replacements at the end of the layer list
// (add_layer) and move them into `replacement` before calling this.
inline void splice_replacements(Network& net, std::vector<std::vector<Layer>>& replacement,
                                const std::vector<bool>& dropped) {
  auto& layers = net.mutable_layers();
  std::vector<Layer> kept;
  for (size_t i = 0; i < replacement.size(); ++i) {
    if (dropped[i]) continue;
    if (replacement[i].empty()) {
      kept.push_back(std::move(layers[i]));
    } else {
      for (auto& r : replacement[i]) kept.push_back(std::move(r));
    }
  }
  layers = std::move(kept);
  net.compact();
}

}  // namespace kiln
