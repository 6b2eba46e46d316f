// Shared by the matmul kernels: a matmul layer's operands as batched matrices. Vector operands of
// torch.matmul become [1, K] / [K, 1] matrices and the output gets those dims back, so kernels
// only ever see rank >= 2 with transposes already resolved for vectors.
#pragma once

#include "kernels/kernel.h"

namespace kiln {

struct MatmulProblem {
  TensorView a, b, c;  // rank >= 2; c's batch dims are the broadcast of a's and b's
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
};

inline MatmulProblem matmul_problem(const TensorView& a, const TensorView& b, const TensorView& c, bool ta,
                                    bool tb) {
  MatmulProblem p{a, b, c, ta && a.dims.size() > 1, tb && b.dims.size() > 1};
  if (a.dims.size() == 1) p.a.dims = {1, a.dims[0]};
  if (b.dims.size() == 1) p.b.dims = {b.dims[0], 1};
  const size_t ra = p.a.dims.size(), rb = p.b.dims.size();
  p.m = p.ta ? p.a.dims[ra - 1] : p.a.dims[ra - 2];
  p.k = p.ta ? p.a.dims[ra - 2] : p.a.dims[ra - 1];
  p.n = p.tb ? p.b.dims[rb - 2] : p.b.dims[rb - 1];
  Dims cd = c.dims;
  if (a.dims.size() == 1) cd.insert(cd.end() - (b.dims.size() == 1 ? 0 : 1), 1);
  if (b.dims.size() == 1) cd.push_back(1);
  p.c.dims = cd;
  return p;
}

}  // namespace kiln
