// Plan: the built engine as data, and its versioned binary format.
//
// Layout: header (magic "KILNPLAN", format version, Kiln / CUDA / cuBLASLt / cuDNN versions, GPU
// architecture, payload length, checksum of header and payload), then the payload as tagged sections
// (network, profiles, memory plan, kernels). Deserialization checks every field it reads and
// then re-validates the network, profiles and memory plan, so a truncated, corrupt or
// mismatched plan ends in a kiln::Error, never a crash or a wrong result.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ir/network.h"
#include "ir/op_schema.h"

namespace kiln {

// 2: word-wise payload checksum (plan_checksum), for fast loads. 3: the checksum covers the header.
// 4: the payload checksum is over 16 MiB blocks, hashed on several threads (plan_payload_checksum).
// Plans of format 3 still load.
constexpr uint32_t kPlanFormatVersion = 4;
constexpr uint32_t kOldestPlanFormatVersion = 3;

struct ShapeRange {
  Dims min, opt, max;
};

// One optimization profile: a range for every input (static inputs may be omitted).
struct OptimizationProfile {
  std::map<std::string, ShapeRange> inputs;
};

// Activation arena: where each activation tensor lives. Inputs, constants and network outputs
// are bound elsewhere and have offset -1.
struct MemoryPlan {
  std::vector<int64_t> offsets;  // per tensor id
  std::vector<int64_t> sizes;    // bytes reserved per tensor id (max over profiles)
  int64_t arena_bytes = 0;
  int64_t workspace_bytes = 0;  // scratch for kernels (cuBLASLt), from BuilderConfig
};

struct PlanHeader {
  uint32_t format_version = kPlanFormatVersion;
  uint32_t kiln_version = 0;  // major*10000 + minor*100 + patch
  uint32_t cuda_version = 0;  // CUDART_VERSION Kiln was built with
  uint32_t cublaslt_version = 0;
  uint32_t cudnn_version = 0;
  uint32_t sm_arch = 0;  // GPU the plan was built for (major*10+minor); 0: reference only
};

// Refuses, by name, a plan built by another Kiln major.minor version or (CUDA plans) against
// another CUDA, cuBLASLt or cuDNN major.minor version than this Kiln's: its kernels and tactic
// choices belong to those versions. Patch versions may differ. `allow_minor_version_mismatch`
// (or KILN_ALLOW_MINOR_VERSION_MISMATCH=1 in the environment) accepts another minor version of
// the same major; a different major version is always refused.
void check_plan_compatibility(const PlanHeader& header, bool cuda, bool allow_minor_version_mismatch = false);

struct Plan {
  PlanHeader header;
  Network network;
  std::vector<OptimizationProfile> profiles;
  MemoryPlan memory;
  std::vector<std::string> kernels;  // chosen implementation per layer (informational)

  // strip_weights: the constants derived from refittable weights are left out (a much smaller
  // plan); an engine needs them refitted in (refit_plan, or the weights at load) before it runs.
  std::vector<uint8_t> serialize(bool strip_weights = false) const;
  // True when some constant has no bytes (saved with strip_weights and not refitted since).
  bool weights_stripped() const;
  // `verify_checksum` = false exists for the fuzz test, to reach the parser behind the checksum.
  static Plan deserialize(const uint8_t* data, size_t size, bool verify_checksum = true);
  static Plan deserialize(const std::vector<uint8_t>& bytes) {
    return deserialize(bytes.data(), bytes.size());
  }
  void save(const std::string& path, bool strip_weights = false) const;
  static Plan load(const std::string& path);
};

uint32_t kiln_version_number();

class ByteWriter;
// The plan's encodings of attributes, networks and profiles (the engine cache's keys use them).
// Constants: their bytes; weight-derived ones left out (strip_weights); refittable weights by
// name and other constants by bytes (a key that ignores weight values).
enum class ConstantEncoding { kBytes, kStripWeights, kWeightNames };
void write_attributes(ByteWriter& w, const Attributes& attrs);
void write_network(ByteWriter& w, const Network& net, ConstantEncoding constants);
void write_profiles(ByteWriter& w, const std::vector<OptimizationProfile>& profiles);
std::string kiln_version_string();
uint64_t plan_checksum(const uint8_t* data, size_t size);
// The payload checksum a plan of `format_version` carries: plan_checksum of the payload (format 3),
// or (format 4) plan_checksum of the little-endian array of each kChecksumBlockBytes block's
// plan_checksum, the blocks hashed on up to 8 threads.
constexpr size_t kChecksumBlockBytes = size_t{16} << 20;
uint64_t plan_payload_checksum(const uint8_t* data, size_t size, uint32_t format_version);

// Shapes for one profile: the given corner ("min", "opt" or "max") of every dynamic input.
std::map<std::string, Dims> profile_shapes(const Network& net, const OptimizationProfile& p,
                                           const std::string& corner);
// Checks profiles against the network's inputs: every dynamic input has a range, ranks match,
// static dims agree and min <= opt <= max.
void validate_profiles(const Network& net, const std::vector<OptimizationProfile>& profiles);
// Concrete shapes of every tensor given concrete input shapes (by name).
std::vector<Dims> infer_shapes(const Network& net, const std::map<std::string, Dims>& input_shapes);
// Likewise, with each tensor's tracked shape values (see ShapeValues in network.h).
std::vector<TensorDesc> infer_descs(const Network& net, const std::map<std::string, Dims>& input_shapes);
// Views: a layer marked `alias` = 1 (the builder's alias_views pass; is_alias_layer in
// ir/op_schema.h) computes nothing. Its output is its input's bytes under another shape (tensors
// are dense row-major, so this is exact): the output has no arena slot, the engine points it at
// the input's memory and launches nothing, and the input stays live until the view's last reader.
// The ops whose output is always a view of their input: those with the schema trait kView.
bool is_view_op(const std::string& op);
// Per tensor: the tensor whose memory it is (itself unless it is the output of a view).
std::vector<TensorId> alias_roots(const Network& net);
// A gather of one constant index along an axis with only size-1 dims before it (select(0, i) of
// [3, S, B, E]) reads one contiguous slab: it can be a view at this byte offset into its input.
// -1 when the layer is not such a gather (or the dims are dynamic, or the offset is not a multiple
// of 256 bytes).
int64_t slab_view_offset(const Network& net, const Layer& layer);
// A transpose that moves only dims of size 1 (the others keep their order) leaves the bytes where
// they are: [1, S, E] -> [S, 1, E] at batch 1.
bool moves_only_unit_dims(const Network& net, const Layer& layer);
// The layer can be a view of its input: a view op, a unit-dim transpose or a leading-slab gather.
bool can_be_view(const Network& net, const Layer& layer);
// Byte offset of an alias layer's output into its input's memory (0 for reshapes and the like).
int64_t alias_offset(const Network& net, const Layer& layer);
// Refuses `alias` on a layer that is not a view op, or on a view that writes a network output.
void validate_aliases(const Network& net);
// Arena candidates: activation tensors that are not network outputs nor views. Their lifetime is
// [index of the producing layer, index of the last layer reading it or a view of it].
struct Lifetime {
  bool in_arena = false;
  int first = 0, last = 0;
};
std::vector<Lifetime> activation_lifetimes(const Network& net);
// The arena tensors and, for each, the arena tensors whose lifetimes overlap its own: computed
// once per network so that placing the tensors for new sizes costs about O(n log n).
struct ArenaConflicts {
  std::vector<TensorId> tensors;                 // arena tensors, by id
  std::vector<std::vector<TensorId>> live_with;  // per tensor id (empty for others)
};
ArenaConflicts arena_conflicts(const Network& net);
// Places the arena tensors of these sizes (bytes per tensor id): largest first, each at the
// lowest 256-byte-aligned offset free during its lifetime. Deterministic: the same sizes give the
// same offsets. workspace_bytes is left 0.
MemoryPlan place_in_arena(const Network& net, const ArenaConflicts& conflicts,
                          const std::vector<int64_t>& bytes);
// Bytes each tensor needs at most over every profile's min/opt/max corner.
std::vector<int64_t> max_tensor_bytes(const Network& net, const std::vector<OptimizationProfile>& profiles);
// Checks that a memory plan fits its arena and that no two simultaneously live tensors overlap.
void validate_memory_plan(const Network& net, const std::vector<OptimizationProfile>& profiles,
                          const MemoryPlan& memory);

}  // namespace kiln
