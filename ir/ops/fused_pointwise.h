// fused_pointwise: a chain of pointwise layers (elementwise, activation, unary, cast, where) run
// as one program over registers, one element at a time. Built by the fuse_pointwise pass; every
// instruction has exactly the semantics (dtype rules, validation, rounding) of the layer it came
// from, so running the program equals running the original layers.
//
// Attributes:
//   `program` (string): instructions separated by ';'. Instruction i defines register %i.
//       input K DTYPE                    input K of the layer, which must be of DTYPE
//       const DTYPE VALUE                a scalar of DTYPE (VALUE exact as %.17g)
//       elementwise OP %A %B             as the elementwise layer with `op` = OP
//       activation TYPE ALPHA BETA THRESHOLD %A   as the activation layer (all params explicit)
//       unary OP %A                      as the unary layer
//       cast DTYPE %A                    as the cast layer with `to` = DTYPE
//       where %C %A %B                   as the where layer
//   `outputs` (ints): the register of each layer output, in order.
//   `fused` (string, informational): the original layer names, comma-separated.
//   `cubin` / `cubin_arch` (CUDA plans): the compiled kernel (base64) and the sm it was built for.
// Registers hold float32, float16, bfloat16, int32 or bool values; a register of a reduced float
// dtype is rounded to that dtype after each instruction, exactly as the unfused layers store it.
#pragma once

#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

constexpr int kMaxFusedInputs = 16;
constexpr int kMaxFusedOutputs = 8;
constexpr int kMaxFusedInstructions = 512;

struct PointwiseInstr {
  std::string kind;       // input, const, elementwise, activation, unary, cast, where
  std::string op;         // elementwise/unary op, activation type, input/const/cast dtype name
  std::vector<int> args;  // operand registers
  int input = -1;         // input: the layer input it loads
  double value = 0.0;     // const
  double alpha = 0.0, beta = 0.0, threshold = 0.0;  // activation
};

struct PointwiseProgram {
  std::vector<PointwiseInstr> code;
  std::vector<int> outputs;  // register per layer output
};

// Parses and checks the syntax of a fused_pointwise layer's program (operands refer to earlier
// registers, outputs exist); errors name the layer.
PointwiseProgram parse_pointwise_program(const Layer& layer);
std::string format_pointwise_instr(const PointwiseInstr& ins);
std::string format_pointwise_program(const std::vector<PointwiseInstr>& code);

// The single-op layer instruction `index` stands for (op and attributes), named after `fused`.
Layer pointwise_instr_layer(const Layer& fused, const PointwiseInstr& ins, int index);

// dtype and dims of every register for the given layer inputs; validates each instruction with
// the schema of its op, and refuses dtypes a fused program cannot hold.
std::vector<TensorDesc> infer_pointwise_registers(const Layer& layer, const PointwiseProgram& program,
                                                  const std::vector<TensorDesc>& inputs);

// The dtype of every register, from the dtypes the program declares for its inputs.
std::vector<DataType> pointwise_register_dtypes(const Layer& layer, const PointwiseProgram& program);

// True for the dtypes a fused_pointwise register may hold.
bool fusable_pointwise_dtype(DataType t);

// The activation parameters with the activation layer's defaults filled in.
void activation_params(const Layer& activation, double* alpha, double* beta, double* threshold);

}  // namespace kiln
