// Reference matmul and fully_connected: naive triple loops, accumulating in double.
#include "kernels/broadcast.h"
#include "kernels/kernel.h"
#include "kernels/matmul_views.h"
#include "kernels/reference/activation_fn.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class RefMatmul final : public Kernel {
 public:
  RefMatmul(bool ta, bool tb) : ta_(ta), tb_(tb) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const MatmulProblem p = matmul_problem(in[0], in[1], out[0], ta_, tb_);
    const TensorView &a = p.a, &b = p.b, &c = p.c;
    const bool ta = p.ta, tb = p.tb;
    const int64_t m = p.m, n = p.n, k = p.k;
    Dims batch_c(c.dims.begin(), c.dims.end() - 2);
    Dims batch_a(a.dims.begin(), a.dims.end() - 2), batch_b(b.dims.begin(), b.dims.end() - 2);
    BroadcastIndexer ia = make_broadcast_indexer(batch_a, batch_c);
    BroadcastIndexer ib = make_broadcast_indexer(batch_b, batch_c);
    int64_t batches = volume(batch_c);
    for (int64_t bi = 0; bi < batches; ++bi) {
      int64_t oa = 0, ob = 0, rem = bi;
      for (int d = ia.rank - 1; d >= 0; --d) {
        int64_t idx = rem % ia.out_dims[d];
        rem /= ia.out_dims[d];
        oa += idx * ia.in_strides[d];
        ob += idx * ib.in_strides[d];
      }
      oa *= m * k;
      ob *= k * n;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t q = 0; q < k; ++q) {
            double x = load_element(a, oa + (ta ? q * m + i : i * k + q));
            double y = load_element(b, ob + (tb ? j * k + q : q * n + j));
            acc += x * y;
          }
          store_element(c, bi * m * n + i * n + j, acc);
        }
      }
    }
  }
  std::string name() const override { return "ref_matmul"; }

 private:
  bool ta_, tb_;
};

// y = activation(x [..., K] @ weight[N, K]^T + bias) + residual; FP8: the product times
// input_scale * weight_scale (float8 operands read as their values); INT8 (quantized): the int8
// sum (exact in the double) times scale[n], plus bias[n], from input 2 [2, N], and y requantized
// to int8 (output_inv_scale) after rounding to out_dtype; FP8 with output_inv_scale: y float8, the
// value rounded to out_dtype times output_inv_scale (what the quantize it replaced computed).
class RefFullyConnected final : public Kernel {
 public:
  explicit RefFullyConnected(const Layer& l)
      : residual_(l.attrs.get_int("residual", int64_t{0}) != 0),
        activation_(l.attrs.has("activation") ? l.attrs.get_string("activation", l.name) : "none") {
    if (activation_ != "none") act_ = reference_activation(activation_, l.attrs);
    quantized_ = l.attrs.get_int("quantized", int64_t{0}) != 0;
    if (quantized_) {
      rounding_ = parse_dtype(l.attrs.get_string("out_dtype", l.name));
      requantize_ = l.attrs.has("output_inv_scale");
      inv_scale_ = static_cast<float>(l.attrs.get_float("output_inv_scale", 0.0));
      q_lo_ = l.attrs.get_int("output_quant_min", int64_t{-128});
      q_hi_ = l.attrs.get_int("output_quant_max", int64_t{127});
    } else if (l.attrs.has("out_dtype")) {
      scale_ = static_cast<double>(static_cast<float>(l.attrs.get_float("input_scale", l.name)) *
                                   static_cast<float>(l.attrs.get_float("weight_scale", l.name)));
      // FP8 writing float8: the store rounds to e4m3, saturating (store_element's conversion).
      fp8_out_scale_ = l.attrs.has("output_inv_scale");
      rounding_ = parse_dtype(l.attrs.get_string("out_dtype", l.name));
      inv_scale_ = static_cast<float>(l.attrs.get_float("output_inv_scale", 1.0));
    }
  }

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    const int64_t k = x.dims.back(), n = w.dims[0], rows = volume(x.dims) / (k ? k : 1);
    const int64_t m = k ? rows : volume(y.dims) / (n ? n : 1);
    const bool bias = in.size() - (residual_ ? 1 : 0) == 3;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (int64_t q = 0; q < k; ++q) acc += load_element(x, i * k + q) * load_element(w, j * k + q);
        if (quantized_) {
          acc = acc * load_element(in[2], j) + load_element(in[2], n + j);
        } else {
          acc *= scale_;
          if (bias) acc += load_element(in[2], j);
        }
        if (act_) acc = act_(acc);
        if (residual_) acc += load_element(in.back(), i * n + j);
        if (requantize_) acc = quantize_value(round_to_dtype(rounding_, acc), inv_scale_, 0, q_lo_, q_hi_);
        if (fp8_out_scale_) acc = static_cast<float>(round_to_dtype(rounding_, acc)) * inv_scale_;
        store_element(y, i * n + j, acc);
      }
    }
  }
  std::string name() const override { return "ref_fully_connected"; }

 private:
  bool residual_;
  std::string activation_;
  std::function<double(double)> act_;
  double scale_ = 1.0;
  bool quantized_ = false, requantize_ = false, fp8_out_scale_ = false;
  DataType rounding_ = DataType::kFloat32;
  float inv_scale_ = 1.f;
  int64_t q_lo_ = -128, q_hi_ = 127;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("fully_connected", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefFullyConnected>(l); });
  register_kernel("matmul", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefMatmul>(l.attrs.get_int("transpose_a", int64_t{0}) != 0,
                                       l.attrs.get_int("transpose_b", int64_t{0}) != 0);
  });
});

}  // namespace kiln
