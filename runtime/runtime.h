// What libkiln_runtime offers to other Kiln libraries that build TorchScript modules (the
// TorchScript frontend, libkiln_torchscript): Engine objects to store as module attributes.
// Apps that only run saved modules need no header: the class and op register themselves.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/jit_type.h>

#include "core/plan.h"
#include "ir/dtype.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln::runtime {

using kiln::DataType;
using kiln::Plan;

// A torch.classes.kiln.Engine running `plan` on `backend` ("cuda" or "reference"); `device` < 0
// is the current CUDA device. Throws c10::Error with Kiln's message when the plan does not load.
// `cuda_graphs` false: the engine launches plainly instead of replaying CUDA graphs.
// Built from the plan in memory: no serialize/parse round trip.
c10::IValue make_engine(Plan plan, const std::string& backend, int64_t device = -1, bool cuda_graphs = true);

// Kiln's dtypes and torch's scalar types, both ways (nullopt: a torch dtype Kiln lacks).
at::ScalarType torch_dtype(DataType t);
std::optional<DataType> kiln_dtype(at::ScalarType t);

// The TorchScript type of those objects (__torch__.torch.classes.kiln.Engine).
c10::ClassTypePtr engine_type();

// The op that runs an engine: kiln::execute_engine(Tensor[] inputs, Engine engine) -> Tensor[].
constexpr const char* kExecuteEngineOp = "kiln::execute_engine";

}  // namespace kiln::runtime
