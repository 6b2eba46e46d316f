// Strides for reading an input broadcast to an output shape: 0 along broadcast dims.
#pragma once

#include <cstdint>

#include "ir/dims.h"

namespace kiln {

struct BroadcastIndexer {
  int rank = 0;
  int64_t out_dims[kMaxRank] = {};
  int64_t in_strides[kMaxRank] = {};  // element strides of the input, 0 where broadcast
};

inline BroadcastIndexer make_broadcast_indexer(const Dims& in, const Dims& out) {
  BroadcastIndexer b;
  b.rank = static_cast<int>(out.size());
  int offset = b.rank - static_cast<int>(in.size());
  int64_t stride = 1;
  for (int i = b.rank - 1; i >= 0; --i) {
    b.out_dims[i] = out[i];
    int j = i - offset;
    if (j >= 0 && in[j] != 1) {
      b.in_strides[i] = stride;
      stride *= in[j];
    } else {
      b.in_strides[i] = 0;
      if (j >= 0) stride *= in[j];
    }
  }
  return b;
}

}  // namespace kiln
