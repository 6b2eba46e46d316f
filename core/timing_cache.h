// TimingCache: build-time tactic timings that persist across builds, so a rebuild (or a build
// of another model with the same layer shapes) skips timing what it has timed before.
//
// Key: op, kernel name, attributes except "tactic", input dtypes and dims, GPU architecture, the
// CUDA / cuBLASLt / cuDNN versions and Kiln's (a tactic's speed, and what its number means,
// depend on all of them). Value: the fastest tactic and its time.
//
// File: text, first line "KILN-TIMING-CACHE <version>", then one entry per line:
// "<key>\t<tactic>\t<milliseconds>" with \\, \t and \n escaped in the key. load() never fails a
// build: a missing file is an empty cache, and a corrupt or foreign file is ignored with a
// warning (and replaced on save). save() writes a temporary file and renames it over the old.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

constexpr int kTimingCacheVersion = 1;

// What a timing depends on besides the layer: the GPU and the libraries.
struct TimingEnvironment {
  int sm_arch = 0;
  int cuda_version = 0;
  int cublaslt_version = 0;
  int cudnn_version = 0;
  int kiln_version = 0;                // tactic numbers belong to one Kiln version's kernels
  static TimingEnvironment current();  // the current GPU; the versions Kiln runs with
};

std::string timing_cache_key(const Layer& layer, const std::string& kernel_name,
                             const std::vector<TensorDesc>& inputs, const TimingEnvironment& env);

class TimingCache {
 public:
  struct Entry {
    int tactic = -1;
    double ms = 0.0;
  };

  // Parses serialize()'s text; throws kiln::Error naming `origin` when it is not a valid cache.
  static TimingCache parse(const std::string& text, const std::string& origin);
  // Missing file: empty. Unreadable, corrupt or foreign file: empty, with a warning.
  static TimingCache load(const std::string& path);
  std::string serialize() const;
  // Creates missing parent directories. Throws kiln::Error when the file cannot be written.
  void save(const std::string& path) const;

  const Entry* find(const std::string& key) const;
  void insert(const std::string& key, Entry entry) { entries_[key] = entry; }
  size_t size() const { return entries_.size(); }
  bool operator==(const TimingCache& o) const;

 private:
  std::map<std::string, Entry> entries_;
};

}  // namespace kiln
