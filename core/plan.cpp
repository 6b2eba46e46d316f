#include "core/plan.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>

#include "core/weight_transforms.h"
#include "ir/byte_io.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "ir/ops/shape.h"
#include "ir/utf8.h"
#include "kernels/device.h"

namespace kiln {
namespace {

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'P', 'L', 'A', 'N'};
// kLineage is optional (plans with refittable weights); readers skip sections they do not know.
// kStripped (optional): the constants saved without their bytes (strip_weights).
enum SectionTag : uint32_t {
  kNetwork = 1,
  kProfiles = 2,
  kMemory = 3,
  kKernels = 4,
  kLineage = 5,
  kStripped = 6
};
constexpr int64_t kMaxArenaBytes = int64_t{1} << 40;
constexpr int64_t kMaxPadding = 256;  // plan_memory's alignment

// ---- attributes -------------------------------------------------------------------------------

}  // namespace

void write_attributes(ByteWriter& w, const Attributes& attrs) {
  w.put<uint64_t>(attrs.values().size());
  for (const auto& [name, value] : attrs.values()) {
    w.put_string(name);
    w.put<uint8_t>(static_cast<uint8_t>(value.index()));
    std::visit(
        [&w](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, std::string>) {
            w.put_string(v);
          } else if constexpr (std::is_same_v<V, int64_t> || std::is_same_v<V, double>) {
            w.put<V>(v);
          } else {
            w.put_vector(v);
          }
        },
        value);
  }
}

void write_network(ByteWriter& w, const Network& net, ConstantEncoding constants) {
  w.put<uint64_t>(net.tensors().size());
  for (const auto& t : net.tensors()) {
    w.put_string(t.name);
    w.put<uint8_t>(static_cast<uint8_t>(t.dtype));
    w.put<uint8_t>(static_cast<uint8_t>(t.kind));
    w.put_vector(t.dims);
    if (t.kind != TensorKind::kConstant) continue;
    const bool derived = t.lineage != nullptr;
    if (constants == ConstantEncoding::kWeightNames) {
      const bool weight = derived && t.lineage->transform == "source";
      w.put<uint8_t>(weight ? 1 : 0);
      if (weight) {
        w.put_string(t.lineage->name);
        continue;
      }
    }
    // A weight-derived constant without bytes (stripped, never refitted) stays without.
    if (derived && (constants == ConstantEncoding::kStripWeights || !t.data))
      w.put_bytes(nullptr, 0);
    else
      w.put_bytes(t.data->data(), t.data->size());
  }
  w.put<uint64_t>(net.layers().size());
  for (const auto& l : net.layers()) {
    w.put_string(l.name);
    w.put_string(l.op);
    w.put_vector(l.inputs);
    w.put_vector(l.outputs);
    write_attributes(w, l.attrs);
  }
  w.put_vector(net.inputs());
  w.put_vector(net.outputs());
}

void write_profiles(ByteWriter& w, const std::vector<OptimizationProfile>& profiles) {
  w.put<uint64_t>(profiles.size());
  for (const auto& p : profiles) {
    w.put<uint64_t>(p.inputs.size());
    for (const auto& [name, range] : p.inputs) {
      w.put_string(name);
      w.put_vector(range.min);
      w.put_vector(range.opt);
      w.put_vector(range.max);
    }
  }
}

namespace {

void put_attrs(ByteWriter& w, const Attributes& attrs) { write_attributes(w, attrs); }

Attributes get_attrs(ByteReader& r) {
  Attributes attrs;
  uint64_t n = r.get_count(10);
  for (uint64_t i = 0; i < n; ++i) {
    std::string name = r.get_string();
    check_utf8(name, r.what() + ": attribute name");
    uint8_t kind = r.get<uint8_t>();
    switch (kind) {
      case 0:
        attrs.set(name, r.get<int64_t>());
        break;
      case 1:
        attrs.set(name, r.get<double>());
        break;
      case 2:
        attrs.set(name, r.get_vector<int64_t>());
        break;
      case 3:
        attrs.set(name, r.get_vector<double>());
        break;
      case 4:
        attrs.set(name, r.get_string());
        break;
      default:
        KILN_FAIL(r.what() << ": attribute '" << name << "' has unknown kind " << int{kind});
    }
  }
  return attrs;
}

// ---- sections -------------------------------------------------------------------------------

// A constant written without its bytes: derived from weights, and stripped or never filled.
bool stripped(const Tensor& t, bool strip_weights) {
  return t.kind == TensorKind::kConstant && t.lineage && (strip_weights || !t.data);
}

void put_network(ByteWriter& w, const Network& net, bool strip_weights) {
  write_network(w, net, strip_weights ? ConstantEncoding::kStripWeights : ConstantEncoding::kBytes);
}

// A constant's bytes in the plan, and the vector they go to.
struct ConstantCopy {
  std::vector<uint8_t>* to;
  const uint8_t* from;
  size_t bytes;
};

// Copies the constants out of the plan, on up to 8 threads when there are many bytes (BERT-base
// holds 220 MB: the copies' page faults and memory traffic were a third of its load time).
void copy_constants(const std::vector<ConstantCopy>& copies) {
  size_t total = 0;
  for (const auto& c : copies) total += c.bytes;
  constexpr size_t kBytesPerThread = size_t{16} << 20;
  const size_t threads = std::min<size_t>(
      {std::max<size_t>(1, total / kBytesPerThread), std::max(1u, std::thread::hardware_concurrency()), 8});
  auto copy_share = [&](size_t share) {  // every `threads`-th constant from the `share`-th
    for (size_t i = share; i < copies.size(); i += threads) {
      copies[i].to->assign(copies[i].from, copies[i].from + copies[i].bytes);
    }
  };
  std::vector<std::thread> pool;
  std::exception_ptr failure;
  std::mutex mu;
  auto run_share = [&](size_t share) {
    try {
      copy_share(share);
    } catch (...) {  // std::bad_alloc
      std::lock_guard<std::mutex> lock(mu);
      failure = std::current_exception();
    }
  };
  std::vector<size_t> inline_shares = {0};
  for (size_t t = 1; t < threads; ++t) {
    try {
      pool.emplace_back(run_share, t);
    } catch (const std::system_error&) {  // no thread to be had: this one copies that share too
      inline_shares.push_back(t);
    }
  }
  for (size_t share : inline_shares) run_share(share);
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

// Restores the network verbatim; the caller revalidates it (after attaching lineages). Constants
// in `stripped` come without bytes.
Network get_network(ByteReader& r, const std::set<TensorId>& stripped) {
  Network net;
  std::vector<ConstantCopy> copies;  // the constants' bytes, copied once the tensor list is read
  uint64_t nt = r.get_count(19);
  for (uint64_t i = 0; i < nt; ++i) {
    Tensor t;
    t.name = r.get_string();
    check_utf8(t.name, r.what() + ": tensor name");
    uint8_t dtype = r.get<uint8_t>();
    KILN_CHECK(is_valid_dtype(dtype), r.what()
                                          << ": tensor '" << t.name << "' has unknown dtype " << int{dtype});
    t.dtype = static_cast<DataType>(dtype);
    uint8_t kind = r.get<uint8_t>();
    KILN_CHECK(kind <= 2, r.what() << ": tensor '" << t.name << "' has unknown kind " << int{kind});
    t.kind = static_cast<TensorKind>(kind);
    t.dims = r.get_vector<int64_t>();
    KILN_CHECK(t.dims.size() <= static_cast<size_t>(kMaxRank),
               r.what() << ": tensor '" << t.name << "' has rank " << t.dims.size());
    if (t.kind == TensorKind::kConstant) {
      const uint64_t n = r.get_count(1);
      const uint8_t* bytes = r.position();
      r.skip(n);
      if (stripped.count(static_cast<TensorId>(i))) {
        KILN_CHECK(n == 0, r.what() << ": constant '" << t.name << "' is listed as stripped but has bytes");
      } else {
        auto data = std::make_shared<std::vector<uint8_t>>();
        copies.push_back({data.get(), bytes, n});
        t.data = std::move(data);
      }
    } else {
      KILN_CHECK(!stripped.count(static_cast<TensorId>(i)), r.what()
                                                                << ": '" << t.name << "' is not a constant");
    }
    net.restore_tensor(std::move(t));
  }
  uint64_t nl = r.get_count(48);
  for (uint64_t i = 0; i < nl; ++i) {
    Layer l;
    l.name = r.get_string();
    check_utf8(l.name, r.what() + ": layer name");
    l.op = r.get_string();
    check_utf8(l.op, r.what() + ": op name");
    l.inputs = r.get_vector<TensorId>();
    l.outputs = r.get_vector<TensorId>();
    l.attrs = get_attrs(r);
    net.restore_layer(std::move(l));
  }
  auto inputs = r.get_vector<TensorId>();
  auto outputs = r.get_vector<TensorId>();
  net.restore_io(std::move(inputs), std::move(outputs));
  copy_constants(copies);
  return net;
}

// Lineage DAG of the weight-derived constants: nodes in an order where inputs come first (shared
// nodes once), then (tensor id, node index) per constant.
bool has_lineage(const Network& net) {
  for (const auto& t : net.tensors()) {
    if (t.lineage) return true;
  }
  return false;
}

void put_lineage(ByteWriter& w, const Network& net) {
  std::vector<const Lineage*> order;
  std::map<const Lineage*, uint32_t> index;
  std::function<void(const Lineage*)> visit = [&](const Lineage* l) {
    if (index.count(l)) return;
    for (const auto& in : l->inputs) visit(in.get());
    index[l] = static_cast<uint32_t>(order.size());
    order.push_back(l);
  };
  std::vector<std::pair<TensorId, const Lineage*>> entries;
  for (const auto& t : net.tensors()) {
    if (t.kind != TensorKind::kConstant || !t.lineage) continue;
    visit(t.lineage.get());
    entries.emplace_back(t.id, t.lineage.get());
  }
  w.put<uint64_t>(order.size());
  for (const Lineage* l : order) {
    w.put_string(l->transform);
    w.put_string(l->name);
    put_attrs(w, l->attrs);
    std::vector<uint32_t> inputs;
    for (const auto& in : l->inputs) inputs.push_back(index.at(in.get()));
    w.put_vector(inputs);
    w.put<int64_t>(l->output);
    w.put<uint8_t>(static_cast<uint8_t>(l->dtype));
    w.put_vector(l->dims);
    w.put<uint8_t>(l->literal ? 1 : 0);
    if (l->literal) w.put_bytes(l->literal->data(), l->literal->size());
    w.put_string(l->blocked);
  }
  w.put<uint64_t>(entries.size());
  for (const auto& [id, l] : entries) {
    w.put<int32_t>(id);
    w.put<uint32_t>(index.at(l));
  }
}

void get_lineage(ByteReader& r, Network& net) {
  std::vector<LineagePtr> nodes(r.get_count(40));
  for (size_t i = 0; i < nodes.size(); ++i) {
    auto l = std::make_shared<Lineage>();
    l->transform = r.get_string();
    l->name = r.get_string();
    check_utf8(l->name, r.what() + ": name");
    KILN_CHECK(l->transform == "source" || l->transform == "literal" || l->transform == "blocked" ||
                   is_weight_transform(l->transform),
               r.what() << ": node " << i << " has unknown transform '" << l->transform << "'");
    l->attrs = get_attrs(r);
    for (uint32_t in : r.get_vector<uint32_t>()) {
      KILN_CHECK(in < i,
                 r.what() << ": node " << i << " reads node " << in << ", which does not come before it");
      l->inputs.push_back(nodes[in]);
    }
    l->output = r.get<int64_t>();
    const uint8_t dtype = r.get<uint8_t>();
    KILN_CHECK(is_valid_dtype(dtype), r.what() << ": node " << i << " has unknown dtype " << int{dtype});
    l->dtype = static_cast<DataType>(dtype);
    l->dims = r.get_vector<int64_t>();
    KILN_CHECK(l->dims.size() <= static_cast<size_t>(kMaxRank) && is_static(l->dims) &&
                   std::all_of(l->dims.begin(), l->dims.end(), [](int64_t d) { return d >= 0; }),
               r.what() << ": node " << i << " has dims " << to_string(l->dims));
    if (r.get<uint8_t>() != 0) {
      l->literal = std::make_shared<std::vector<uint8_t>>(r.get_bytes());
      KILN_CHECK(l->literal->size() == static_cast<size_t>(tensor_bytes(l->dims, dtype_size(l->dtype))),
                 r.what() << ": node " << i << "'s literal does not match its shape");
    }
    KILN_CHECK((l->transform == "literal") == (l->literal != nullptr),
               r.what() << ": node " << i << " (" << l->transform << ") and its literal disagree");
    KILN_CHECK(l->transform != "source" || !l->name.empty(),
               r.what() << ": node " << i << ": a weight without a name");
    l->blocked = r.get_string();
    check_utf8(l->blocked, r.what() + ": blocked");
    nodes[i] = std::move(l);
  }
  const uint64_t n = r.get_count(8);
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t id = r.get<int32_t>();
    const uint32_t node = r.get<uint32_t>();
    KILN_CHECK(id >= 0 && static_cast<size_t>(id) < net.tensors().size() && node < nodes.size(),
               r.what() << ": entry " << i << " is out of range");
    Tensor& t = net.tensor(id);
    const Lineage& l = *nodes[node];
    KILN_CHECK(t.kind == TensorKind::kConstant && l.dtype == t.dtype && l.dims == t.dims,
               r.what() << ": the lineage of '" << t.name << "' does not match the tensor");
    t.lineage = nodes[node];
  }
}

void put_profiles(ByteWriter& w, const std::vector<OptimizationProfile>& profiles) {
  write_profiles(w, profiles);
}

std::vector<OptimizationProfile> get_profiles(ByteReader& r) {
  std::vector<OptimizationProfile> profiles(r.get_count(8));
  for (auto& p : profiles) {
    uint64_t n = r.get_count(32);
    for (uint64_t i = 0; i < n; ++i) {
      std::string name = r.get_string();
      check_utf8(name, r.what() + ": input name");
      ShapeRange range;
      range.min = r.get_vector<int64_t>();
      range.opt = r.get_vector<int64_t>();
      range.max = r.get_vector<int64_t>();
      p.inputs[name] = std::move(range);
    }
  }
  return profiles;
}

ByteReader section_reader(const std::map<uint32_t, std::pair<const uint8_t*, size_t>>& sections, uint32_t tag,
                          const char* name) {
  auto it = sections.find(tag);
  KILN_CHECK(it != sections.end(), "plan: the " << name << " section is missing; the plan is corrupt");
  return ByteReader(it->second.first, it->second.second, std::string("plan ") + name + " section");
}

void expect_consumed(const ByteReader& r) {
  KILN_CHECK(r.remaining() == 0,
             r.what() << ": " << r.remaining() << " unexpected trailing bytes; the plan is corrupt");
}

std::string version_text(uint32_t v) {
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

// Bytes from the magic up to (not including) the checksum field: magic, six version fields and
// the payload size.
constexpr size_t kHeaderBytes = sizeof(kMagic) + 6 * sizeof(uint32_t) + sizeof(uint64_t);

// The checksum field covers the header too (format 3): a changed version or architecture field
// is caught like a changed body byte.
uint64_t header_checksum(const uint8_t* header, uint64_t body_checksum) {
  uint8_t bytes[kHeaderBytes + sizeof(uint64_t)];
  std::memcpy(bytes, header, kHeaderBytes);
  std::memcpy(bytes + kHeaderBytes, &body_checksum, sizeof(body_checksum));
  return plan_checksum(bytes, sizeof(bytes));
}

// A library version as "major.minor" parts. CUDART_VERSION is major*1000 + minor*10; Kiln,
// cuBLAS(Lt) and cuDNN 9 are major*10000 + minor*100 + patch.
struct MajorMinor {
  uint32_t major, minor;
};
MajorMinor cuda_parts(uint32_t v) { return {v / 1000, v / 10 % 100}; }
MajorMinor library_parts(uint32_t v) { return {v / 10000, v / 100 % 100}; }
std::string text(MajorMinor v) { return std::to_string(v.major) + "." + std::to_string(v.minor); }

void check_version(const char* what, MajorMinor plan, MajorMinor here, bool allow_minor) {
  KILN_CHECK(plan.major == here.major && (plan.minor == here.minor || allow_minor),
             "this plan was built with "
                 << what << " " << text(plan) << " but this Kiln runs with " << what << " " << text(here)
                 << "; rebuild the plan with this Kiln"
                 << (plan.major == here.major ? " (or, to accept a plan of another minor version, pass "
                                                "allow_minor_version_mismatch=True or set "
                                                "KILN_ALLOW_MINOR_VERSION_MISMATCH=1)"
                                              : ""));
}

}  // namespace

void check_plan_compatibility(const PlanHeader& header, bool cuda, bool allow_minor_version_mismatch) {
  if (const char* env = std::getenv("KILN_ALLOW_MINOR_VERSION_MISMATCH")) {
    allow_minor_version_mismatch |= std::string(env) == "1";
  }
  const bool allow = allow_minor_version_mismatch;
  check_version("Kiln", library_parts(header.kiln_version), library_parts(kiln_version_number()), allow);
  if (!cuda) return;
  check_version("CUDA", cuda_parts(header.cuda_version), cuda_parts(cuda_runtime_version()), allow);
  check_version("cuBLASLt", library_parts(header.cublaslt_version), library_parts(cublaslt_version()), allow);
  check_version("cuDNN", library_parts(header.cudnn_version), library_parts(cudnn_version()), allow);
}

uint32_t kiln_version_number() {
  return KILN_VERSION_MAJOR * 10000 + KILN_VERSION_MINOR * 100 + KILN_VERSION_PATCH;
}

std::string kiln_version_string() { return version_text(kiln_version_number()); }

// Four independent lanes over 8-byte words, so that a 100 MB plan checksums in a few
// milliseconds (byte-wise FNV-1a, format 1, took ~1.3 ns per byte: most of a resnet50 load).
// Each step (lane ^ word) * prime, then lane ^= lane >> 29, is a bijection of the lane for a
// fixed word and of the word for a fixed lane: any single changed word changes the result.
uint64_t plan_checksum(const uint8_t* data, size_t size) {
  constexpr uint64_t kBasis = 1469598103934665603ull, kPrime = 1099511628211ull;
  uint64_t lane[4] = {kBasis, kBasis ^ 1, kBasis ^ 2, kBasis ^ 3};
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, data + i + 8 * k, sizeof(w));
      lane[k] = (lane[k] ^ w) * kPrime;
      lane[k] ^= lane[k] >> 29;
    }
  }
  uint64_t h = kBasis;
  for (uint64_t l : lane) h = (h ^ l) * kPrime;
  for (; i < size; ++i) h = (h ^ data[i]) * kPrime;
  return (h ^ static_cast<uint64_t>(size)) * kPrime;
}

uint64_t plan_payload_checksum(const uint8_t* data, size_t size, uint32_t format_version) {
  if (format_version < 4) return plan_checksum(data, size);
  const size_t blocks = std::max<size_t>(1, (size + kChecksumBlockBytes - 1) / kChecksumBlockBytes);
  std::vector<uint64_t> hashes(blocks);
  auto hash_blocks = [&](size_t first, size_t step) {
    for (size_t b = first; b < blocks; b += step) {
      const size_t begin = b * kChecksumBlockBytes;
      hashes[b] = plan_checksum(data + begin, std::min(kChecksumBlockBytes, size - begin));
    }
  };
  const size_t threads = std::min<size_t>({blocks, 8, std::max(1u, std::thread::hardware_concurrency())});
  std::vector<std::thread> workers;
  size_t started = 1;  // this thread takes blocks 0, threads, 2 * threads, ...
  try {
    for (; started < threads; ++started) workers.emplace_back(hash_blocks, started, threads);
  } catch (const std::system_error&) {  // fewer threads to be had: this one hashes the rest
    for (size_t t = started; t < threads; ++t) hash_blocks(t, threads);
  }
  hash_blocks(0, threads);
  for (std::thread& w : workers) w.join();
  std::vector<uint8_t> bytes(blocks * sizeof(uint64_t));
  for (size_t b = 0; b < blocks; ++b) {
    for (int i = 0; i < 8; ++i) bytes[b * 8 + i] = static_cast<uint8_t>(hashes[b] >> (8 * i));
  }
  return plan_checksum(bytes.data(), bytes.size());
}

bool Plan::weights_stripped() const {
  for (const auto& t : network.tensors()) {
    if (t.kind == TensorKind::kConstant && !t.data) return true;
  }
  return false;
}

std::vector<uint8_t> Plan::serialize(bool strip_weights) const {
  ByteWriter payload;
  auto section = [&payload](uint32_t tag, const std::vector<uint8_t>& bytes) {
    payload.put<uint32_t>(tag);
    payload.put_bytes(bytes.data(), bytes.size());
  };
  {
    ByteWriter w;
    put_network(w, network, strip_weights);
    section(kNetwork, w.buffer());
  }
  {
    ByteWriter w;
    put_profiles(w, profiles);
    section(kProfiles, w.buffer());
  }
  {
    ByteWriter w;
    w.put_vector(memory.offsets);
    w.put_vector(memory.sizes);
    w.put<int64_t>(memory.arena_bytes);
    w.put<int64_t>(memory.workspace_bytes);
    section(kMemory, w.buffer());
  }
  {
    ByteWriter w;
    w.put<uint64_t>(kernels.size());
    for (const auto& k : kernels) w.put_string(k);
    section(kKernels, w.buffer());
  }
  if (has_lineage(network)) {
    ByteWriter w;
    put_lineage(w, network);
    section(kLineage, w.buffer());
  }
  std::vector<TensorId> stripped_ids;
  for (const auto& t : network.tensors()) {
    if (stripped(t, strip_weights)) stripped_ids.push_back(t.id);
  }
  if (!stripped_ids.empty()) {
    ByteWriter w;
    w.put_vector(stripped_ids);
    section(kStripped, w.buffer());
  }
  ByteWriter out;
  for (char c : kMagic) out.put<char>(c);
  out.put<uint32_t>(kPlanFormatVersion);  // a plan read from an older format is written in this one
  out.put<uint32_t>(header.kiln_version);
  out.put<uint32_t>(header.cuda_version);
  out.put<uint32_t>(header.cublaslt_version);
  out.put<uint32_t>(header.cudnn_version);
  out.put<uint32_t>(header.sm_arch);
  const auto& body = payload.buffer();
  out.put<uint64_t>(body.size());
  out.put<uint64_t>(header_checksum(out.buffer().data(),
                                    plan_payload_checksum(body.data(), body.size(), kPlanFormatVersion)));
  auto& bytes = out.buffer();
  bytes.insert(bytes.end(), body.begin(), body.end());
  return bytes;
}

namespace {

// The plan's payload (its sections) after a valid header.
Plan parse_payload(PlanHeader header, const uint8_t* body, uint64_t payload_size) {
  Plan plan;
  plan.header = std::move(header);
  std::map<uint32_t, std::pair<const uint8_t*, size_t>> sections;
  ByteReader s(body, payload_size, "plan payload");
  while (s.remaining() > 0) {
    uint32_t tag = s.get<uint32_t>();
    uint64_t len = s.get_count(1);
    KILN_CHECK(sections.count(tag) == 0, "plan: section " << tag << " appears twice; the plan is corrupt");
    sections[tag] = {s.position(), static_cast<size_t>(len)};
    s.skip(len);
  }

  std::set<TensorId> stripped_ids;
  if (sections.count(kStripped)) {
    ByteReader rs = section_reader(sections, kStripped, "stripped weights");
    for (TensorId id : rs.get_vector<TensorId>()) stripped_ids.insert(id);
    expect_consumed(rs);
  }
  ByteReader rn = section_reader(sections, kNetwork, "network");
  plan.network = get_network(rn, stripped_ids);
  expect_consumed(rn);
  if (sections.count(kLineage)) {
    ByteReader rl = section_reader(sections, kLineage, "lineage");
    get_lineage(rl, plan.network);
    expect_consumed(rl);
  }
  plan.network.revalidate();  // ids in range, shapes re-inferred, constants sized, names unique

  ByteReader rp = section_reader(sections, kProfiles, "profiles");
  plan.profiles = get_profiles(rp);
  expect_consumed(rp);
  validate_profiles(plan.network, plan.profiles);

  ByteReader rm = section_reader(sections, kMemory, "memory");
  plan.memory.offsets = rm.get_vector<int64_t>();
  plan.memory.sizes = rm.get_vector<int64_t>();
  plan.memory.arena_bytes = rm.get<int64_t>();
  plan.memory.workspace_bytes = rm.get<int64_t>();
  KILN_CHECK(plan.memory.workspace_bytes >= 0 && plan.memory.workspace_bytes <= kMaxArenaBytes,
             "plan memory section: workspace size " << plan.memory.workspace_bytes
                                                    << " is out of range; the plan is corrupt");
  expect_consumed(rm);
  validate_memory_plan(plan.network, plan.profiles, plan.memory);

  ByteReader rk = section_reader(sections, kKernels, "kernels");
  uint64_t nk = rk.get_count(8);
  for (uint64_t i = 0; i < nk; ++i) {
    plan.kernels.push_back(rk.get_string());
    check_utf8(plan.kernels.back(), rk.what() + ": kernel name");
  }
  expect_consumed(rk);
  KILN_CHECK(plan.kernels.size() == plan.network.layers().size(),
             "plan: " << plan.kernels.size() << " kernel entries for " << plan.network.layers().size()
                      << " layers; the plan is corrupt");
  return plan;
}

}  // namespace

Plan Plan::deserialize(const uint8_t* data, size_t size, bool verify_checksum) {
  KILN_CHECK(data != nullptr || size == 0, "plan: no data");
  ByteReader r(data, size, "plan header");
  KILN_CHECK(size >= sizeof(kMagic) && std::equal(kMagic, kMagic + 8, reinterpret_cast<const char*>(data)),
             "plan: not a Kiln plan (bad magic bytes); pass the bytes that Plan.serialize() wrote");
  r.skip(sizeof(kMagic));
  PlanHeader h;
  h.format_version = r.get<uint32_t>();
  KILN_CHECK(h.format_version >= kOldestPlanFormatVersion && h.format_version <= kPlanFormatVersion,
             "plan: format version " << h.format_version << " is not supported by Kiln "
                                     << kiln_version_string() << " (it reads versions "
                                     << kOldestPlanFormatVersion << " to " << kPlanFormatVersion
                                     << "); rebuild the plan with this Kiln");
  h.kiln_version = r.get<uint32_t>();
  h.cuda_version = r.get<uint32_t>();
  h.cublaslt_version = r.get<uint32_t>();
  h.cudnn_version = r.get<uint32_t>();
  h.sm_arch = r.get<uint32_t>();
  uint64_t payload_size = r.get<uint64_t>();
  uint64_t checksum = r.get<uint64_t>();
  KILN_CHECK(payload_size == r.remaining(), "plan: header announces "
                                                << payload_size << " payload bytes but " << r.remaining()
                                                << " follow; the plan is truncated or corrupt");
  const uint8_t* body = r.position();
  auto t0 = std::chrono::steady_clock::now();
  // The checksum runs on its own thread while the payload is parsed; a payload that fails to parse
  // reports the checksum mismatch when there is one (the more useful message for a damaged file).
  std::future<bool> checksum_ok;
  if (verify_checksum) {
    auto verify = [data, body, payload_size, checksum, format = h.format_version] {
      return header_checksum(data, plan_payload_checksum(body, payload_size, format)) == checksum;
    };
    try {
      checksum_ok = std::async(std::launch::async, verify);
    } catch (const std::system_error&) {  // no thread to be had: checked here, before the parse
      checksum_ok = std::async(std::launch::deferred, verify);
      checksum_ok.wait();
    }
  }
  auto check_checksum = [&] {
    KILN_CHECK(!checksum_ok.valid() || checksum_ok.get(),
               "plan: checksum mismatch; the plan is corrupt (re-serialize or rebuild it)");
  };
  Plan plan;
  try {
    plan = parse_payload(std::move(h), body, payload_size);
  } catch (...) {
    check_checksum();
    throw;
  }
  auto t1 = std::chrono::steady_clock::now();
  check_checksum();
  auto t2 = std::chrono::steady_clock::now();
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  KILN_LOG(kVerbose, "plan: " << size << " bytes deserialized: parse " << ms(t0, t1) << " ms, then waited "
                              << ms(t1, t2) << " ms for the checksum computed alongside");
  return plan;
}

void Plan::save(const std::string& path, bool strip_weights) const {
  std::vector<uint8_t> bytes = serialize(strip_weights);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  KILN_CHECK(f.good(), "cannot open '" << path << "' for writing");
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  KILN_CHECK(f.good(), "writing the plan to '" << path << "' failed");
}

Plan Plan::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(f.good(), "cannot open plan file '" << path << "'");
  std::vector<uint8_t> bytes;
  try {
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } catch (const std::exception& e) {  // std::ios_base::failure: a directory, an I/O error
    KILN_FAIL("cannot read plan file '" << path << "': " << e.what());
  }
  return deserialize(bytes);
}

// ---- profiles and shapes ------------------------------------------------------------------------

void validate_profiles(const Network& net, const std::vector<OptimizationProfile>& profiles) {
  bool dynamic = false;
  for (TensorId id : net.inputs()) dynamic |= !is_static(net.tensor(id).dims);
  KILN_CHECK(!dynamic || !profiles.empty(),
             "the network has dynamic inputs but no optimization profile: add one with a "
             "min/opt/max shape for every dynamic input");
  for (size_t pi = 0; pi < profiles.size(); ++pi) {
    const auto& p = profiles[pi];
    for (const auto& [name, range] : p.inputs) {
      TensorId id = net.find_tensor(name);
      KILN_CHECK(id >= 0 && net.tensor(id).kind == TensorKind::kInput,
                 "profile " << pi << ": '" << name << "' is not a network input");
    }
    for (TensorId id : net.inputs()) {
      const Tensor& t = net.tensor(id);
      auto it = p.inputs.find(t.name);
      if (it == p.inputs.end()) {
        KILN_CHECK(is_static(t.dims), "profile " << pi << ": dynamic input '" << t.name << "' "
                                                 << to_string(t.dims) << " has no shape range");
        continue;
      }
      const ShapeRange& r = it->second;
      for (const Dims* d : {&r.min, &r.opt, &r.max}) {
        KILN_CHECK(d->size() == t.dims.size(), "profile " << pi << ", input '" << t.name << "': shape "
                                                          << to_string(*d) << " has rank " << d->size()
                                                          << ", the input has rank " << t.dims.size());
      }
      for (size_t i = 0; i < t.dims.size(); ++i) {
        KILN_CHECK(r.min[i] >= 0 && r.min[i] <= r.opt[i] && r.opt[i] <= r.max[i],
                   "profile " << pi << ", input '" << t.name << "', dim " << i
                              << ": need 0 <= min <= opt <= max, got min " << to_string(r.min) << ", opt "
                              << to_string(r.opt) << ", max " << to_string(r.max));
        KILN_CHECK(t.dims[i] == kDynamic || (r.min[i] == t.dims[i] && r.max[i] == t.dims[i]),
                   "profile " << pi << ", input '" << t.name << "', dim " << i << " is static (" << t.dims[i]
                              << ") but the profile gives " << r.min[i] << ".." << r.max[i]);
      }
    }
  }
}

std::map<std::string, Dims> profile_shapes(const Network& net, const OptimizationProfile& p,
                                           const std::string& corner) {
  std::map<std::string, Dims> shapes;
  for (TensorId id : net.inputs()) {
    const Tensor& t = net.tensor(id);
    auto it = p.inputs.find(t.name);
    if (it == p.inputs.end()) {
      shapes[t.name] = t.dims;
    } else {
      shapes[t.name] = corner == "min" ? it->second.min : corner == "opt" ? it->second.opt : it->second.max;
    }
  }
  return shapes;
}

std::vector<TensorDesc> infer_descs(const Network& net, const std::map<std::string, Dims>& input_shapes) {
  std::vector<TensorDesc> desc(net.tensors().size());
  for (const auto& t : net.tensors()) {
    if (t.kind == TensorKind::kConstant) desc[t.id] = net.desc(t.id);
  }
  for (TensorId id : net.inputs()) {
    const Tensor& t = net.tensor(id);
    auto it = input_shapes.find(t.name);
    KILN_CHECK(it != input_shapes.end(), "no shape given for input '" << t.name << "'");
    desc[id] = {t.dtype, it->second, nullptr};
  }
  for (const auto& l : net.layers()) {
    std::vector<TensorDesc> in;
    for (TensorId t : l.inputs) in.push_back(desc[t]);
    std::vector<TensorDesc> out = infer_layer(l, in);
    for (size_t i = 0; i < out.size(); ++i) {
      KILN_CHECK(is_static(out[i].dims), describe(l) << ": output shape " << to_string(out[i].dims)
                                                     << " is not concrete for the given input shapes");
      desc[l.outputs[i]] = std::move(out[i]);
    }
  }
  return desc;
}

std::vector<Dims> infer_shapes(const Network& net, const std::map<std::string, Dims>& input_shapes) {
  std::vector<Dims> dims;
  for (auto& d : infer_descs(net, input_shapes)) dims.push_back(std::move(d.dims));
  return dims;
}

std::vector<TensorId> alias_roots(const Network& net) {
  std::vector<TensorId> root(net.tensors().size());
  for (size_t t = 0; t < root.size(); ++t) root[t] = static_cast<TensorId>(t);
  for (const auto& l : net.layers()) {
    if (is_alias_layer(l)) root[l.outputs[0]] = root[l.inputs[0]];
  }
  return root;
}

std::vector<Lifetime> activation_lifetimes(const Network& net) {
  std::vector<Lifetime> life(net.tensors().size());
  std::vector<TensorId> root = alias_roots(net);
  const auto& layers = net.layers();
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    if (!is_alias_layer(layers[i])) {
      for (TensorId t : layers[i].outputs) {
        if (!net.is_output(t)) life[t] = {true, i, i};
      }
    }
    for (TensorId t : layers[i].inputs) {
      if (life[root[t]].in_arena) life[root[t]].last = i;
    }
  }
  return life;
}

ArenaConflicts arena_conflicts(const Network& net) {
  std::vector<Lifetime> life = activation_lifetimes(net);
  ArenaConflicts c;
  c.live_with.resize(net.tensors().size());
  for (size_t t = 0; t < life.size(); ++t) {
    if (life[t].in_arena) c.tensors.push_back(static_cast<TensorId>(t));
  }
  // Sweep in order of birth: the tensors still alive when one is born are exactly those it
  // overlaps among the earlier-born (ties included).
  std::vector<TensorId> by_birth = c.tensors;
  std::stable_sort(by_birth.begin(), by_birth.end(),
                   [&](TensorId a, TensorId b) { return life[a].first < life[b].first; });
  std::vector<TensorId> alive;
  for (TensorId t : by_birth) {
    alive.erase(
        std::remove_if(alive.begin(), alive.end(), [&](TensorId a) { return life[a].last < life[t].first; }),
        alive.end());
    for (TensorId a : alive) {
      c.live_with[t].push_back(a);
      c.live_with[a].push_back(t);
    }
    alive.push_back(t);
  }
  return c;
}

MemoryPlan place_in_arena(const Network& net, const ArenaConflicts& conflicts,
                          const std::vector<int64_t>& bytes) {
  constexpr int64_t kAlignment = 256;
  auto align_up = [](int64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; };
  const size_t n = net.tensors().size();
  MemoryPlan plan;
  plan.offsets.assign(n, -1);
  plan.sizes.assign(n, 0);
  std::vector<TensorId> order = conflicts.tensors;
  std::stable_sort(order.begin(), order.end(), [&](TensorId a, TensorId b) { return bytes[a] > bytes[b]; });
  std::vector<std::pair<int64_t, int64_t>> busy;
  for (TensorId t : order) {
    int64_t size = align_up(std::max<int64_t>(bytes[t], 1));
    // Busy intervals of the already placed tensors live at the same time, by offset.
    busy.clear();
    for (TensorId p : conflicts.live_with[t]) {
      if (plan.offsets[p] >= 0) busy.push_back({plan.offsets[p], plan.offsets[p] + plan.sizes[p]});
    }
    std::sort(busy.begin(), busy.end());
    // Sizes are at most 2^62 (tensor_bytes), offsets below 2^62 (checked as each is placed): the
    // sums here cannot wrap.
    int64_t offset = 0;
    for (const auto& [begin, end] : busy) {
      if (offset + size <= begin) break;
      offset = std::max(offset, align_up(end));
    }
    KILN_CHECK(offset + size <= (int64_t{1} << 62), "the activation arena would exceed 2^62 bytes (tensor '"
                                                        << net.tensor(t).name << "', " << size << " bytes)");
    plan.offsets[t] = offset;
    plan.sizes[t] = size;
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
  }
  return plan;
}

bool is_view_op(const std::string& op) { return has_trait(op, kView); }

int64_t slab_view_offset(const Network& net, const Layer& l) {
  if (l.op != "gather" || l.inputs.size() != 2 || l.outputs.size() != 1) return -1;
  const Tensor &x = net.tensor(l.inputs[0]), &index = net.tensor(l.inputs[1]);
  if (index.kind != TensorKind::kConstant || volume(index.dims) != 1 || !index.data) return -1;
  if (index.dtype != DataType::kInt64 && index.dtype != DataType::kInt32) return -1;
  if (!is_static(x.dims) || x.dims.empty()) return -1;
  const auto rank = static_cast<int64_t>(x.dims.size());
  int64_t axis = l.attrs.has("axis") ? l.attrs.get_int("axis", l.name) : 0;
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) return -1;
  for (int64_t d = 0; d < axis; ++d) {
    if (x.dims[d] != 1) return -1;
  }
  int64_t i = 0;
  if (index.dtype == DataType::kInt64) {
    std::memcpy(&i, index.data->data(), sizeof(int64_t));
  } else {
    int32_t v = 0;
    std::memcpy(&v, index.data->data(), sizeof(int32_t));
    i = v;
  }
  if (i < 0) i += x.dims[axis];
  if (i < 0 || i >= x.dims[axis]) return -1;
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < rank; ++d) inner *= x.dims[d];
  const int64_t bytes = i * inner * static_cast<int64_t>(dtype_size(x.dtype));
  return bytes % 256 == 0 ? bytes : -1;  // keeps the 256-byte alignment kernels may rely on
}

bool moves_only_unit_dims(const Network& net, const Layer& l) {
  if (l.op != "transpose" || l.inputs.size() != 1 || l.outputs.size() != 1) return false;
  const Dims& x = net.tensor(l.inputs[0]).dims;
  const std::vector<int64_t> perm = resolve_perm(l, static_cast<int64_t>(x.size()));
  int64_t last = -1;  // the input position of the previous dim that is not 1
  for (int64_t p : perm) {
    if (x[p] == 1) continue;  // kDynamic counts as not 1
    if (p < last) return false;
    last = p;
  }
  return true;
}

bool can_be_view(const Network& net, const Layer& l) {
  return is_view_op(l.op) || moves_only_unit_dims(net, l) || slab_view_offset(net, l) >= 0;
}

int64_t alias_offset(const Network& net, const Layer& l) {
  return l.op == "gather" ? slab_view_offset(net, l) : 0;
}

void validate_aliases(const Network& net) {
  for (const auto& l : net.layers()) {
    if (!is_alias_layer(l)) continue;
    KILN_CHECK(can_be_view(net, l) && l.outputs.size() == 1 && !l.inputs.empty(),
               describe(l) << ": only reshape, flatten, squeeze and unsqueeze layers, transposes that move "
                              "only size-1 dims, and gathers of one leading slab, can be views (alias = 1); "
                              "the plan is corrupt");
    KILN_CHECK(!net.is_output(l.outputs[0]),
               describe(l) << ": a network output cannot be a view (alias = 1); the plan is corrupt");
    KILN_CHECK(net.tensor(l.inputs[0]).dtype == net.tensor(l.outputs[0]).dtype,
               describe(l) << ": a view (alias = 1) must keep its input's dtype; the plan is corrupt");
  }
}

std::vector<int64_t> max_tensor_bytes(const Network& net, const std::vector<OptimizationProfile>& profiles) {
  std::vector<int64_t> bytes(net.tensors().size(), 0);
  auto account = [&](const std::map<std::string, Dims>& shapes) {
    std::vector<Dims> dims = infer_shapes(net, shapes);
    for (const auto& t : net.tensors()) {
      int64_t b = tensor_bytes(dims[t.id], dtype_size(t.dtype));
      bytes[t.id] = std::max(bytes[t.id], b);
    }
  };
  if (profiles.empty()) {
    account(profile_shapes(net, OptimizationProfile{}, "max"));
  }
  for (const auto& p : profiles) {
    for (const char* corner : {"min", "opt", "max"}) account(profile_shapes(net, p, corner));
  }
  return bytes;
}

void validate_memory_plan(const Network& net, const std::vector<OptimizationProfile>& profiles,
                          const MemoryPlan& memory) {
  const size_t n = net.tensors().size();
  KILN_CHECK(memory.offsets.size() == n && memory.sizes.size() == n,
             "plan memory section: " << memory.offsets.size() << " offsets for " << n
                                     << " tensors; the plan is corrupt");
  KILN_CHECK(
      memory.arena_bytes >= 0 && memory.arena_bytes <= kMaxArenaBytes,
      "plan memory section: arena size " << memory.arena_bytes << " is out of range; the plan is corrupt");
  validate_aliases(net);
  std::vector<Lifetime> life = activation_lifetimes(net);
  std::vector<int64_t> need = max_tensor_bytes(net, profiles);
  std::vector<size_t> placed;
  int64_t total = 0;
  for (size_t t = 0; t < n; ++t) {
    if (!life[t].in_arena) {
      KILN_CHECK(memory.offsets[t] == -1, "plan memory section: tensor '"
                                              << net.tensor(t).name
                                              << "' must not live in the arena; the plan is corrupt");
      continue;
    }
    int64_t off = memory.offsets[t], size = memory.sizes[t];
    // plan_memory reserves the tensor's largest size rounded up to its alignment, never more.
    KILN_CHECK(off >= 0 && size >= need[t] && size <= need[t] + kMaxPadding && size <= memory.arena_bytes &&
                   off <= memory.arena_bytes - size,
               "plan memory section: tensor '" << net.tensor(t).name
                                               << "' does not fit the arena; the plan is corrupt");
    total += size;
    placed.push_back(t);
  }
  KILN_CHECK(memory.arena_bytes <= total, "plan memory section: arena of "
                                              << memory.arena_bytes
                                              << " bytes is larger than all its tensors together (" << total
                                              << "); the plan is corrupt");
  for (size_t i = 0; i < placed.size(); ++i) {
    for (size_t j = i + 1; j < placed.size(); ++j) {
      size_t a = placed[i], b = placed[j];
      bool live_together = life[a].first <= life[b].last && life[b].first <= life[a].last;
      bool overlap = memory.offsets[a] < memory.offsets[b] + memory.sizes[b] &&
                     memory.offsets[b] < memory.offsets[a] + memory.sizes[a];
      KILN_CHECK(!(live_together && overlap && memory.sizes[a] > 0 && memory.sizes[b] > 0),
                 "plan memory section: tensors '" << net.tensor(a).name << "' and '" << net.tensor(b).name
                                                  << "' overlap while both are live; the plan is corrupt");
    }
  }
}

}  // namespace kiln
