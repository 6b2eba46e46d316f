// Engine cache: built plans on disk, so that building the same network again (a second process,
// a later run) costs a refit instead of a build. An entry is keyed by everything that decides the
// plan except the weights' values: the network's structure (layers, attributes, shapes, dtypes;
// refittable weights by name, dtype and shape; other constants by value), the build options and
// profiles, the GPU architecture, the Kiln / CUDA / cuBLASLt / cuDNN versions and a checksum of
// Kiln's library file (another build of Kiln never reuses an entry). A hit refits
// the cached plan with the network's weights (core/refit.h), which gives the plan a build with
// these weights gives (the cached plan's tactics).
//
// Entries are files named by a hash of the key, holding the whole key (compared byte for byte on
// a hit, so a hash collision is a miss) and the plan. Written to a temporary file and renamed into
// place, so concurrent processes never read a half-written entry (both write, one rename wins,
// both results are valid). A corrupt, truncated or foreign entry is ignored with a warning,
// removed, and rebuilt. Past the size limit, the least recently used entries (file times, touched
// on every hit) are removed.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/plan.h"

namespace kiln {

// The key of building `network` with `config` for backend (sm_arch: the GPU's; 0 for the
// reference backend). Empty when the build is not cacheable (a calibrator runs on data).
std::vector<uint8_t> engine_cache_key(const Network& network, const BuilderConfig& config, bool cuda,
                                      int sm_arch);

// The cached plan for `key`, refitted with the weights of `network`; nullopt on a miss.
std::optional<Plan> engine_cache_load(const std::string& dir, const std::vector<uint8_t>& key,
                                      const Network& network);

// Stores `plan` under `key` and trims the directory to `max_bytes`. Failures (a read-only
// directory, a full disk) are logged as warnings: the build result stands.
void engine_cache_store(const std::string& dir, const std::vector<uint8_t>& key, const Plan& plan,
                        int64_t max_bytes);

// Removes the least recently used entries of `dir` until it holds at most `max_bytes`: engine
// entries and the compiled-module entries Python's kiln.compile keeps beside them
// (py/kiln/module_cache.py).
void engine_cache_trim(const std::string& dir, int64_t max_bytes);

// A checksum of the file of Kiln's core library (read once per process): part of every cache
// key, so another build of Kiln never reuses an entry.
uint64_t kiln_library_checksum();

}  // namespace kiln
