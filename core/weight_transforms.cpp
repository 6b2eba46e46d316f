#include "core/weight_transforms.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/convolution.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

TensorView view_of(const ConstantValue& v) { return {const_cast<uint8_t*>(v.bytes()), v.dtype, v.dims}; }

// Element reads and writes as load_element / store_element (the same values), with the dtype
// switch outside the loop: refit runs these over every weight.
std::vector<double> read(const ConstantValue& v) {
  std::vector<double> r(static_cast<size_t>(volume(v.dims)));
  if (v.dtype == DataType::kFloat32) {
    const auto* p = reinterpret_cast<const float*>(v.bytes());
    for (size_t i = 0; i < r.size(); ++i) r[i] = p[i];
    return r;
  }
  const TensorView t = view_of(v);
  for (size_t i = 0; i < r.size(); ++i) r[i] = load_element(t, static_cast<int64_t>(i));
  return r;
}

ConstantValue encode(const std::vector<double>& values, DataType dtype, const Dims& dims) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(values.size() * dtype_size(dtype));
  if (dtype == DataType::kFloat32) {
    auto* p = reinterpret_cast<float*>(bytes->data());
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<float>(values[i]);
    return {dtype, dims, std::move(bytes)};
  }
  const TensorView v{bytes->data(), dtype, dims};
  for (size_t i = 0; i < values.size(); ++i) store_element(v, static_cast<int64_t>(i), values[i]);
  return {dtype, dims, std::move(bytes)};
}

// float32 -> float16 bits, as float_to_half_bits (round to nearest even, NaN to the one quiet NaN
// 0x7e00 with the sign) for every input: refit converts every FP16 weight, and the scalar
// function is most of its time. x86 with F16C converts 8 at a time (vcvtps2ph rounds the same
// way; blocks holding a NaN, whose payload it would keep, take the scalar path).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx,f16c"))) void floats_to_halves_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0) {
      for (int64_t j = i; j < i + 8; ++j) dst[j] = float_to_half_bits(src[j]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = float_to_half_bits(src[i]);
}
#endif

// dst[i] = half(float(double(src[i]) * s)) for float16 bits: bn_fold_weight's arithmetic for a
// weight of a model run in .half(), as read / encode compute it per element.
uint16_t scale_half(uint16_t h, double s) {
  return float_to_half_bits(static_cast<float>(double{half_bits_to_float(h)} * s));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same 8 at a time: F16C widens exactly, AVX multiplies in double and rounds to float as the
// scalar code does (the same IEEE operations), and vcvtps2ph rounds to nearest even; blocks whose
// result holds a NaN (whose payload vcvtps2ph would keep) take the scalar path.
__attribute__((target("avx,f16c"))) void scale_halves_f16c(const uint16_t* src, double s, uint16_t* dst,
                                                           int64_t n) {
  const __m256d scale = _mm256_set1_pd(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    const __m256d lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), scale);
    const __m256d hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), scale);
    const __m256 y = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    if (_mm256_movemask_ps(_mm256_cmp_ps(y, y, _CMP_UNORD_Q)) != 0) {
      for (int64_t j = i; j < i + 8; ++j) dst[j] = scale_half(src[j], s);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = scale_half(src[i], s);
}
#endif

}  // namespace

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
namespace {
// CPUID: AVX and F16C, and the OS saving YMM state (XGETBV). Not __builtin_cpu_supports("f16c"):
// clang does not know that feature name.
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u, f16c = (c >> 29) & 1u;
  if (!(osxsave && avx && f16c)) return false;
  unsigned lo = 0, hi = 0;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6u) == 6u;  // XMM and YMM state enabled
}
}  // namespace
#endif

void floats_to_halves(const float* src, uint16_t* dst, int64_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool f16c = cpu_has_f16c();
  if (f16c) return floats_to_halves_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half_bits(src[i]);
}

void scale_halves(const uint16_t* src, double s, uint16_t* dst, int64_t n, bool vectorized) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool f16c = cpu_has_f16c();
  if (f16c && vectorized) return scale_halves_f16c(src, s, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = scale_half(src[i], s);
}

namespace {

// Copies element `from` of src to element `to` of dst, elements of E bytes.
template <size_t E>
void permute_elements(const uint8_t* src, uint8_t* dst, int64_t n, int64_t c, int64_t h, int64_t w) {
  for (int64_t a = 0; a < n; ++a)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const int64_t from = ((a * c + ch) * h + y) * w + x, to = ((a * h + y) * w + x) * c + ch;
          std::memcpy(dst + to * E, src + from * E, E);
        }
}

void expect_inputs(const Lineage& node, const std::vector<ConstantValue>& in, size_t lo, size_t hi) {
  KILN_CHECK(in.size() >= lo && in.size() <= hi,
             "weight transform '" << node.transform << "': " << in.size() << " inputs, expected " << lo
                                  << (hi != lo ? " to " + std::to_string(hi) : std::string()));
}

// scale = gamma / sqrt(var + eps), shift = beta - mean * scale (fold_batch_norm's arithmetic).
void batch_norm_affine(const Lineage& node, const std::vector<ConstantValue>& in, size_t first,
                       std::vector<double>* scale, std::vector<double>* shift) {
  const double eps = node.attrs.get_float("eps", "weight transform " + node.transform);
  const std::vector<double> gamma = read(in[first]), beta = read(in[first + 1]), mean = read(in[first + 2]),
                            var = read(in[first + 3]);
  KILN_CHECK(beta.size() == gamma.size() && mean.size() == gamma.size() && var.size() == gamma.size(),
             "weight transform '" << node.transform << "': batch norm parameters of different sizes");
  scale->resize(gamma.size());
  shift->resize(gamma.size());
  for (size_t k = 0; k < gamma.size(); ++k) {
    (*scale)[k] = gamma[k] / std::sqrt(var[k] + eps);
    (*shift)[k] = beta[k] - mean[k] * (*scale)[k];
  }
}

// A BatchNorm left alone (not folded): its scale or its shift, as a constant of attrs dtype/dims.
ConstantValue batch_norm_part(const Lineage& node, const std::vector<ConstantValue>& in, bool scale) {
  expect_inputs(node, in, 4, 4);
  std::vector<double> s, shift;
  batch_norm_affine(node, in, 0, &s, &shift);
  const std::string who = "weight transform " + node.transform;
  return encode(scale ? s : shift, static_cast<DataType>(node.attrs.get_int("dtype", who)),
                node.attrs.get_ints("dims", who));
}

// Output channel of every weight element of a convolution / deconvolution / fully_connected.
std::vector<int64_t> output_channel_of_weights(const std::string& producer, int64_t groups, const Dims& w,
                                               int64_t channels) {
  const int64_t n = volume(w);
  std::vector<int64_t> ch(static_cast<size_t>(n));
  if (producer == "deconvolution") {  // weight [C, K/groups, kernel...]
    const int64_t kg = w[1], taps = n / (w[0] * w[1]), cg = w[0] / groups;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = i / (kg * taps), j = i / taps % kg;
      ch[static_cast<size_t>(i)] = c / cg * kg + j;
    }
  } else {  // convolution [K, C/groups, kernel...], fully_connected [N, K]: output channel first
    const int64_t per = n / channels;
    for (int64_t i = 0; i < n; ++i) ch[static_cast<size_t>(i)] = i / per;
  }
  return ch;
}

// bn_fold_weight's arithmetic: w * s[output channel] in w's dtype (node: `producer`, `groups`).
ConstantValue fold_weight(const Lineage& node, const ConstantValue& w, const std::vector<double>& s) {
  const std::string who = "weight transform bn_fold_weight";
  const std::string producer = node.attrs.get_string("producer", who);
  const int64_t n = volume(w.dims), channels = static_cast<int64_t>(s.size());
  if (producer != "deconvolution" && w.dtype == DataType::kFloat32) {
    // Output channel first: channel k scales one contiguous block. The arithmetic of the
    // general path below (float -> double, times s[k], back to float), in one pass.
    KILN_CHECK(channels > 0 && n % channels == 0,
               who << ": weight " << to_string(w.dims) << " does not split into " << channels << " channels");
    const int64_t per = n / channels;
    auto bytes = std::make_shared<std::vector<uint8_t>>(w.size());
    const auto* src = reinterpret_cast<const float*>(w.bytes());
    auto* dst = reinterpret_cast<float*>(bytes->data());
    for (int64_t k = 0; k < channels; ++k) {
      const double sk = s[static_cast<size_t>(k)];
      for (int64_t j = k * per; j < (k + 1) * per; ++j) dst[j] = static_cast<float>(double{src[j]} * sk);
    }
    return ConstantValue{w.dtype, w.dims, std::move(bytes)};
  }
  if (producer != "deconvolution" && (w.dtype == DataType::kFloat16 || w.dtype == DataType::kBFloat16)) {
    // The same for 16-bit weights (a model run in .half()): per channel, widen, scale in
    // double, round to float and then to 16 bits, as read/encode below do per element.
    KILN_CHECK(channels > 0 && n % channels == 0,
               who << ": weight " << to_string(w.dims) << " does not split into " << channels << " channels");
    const int64_t per = n / channels;
    const bool half = w.dtype == DataType::kFloat16;
    auto bytes = std::make_shared<std::vector<uint8_t>>(w.size());
    const auto* src = reinterpret_cast<const uint16_t*>(w.bytes());
    auto* dst = reinterpret_cast<uint16_t*>(bytes->data());
    for (int64_t k = 0; k < channels; ++k) {
      const double sk = s[static_cast<size_t>(k)];
      const uint16_t* from = src + k * per;
      if (half) {
        scale_halves(from, sk, dst + k * per, per);
        continue;
      }
      for (int64_t j = 0; j < per; ++j)
        dst[k * per + j] = float_to_bf16_bits(static_cast<float>(double{bf16_bits_to_float(from[j])} * sk));
    }
    return ConstantValue{w.dtype, w.dims, std::move(bytes)};
  }
  const std::vector<int64_t> ch =
      output_channel_of_weights(producer, node.attrs.get_int("groups", int64_t{1}), w.dims, channels);
  std::vector<double> values = read(w);
  for (size_t j = 0; j < values.size(); ++j) {
    const auto k = static_cast<size_t>(ch[j]);
    KILN_CHECK(k < s.size(),
               who << ": weight " << to_string(w.dims) << " has more output channels than " << s.size());
    values[j] *= s[k];
  }
  return encode(values, w.dtype, w.dims);
}

// The mean of every channel of a batch norm's output (gamma, beta), as its running statistics
// describe its input: beta; after a relu, the mean of relu(N(beta, gamma^2)).
std::vector<double> batch_norm_output_mean(const ConstantValue& gamma, const ConstantValue& beta, bool relu) {
  const std::vector<double> g = read(gamma), b = read(beta);
  KILN_CHECK(g.size() == b.size(),
             "weight transform 'bn_fold_bias': input batch norm parameters of different sizes");
  if (!relu) return b;
  std::vector<double> m(b.size());
  for (size_t c = 0; c < b.size(); ++c) {
    const double sd = std::abs(g[c]);
    if (sd == 0.0) {
      m[c] = std::max(b[c], 0.0);
      continue;
    }
    const double z = b[c] / sd;
    const double cdf = 0.5 * std::erfc(-z / std::sqrt(2.0));
    const double pdf = std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI);
    m[c] = b[c] * cdf + sd * pdf;
  }
  return m;
}

// What rounding the folded weight to its dtype adds to each output channel on average:
// sum over the channel's taps of (folded - w * s) times the mean of the input channel it reads.
std::vector<double> fold_rounding_mean(const Lineage& node, const ConstantValue& w,
                                       const std::vector<double>& s, const std::vector<double>& input_mean) {
  const std::string who = "weight transform bn_fold_bias";
  const std::vector<double> exact = read(w), folded = read(fold_weight(node, w, s));
  const int64_t groups = node.attrs.get_int("groups", int64_t{1});
  const int64_t k_all = static_cast<int64_t>(s.size());
  KILN_CHECK(w.dims.size() >= 2 && w.dims[0] == k_all && groups > 0 && k_all % groups == 0 &&
                 w.dims[1] * groups == static_cast<int64_t>(input_mean.size()),
             who << ": weight " << to_string(w.dims) << " in " << groups << " groups does not read "
                 << input_mean.size() << " input channels into " << k_all);
  const int64_t cg = w.dims[1], taps = volume(w.dims) / (k_all * cg), kg = k_all / groups;
  std::vector<double> out(s.size(), 0.0);
  for (int64_t k = 0; k < k_all; ++k) {
    const int64_t first = k / kg * cg;  // the group's first input channel
    double sum = 0.0;
    for (int64_t c = 0; c < cg; ++c) {
      const double m = input_mean[static_cast<size_t>(first + c)];
      for (int64_t t = 0; t < taps; ++t) {
        const auto j = static_cast<size_t>((k * cg + c) * taps + t);
        sum += m * (folded[j] - exact[j] * s[static_cast<size_t>(k)]);
      }
    }
    out[static_cast<size_t>(k)] = sum;
  }
  return out;
}

ConstantValue run_layer(const Lineage& node, const std::vector<ConstantValue>& in) {
  Network net;
  std::vector<TensorId> ids;
  for (size_t i = 0; i < in.size(); ++i)
    ids.push_back(net.add_constant("in" + std::to_string(i), in[i].dtype, in[i].dims, in[i].owned()));
  const Layer l = net.add_layer(node.name, ids, node.attrs, "replayed");
  KILN_CHECK(node.output >= 0 && node.output < static_cast<int64_t>(l.outputs.size()),
             "weight transform 'layer' (" << node.name << "): no output " << node.output);
  std::vector<TensorView> inputs, outputs;
  for (const auto& v : in) inputs.push_back(view_of(v));
  std::vector<std::shared_ptr<std::vector<uint8_t>>> buffers;
  for (TensorId t : l.outputs) {
    const Tensor& o = net.tensor(t);
    KILN_CHECK(is_static(o.dims), "weight transform 'layer' (" << node.name << "): a dynamic output");
    buffers.push_back(std::make_shared<std::vector<uint8_t>>(tensor_bytes(o.dims, dtype_size(o.dtype))));
    outputs.push_back({buffers.back()->data(), o.dtype, o.dims});
  }
  if (!all_outputs_empty(outputs))
    create_kernel(l, Backend::kReference)->run(inputs, outputs, LaunchContext{});
  const Tensor& o = net.tensor(l.outputs[static_cast<size_t>(node.output)]);
  return {o.dtype, o.dims, buffers[static_cast<size_t>(node.output)]};
}

using Transform = std::function<ConstantValue(const Lineage&, const std::vector<ConstantValue>&)>;

const std::map<std::string, Transform>& transforms() {
  static const std::map<std::string, Transform> table = {
      {"reshape",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, 1);
         Dims dims = node.attrs.get_ints("dims", "weight transform reshape");
         KILN_CHECK(volume(dims) == volume(in[0].dims),
                    "weight transform 'reshape': " << to_string(in[0].dims) << " to " << to_string(dims));
         ConstantValue out = in[0];  // the same bytes, owned or borrowed
         out.dims = dims;
         return out;
       }},
      {"transpose2d",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, 1);
         KILN_CHECK(in[0].dims.size() == 2, "weight transform 'transpose2d': rank " << in[0].dims.size());
         const int64_t k = in[0].dims[0], n = in[0].dims[1];
         const size_t es = dtype_size(in[0].dtype);
         auto bytes = std::make_shared<std::vector<uint8_t>>(in[0].size());
         const uint8_t* src = in[0].bytes();
         for (int64_t i = 0; i < k; ++i)
           for (int64_t j = 0; j < n; ++j)
             std::copy_n(src + (i * n + j) * es, es, bytes->data() + (j * k + i) * es);
         return ConstantValue{in[0].dtype, {n, k}, std::move(bytes)};
       }},
      {"convert",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, 1);
         const auto to = static_cast<DataType>(node.attrs.get_int("dtype", "weight transform convert"));
         const int64_t n = volume(in[0].dims);
         auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(n) * dtype_size(to));
         const auto* f = reinterpret_cast<const float*>(in[0].bytes());
         auto* h = reinterpret_cast<uint16_t*>(bytes->data());
         if (in[0].dtype == DataType::kFloat32 && to == DataType::kFloat16) {  // as store_element
           floats_to_halves(f, h, n);
         } else if (in[0].dtype == DataType::kFloat32 && to == DataType::kBFloat16) {
           for (int64_t i = 0; i < n; ++i) h[i] = float_to_bf16_bits(f[i]);
         } else {
           const TensorView src = view_of(in[0]);
           const TensorView dst{bytes->data(), to, in[0].dims};
           for (int64_t i = 0; i < n; ++i) store_element(dst, i, load_element(src, i));
         }
         return ConstantValue{to, in[0].dims, std::move(bytes)};
       }},
      {"nhwc",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, 1);
         KILN_CHECK(in[0].dims.size() <= 4, "weight transform 'nhwc': rank " << in[0].dims.size());
         Dims d = in[0].dims;
         d.insert(d.begin(), 4 - d.size(), 1);
         const size_t e = dtype_size(in[0].dtype);
         const int64_t n = d[0], c = d[1], h = d[2], w = d[3];
         auto out = std::make_shared<std::vector<uint8_t>>(in[0].size());
         const uint8_t* src = in[0].bytes();
         if (e == 2) {
           permute_elements<2>(src, out->data(), n, c, h, w);
         } else if (e == 4) {
           permute_elements<4>(src, out->data(), n, c, h, w);
         } else {
           for (int64_t a = 0; a < n; ++a)
             for (int64_t ch = 0; ch < c; ++ch)
               for (int64_t y = 0; y < h; ++y)
                 for (int64_t x = 0; x < w; ++x) {
                   const int64_t from = ((a * c + ch) * h + y) * w + x, to = ((a * h + y) * w + x) * c + ch;
                   std::memcpy(out->data() + to * e, src + from * e, e);
                 }
         }
         return ConstantValue{in[0].dtype, channels_last_dims(d), std::move(out)};
       }},
      {"pad_channels",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, 1);
         const int64_t to = node.attrs.get_int("channels", "weight transform pad_channels");
         const Dims& d = in[0].dims;
         KILN_CHECK(!d.empty() && d.back() > 0 && d.back() <= to,
                    "weight transform 'pad_channels': dims " << to_string(d) << " to " << to);
         const int64_t c = d.back(), rows = volume(d) / c;
         const size_t e = dtype_size(in[0].dtype);
         auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(rows * to) * e, 0);
         for (int64_t r = 0; r < rows; ++r)
           std::memcpy(bytes->data() + r * to * e, in[0].bytes() + r * c * e, c * e);
         Dims dims = d;
         dims.back() = to;
         return ConstantValue{in[0].dtype, dims, std::move(bytes)};
       }},
      {"space_to_depth",
       // A stride-2 convolution's weight [K, C, kh, kw] for the same convolution over the input
       // folded 2x2 into channels (space_to_depth_stems): [K, 4 * channels, ceil(kh / 2),
       // ceil(kw / 2)], w'[o, (dy * 2 + dx) * channels + c, a, b] = w[o, c, 2a + dy, 2b + dx], zero
       // past the kernel or past C.
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, 1);
         const int64_t cp = node.attrs.get_int("channels", "weight transform space_to_depth");
         const Dims& d = in[0].dims;
         KILN_CHECK(d.size() == 4 && d[1] > 0 && d[1] <= cp, "weight transform 'space_to_depth': dims "
                                                                 << to_string(d) << " with " << cp
                                                                 << " channels");
         const int64_t k = d[0], c = d[1], kh = d[2], kw = d[3], ah = (kh + 1) / 2, aw = (kw + 1) / 2;
         const size_t e = dtype_size(in[0].dtype);
         auto bytes =
             std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(k * 4 * cp * ah * aw) * e, 0);
         for (int64_t o = 0; o < k; ++o)
           for (int64_t ch = 0; ch < c; ++ch)
             for (int64_t y = 0; y < kh; ++y)
               for (int64_t x = 0; x < kw; ++x) {
                 const int64_t to_c = ((y % 2) * 2 + x % 2) * cp + ch;
                 const int64_t from = ((o * c + ch) * kh + y) * kw + x;
                 const int64_t to = ((o * 4 * cp + to_c) * ah + y / 2) * aw + x / 2;
                 std::memcpy(bytes->data() + to * e, in[0].bytes() + from * e, e);
               }
         return ConstantValue{in[0].dtype, Dims{k, 4 * cp, ah, aw}, std::move(bytes)};
       }},
      {"concat_rows",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 1, SIZE_MAX);
         Dims dims = in[0].dims;
         KILN_CHECK(!dims.empty(), "weight transform 'concat_rows': a scalar");
         dims[0] = 0;
         auto bytes = std::make_shared<std::vector<uint8_t>>();
         for (const auto& v : in) {
           KILN_CHECK(v.dtype == in[0].dtype && v.dims.size() == dims.size() &&
                          std::equal(v.dims.begin() + 1, v.dims.end(), dims.begin() + 1),
                      "weight transform 'concat_rows': " << to_string(v.dims) << " does not stack on "
                                                         << to_string(in[0].dims));
           dims[0] += v.dims[0];
           bytes->insert(bytes->end(), v.bytes(), v.bytes() + v.size());
         }
         return ConstantValue{in[0].dtype, dims, std::move(bytes)};
       }},
      {"bn_fold_weight",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         expect_inputs(node, in, 5, 5);
         std::vector<double> s, shift;
         batch_norm_affine(node, in, 1, &s, &shift);
         return fold_weight(node, in[0], s);
       }},
      {"bn_fold_bias",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         // With `input_mean` ("relu" or "linear"), the last three inputs are the folded weight
         // and the gamma and beta of the batch norm its input comes from (through a relu or not):
         // the weight's rounding to its dtype, on average over that input, is taken off the bias.
         const std::string mean_of =
             node.attrs.has("input_mean") ? node.attrs.get_string("input_mean", "bn_fold_bias") : "";
         const size_t extra = mean_of.empty() ? 0 : 3;
         expect_inputs(node, in, 4 + extra, 5 + extra);
         std::vector<double> s, shift;
         batch_norm_affine(node, in, 0, &s, &shift);
         if (extra) {
           const size_t w = in.size() - 3;
           const std::vector<double> mean = batch_norm_output_mean(in[w + 1], in[w + 2], mean_of == "relu");
           const std::vector<double> drift = fold_rounding_mean(node, in[w], s, mean);
           for (size_t k = 0; k < s.size(); ++k) shift[k] -= drift[k];
         }
         if (in.size() == 5 + extra) {
           const std::vector<double> bias = read(in[4]);
           KILN_CHECK(bias.size() == s.size(),
                      "weight transform 'bn_fold_bias': bias of " << bias.size() << " for " << s.size());
           for (size_t k = 0; k < s.size(); ++k) shift[k] += bias[k] * s[k];
         }
         const auto dtype =
             static_cast<DataType>(node.attrs.get_int("dtype", "weight transform bn_fold_bias"));
         return encode(shift, dtype, {static_cast<int64_t>(s.size())});
       }},
      {"bn_scale",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         return batch_norm_part(node, in, /*scale=*/true);
       }},
      {"bn_shift",
       [](const Lineage& node, const std::vector<ConstantValue>& in) {
         return batch_norm_part(node, in, /*scale=*/false);
       }},
      {"layer", run_layer},
  };
  return table;
}

ConstantValue value_of(const Tensor& t) {
  KILN_CHECK(t.kind == TensorKind::kConstant, "weight transform: '" << t.name << "' is not a constant");
  return {t.dtype, t.dims, t.data};
}

LineagePtr lineage_of(const Tensor& t) {
  if (t.lineage) return t.lineage;
  auto l = std::make_shared<Lineage>();
  l->transform = "literal";
  l->dtype = t.dtype;
  l->dims = t.dims;
  l->literal = t.data;
  return l;
}

std::vector<const Tensor*> tensors_of(const Network& net, const std::vector<TensorId>& ids) {
  std::vector<const Tensor*> r;
  for (TensorId t : ids) r.push_back(&net.tensor(t));
  return r;
}

LineagePtr lineage_over(const std::string& transform, const std::string& name, const Attributes& attrs,
                        int64_t output, const std::vector<const Tensor*>& inputs, DataType dtype,
                        const Dims& dims) {
  bool from_weight = false;
  for (const Tensor* t : inputs) from_weight = from_weight || derives_from_weight(*t);
  if (!from_weight) return nullptr;
  // Two transposes in a row give back the source (Linear's weight: transposed by the frontend,
  // folded, then transposed back for fully_connected): the replay skips both.
  if (transform == "transpose2d" && inputs.size() == 1) {
    const LineagePtr& in = inputs[0]->lineage;
    const bool in_transposed =
        in->transform == "transpose2d" ||
        (in->transform == "layer" && in->name == "transpose" && in->inputs.size() == 1 &&
         in->attrs.has("perm") && in->attrs.get_ints("perm", "transpose") == std::vector<int64_t>{1, 0});
    if (in_transposed && in->inputs[0]->dtype == dtype && in->inputs[0]->dims == dims) return in->inputs[0];
  }
  auto l = std::make_shared<Lineage>();
  l->transform = transform;
  l->name = name;
  l->attrs = attrs;
  l->output = output;
  l->dtype = dtype;
  l->dims = dims;
  for (const Tensor* t : inputs) l->inputs.push_back(lineage_of(*t));
  return l;
}

}  // namespace

bool is_weight_transform(const std::string& transform) { return transforms().count(transform) != 0; }

ConstantValue apply_weight_transform(const Lineage& node, const std::vector<ConstantValue>& inputs) {
  auto it = transforms().find(node.transform);
  KILN_CHECK(it != transforms().end(), "unknown weight transform '" << node.transform << "'");
  for (const auto& v : inputs) {
    KILN_CHECK(v.has_bytes() && v.size() == static_cast<size_t>(tensor_bytes(v.dims, dtype_size(v.dtype))),
               "weight transform '" << node.transform << "': an input's bytes do not match its shape");
  }
  return it->second(node, inputs);
}

LineagePtr derived_lineage(const Network& net, const std::string& transform, const std::string& name,
                           const Attributes& attrs, int64_t output, const std::vector<TensorId>& inputs,
                           DataType dtype, const Dims& dims) {
  return lineage_over(transform, name, attrs, output, tensors_of(net, inputs), dtype, dims);
}

LineagePtr blocked_lineage(const Network& net, const std::vector<TensorId>& inputs, const std::string& why,
                           DataType dtype, const Dims& dims) {
  LineagePtr l = derived_lineage(net, "blocked", "", Attributes(), 0, inputs, dtype, dims);
  if (!l) return nullptr;
  // A blocked node is never replayed: refit only names the weights under it (refit.cpp). It keeps
  // those, the "source" nodes, and not the literals and transforms between: a literal is a copy of
  // its constant's bytes (an INT8 layer's [scale; bias] over its weight made BERT-base's INT8
  // plan carry a second copy of every quantized weight, 340 MB in FP32).
  auto b = std::make_shared<Lineage>();
  b->transform = "blocked";
  b->dtype = dtype;
  b->dims = dims;
  b->blocked = why;
  std::set<const Lineage*> seen;
  std::vector<LineagePtr> stack(l->inputs.rbegin(), l->inputs.rend());
  while (!stack.empty()) {
    LineagePtr n = std::move(stack.back());
    stack.pop_back();
    if (!seen.insert(n.get()).second) continue;
    if (n->transform == "source") b->inputs.push_back(n);
    stack.insert(stack.end(), n->inputs.rbegin(), n->inputs.rend());
  }
  return b;
}

DerivedConstant derive_constant(const std::string& transform, const Attributes& attrs,
                                const std::vector<const Tensor*>& inputs) {
  Lineage node;
  node.transform = transform;
  node.attrs = attrs;
  std::vector<ConstantValue> values;
  for (const Tensor* t : inputs) values.push_back(value_of(*t));
  DerivedConstant d;
  d.value = apply_weight_transform(node, values);
  d.lineage = lineage_over(transform, "", attrs, 0, inputs, d.value.dtype, d.value.dims);
  return d;
}

TensorId add_derived_constant(Network& net, const std::string& name, const std::string& transform,
                              const Attributes& attrs, const std::vector<TensorId>& inputs) {
  DerivedConstant d = derive_constant(transform, attrs, tensors_of(net, inputs));
  const TensorId id = net.add_constant(name, d.value.dtype, d.value.dims, d.value.owned());
  net.tensor(id).lineage = std::move(d.lineage);
  return id;
}

}  // namespace kiln
