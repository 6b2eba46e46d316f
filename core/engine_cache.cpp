#include "core/engine_cache.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include "core/refit.h"
#include "ir/byte_io.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "kernels/device.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

constexpr char kEntryMagic[8] = {'K', 'I', 'L', 'N', 'C', 'A', 'C', 'H'};
constexpr uint32_t kEntryVersion = 1;
constexpr const char* kSuffix = ".kiln-engine";
constexpr const char* kModuleSuffix = ".kiln-module";  // py/kiln/module_cache.py

// Two 64-bit FNV-1a hashes with different bases: the file name. The key itself decides a hit.
std::string key_hash(const std::vector<uint8_t>& key) {
  uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;
  for (uint8_t byte : key) {
    a = (a ^ byte) * 0x100000001b3ull;
    b = (b ^ byte) * 0x100000001b3ull + 0x9e3779b97f4a7c15ull;
  }
  char name[40];
  std::snprintf(name, sizeof name, "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return name;
}

fs::path entry_path(const std::string& dir, const std::vector<uint8_t>& key) {
  return fs::path(dir) / (key_hash(key) + kSuffix);
}

// The refittable weights of `network` by name: what the cached plan is refitted with.
std::map<std::string, ConstantValue> weights_of(const Network& network) {
  std::map<std::string, ConstantValue> out;
  for (const auto& t : network.tensors()) {
    if (t.kind == TensorKind::kConstant && t.lineage && t.lineage->transform == "source")
      out[t.lineage->name] = ConstantValue{t.dtype, t.dims, t.data};
  }
  return out;
}

void remove_quietly(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
}

void trim(const std::string& dir, int64_t max_bytes) {
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> entries;
  int64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const fs::path ext = e.path().extension();
    if (!e.is_regular_file(ec) || (ext != kSuffix && ext != kModuleSuffix)) continue;
    total += static_cast<int64_t>(e.file_size(ec));
    entries.emplace_back(e.last_write_time(ec), e.path());
  }
  std::sort(entries.begin(), entries.end());
  for (const auto& [when, path] : entries) {
    if (total <= max_bytes) break;
    const auto size = static_cast<int64_t>(fs::file_size(path, ec));
    remove_quietly(path);
    total -= ec ? 0 : size;
    KILN_LOG(kInfo, "engine cache: removed " << path.string() << " (least recently used; the cache keeps "
                                             << max_bytes << " bytes)");
  }
}

}  // namespace

// Any change to Kiln's code (a rebuild between releases too, which keeps the version number)
// gives other keys, so a cache never serves an engine that an older builder made. Read once per
// process (libkiln_core.so is tens of MB: ~20 ms).
uint64_t kiln_library_checksum() {
  static const uint64_t checksum = [] {
    Dl_info info{};
    if (dladdr(reinterpret_cast<const void*>(&kiln_library_checksum), &info) == 0 || !info.dli_fname)
      return uint64_t{0};
    std::ifstream f(info.dli_fname, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return bytes.empty() ? uint64_t{0} : plan_checksum(bytes.data(), bytes.size());
  }();
  return checksum;
}

void engine_cache_trim(const std::string& dir, int64_t max_bytes) { trim(dir, max_bytes); }

std::vector<uint8_t> engine_cache_key(const Network& network, const BuilderConfig& config, bool cuda,
                                      int sm_arch) {
  if (config.int8_calibrator) return {};
  ByteWriter w;
  w.put<uint32_t>(kEntryVersion);
  w.put<uint32_t>(kiln_version_number());
  w.put<uint64_t>(kiln_library_checksum());
  w.put<uint8_t>(cuda ? 1 : 0);
  if (cuda) {
    w.put<int32_t>(sm_arch);
    w.put<int32_t>(cuda_runtime_version());
    w.put<int32_t>(cublaslt_version());
    w.put<int32_t>(cudnn_version());
  }
  // The network: tensors (refittable weights by name, other constants by value), layers, io.
  write_network(w, network, ConstantEncoding::kWeightNames);
  // The options that decide the plan (not the timing cache's path: it only saves time).
  write_profiles(w, config.profiles);
  const PrecisionConfig& p = config.precision;
  w.put<uint8_t>(static_cast<uint8_t>(p.fp16 | p.bf16 << 1 | p.tf32 << 2 | p.int8 << 3 | p.fp8 << 4));
  w.put<uint64_t>(p.layer_precisions.size());
  for (const auto& [layer, dtype] : p.layer_precisions) {
    w.put_string(layer);
    w.put<uint8_t>(static_cast<uint8_t>(dtype));
  }
  w.put<uint64_t>(config.workspace_bytes);
  w.put<int32_t>(config.optimization_level);
  w.put<uint8_t>(config.tactic_timing ? 1 : 0);
  w.put<int64_t>(config.max_folded_constant_bytes);
  // The environment settings that change what a build makes (docs/tools.md).
  for (const char* name : {"KILN_SKIP_PASSES", "KILN_CUDNN_GRAPH", "KILN_LESS_PRECISE_MARGIN"}) {
    const char* value = std::getenv(name);
    w.put_string(value ? value : "");
  }
  return w.buffer();
}

std::optional<Plan> engine_cache_load(const std::string& dir, const std::vector<uint8_t>& key,
                                      const Network& network) {
  if (key.empty()) return std::nullopt;
  const fs::path path = entry_path(dir, key);
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  try {
    ByteReader r(bytes.data(), bytes.size(), "engine cache entry " + path.string());
    KILN_CHECK(bytes.size() >= sizeof(kEntryMagic) && std::equal(kEntryMagic, kEntryMagic + 8, bytes.begin()),
               "not a Kiln engine cache entry");
    r.skip(sizeof(kEntryMagic));
    KILN_CHECK(r.get<uint32_t>() == kEntryVersion, "an entry of another cache format");
    const std::vector<uint8_t> stored = r.get_bytes();
    if (stored != key) {  // another network under the same hash: a miss, the entry stays
      KILN_LOG(kInfo, "engine cache: " << path.string() << " holds another build (hash collision)");
      return std::nullopt;
    }
    const std::vector<uint8_t> plan_bytes = r.get_bytes();
    Plan plan = Plan::deserialize(plan_bytes.data(), plan_bytes.size());
    const std::map<std::string, ConstantValue> weights = weights_of(network);
    if (!weights.empty()) {
      for (auto& [id, data] : replay_weights(plan.network, weights))
        plan.network.tensor(id).data = std::move(data);
    }
    std::error_code ec;
    fs::last_write_time(path, fs::file_time_type::clock::now(), ec);  // most recently used
    KILN_LOG(kInfo, "engine cache: hit " << path.string());
    return plan;
  } catch (const Error& e) {
    KILN_LOG(kWarning, "engine cache: ignoring and removing " << path.string() << ": " << e.what()
                                                              << "; the engine is built again");
    remove_quietly(path);
    return std::nullopt;
  }
}

void engine_cache_store(const std::string& dir, const std::vector<uint8_t>& key, const Plan& plan,
                        int64_t max_bytes) {
  if (key.empty()) return;
  try {
    std::error_code ec;
    fs::create_directories(dir, ec);
    KILN_CHECK(!ec, "cannot create " << dir << ": " << ec.message());
    ByteWriter w;
    for (char c : kEntryMagic) w.put<char>(c);
    w.put<uint32_t>(kEntryVersion);
    w.put_bytes(key.data(), key.size());
    const std::vector<uint8_t> plan_bytes = plan.serialize();
    w.put_bytes(plan_bytes.data(), plan_bytes.size());
    const fs::path path = entry_path(dir, key);
    static std::atomic<uint64_t> counter{0};
    std::ostringstream tmp_name;
    tmp_name << path.filename().string() << ".tmp." << ::getpid() << "." << counter++ << "."
             << std::random_device{}();
    const fs::path tmp = fs::path(dir) / tmp_name.str();
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      KILN_CHECK(f.good(), "cannot write " << tmp.string());
      f.write(reinterpret_cast<const char*>(w.buffer().data()),
              static_cast<std::streamsize>(w.buffer().size()));
      f.flush();
      KILN_CHECK(f.good(), "writing " << tmp.string() << " failed (disk full?)");
    }
    fs::rename(tmp, path, ec);  // atomic: readers see the old entry, none, or this one whole
    if (ec) {
      remove_quietly(tmp);
      KILN_FAIL("cannot rename " << tmp.string() << " to " << path.string() << ": " << ec.message());
    }
    trim(dir, max_bytes);
  } catch (const std::exception& e) {
    KILN_LOG(kWarning, "engine cache: the build is not cached: " << e.what());
  }
}

}  // namespace kiln
