// Shape ops: layers that move elements without computing on them (torch semantics throughout).
//   reshape    x [, shape]  target from attribute `shape` or a tracked int input; one -1 is inferred,
//                           0 is a literal zero-size dim
//   transpose  x            `perm`: a permutation of 0..rank-1 (negatives allowed)
//   flatten    x            `start_dim` (0), `end_dim` (-1): dims start..end merged into one
//   squeeze    x            `axes`: size-1 dims removed (dynamic ones are checked at run time)
//   unsqueeze  x            `axes`: positions of new size-1 dims in the output
//   expand     x [, shape]  torch.expand: -1 keeps a dim, new leading dims, size-1 dims broadcast
//   shape      x            int64 [rank] holding x's dims (shape-of)
//   concat     x1..xn       `axis`: joined along it; other dims equal
//   slice      x            `axes`, `starts`, `ends`, `steps`: Python slices, steps >= 1
//   split      x            `axis`, `sizes`: one output per size, the sizes sum to the dim
// A target shape given as an input is read from its tracked values (ShapeValues), so it must be
// computable on the host from shapes and constants; an entry unknown at build time (from a
// dynamic dim) gives a dynamic output dim, resolved when the engine infers concrete shapes.
// Ops that keep integer elements propagate tracked values, so shape arithmetic stays on the host.
#include "ir/ops/shape.h"

#include <algorithm>
#include <cmath>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {
namespace {

// The target shape of reshape / expand: attribute `shape`, or the tracked values of input 1.
std::vector<int64_t> target_shape(const Layer& layer, const std::vector<TensorDesc>& in,
                                  const std::string& who) {
  if (in.size() < 2) {
    KILN_CHECK(layer.attrs.has("shape"),
               who << ": needs a target shape: set the `shape` attribute or pass a shape tensor as input 1");
    return layer.attrs.get_ints("shape", who);
  }
  KILN_CHECK(!layer.attrs.has("shape"),
             who << ": the target shape is given twice (attribute `shape` and input 1); keep one");
  const TensorDesc& s = in[1];
  KILN_CHECK(s.dtype == DataType::kInt32 || s.dtype == DataType::kInt64,
             who << ": the shape input must be int32 or int64, got " << dtype_name(s.dtype));
  KILN_CHECK(s.dims.size() == 1, who << ": the shape input must be 1-D, got shape " << to_string(s.dims));
  KILN_CHECK(s.values != nullptr,
             who << ": the values of the shape input are not known when building (they are computed on the "
                    "device from tensor data); derive the target shape from shapes and constants only "
                    "(shape, slice, concat, integer elementwise ops) or give it as the `shape` attribute");
  return *s.values;
}

Dims reshape_dims(const std::string& who, const Dims& in, const std::vector<int64_t>& target) {
  KILN_CHECK(target.size() <= static_cast<size_t>(kMaxRank),
             who << ": target shape " << values_string(target) << " exceeds the maximum rank " << kMaxRank);
  Dims out;
  int infer = -1;
  bool unknown = false;
  for (size_t i = 0; i < target.size(); ++i) {
    int64_t t = target[i];
    if (t == kUnknownValue) {
      unknown = true;
      out.push_back(kDynamic);
    } else if (t == -1) {
      KILN_CHECK(infer < 0, who << ": target shape " << values_string(target) << " has more than one -1");
      infer = static_cast<int>(i);
      out.push_back(kDynamic);
    } else {
      KILN_CHECK(t >= 0, who << ": target shape " << values_string(target) << " has an invalid dim " << t
                             << " (use -1 to infer one dim)");
      out.push_back(t);
    }
  }
  if (unknown || !is_static(in)) return out;  // checked when the engine infers concrete shapes
  const int64_t n = volume(in);
  if (infer >= 0) {
    Dims rest = out;
    rest.erase(rest.begin() + infer);
    const int64_t m = volume(rest);
    KILN_CHECK(m != 0, who << ": cannot infer the -1 in " << values_string(target) << " for " << to_string(in)
                           << ": the other dims multiply to 0, so any size would fit");
    KILN_CHECK(n % m == 0, who << ": cannot reshape " << to_string(in) << " (" << n << " elements) into "
                               << values_string(target) << ": " << n << " is not a multiple of " << m);
    out[infer] = n / m;
  } else {
    KILN_CHECK(volume(out) == n, who << ": cannot reshape " << to_string(in) << " (" << n
                                     << " elements) into " << to_string(out) << " (" << volume(out)
                                     << " elements); the element counts must match");
  }
  return out;
}

std::vector<TensorDesc> infer_reshape(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  Dims out = reshape_dims(who, in[0].dims, target_shape(layer, in, who));
  return {{in[0].dtype, out, same_values(in[0].values, out)}};
}

std::vector<TensorDesc> infer_transpose(const Layer& layer, const std::vector<TensorDesc>& in) {
  const Dims& x = in[0].dims;
  std::vector<int64_t> perm = resolve_perm(layer, static_cast<int64_t>(x.size()));
  Dims out(x.size());
  for (size_t d = 0; d < x.size(); ++d) out[d] = x[perm[d]];
  ShapeValues values = nullptr;
  if (is_static(x)) {
    std::vector<int64_t> stride = row_major_strides(x);
    values = gather_values(in[0].values, out, [&](const std::vector<int64_t>& idx) {
      int64_t flat = 0;
      for (size_t d = 0; d < idx.size(); ++d) flat += idx[d] * stride[perm[d]];
      return flat;
    });
  }
  return {{in[0].dtype, out, values}};
}

std::vector<TensorDesc> infer_flatten(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  const int64_t rank = std::max<int64_t>(static_cast<int64_t>(x.size()), 1);  // a 0-d tensor flattens to [1]
  int64_t start = normalize_axis(layer.attrs.get_int("start_dim", 0), rank, who, "start_dim");
  int64_t end = normalize_axis(layer.attrs.get_int("end_dim", -1), rank, who, "end_dim");
  KILN_CHECK(start <= end,
             who << ": start_dim (" << start << ") must not come after end_dim (" << end << ")");
  if (x.empty()) return {{in[0].dtype, Dims{1}, same_values(in[0].values, Dims{1})}};
  int64_t merged = 1;
  bool dynamic = false;
  for (int64_t d = start; d <= end; ++d) {
    if (x[d] == kDynamic) {
      dynamic = true;
    } else {
      merged *= x[d];
    }
  }
  if (dynamic && merged != 0) merged = kDynamic;  // a static 0 empties the merged dim whatever the rest
  Dims out(x.begin(), x.begin() + start);
  out.push_back(merged);
  out.insert(out.end(), x.begin() + end + 1, x.end());
  return {{in[0].dtype, out, same_values(in[0].values, out)}};
}

// Normalized, duplicate-free axes of `name` for a tensor of rank `rank`.
std::vector<int64_t> unique_axes(const Layer& layer, const char* name, int64_t rank, const std::string& who) {
  std::vector<int64_t> axes = layer.attrs.get_ints(name, who);
  for (auto& a : axes) a = normalize_axis(a, rank, who);
  std::vector<int64_t> sorted = axes;
  std::sort(sorted.begin(), sorted.end());
  KILN_CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(),
             who << ": `" << name << "` " << values_string(layer.attrs.get_ints(name, who))
                 << " names an axis twice");
  return axes;
}

std::vector<TensorDesc> infer_squeeze(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  std::vector<int64_t> axes = unique_axes(layer, "axes", static_cast<int64_t>(x.size()), who);
  std::vector<bool> drop(x.size(), false);
  for (int64_t a : axes) {
    KILN_CHECK(x[a] == 1 || x[a] == kDynamic, who << ": cannot squeeze axis " << a << " of " << to_string(x)
                                                  << ": it has size " << x[a] << ", only size-1 dims can go");
    drop[a] = true;
  }
  Dims out;
  for (size_t d = 0; d < x.size(); ++d) {
    if (!drop[d]) out.push_back(x[d]);
  }
  return {{in[0].dtype, out, same_values(in[0].values, out)}};
}

std::vector<TensorDesc> infer_unsqueeze(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  const int64_t out_rank = static_cast<int64_t>(x.size() + layer.attrs.get_ints("axes", who).size());
  KILN_CHECK(out_rank <= kMaxRank,
             who << ": the output rank " << out_rank << " exceeds the maximum of " << kMaxRank);
  std::vector<int64_t> axes = unique_axes(layer, "axes", out_rank, who);
  Dims out(static_cast<size_t>(out_rank), 1);
  std::vector<bool> is_new(static_cast<size_t>(out_rank), false);
  for (int64_t a : axes) is_new[a] = true;
  size_t next = 0;
  for (int64_t d = 0; d < out_rank; ++d) {
    if (!is_new[d]) out[d] = x[next++];
  }
  return {{in[0].dtype, out, same_values(in[0].values, out)}};
}

std::vector<TensorDesc> infer_expand(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  std::vector<int64_t> target = target_shape(layer, in, who);
  KILN_CHECK(target.size() >= x.size() && target.size() <= static_cast<size_t>(kMaxRank),
             who << ": cannot expand " << to_string(x) << " to " << values_string(target)
                 << ": the target needs at least the input's rank and at most " << kMaxRank << " dims");
  const size_t lead = target.size() - x.size();
  Dims out(target.size());
  for (size_t d = 0; d < target.size(); ++d) {
    const int64_t t = target[d];
    KILN_CHECK(t >= 0 || t == kUnknownValue || (t == -1 && d >= lead),
               who << ": target " << values_string(target) << " has an invalid dim " << t
                   << (t == -1 ? " (-1 keeps an existing dim; new leading dims need a size)" : ""));
    if (d < lead) {
      out[d] = t == kUnknownValue ? kDynamic : t;
      continue;
    }
    const int64_t s = x[d - lead];
    if (t == -1 || t == s) {
      out[d] = s;
    } else if (t == kUnknownValue) {
      out[d] = s == 1 ? kDynamic : s;  // a size > 1 cannot change; the run-time shapes check it
    } else {
      KILN_CHECK(s == 1 || s == kDynamic, who << ": cannot expand " << to_string(x) << " to "
                                              << values_string(target) << ": dim " << d - lead << " has size "
                                              << s << ", only size-1 dims expand");
      out[d] = t;
    }
  }
  ShapeValues values = nullptr;
  if (is_static(x)) {
    std::vector<int64_t> stride = row_major_strides(x);
    values = gather_values(in[0].values, out, [&](const std::vector<int64_t>& idx) {
      int64_t flat = 0;
      for (size_t d = lead; d < idx.size(); ++d) flat += x[d - lead] == 1 ? 0 : idx[d] * stride[d - lead];
      return flat;
    });
  }
  return {{in[0].dtype, out, values}};
}

std::vector<TensorDesc> infer_shape(const Layer&, const std::vector<TensorDesc>& in) {
  const Dims& x = in[0].dims;
  std::vector<int64_t> v(x.begin(), x.end());
  for (auto& d : v) {
    if (d == kDynamic) d = kUnknownValue;
  }
  return {{DataType::kInt64, Dims{static_cast<int64_t>(x.size())}, make_values(std::move(v))}};
}

std::vector<TensorDesc> infer_concat(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& first = in[0].dims;
  KILN_CHECK(!first.empty(), who << ": cannot concatenate 0-d tensors; unsqueeze them to 1-D first");
  const int64_t axis =
      normalize_axis(layer.attrs.get_int("axis", 0), static_cast<int64_t>(first.size()), who);
  Dims out = first;
  out[axis] = 0;
  for (size_t k = 0; k < in.size(); ++k) {
    const Dims& x = in[k].dims;
    KILN_CHECK(in[k].dtype == in[0].dtype, who << ": input " << k << " is " << dtype_name(in[k].dtype)
                                               << ", input 0 is " << dtype_name(in[0].dtype)
                                               << "; all inputs need one dtype (insert a cast)");
    KILN_CHECK(x.size() == first.size(), who << ": input " << k << " has shape " << to_string(x)
                                             << ", input 0 " << to_string(first)
                                             << "; all inputs need the same rank");
    for (size_t d = 0; d < x.size(); ++d) {
      if (static_cast<int64_t>(d) == axis) {
        if (out[d] == kDynamic || x[d] == kDynamic) {
          out[d] = kDynamic;
        } else {
          int64_t sum = 0;
          KILN_CHECK(!__builtin_add_overflow(out[d], x[d], &sum) && sum <= (int64_t{1} << 62),
                     who << ": the concatenated dim " << axis << " would exceed 2^62 elements (input " << k
                         << " has shape " << to_string(x) << ")");
          out[d] = sum;
        }
      } else if (out[d] == kDynamic) {
        out[d] = x[d];  // a dynamic dim takes the other inputs' size; run-time shapes check it
      } else {
        KILN_CHECK(x[d] == out[d] || x[d] == kDynamic, who << ": input " << k << " has shape " << to_string(x)
                                                           << ", which differs from " << to_string(first)
                                                           << " in dim " << d << "; only dim " << axis
                                                           << " (the concat axis) may differ");
      }
    }
  }
  ShapeValues values = nullptr;
  bool all_tracked =
      std::all_of(in.begin(), in.end(), [](const TensorDesc& t) { return t.values != nullptr; });
  if (all_tracked && trackable(out)) {
    // Element i of the output comes from the input whose stretch of the concat axis holds it.
    std::vector<int64_t> v;
    const std::vector<int64_t> stride = row_major_strides(out);
    // An empty output has no values; the dims before the axis may still be huge (with the chunks
    // below empty), and looping over them would never end.
    const int64_t outer = volume(out) == 0 ? 0
                          : axis == 0      ? 1
                                           : volume(Dims(out.begin(), out.begin() + axis));
    for (int64_t o = 0; o < outer; ++o) {
      for (const auto& t : in) {
        const int64_t chunk = t.dims[axis] * stride[axis];  // contiguous run of input t per outer index
        for (int64_t j = 0; j < chunk; ++j) v.push_back((*t.values)[static_cast<size_t>(o * chunk + j)]);
      }
    }
    values = make_values(std::move(v));
  }
  return {{in[0].dtype, out, values}};
}

std::vector<TensorDesc> infer_slice(const Layer& layer, const std::vector<TensorDesc>& in) {
  const Dims& x = in[0].dims;
  SliceSpec s = resolve_slice(layer, x);
  ShapeValues values = nullptr;
  if (is_static(x)) {
    std::vector<int64_t> stride = row_major_strides(x);
    values = gather_values(in[0].values, s.out, [&](const std::vector<int64_t>& idx) {
      int64_t flat = 0;
      for (size_t d = 0; d < idx.size(); ++d) flat += (s.start[d] + idx[d] * s.step[d]) * stride[d];
      return flat;
    });
  }
  return {{in[0].dtype, s.out, values}};
}

std::vector<TensorDesc> infer_split(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  KILN_CHECK(!x.empty(), who << ": cannot split a 0-d tensor");
  const int64_t axis = normalize_axis(layer.attrs.get_int("axis", 0), static_cast<int64_t>(x.size()), who);
  std::vector<int64_t> sizes = layer.attrs.get_ints("sizes", who);
  KILN_CHECK(!sizes.empty(), who << ": `sizes` must list at least one output size");
  int64_t total = 0;
  for (int64_t s : sizes) {
    KILN_CHECK(s >= 0, who << ": `sizes` " << values_string(sizes) << " has a negative size");
    KILN_CHECK(s <= (int64_t{1} << 62) - total, who << ": `sizes` " << values_string(sizes) << " overflows");
    total += s;
  }
  KILN_CHECK(x[axis] == kDynamic || x[axis] == total, who << ": `sizes` " << values_string(sizes)
                                                          << " sum to " << total << " but dim " << axis
                                                          << " of " << to_string(x) << " has size " << x[axis]
                                                          << "; the sizes must cover the dim exactly");
  std::vector<TensorDesc> outs;
  int64_t offset = 0;
  for (int64_t s : sizes) {
    Dims out = x;
    out[axis] = s;
    ShapeValues values = nullptr;
    if (is_static(x)) {
      std::vector<int64_t> stride = row_major_strides(x);
      values = gather_values(in[0].values, out, [&](const std::vector<int64_t>& idx) {
        int64_t flat = 0;
        for (size_t d = 0; d < idx.size(); ++d) {
          flat += (idx[d] + (static_cast<int64_t>(d) == axis ? offset : 0)) * stride[d];
        }
        return flat;
      });
    }
    outs.push_back({in[0].dtype, out, values});
    offset += s;
  }
  return outs;
}

}  // namespace

std::vector<int64_t> resolve_perm(const Layer& layer, int64_t rank) {
  const std::string who = describe(layer);
  std::vector<int64_t> perm = layer.attrs.get_ints("perm", who);
  KILN_CHECK(static_cast<int64_t>(perm.size()) == rank, who << ": `perm` " << values_string(perm) << " has "
                                                            << perm.size() << " entries, the input has rank "
                                                            << rank << "; give one entry per dim");
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  for (auto& p : perm) {
    KILN_CHECK(p >= -rank && p < rank, who << ": `perm` " << values_string(layer.attrs.get_ints("perm", who))
                                           << " is not a permutation of 0.." << rank - 1 << " (entry " << p
                                           << " is out of range)");
    if (p < 0) p += rank;
    KILN_CHECK(!seen[p], who << ": `perm` " << values_string(layer.attrs.get_ints("perm", who))
                             << " is not a permutation of 0.." << rank - 1 << " (dim " << p
                             << " appears twice)");
    seen[p] = true;
  }
  return perm;
}

SliceSpec resolve_slice(const Layer& layer, const Dims& in) {
  const std::string who = describe(layer);
  const int64_t rank = static_cast<int64_t>(in.size());
  std::vector<int64_t> axes = unique_axes(layer, "axes", rank, who);
  std::vector<int64_t> starts = layer.attrs.get_ints("starts", who);
  std::vector<int64_t> ends = layer.attrs.get_ints("ends", who);
  std::vector<int64_t> steps =
      layer.attrs.has("steps") ? layer.attrs.get_ints("steps", who) : std::vector<int64_t>(axes.size(), 1);
  KILN_CHECK(starts.size() == axes.size() && ends.size() == axes.size() && steps.size() == axes.size(),
             who << ": `axes`, `starts`, `ends` and `steps` need one entry each per sliced axis (got "
                 << axes.size() << ", " << starts.size() << ", " << ends.size() << ", " << steps.size()
                 << ")");
  SliceSpec s;
  s.out = in;
  s.start.assign(in.size(), 0);
  s.step.assign(in.size(), 1);
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t a = axes[i];
    KILN_CHECK(steps[i] >= 1, who << ": step " << steps[i] << " on axis " << a
                                  << " is not supported; steps must be >= 1 (reverse with a separate op)");
    s.step[a] = steps[i];
    const int64_t d = in[a];
    if (d == kDynamic) {
      s.out[a] = kDynamic;
      continue;
    }
    auto clamp = [d](int64_t v) {
      if (v < 0) v = v < -d ? 0 : v + d;
      return std::min(v, d);
    };
    const int64_t b = clamp(starts[i]), e = clamp(ends[i]);
    s.start[a] = b;
    s.out[a] = e > b ? (e - b - 1) / steps[i] + 1 : 0;
  }
  return s;
}

// space_to_depth: x [N, C, H, W] padded with zero rows, columns and channels (to `channels`), then
// folded 2x2 into channels: y[n, (dy * 2 + dx) * C' + c, i, j] = xp[n, c, 2i + dy, 2j + dx]. With
// layout nhwc (set by assign_layouts) y is [N, H', W', 4C'] instead.
std::vector<TensorDesc> infer_space_to_depth(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  KILN_CHECK(x.size() == 4,
             who << ": space_to_depth takes a rank-4 [N, C, H, W] input, got " << to_string(x));
  for (int d = 1; d < 4; ++d) {
    KILN_CHECK(x[d] != kDynamic, who << ": space_to_depth needs static C, H and W, got " << to_string(x));
  }
  const std::vector<int64_t> pads =
      layer.attrs.has("pads") ? layer.attrs.get_ints("pads", who) : std::vector<int64_t>(4, 0);
  KILN_CHECK(pads.size() == 4 && std::all_of(pads.begin(), pads.end(), [](int64_t p) { return p >= 0; }),
             who << ": pads must be four values >= 0 (top, bottom, left, right)");
  const int64_t channels = layer.attrs.get_int("channels", x[1]);
  KILN_CHECK(channels >= x[1] && channels <= (int64_t{1} << 20),
             who << ": channels (" << channels << ") must be at least the input's " << x[1]);
  int64_t h = 0, w = 0;
  KILN_CHECK(!__builtin_add_overflow(x[2], pads[0] + pads[1], &h) &&
                 !__builtin_add_overflow(x[3], pads[2] + pads[3], &w) && h % 2 == 0 && w % 2 == 0 &&
                 h < (int64_t{1} << 31) && w < (int64_t{1} << 31),
             who << ": the padded input must have an even number of rows and columns, got " << x[2] << " + "
                 << pads[0] << " + " << pads[1] << " rows and " << x[3] << " + " << pads[2] << " + "
                 << pads[3] << " columns");
  const std::string layout = layer.attrs.has("layout") ? layer.attrs.get_string("layout", who) : "nchw";
  KILN_CHECK(layout == "nchw" || layout == "nhwc",
             who << ": layout must be nchw or nhwc, got '" << layout << "'");
  Dims out =
      layout == "nchw" ? Dims{x[0], 4 * channels, h / 2, w / 2} : Dims{x[0], h / 2, w / 2, 4 * channels};
  if (!layer.attrs.has("output_inv_scale")) return {{in[0].dtype, out, nullptr}};
  const SpaceToDepth q = resolve_space_to_depth(layer, x);
  KILN_CHECK(is_floating(in[0].dtype) && in[0].dtype != DataType::kFloat8E4M3,
             who << ": an int8 output (output_inv_scale) needs a float32, float16 or bfloat16 input, got "
                 << dtype_name(in[0].dtype));
  KILN_CHECK(q.inv_scale > 0.f && std::isfinite(q.inv_scale),
             who << ": output_inv_scale must be a positive finite number, got " << q.inv_scale);
  KILN_CHECK(q.quant_min >= -128 && q.quant_min <= q.quant_max && q.quant_max <= 127,
             who << ": output_quant_min/max must be an ordered range inside int8's, got " << q.quant_min
                 << ".." << q.quant_max);
  return {{DataType::kInt8, out, nullptr}};
}

SpaceToDepth resolve_space_to_depth(const Layer& layer, const Dims& in) {
  SpaceToDepth s;
  s.n = in[0];
  s.c = in[1];
  s.h = in[2];
  s.w = in[3];
  s.channels = layer.attrs.get_int("channels", in[1]);
  const std::vector<int64_t> pads =
      layer.attrs.has("pads") ? layer.attrs.get_ints("pads", describe(layer)) : std::vector<int64_t>(4, 0);
  s.top = pads[0];
  s.left = pads[2];
  s.hs = (in[2] + pads[0] + pads[1]) / 2;
  s.ws = (in[3] + pads[2] + pads[3]) / 2;
  s.nhwc = layer.attrs.has("layout") && layer.attrs.get_string("layout", describe(layer)) == "nhwc";
  s.quantized = layer.attrs.has("output_inv_scale");
  if (s.quantized) {
    s.inv_scale = static_cast<float>(layer.attrs.get_float("output_inv_scale", describe(layer)));
    s.quant_min = layer.attrs.get_int("output_quant_min", int64_t{-128});
    s.quant_max = layer.attrs.get_int("output_quant_max", int64_t{127});
  }
  return s;
}

namespace {

// `alias`, which the builder's alias_views pass sets on layers it turns into views.
const AttrSpec kAlias = {"alias", AttrType::kInt, AttrValue{int64_t{0}},
                         "set by the builder (alias_views): 1 makes the layer a view of its input"};

const std::vector<AttrSpec> kReshapeAttributes = {
    {"shape", AttrType::kInts, std::nullopt,
     "the target shape (one -1 inferred, 0 a zero-size dim); required unless the shape comes as input 1"},
    kAlias,
};

const std::vector<AttrSpec> kTransposeAttributes = {
    {"perm", AttrType::kInts, std::nullopt, "required: a permutation of 0..rank-1, negatives allowed"},
    {"alias", AttrType::kInt, AttrValue{int64_t{0}},
     "set by the builder (alias_views): 1 makes a transpose that moves only size-1 dims a view"},
};

const std::vector<AttrSpec> kFlattenAttributes = {
    {"start_dim", AttrType::kInt, AttrValue{int64_t{0}},
     "the first merged dim, negative counts from the end"},
    {"end_dim", AttrType::kInt, AttrValue{int64_t{-1}}, "the last merged dim, negative counts from the end"},
    kAlias,
};

const std::vector<AttrSpec> kSqueezeAttributes = {
    {"axes", AttrType::kInts, std::nullopt, "required: the size-1 dims removed"},
    kAlias,
};

const std::vector<AttrSpec> kUnsqueezeAttributes = {
    {"axes", AttrType::kInts, std::nullopt, "required: the positions of the new size-1 dims in the output"},
    kAlias,
};

const std::vector<AttrSpec> kExpandAttributes = {
    {"shape", AttrType::kInts, std::nullopt,
     "the target shape (-1 keeps a dim); required unless the shape comes as input 1"},
};

const std::vector<AttrSpec> kConcatAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "the joined axis, negative counts from the end"},
};

const std::vector<AttrSpec> kSliceAttributes = {
    {"axes", AttrType::kInts, std::nullopt, "required: the sliced axes"},
    {"starts", AttrType::kInts, std::nullopt, "required: one per axis (Python slice start)"},
    {"ends", AttrType::kInts, std::nullopt, "required: one per axis (Python slice end)"},
    {"steps", AttrType::kInts, std::nullopt, "one per axis, >= 1; absent: 1 for every axis"},
};

const std::vector<AttrSpec> kSplitAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "the split axis, negative counts from the end"},
    {"sizes", AttrType::kInts, std::nullopt, "required: one size per output, summing to the dim"},
};

const std::vector<AttrSpec> kSpaceToDepthAttributes = {
    {"pads", AttrType::kInts, AttrValue{std::vector<int64_t>{0, 0, 0, 0}},
     "zero rows and columns added before the fold: top, bottom, left, right (>= 0; padded H and W even)"},
    {"channels", AttrType::kInt, std::nullopt,
     "the channels after zero channels are added (>= C; absent: C)"},
    {"layout", AttrType::kString, AttrValue{std::string("nchw")},
     "nchw: y [N, 4C', H'/2, W'/2]; nhwc (set by assign_layouts): y [N, H'/2, W'/2, 4C']"},
    {"output_inv_scale", AttrType::kFloat, std::nullopt,
     "set by fold_quantize_copies: y is int8, clamp(rint(v * output_inv_scale)) of each value v (the "
     "padding's 0 too), as the per-tensor quantize it replaces computed it"},
    {"output_quant_min", AttrType::kInt, AttrValue{int64_t{-128}}, "with output_inv_scale: y's range"},
    {"output_quant_max", AttrType::kInt, AttrValue{int64_t{127}}, "with output_inv_scale: y's range"},
};

const SchemaRegistration kRegistered{
    {"space_to_depth", 1, 1, infer_space_to_depth, kSpaceToDepthAttributes},
    {"reshape", 1, 2, infer_reshape, kReshapeAttributes, kView},
    {"transpose", 1, 1, infer_transpose, kTransposeAttributes},
    {"flatten", 1, 1, infer_flatten, kFlattenAttributes, kView},
    {"squeeze", 1, 1, infer_squeeze, kSqueezeAttributes, kView},
    {"unsqueeze", 1, 1, infer_unsqueeze, kUnsqueezeAttributes, kView},
    {"expand", 1, 2, infer_expand, kExpandAttributes},
    {"shape", 1, 1, infer_shape, {} /* no attributes */},
    {"concat", 1, 1024, infer_concat, kConcatAttributes},
    {"slice", 1, 1, infer_slice, kSliceAttributes},
    {"split", 1, 1, infer_split, kSplitAttributes},
};

}  // namespace

}  // namespace kiln
