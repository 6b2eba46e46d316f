// Reference fused_pointwise: interprets the program element by element. Registers hold doubles;
// after each instruction a register is rounded exactly as store_element would store it in its
// dtype (float32, float16, bfloat16, int32, bool), so the result equals running the original
// layers one after another on the reference backend.
#include <functional>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/fused_pointwise.h"
#include "kernels/broadcast.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/reference/pointwise_math.h"

namespace kiln {
namespace {

// The value `v` becomes when stored in dtype `t` and read back.
double round_to(DataType t, double v) {
  switch (t) {
    case DataType::kFloat32:
      return static_cast<float>(v);
    case DataType::kFloat16:
      return half_bits_to_float(float_to_half_bits(static_cast<float>(v)));
    case DataType::kBFloat16:
      return bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(v)));
    case DataType::kInt32:
      return truncate_to_int<int32_t>(v);
    case DataType::kBool:
      return v != 0 ? 1.0 : 0.0;
    default:
      KILN_FAIL("fused_pointwise: dtype " << dtype_name(t) << " cannot be held in a register");
  }
}

struct Step {
  std::function<double(const double*)> eval;  // reads earlier registers
};

class RefFusedPointwise final : public Kernel {
 public:
  explicit RefFusedPointwise(const Layer& layer) : layer_(layer), program_(parse_pointwise_program(layer)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    std::vector<TensorDesc> descs;
    for (const auto& t : in) descs.push_back({t.dtype, t.dims, nullptr});
    std::vector<TensorDesc> regs = infer_pointwise_registers(layer_, program_, descs);
    // The iteration space: every register broadcasts to it.
    Dims space;
    for (const auto& r : regs) {
      Dims next;
      KILN_CHECK(broadcast_shapes(space, r.dims, &next), describe(layer_) << ": registers do not broadcast");
      space = next;
    }
    std::vector<Step> steps = compile(regs);
    std::vector<BroadcastIndexer> in_index, out_index;
    for (const auto& t : in) in_index.push_back(make_broadcast_indexer(t.dims, space));
    for (const auto& t : out) out_index.push_back(make_broadcast_indexer(t.dims, space));
    const int rank = static_cast<int>(space.size());
    const int64_t n = volume(space);
    std::vector<double> r(program_.code.size());
    std::vector<int64_t> in_off(in.size()), out_off(out.size());
    for (int64_t i = 0; i < n; ++i) {
      std::fill(in_off.begin(), in_off.end(), 0);
      std::fill(out_off.begin(), out_off.end(), 0);
      int64_t rem = i;
      for (int d = rank - 1; d >= 0; --d) {
        int64_t idx = rem % space[d];
        rem /= space[d];
        for (size_t k = 0; k < in.size(); ++k) in_off[k] += idx * in_index[k].in_strides[d];
        for (size_t k = 0; k < out.size(); ++k) out_off[k] += idx * out_index[k].in_strides[d];
      }
      for (size_t j = 0; j < program_.code.size(); ++j) {
        const PointwiseInstr& ins = program_.code[j];
        double v =
            ins.kind == "input" ? load_element(in[ins.input], in_off[ins.input]) : steps[j].eval(r.data());
        r[j] = round_to(regs[j].dtype, v);
      }
      for (size_t k = 0; k < out.size(); ++k) store_element(out[k], out_off[k], r[program_.outputs[k]]);
    }
  }
  std::string name() const override { return "ref_fused_pointwise"; }

 private:
  std::vector<Step> compile(const std::vector<TensorDesc>& regs) const {
    std::vector<Step> steps;
    for (const PointwiseInstr& ins : program_.code) {
      const std::vector<int> a = ins.args;
      Step s;
      if (ins.kind == "input") {
        s.eval = [](const double*) { return 0.0; };  // loaded in run()
      } else if (ins.kind == "const") {
        double v = ins.value;
        s.eval = [v](const double*) { return v; };
      } else if (ins.kind == "elementwise") {
        bool integral = !is_floating(regs[a[0]].dtype);
        std::string op = ins.op;
        s.eval = [op, integral, a](const double* r) {
          return elementwise_reference(op, r[a[0]], r[a[1]], integral);
        };
      } else if (ins.kind == "activation" || ins.kind == "unary") {
        auto f = ins.kind == "activation" ? activation_fn(ins.op, ins.alpha, ins.beta, ins.threshold)
                                          : unary_fn(ins.op);
        s.eval = [f, a](const double* r) { return f(r[a[0]]); };
      } else if (ins.kind == "cast") {
        s.eval = [a](const double* r) { return r[a[0]]; };  // rounded to the target dtype by run()
      } else {                                              // where
        s.eval = [a](const double* r) { return r[a[0]] != 0 ? r[a[1]] : r[a[2]]; };
      }
      steps.push_back(std::move(s));
    }
    return steps;
  }

  Layer layer_;
  PointwiseProgram program_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("fused_pointwise", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefFusedPointwise>(l); });
});

}  // namespace kiln
