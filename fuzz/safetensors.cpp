// Fuzz target: the safetensors reader (core/safetensors.h). Every tensor it returns must hold
// exactly the bytes its dtype and shape say, and must be accepted by Network::add_constant.
// Seeds: files written by fuzz_make_seeds.
#include "core/safetensors.h"

#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto tensors = kiln::parse_safetensors(data, size);
    kiln::Network net;
    for (const auto& [name, t] : tensors) {
      if (!t.data ||
          static_cast<int64_t>(t.data->size()) != kiln::tensor_bytes(t.dims, kiln::dtype_size(t.dtype))) {
        __builtin_trap();  // the reader returned a tensor whose bytes do not match its shape
      }
      net.add_constant(name, t.dtype, t.dims, t.data);
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
