// Reference elementwise binary op with broadcasting, computed in double and stored per dtype.
#include <algorithm>
#include <cmath>

#include "ir/error.h"
#include "kernels/broadcast.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/reference/pointwise_math.h"

namespace kiln {

double elementwise_reference(const std::string& op, double a, double b, bool integral) {
  if (op == "add") return a + b;
  if (op == "sub") return a - b;
  if (op == "mul") return a * b;
  if (op == "div") return integral ? (b == 0 ? 0 : std::trunc(a / b)) : a / b;  // C semantics for ints
  if (op == "floor_div") return integral && b == 0 ? 0 : std::floor(a / b);
  if (op == "pow") {
    if (integral && b < 0) return a == 1 ? 1 : a == -1 ? (std::fmod(b, 2) != 0 ? -1 : 1) : 0;
    return std::pow(a, b);
  }
  // torch.maximum / minimum: a NaN operand on either side gives NaN (std::max(a, b) drops a NaN b).
  if (op == "max") return a < b || std::isnan(b) ? b : a;
  if (op == "min") return a > b || std::isnan(b) ? b : a;
  if (op == "eq") return a == b;
  if (op == "ne") return a != b;
  if (op == "lt") return a < b;
  if (op == "le") return a <= b;
  if (op == "gt") return a > b;
  if (op == "ge") return a >= b;
  if (op == "and") return (a != 0) && (b != 0);
  if (op == "or") return (a != 0) || (b != 0);
  if (op == "xor") return (a != 0) != (b != 0);
  if (op == "atan2") return std::atan2(a, b);
  KILN_FAIL("elementwise: unknown op '" << op << "'");
}

namespace {

class RefElementwise final : public Kernel {
 public:
  explicit RefElementwise(std::string op) : op_(std::move(op)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& y = out[0];
    BroadcastIndexer ia = make_broadcast_indexer(in[0].dims, y.dims);
    BroadcastIndexer ib = make_broadcast_indexer(in[1].dims, y.dims);
    bool integral = !is_floating(in[0].dtype);
    int64_t n = volume(y.dims);
    for (int64_t i = 0; i < n; ++i) {
      int64_t oa = 0, ob = 0, rem = i;
      for (int d = ia.rank - 1; d >= 0; --d) {
        int64_t idx = rem % ia.out_dims[d];
        rem /= ia.out_dims[d];
        oa += idx * ia.in_strides[d];
        ob += idx * ib.in_strides[d];
      }
      store_element(y, i,
                    elementwise_reference(op_, load_element(in[0], oa), load_element(in[1], ob), integral));
    }
  }
  std::string name() const override { return "ref_elementwise_" + op_; }

 private:
  std::string op_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("elementwise", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefElementwise>(l.attrs.get_string("op", l.name));
  });
});

}  // namespace kiln
