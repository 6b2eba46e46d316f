// fused_pointwise schema: parses the program, validates every instruction with the schema of the
// op it stands for, and returns the dtype and shape of the output registers. See the header.
#include "ir/ops/fused_pointwise.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/activation.h"

namespace kiln {
namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  return parts;
}

std::vector<std::string> tokens(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  std::string t;
  while (in >> t) out.push_back(t);
  return out;
}

double parse_number(const std::string& who, const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  KILN_CHECK(!text.empty() && end == text.c_str() + text.size(),
             who << ": '" << text << "' in the program is not a number");
  return v;
}

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

int parse_register(const std::string& who, const std::string& text, int defined) {
  KILN_CHECK(text.size() >= 2 && text[0] == '%', who << ": expected a register (%N), got '" << text << "'");
  double v = parse_number(who, text.substr(1));
  // Range first: converting a double outside int's range (1e300, nan) is undefined behavior.
  KILN_CHECK(v >= 0 && v < defined && v == static_cast<int>(v),
             who << ": register " << text << " is not defined before instruction " << defined);
  return static_cast<int>(v);
}

DataType parse_instr_dtype(const std::string& who, const PointwiseInstr& ins, size_t index) {
  for (int i = 0; i < kNumDataTypes; ++i) {
    if (ins.op == dtype_name(static_cast<DataType>(i))) return static_cast<DataType>(i);
  }
  KILN_FAIL(who << ": instruction " << index << " has unknown dtype '" << ins.op << "'");
}

std::vector<TensorDesc> infer_fused_pointwise(const Layer& layer, const std::vector<TensorDesc>& in) {
  PointwiseProgram program = parse_pointwise_program(layer);
  std::vector<TensorDesc> regs = infer_pointwise_registers(layer, program, in);
  std::vector<TensorDesc> out;
  for (int r : program.outputs) out.push_back({regs[r].dtype, regs[r].dims, nullptr});
  return out;
}

}  // namespace

bool fusable_pointwise_dtype(DataType t) {
  return t == DataType::kFloat32 || t == DataType::kFloat16 || t == DataType::kBFloat16 ||
         t == DataType::kInt32 || t == DataType::kBool;
}

void activation_params(const Layer& l, double* alpha, double* beta, double* threshold) {
  std::string type = l.attrs.get_string("type", describe(l));
  const ActivationAttrs a = activation_attrs(type, l.attrs);
  *alpha = a.alpha;
  *beta = a.beta;
  *threshold = a.threshold;
}

PointwiseProgram parse_pointwise_program(const Layer& layer) {
  const std::string who = describe(layer);
  PointwiseProgram p;
  std::vector<std::string> lines = split(layer.attrs.get_string("program", who), ';');
  KILN_CHECK(
      static_cast<int>(lines.size()) <= kMaxFusedInstructions,
      who << ": the program has " << lines.size() << " instructions, at most " << kMaxFusedInstructions);
  for (const std::string& line : lines) {
    const int index = static_cast<int>(p.code.size());
    std::vector<std::string> t = tokens(line);
    KILN_CHECK(!t.empty(), who << ": instruction " << index << " of the program is empty");
    PointwiseInstr ins;
    ins.kind = t[0];
    auto expect = [&](size_t n) {
      KILN_CHECK(t.size() == n,
                 who << ": instruction " << index << " '" << line << "' takes " << n - 1 << " operands");
    };
    auto reg = [&](size_t i) { return parse_register(who, t[i], index); };
    if (ins.kind == "input") {
      expect(3);
      double k = parse_number(who, t[1]);
      KILN_CHECK(k >= 0 && k < kMaxFusedInputs && k == static_cast<int>(k),
                 who << ": instruction " << index << " loads input " << t[1] << ", which is out of range");
      ins.input = static_cast<int>(k);
      ins.op = t[2];
    } else if (ins.kind == "const") {
      expect(3);
      ins.op = t[1];
      ins.value = parse_number(who, t[2]);
    } else if (ins.kind == "elementwise") {
      expect(4);
      ins.op = t[1];
      ins.args = {reg(2), reg(3)};
    } else if (ins.kind == "activation") {
      expect(6);
      ins.op = t[1];
      ins.alpha = parse_number(who, t[2]);
      ins.beta = parse_number(who, t[3]);
      ins.threshold = parse_number(who, t[4]);
      ins.args = {reg(5)};
    } else if (ins.kind == "unary" || ins.kind == "cast") {
      expect(3);
      ins.op = t[1];
      ins.args = {reg(2)};
    } else if (ins.kind == "where") {
      expect(4);
      ins.args = {reg(1), reg(2), reg(3)};
    } else {
      KILN_FAIL(who << ": unknown instruction '" << ins.kind << "' in the program (use input, const, "
                    << "elementwise, activation, unary, cast, where)");
    }
    p.code.push_back(std::move(ins));
  }
  std::vector<int64_t> outs = layer.attrs.get_ints("outputs", who);
  KILN_CHECK(!outs.empty() && static_cast<int>(outs.size()) <= kMaxFusedOutputs,
             who << ": `outputs` must list 1 to " << kMaxFusedOutputs << " registers, got " << outs.size());
  for (int64_t r : outs) {
    KILN_CHECK(r >= 0 && r < static_cast<int64_t>(p.code.size()),
               who << ": output register " << r << " is not defined by the program");
    p.outputs.push_back(static_cast<int>(r));
  }
  return p;
}

std::string format_pointwise_instr(const PointwiseInstr& ins) {
  std::string s = ins.kind;
  if (ins.kind == "input") return s + " " + std::to_string(ins.input) + " " + ins.op;
  if (ins.kind == "const") return s + " " + ins.op + " " + format_number(ins.value);
  if (!ins.op.empty()) s += " " + ins.op;
  if (ins.kind == "activation") {
    s += " " + format_number(ins.alpha) + " " + format_number(ins.beta) + " " + format_number(ins.threshold);
  }
  for (int a : ins.args) s += " %" + std::to_string(a);
  return s;
}

std::string format_pointwise_program(const std::vector<PointwiseInstr>& code) {
  std::string s;
  for (size_t i = 0; i < code.size(); ++i) s += (i ? "; " : "") + format_pointwise_instr(code[i]);
  return s;
}

Layer pointwise_instr_layer(const Layer& fused, const PointwiseInstr& ins, int index) {
  Layer l;
  l.name = fused.name + "/%" + std::to_string(index);
  l.op = ins.kind;
  if (ins.kind == "elementwise" || ins.kind == "unary") {
    l.attrs.set("op", ins.op);
  } else if (ins.kind == "activation") {
    l.attrs.set("type", ins.op).set("alpha", ins.alpha).set("beta", ins.beta).set("threshold", ins.threshold);
  } else if (ins.kind == "cast") {
    l.attrs.set("to", ins.op);
  }
  return l;
}

std::vector<TensorDesc> infer_pointwise_registers(const Layer& layer, const PointwiseProgram& program,
                                                  const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::vector<TensorDesc> regs;
  for (size_t i = 0; i < program.code.size(); ++i) {
    const PointwiseInstr& ins = program.code[i];
    TensorDesc d;
    if (ins.kind == "input") {
      KILN_CHECK(ins.input < static_cast<int>(in.size()), who << ": instruction " << i << " loads input "
                                                              << ins.input << " but the layer has "
                                                              << in.size() << " inputs");
      KILN_CHECK(in[ins.input].dtype == parse_instr_dtype(who, ins, i),
                 who << ": input " << ins.input << " is " << dtype_name(in[ins.input].dtype)
                     << " but the program loads it as " << ins.op);
      d = {in[ins.input].dtype, in[ins.input].dims, nullptr};
    } else if (ins.kind == "const") {
      d = {parse_instr_dtype(who, ins, i), {}, nullptr};
    } else {
      std::vector<TensorDesc> args;
      for (int a : ins.args) args.push_back({regs[a].dtype, regs[a].dims, nullptr});
      d = infer_layer(pointwise_instr_layer(layer, ins, static_cast<int>(i)), args)[0];
      d.values = nullptr;
    }
    KILN_CHECK(fusable_pointwise_dtype(d.dtype), who << ": register %" << i << " would be "
                                                     << dtype_name(d.dtype)
                                                     << "; fused programs hold float32, float16, bfloat16, "
                                                        "int32 and bool values only");
    regs.push_back(std::move(d));
  }
  std::vector<char> loaded(in.size(), 0);
  for (const auto& ins : program.code) {
    if (ins.kind == "input") loaded[ins.input] = 1;
  }
  for (size_t k = 0; k < in.size(); ++k) {
    KILN_CHECK(loaded[k], who << ": input " << k << " is never loaded by the program; drop it");
  }
  return regs;
}

std::vector<DataType> pointwise_register_dtypes(const Layer& layer, const PointwiseProgram& program) {
  std::vector<TensorDesc> in(layer.inputs.size(), TensorDesc{DataType::kFloat32, {}, nullptr});
  for (size_t i = 0; i < program.code.size(); ++i) {
    const PointwiseInstr& ins = program.code[i];
    if (ins.kind == "input" && ins.input < static_cast<int>(in.size())) {
      in[ins.input].dtype = parse_instr_dtype(describe(layer), ins, i);
    }
  }
  std::vector<DataType> dtypes;
  for (const auto& d : infer_pointwise_registers(layer, program, in)) dtypes.push_back(d.dtype);
  return dtypes;
}

namespace {

const std::vector<AttrSpec> kFusedPointwiseAttributes = {
    {"program", AttrType::kString, std::nullopt,
     "required: ';'-separated instructions (see fused_pointwise.h)"},
    {"outputs", AttrType::kInts, std::nullopt, "required: the register of each layer output (1 to 8)"},
    {"fused", AttrType::kString, std::nullopt,
     "set by the builder (fuse_pointwise): the original layer names, informational; absent: the layer's own "
     "name"},
    {"cubin", AttrType::kString, std::nullopt,
     "set by the builder (cuda_fused_pointwise, in CUDA plans): the compiled kernel, base64"},
    {"cubin_arch", AttrType::kInt, AttrValue{int64_t{-1}},
     "set by the builder (cuda_fused_pointwise, in CUDA plans): the sm `cubin` was built for; -1 none"},
    {"cubin_key", AttrType::kString, std::nullopt,
     "set by the builder (cuda_fused_pointwise, in CUDA plans): the hash of the source `cubin` was compiled "
     "from"},
};

const SchemaRegistration kRegistered{
    {"fused_pointwise", 1, kMaxFusedInputs, infer_fused_pointwise, kFusedPointwiseAttributes},
};

}  // namespace

}  // namespace kiln
