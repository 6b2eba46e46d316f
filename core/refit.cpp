#include "core/refit.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "ir/error.h"

namespace kiln {
namespace {

std::string listed(const std::vector<std::string>& names) {
  std::ostringstream s;
  for (size_t i = 0; i < names.size() && i < 8; ++i) s << (i ? ", " : "") << "'" << names[i] << "'";
  if (names.size() > 8) s << " and " << names.size() - 8 << " more";
  return s.str();
}

void collect_sources(const Lineage& l, std::vector<const Lineage*>* out, std::set<const Lineage*>* seen) {
  if (!seen->insert(&l).second) return;
  if (l.transform == "source") out->push_back(&l);
  for (const auto& in : l.inputs) collect_sources(*in, out, seen);
}

void check_replayable(const Lineage& l) {
  if (!l.blocked.empty()) {
    std::vector<const Lineage*> sources;
    std::set<const Lineage*> seen;
    collect_sources(l, &sources, &seen);
    std::vector<std::string> names;
    for (const Lineage* s : sources) names.push_back(s->name);
    KILN_FAIL("refit: weight(s) " << listed(names) << " cannot be refitted: " << l.blocked
                                  << "; rebuild the engine instead");
  }
  for (const auto& in : l.inputs) check_replayable(*in);
}

ConstantValue evaluate(const Lineage& l, const std::map<std::string, ConstantValue>& weights,
                       std::unordered_map<const Lineage*, ConstantValue>& memo) {
  if (l.transform == "source") {
    auto w = weights.find(l.name);
    KILN_CHECK(w != weights.end(),
               "refit: weight '" << l.name << "' is needed on the host: a transform reads it");
    return w->second;
  }
  if (l.transform == "literal") return {l.dtype, l.dims, l.literal};
  auto it = memo.find(&l);
  if (it != memo.end()) return it->second;
  std::vector<ConstantValue> in;
  for (const auto& x : l.inputs) in.push_back(evaluate(*x, weights, memo));
  ConstantValue v = apply_weight_transform(l, in);
  KILN_CHECK(v.dtype == l.dtype && v.dims == l.dims,
             "refit: transform '" << l.transform << "' gave " << dtype_name(v.dtype) << " "
                                  << to_string(v.dims) << " where the plan has " << dtype_name(l.dtype) << " "
                                  << to_string(l.dims) << "; the plan is corrupt");
  memo.emplace(&l, v);
  return v;
}

}  // namespace

std::vector<WeightSpec> refittable_weights(const Network& net) {
  std::vector<const Lineage*> sources;
  std::set<const Lineage*> seen;
  for (const auto& t : net.tensors()) {
    if (t.kind == TensorKind::kConstant && t.lineage) collect_sources(*t.lineage, &sources, &seen);
  }
  std::map<std::string, WeightSpec> by_name;
  for (const Lineage* s : sources) {
    auto [it, inserted] = by_name.emplace(s->name, WeightSpec{s->name, s->dtype, s->dims});
    KILN_CHECK(inserted || (it->second.dtype == s->dtype && it->second.dims == s->dims),
               "refit: weight '" << s->name << "' appears as " << dtype_name(it->second.dtype) << " "
                                 << to_string(it->second.dims) << " and as " << dtype_name(s->dtype) << " "
                                 << to_string(s->dims) << "; the plan is corrupt");
  }
  std::vector<WeightSpec> out;
  for (auto& kv : by_name) out.push_back(std::move(kv.second));
  return out;
}

void refit_plan(Plan& plan, const std::map<std::string, ConstantValue>& weights) {
  for (auto& [id, data] : replay_weights(plan.network, weights))
    plan.network.tensor(id).data = std::move(data);
  KILN_CHECK(!plan.weights_stripped(), "refit: some constants still have no bytes; the plan is corrupt");
  plan.network.revalidate();  // small constants' values, now that they have bytes
}

std::set<std::string> host_read_weights(const Network& net) {
  std::set<std::string> out;
  std::set<const Lineage*> seen;
  for (const auto& t : net.tensors()) {
    if (t.kind != TensorKind::kConstant || !t.lineage || t.lineage->transform == "source") continue;
    std::vector<const Lineage*> sources;
    collect_sources(*t.lineage, &sources, &seen);
    for (const Lineage* s : sources) out.insert(s->name);
  }
  return out;
}

std::vector<std::pair<TensorId, Bytes>> replay_weights(const Network& net,
                                                       const std::map<std::string, ConstantValue>& weights) {
  return replay_weights(net, weights, {}, nullptr);
}

std::vector<std::pair<TensorId, Bytes>> replay_weights(
    const Network& net, const std::map<std::string, ConstantValue>& weights,
    const std::set<std::string>& on_device, std::vector<std::pair<TensorId, std::string>>* direct) {
  const std::vector<WeightSpec> specs = refittable_weights(net);
  KILN_CHECK(!specs.empty(),
             "refit: this engine has no refittable weights (it was built from a network whose "
             "constants no frontend marked as weights, or by a Kiln without refit); rebuild it "
             "with this Kiln");
  std::vector<std::string> missing, unknown, reshaped;
  std::set<std::string> known;
  for (const auto& s : specs) {
    known.insert(s.name);
    auto it = weights.find(s.name);
    if (it == weights.end()) {
      if (!on_device.count(s.name)) missing.push_back(s.name);
    } else if (it->second.dtype != s.dtype || it->second.dims != s.dims) {
      reshaped.push_back(s.name + " (" + dtype_name(it->second.dtype) + " " + to_string(it->second.dims) +
                         " given, the engine has " + dtype_name(s.dtype) + " " + to_string(s.dims) + ")");
    } else {
      KILN_CHECK(it->second.has_bytes() &&
                     it->second.size() == static_cast<size_t>(tensor_bytes(s.dims, dtype_size(s.dtype))),
                 "refit: the bytes of weight '" << s.name << "' do not match its shape");
    }
  }
  for (const auto& kv : weights) {
    if (!known.count(kv.first)) unknown.push_back(kv.first);
  }
  for (const auto& name : on_device) {
    if (!known.count(name)) unknown.push_back(name);
  }
  KILN_CHECK(missing.empty(), "refit: " << missing.size()
                                        << " weight(s) of the engine not given: " << listed(missing)
                                        << "; pass every weight (Engine.refittable_weights() lists them)");
  KILN_CHECK(
      unknown.empty(),
      "refit: " << unknown.size() << " weight(s) given that the engine does not have: " << listed(unknown));
  KILN_CHECK(reshaped.empty(), "refit: " << reshaped.size() << " weight(s) with another shape or dtype: "
                                         << listed(reshaped) << "; a new shape needs a rebuild");

  // Blocked lineages first, so that a refused refit computes nothing.
  std::vector<std::pair<TensorId, const Lineage*>> entries;
  for (const auto& t : net.tensors()) {
    if (t.kind != TensorKind::kConstant || !t.lineage) continue;
    const Lineage& l = *t.lineage;
    if (l.transform == "source" && !weights.count(l.name) && on_device.count(l.name)) {
      KILN_CHECK(direct != nullptr, "refit: weight '" << l.name << "' is not on the host");
      direct->emplace_back(t.id, l.name);
      continue;
    }
    entries.emplace_back(t.id, &l);
  }
  for (const auto& [id, lineage] : entries) check_replayable(*lineage);
  // Largest first: the threads finish together instead of one starting the biggest weight last
  // (resnet50's 3x3 convolutions of layer4 are a tenth of its bytes each).
  std::stable_sort(entries.begin(), entries.end(), [&](const auto& a, const auto& b) {
    return tensor_bytes(a.second->dims, dtype_size(a.second->dtype)) >
           tensor_bytes(b.second->dims, dtype_size(b.second->dtype));
  });

  // The constants are independent: threads take them in turn (each with its own memo; the
  // sources are shared and free to read).
  std::vector<std::pair<TensorId, Bytes>> out(entries.size());
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto work = [&] {
    std::unordered_map<const Lineage*, ConstantValue> memo;
    try {
      for (size_t i = next++; i < entries.size(); i = next++) {
        out[i] = {entries[i].first, evaluate(*entries[i].second, weights, memo).owned()};
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = entries.size();
    }
  };
  const size_t threads =
      std::min<size_t>({entries.size(), std::max(1u, std::thread::hardware_concurrency()), size_t{16}});
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
  return out;
}

}  // namespace kiln
