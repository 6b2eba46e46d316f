// A kernel's per-shape objects (cuDNN descriptors and algorithms, graph plans), made once per input
// shape, workspace size and variant and kept in the kernel. Kernels are shared between execution
// contexts, so lookups and inserts hold a mutex; the object itself is made outside the lock (it
// may take milliseconds), and when two threads race for one key the first insert wins and both use
// it (the entries are equivalent).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace kiln {

template <typename T>
class ShapeCache {
 public:
  // The entry for (dims, workspace_bytes, variant), made by `make` (returning std::unique_ptr<T>) on
  // a miss. A null from `make` is cached too: later calls do not try again.
  template <typename Make>
  const T* get(const std::vector<int64_t>& dims, size_t workspace_bytes, int64_t variant,
               const Make& make) const {
    std::vector<int64_t> key = dims;
    key.push_back(static_cast<int64_t>(workspace_bytes));
    key.push_back(variant);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) return it->second.get();
    }
    std::unique_ptr<T> made = make();
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.emplace(std::move(key), std::move(made)).first->second.get();
  }

 private:
  mutable std::mutex mutex_;
  mutable std::map<std::vector<int64_t>, std::unique_ptr<T>> entries_;
};

}  // namespace kiln
