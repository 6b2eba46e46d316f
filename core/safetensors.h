// Reads weights from a safetensors file (the format PyTorch state_dicts are commonly saved in:
// `safetensors.torch.save_file(model.state_dict(), path)`): an 8-byte little-endian header
// length, a JSON header {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}, then
// the raw row-major tensor bytes. Torch-free, so C++ apps can load a state_dict into a Network.
// A truncated or malformed file, an unsupported dtype, or overlapping/out-of-range offsets give a
// kiln::Error naming the file and the problem.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ir/dims.h"
#include "ir/dtype.h"

namespace kiln {

struct WeightTensor {
  DataType dtype = DataType::kFloat32;
  Dims dims;
  std::shared_ptr<const std::vector<uint8_t>> data;  // ready for Network::add_constant
};

std::map<std::string, WeightTensor> load_safetensors(const std::string& path);
std::map<std::string, WeightTensor> parse_safetensors(const uint8_t* bytes, size_t size,
                                                      const std::string& what = "safetensors data");

}  // namespace kiln
