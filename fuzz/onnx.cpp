// Fuzz target: the ONNX parser (onnx_parser/parser.h). Whatever the bytes, parse_bytes returns a
// network or throws kiln::Error; a network it returns must pass revalidation (every layer's
// schema check again). Seeds: the onnx package's node-test models (tools/fuzz.sh writes them).
#include "onnx_parser/parser.h"

#include "ir/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::onnx::ParseOptions options;
    options.base_dir = "/nonexistent-kiln-fuzz";  // external data: a clean error, never a read
    kiln::Network net = kiln::onnx::parse_bytes(data, size, options);
    net.revalidate();
  } catch (const kiln::Error&) {
  }
  return 0;
}
