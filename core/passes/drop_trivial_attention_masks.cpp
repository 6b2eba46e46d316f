// drop_trivial_attention_masks: a mask that hides nothing goes.
//
//   attention(q, k, v, mask)  with mask a constant bool tensor, all true     -> attention(q, k, v)
//   attention(q, k, v, mask)  with mask a constant additive tensor, all zero -> attention(q, k, v)
//   (packed_attention likewise)
//
// torch.export bakes BERT's padding mask for a batch without padding into such a constant; reading
// and broadcasting it costs a load per score. Exact: an all-true mask keeps every score and adding
// +-0 changes none. causal is never set together with a mask (the schema refuses it), so nothing
// else changes meaning.
#include <cstring>

#include "core/passes/passes.h"
#include "core/weight_transforms.h"

namespace kiln {
namespace {

// Every element of constant `t` attends: true (bool) or +-0 (floating).
bool hides_nothing(const Tensor& t) {
  if (t.kind != TensorKind::kConstant || !t.data || derives_from_weight(t)) return false;
  const std::vector<uint8_t>& bytes = *t.data;
  if (t.dtype == DataType::kBool) {
    for (uint8_t b : bytes) {
      if (b == 0) return false;
    }
    return true;
  }
  const size_t size = dtype_size(t.dtype);
  if (!is_floating(t.dtype) || (size != 2 && size != 4)) return false;
  for (size_t i = 0; i < bytes.size(); i += size) {
    uint32_t bits = 0;
    std::memcpy(&bits, bytes.data() + i, size);
    const uint32_t magnitude = size == 4 ? bits & 0x7fffffffu : bits & 0x7fffu;  // the sign bit aside
    if (magnitude != 0) return false;
  }
  return true;
}

}  // namespace

bool drop_trivial_attention_masks(Network& net) {
  bool changed = false;
  for (auto& l : net.mutable_layers()) {
    const size_t mask_at = l.op == "attention" ? 3 : l.op == "packed_attention" ? 1 : 0;
    if (mask_at == 0 || l.inputs.size() != mask_at + 1 || !hides_nothing(net.tensor(l.inputs[mask_at])))
      continue;
    l.inputs.pop_back();
    changed = true;
  }
  if (changed) net.compact();
  return changed;
}

}  // namespace kiln
