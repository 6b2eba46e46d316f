// matmul: torch.matmul semantics. C = op(A) @ op(B), op = optional transpose of the last two dims
// of an operand of rank >= 2. A 1-D A is a row vector [1, K] and a 1-D B a column vector [K, 1],
// and the added dim is dropped from the result (1-D @ 1-D is a 0-d dot product). Leading (batch)
// dims broadcast NumPy-style. A and B share one floating dtype.
//
// fully_connected: torch.nn.Linear with a fused epilogue. Inputs x, weight, [bias], [residual]:
//   y = activation(x [..., K] @ weight[N, K]^T (+ bias [N])) (+ residual [..., N]) -> [..., N].
// `activation` (string, default "none") is any activation type of the activation op, with its
// `alpha` / `beta` / `threshold` attributes; `residual` (0/1) says the last input is a residual of
// y's shape, added after the activation. fuse_gemm_epilogue produces these from matmul + add +
// activation + add chains and records the original layers in the string attribute `fused`.
//
// FP8 fully_connected (the builder's quantize_fp8_gemms makes it; CUDA sm_89+): x and weight are
// float8_e4m3fn, `out_dtype` names y's dtype (bias and residual have it too), and
//   y = activation(input_scale * weight_scale * (x @ weight^T) (+ bias)) (+ residual),
// i.e. x and weight hold values / input_scale and / weight_scale (per tensor). With
// `output_inv_scale` (a quantize folded in by quantize_fp8_gemms; no residual) y is float8_e4m3fn
// instead: e4m3(v * output_inv_scale) of that value v, saturating, as the quantize computed it (the
// reference rounds v to out_dtype first, as the quantize's input was; cuBLASLt converts from float32).
//
// INT8 fully_connected (the builder's quantize_int8_layers makes it; attribute `quantized` = 1):
// x and weight are int8, input 2 is float32 [2, N] (row 0: the per-channel scale, input scale x
// weight scale of output feature n; row 1: the bias), the residual (if any) of `out_dtype`, and
//   y = activation(scale[n] * sum(x * weight[n]) + bias[n]) (+ residual),
// the sum exact in int32, of dtype `out_dtype`; with `output_inv_scale` y is int8 instead, that
// value rounded to out_dtype and quantized (clamp(nearbyint(v * output_inv_scale), output_quant_min,
// output_quant_max)), as for the quantized convolution.
//
// Both accept `allow_tf32` (0/1): float32 GEMMs may use TF32 tensor cores. The builder sets it
// from BuilderConfig's TF32 flag; it is off by default, so FP32 means FP32.
#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/activation.h"

namespace kiln {
namespace {

bool compatible(int64_t a, int64_t b) { return a == b || a == kDynamic || b == kDynamic; }

void check_operands(const std::string& who, const TensorDesc& a, const TensorDesc& b) {
  KILN_CHECK(is_floating(a.dtype), who << ": operands must be floating point, got " << dtype_name(a.dtype));
  KILN_CHECK(a.dtype == b.dtype, who << ": operand dtypes differ (" << dtype_name(a.dtype) << " vs "
                                     << dtype_name(b.dtype) << "); insert a cast");
}

std::vector<TensorDesc> infer_matmul(const Layer& layer, const std::vector<TensorDesc>& in) {
  const TensorDesc& a = in[0];
  const TensorDesc& b = in[1];
  const std::string who = describe(layer);
  check_operands(who, a, b);
  KILN_CHECK(!a.dims.empty() && !b.dims.empty(),
             who << ": operands need rank >= 1, got " << to_string(a.dims) << " and " << to_string(b.dims));
  const bool vec_a = a.dims.size() == 1, vec_b = b.dims.size() == 1;
  // Transposes apply to matrices only; a vector operand is already oriented.
  const bool ta = !vec_a && layer.attrs.get_int("transpose_a", int64_t{0}) != 0;
  const bool tb = !vec_b && layer.attrs.get_int("transpose_b", int64_t{0}) != 0;
  Dims da = vec_a ? Dims{1, a.dims[0]} : a.dims;
  Dims db = vec_b ? Dims{b.dims[0], 1} : b.dims;
  size_t ra = da.size(), rb = db.size();
  int64_t m = ta ? da[ra - 1] : da[ra - 2];
  int64_t ka = ta ? da[ra - 2] : da[ra - 1];
  int64_t kb = tb ? db[rb - 1] : db[rb - 2];
  int64_t n = tb ? db[rb - 2] : db[rb - 1];
  KILN_CHECK(compatible(ka, kb), who << ": inner dims differ: A is " << to_string(a.dims)
                                     << (ta ? " (transposed)" : "") << ", B is " << to_string(b.dims)
                                     << (tb ? " (transposed)" : ""));
  Dims batch;
  Dims batch_a(da.begin(), da.end() - 2), batch_b(db.begin(), db.end() - 2);
  KILN_CHECK(broadcast_shapes(batch_a, batch_b, &batch), who << ": batch dims " << to_string(batch_a)
                                                             << " and " << to_string(batch_b)
                                                             << " do not broadcast");
  if (!vec_a) batch.push_back(m);
  if (!vec_b) batch.push_back(n);
  return {{a.dtype, batch}};
}

std::vector<TensorDesc> infer_fully_connected(const Layer& layer, const std::vector<TensorDesc>& in) {
  const TensorDesc& x = in[0];
  const TensorDesc& w = in[1];
  const std::string who = describe(layer);
  DataType y_dtype = x.dtype;
  const int64_t quantized = layer.attrs.get_int("quantized", int64_t{0});
  KILN_CHECK(quantized == 0 || quantized == 1, who << ": quantized must be 0 or 1, got " << quantized);
  const bool requantized = layer.attrs.has("output_inv_scale");
  const bool fp8 = !quantized && (is_float8(x.dtype) || layer.attrs.has("out_dtype"));
  KILN_CHECK(!requantized || quantized || fp8,
             who << ": output_inv_scale needs quantized = 1 or FP8 (out_dtype)");
  if (quantized) {  // INT8
    KILN_CHECK(x.dtype == DataType::kInt8 && w.dtype == DataType::kInt8,
               who << ": a quantized fully_connected takes int8 x and weight, got " << dtype_name(x.dtype)
                   << " and " << dtype_name(w.dtype));
    y_dtype = parse_dtype(layer.attrs.get_string("out_dtype", who));
    KILN_CHECK(
        y_dtype == DataType::kFloat32 || y_dtype == DataType::kFloat16 || y_dtype == DataType::kBFloat16,
        who << ": out_dtype must be float32, float16 or bfloat16, got " << dtype_name(y_dtype));
    const int64_t lo = layer.attrs.get_int("output_quant_min", int64_t{-128});
    const int64_t hi = layer.attrs.get_int("output_quant_max", int64_t{127});
    KILN_CHECK(-128 <= lo && lo <= hi && hi <= 127, who << ": output_quant_min/max [" << lo << ", " << hi
                                                        << "] must be ordered inside [-128, 127]");
  } else if (fp8) {
    KILN_CHECK(is_float8(x.dtype) && w.dtype == x.dtype,
               who << ": an FP8 fully_connected (out_dtype set) takes float8_e4m3fn x and weight, got "
                   << dtype_name(x.dtype) << " and " << dtype_name(w.dtype));
    y_dtype = parse_dtype(layer.attrs.get_string("out_dtype", who));
    KILN_CHECK(is_floating(y_dtype), who << ": out_dtype must be floating, got " << dtype_name(y_dtype));
    KILN_CHECK(layer.attrs.has("input_scale") && layer.attrs.has("weight_scale"),
               who << ": an FP8 fully_connected needs input_scale and weight_scale");
  } else {
    check_operands(who, x, w);
  }
  KILN_CHECK(!x.dims.empty(), who << ": input must have rank >= 1 (features last), got a scalar");
  KILN_CHECK(w.dims.size() == 2,
             who << ": weight must be [out_features, in_features], got " << to_string(w.dims));
  KILN_CHECK(compatible(x.dims.back(), w.dims[1]), who << ": input has " << x.dims.back()
                                                       << " features but the weight " << to_string(w.dims)
                                                       << " expects " << w.dims[1]);
  const bool residual = layer.attrs.get_int("residual", int64_t{0}) != 0;
  KILN_CHECK(!(fp8 && requantized && residual),
             who << ": an FP8 fully_connected writing float8 (output_inv_scale) takes no residual");
  KILN_CHECK(!residual || in.size() >= 3,
             who << ": residual=1 needs a residual input after the weight (and bias)");
  const size_t operands = in.size() - (residual ? 1 : 0);
  KILN_CHECK(operands <= 3, who << ": 4 inputs (x, weight, bias, residual) need the attribute residual=1");
  if (layer.attrs.has("activation")) {
    std::string act = layer.attrs.get_string("activation", who);
    const auto& types = activation_types();
    KILN_CHECK(act == "none" || std::find(types.begin(), types.end(), act) != types.end(),
               who << ": unknown activation '" << act << "'; use \"none\" or a type of the activation op");
  }
  if (quantized) {
    KILN_CHECK(operands == 3,
               who << ": a quantized fully_connected needs its per-feature scale and bias as input 2");
    const TensorDesc& b = in[2];
    KILN_CHECK(b.dtype == DataType::kFloat32 && b.dims.size() == 2 && b.dims[0] == 2 &&
                   compatible(b.dims[1], w.dims[0]),
               who << ": input 2 of a quantized fully_connected must be float32 [2, " << w.dims[0]
                   << "] (per-feature scale, bias), got " << dtype_name(b.dtype) << " " << to_string(b.dims));
  } else if (operands == 3) {
    const TensorDesc& bias = in[2];
    KILN_CHECK(bias.dtype == y_dtype,
               who << ": bias dtype " << dtype_name(bias.dtype) << " differs from " << dtype_name(y_dtype));
    KILN_CHECK(bias.dims.size() == 1 && compatible(bias.dims[0], w.dims[0]),
               who << ": bias must be [" << w.dims[0] << "], got " << to_string(bias.dims));
  }
  Dims out = x.dims;
  out.back() = w.dims[0];
  if (residual) {
    const TensorDesc& r = in.back();
    KILN_CHECK(r.dtype == y_dtype,
               who << ": residual dtype " << dtype_name(r.dtype) << " differs from " << dtype_name(y_dtype));
    bool same = r.dims.size() == out.size();
    for (size_t i = 0; same && i < out.size(); ++i) same = compatible(r.dims[i], out[i]);
    KILN_CHECK(same, who << ": residual must have the output's shape " << to_string(out) << ", got "
                         << to_string(r.dims));
    for (size_t i = 0; i < out.size(); ++i) {
      if (out[i] == kDynamic) out[i] = r.dims[i];
    }
  }
  if (requantized) return {{fp8 ? DataType::kFloat8E4M3 : DataType::kInt8, out}};
  return {{y_dtype, out}};
}

}  // namespace

namespace {

const ActivationAttrs kActivationDefaults{};

const std::vector<AttrSpec> kMatmulAttributes = {
    {"transpose_a", AttrType::kInt, AttrValue{int64_t{0}},
     "0/1: transpose A's last two dims (matrices only)"},
    {"transpose_b", AttrType::kInt, AttrValue{int64_t{0}},
     "0/1: transpose B's last two dims (matrices only)"},
    {"allow_tf32", AttrType::kInt, AttrValue{int64_t{0}},
     "set by the builder (assign_precision, from BuilderConfig's TF32 flag): 0/1, float32 may use TF32"},
    {"tactic", AttrType::kInt, AttrValue{int64_t{-1}},
     "set by the builder (choose_tactics): the cuBLASLt algorithm, -1 the heuristic's"},
};

const std::vector<AttrSpec> kFullyConnectedAttributes = {
    {"activation", AttrType::kString, AttrValue{std::string("none")},
     "none or an activation type of the activation op (fuse_gemm_epilogue sets it)"},
    {"alpha", AttrType::kFloat, std::nullopt,
     "the activation's alpha; absent: depends on `activation` (default_activation_alpha)"},
    {"beta", AttrType::kFloat, AttrValue{kActivationDefaults.beta},
     "the activation's beta (clip max, softplus beta)"},
    {"threshold", AttrType::kFloat, AttrValue{kActivationDefaults.threshold},
     "the activation's threshold (softplus)"},
    {"residual", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: the last input is added after the activation"},
    {"allow_tf32", AttrType::kInt, AttrValue{int64_t{0}},
     "set by the builder (assign_precision, from BuilderConfig's TF32 flag): 0/1, float32 may use TF32"},
    {"tactic", AttrType::kInt, AttrValue{int64_t{-1}},
     "set by the builder (choose_tactics): the cuBLASLt algorithm, -1 the heuristic's"},
    {"fused", AttrType::kString, std::nullopt,
     "set by the builder (fuse_gemm_epilogue, fuse_parallel_gemms, patchify_convolutions, fold_batch_norm): "
     "the original layer names, informational; absent: the layer's own name"},
    {"out_dtype", AttrType::kString, std::nullopt,
     "FP8 (set by quantize_fp8_gemms): y's floating dtype; x and weight are float8_e4m3fn; INT8: likewise"},
    {"input_scale", AttrType::kFloat, std::nullopt,
     "FP8: x's per-tensor scale (x holds values / scale); INT8: the same, informational (kiln inspect)"},
    {"weight_scale", AttrType::kFloat, std::nullopt, "FP8: the weight's per-tensor scale"},
    {"quantized", AttrType::kInt, AttrValue{int64_t{0}},
     "0/1, set by the builder (quantize_int8_layers): INT8, x and weight int8, input 2 float32 [2, N] "
     "(per-feature scale = input scale x weight scale, then bias), y of out_dtype"},
    {"output_inv_scale", AttrType::kFloat, std::nullopt,
     "INT8, set by quantize_int8_layers: y is int8, clamp(round(v * output_inv_scale)) of the epilogue's "
     "value v rounded to out_dtype (a quantize layer folded in); FP8, set by quantize_fp8_gemms: y is "
     "float8_e4m3fn, e4m3(v * output_inv_scale)"},
    {"output_quant_min", AttrType::kInt, AttrValue{int64_t{-128}}, "with output_inv_scale: y's range"},
    {"output_quant_max", AttrType::kInt, AttrValue{int64_t{127}}, "with output_inv_scale: y's range"},
};

// 2 * K per output element: K is a's contracted dim (its last, or the one before with transpose_a).
double matmul_flops(const Layer& l, const std::vector<TensorDesc>& in, const std::vector<TensorDesc>& out) {
  const Dims& a = in[0].dims;
  if (a.empty()) return 0.0;
  const bool ta = a.size() > 1 && l.attrs.get_int("transpose_a", int64_t{0}) != 0;
  return 2.0 * static_cast<double>(volume(out[0].dims)) *
         static_cast<double>(ta ? a[a.size() - 2] : a.back());
}

double fully_connected_flops(const Layer&, const std::vector<TensorDesc>& in,
                             const std::vector<TensorDesc>& out) {
  return 2.0 * static_cast<double>(volume(out[0].dims)) * static_cast<double>(in[0].dims.back());
}

const SchemaRegistration kRegistered{
    {"matmul", 2, 2, infer_matmul, kMatmulAttributes, kTf32Capable, matmul_flops},
    {"fully_connected", 2, 4, infer_fully_connected, kFullyConnectedAttributes, kTf32Capable,
     fully_connected_flops},
};

}  // namespace

}  // namespace kiln
