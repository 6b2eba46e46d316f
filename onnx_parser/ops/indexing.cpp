// ONNX GatherND, ScatterND and Einsum, built from gather / scatter_elements / transpose / matmul /
// reduce over static shapes.
#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

int64_t product(const Dims& d, size_t from, size_t to) {
  int64_t p = 1;
  for (size_t i = from; i < to; ++i) p *= d[i];
  return p;
}

// The row-major linear index over data dims [b, b + k) of the index tuples in `idx` [..., k]
// (negative entries count from the end), as int64 [...].
TensorId linear_index(NodeContext& ctx, TensorId idx, const Dims& data, size_t b, int64_t k) {
  std::vector<int64_t> dims(data.begin() + static_cast<int64_t>(b),
                            data.begin() + static_cast<int64_t>(b) + k);
  std::vector<int64_t> strides(static_cast<size_t>(k), 1);
  for (int64_t j = k - 2; j >= 0; --j) strides[j] = strides[j + 1] * dims[j + 1];
  idx = ctx.cast(idx, DataType::kInt64);
  TensorId d = ctx.constant_i64(dims);
  TensorId neg = ctx.elementwise("lt", idx, ctx.scalar(DataType::kInt64, 0.0));
  idx = ctx.add1("where", {neg, ctx.elementwise("add", idx, d), idx});
  TensorId flat = ctx.elementwise("mul", idx, ctx.constant_i64(strides));
  return ctx.add1("reduce", {flat},
                  Attributes()
                      .set("op", std::string("sum"))
                      .set("axes", std::vector<int64_t>{-1})
                      .set("keepdim", int64_t{0}));
}

void import_gather_nd(NodeContext& ctx) {
  const Dims data = ctx.desc(0).dims, ind = ctx.desc(1).dims;
  const int64_t b = ctx.attr_int("batch_dims", 0);
  if (!is_static(data) || !is_static(ind) || ind.empty()) ctx.fail("needs static shapes");
  const int64_t k = ind.back();
  if (b < 0 || k < 1 || b + k > static_cast<int64_t>(data.size()) || b >= static_cast<int64_t>(ind.size())) {
    ctx.fail("indices' last dim and batch_dims do not fit the data");
  }
  for (int64_t i = 0; i < b; ++i) {
    if (data[i] != ind[i]) ctx.fail("batch dims of data and indices differ");
  }
  TensorId flat = linear_index(ctx, ctx.input(1), data, static_cast<size_t>(b), k);  // ind[:-1]
  const int64_t block = product(data, static_cast<size_t>(b), static_cast<size_t>(b + k));
  if (b > 0) {  // + batch number * block
    const int64_t batches = product(data, 0, static_cast<size_t>(b));
    check_host_elements(batches, "a batch index", ctx);
    std::vector<int64_t> base(static_cast<size_t>(batches));
    for (int64_t i = 0; i < batches; ++i) base[i] = i * block;
    Dims shape(ind.begin(), ind.end() - 1);
    for (size_t i = static_cast<size_t>(b); i < shape.size(); ++i) shape[i] = 1;
    flat = ctx.elementwise("add", flat, ctx.constant_i64(base, shape));
  }
  Dims rows = {product(data, 0, static_cast<size_t>(b)) * block};
  rows.insert(rows.end(), data.begin() + b + k, data.end());
  TensorId table = ctx.add1("reshape", {ctx.input(0)}, Attributes().set("shape", rows));
  ctx.set_output(
      0, ctx.add1("gather", {table, flat}, Attributes().set("axis", int64_t{0}).set("wrap", int64_t{0})));
}

void import_scatter_nd(NodeContext& ctx) {
  const Dims data = ctx.desc(0).dims, ind = ctx.desc(1).dims, upd = ctx.desc(2).dims;
  if (!is_static(data) || !is_static(ind) || !is_static(upd) || ind.empty()) ctx.fail("needs static shapes");
  const int64_t k = ind.back();
  if (k < 1 || k > static_cast<int64_t>(data.size())) ctx.fail("indices' last dim does not fit the data");
  const std::string reduction = ctx.attr_string("reduction", std::string("none"));
  const int64_t rows = product(data, 0, static_cast<size_t>(k)),
                row = product(data, static_cast<size_t>(k), data.size());
  const int64_t n = product(ind, 0, ind.size() - 1);
  TensorId flat = linear_index(ctx, ctx.input(1), data, 0, k);
  flat = ctx.add1("reshape", {flat}, Attributes().set("shape", std::vector<int64_t>{n, 1}));
  flat = ctx.add1("expand", {flat}, Attributes().set("shape", std::vector<int64_t>{n, row}));
  TensorId table =
      ctx.add1("reshape", {ctx.input(0)}, Attributes().set("shape", std::vector<int64_t>{rows, row}));
  TensorId updates =
      ctx.add1("reshape", {ctx.input(2)}, Attributes().set("shape", std::vector<int64_t>{n, row}));
  TensorId y = ctx.add1("scatter_elements", {table, flat, updates},
                        Attributes().set("axis", int64_t{0}).set("reduction", reduction));
  ctx.set_output(0, ctx.add1("reshape", {y}, Attributes().set("shape", data)));
}

// Einsum without ellipses or repeated letters within one operand (diagonals): one operand is a
// sum and a transpose; two are a batched matmul between transposes.
void import_einsum(NodeContext& ctx) {
  std::string eq;
  for (char c : ctx.attr_string("equation")) {
    if (c != ' ') eq += c;
  }
  if (eq.find("...") != std::string::npos) ctx.fail("equations with ellipses are not supported");
  const size_t arrow = eq.find("->");
  std::string lhs = arrow == std::string::npos ? eq : eq.substr(0, arrow);
  std::vector<std::string> terms;
  for (size_t start = 0;;) {
    const size_t comma = lhs.find(',', start);
    terms.push_back(lhs.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (static_cast<int>(terms.size()) != ctx.num_inputs() || terms.size() > 2)
    ctx.fail("one or two operands are supported");
  std::map<char, int> count;
  std::map<char, int64_t> size;
  for (size_t t = 0; t < terms.size(); ++t) {
    const Dims d = ctx.desc(static_cast<int>(t)).dims;
    if (d.size() != terms[t].size() || !is_static(d))
      ctx.fail("each operand needs static dims, one letter per dim");
    std::set<char> seen;
    for (size_t i = 0; i < d.size(); ++i) {
      const char c = terms[t][i];
      if (!seen.insert(c).second)
        ctx.fail("repeated letters within one operand (diagonals) are not supported");
      ++count[c];
      size[c] = d[i];
    }
  }
  std::string out;
  if (arrow != std::string::npos) {
    out = eq.substr(arrow + 2);
  } else {  // implicit output: letters seen once, sorted
    for (const auto& [c, n] : count) {
      if (n == 1) out += c;
    }
  }
  auto transpose_to = [&](TensorId x, const std::string& from, const std::string& to) {
    if (from == to) return x;
    std::vector<int64_t> perm;
    for (char c : to) perm.push_back(static_cast<int64_t>(from.find(c)));
    return ctx.add1("transpose", {x}, Attributes().set("perm", perm));
  };
  // Sum out each operand's letters that appear nowhere else.
  std::vector<TensorId> x;
  for (size_t t = 0; t < terms.size(); ++t) {
    TensorId v = ctx.input(static_cast<int>(t));
    std::vector<int64_t> axes;
    std::string kept;
    for (size_t i = 0; i < terms[t].size(); ++i) {
      const char c = terms[t][i];
      if (out.find(c) == std::string::npos && count[c] == 1)
        axes.push_back(static_cast<int64_t>(i));
      else
        kept += c;
    }
    if (!axes.empty()) {
      v = ctx.add1("reduce", {v},
                   Attributes().set("op", std::string("sum")).set("axes", axes).set("keepdim", int64_t{0}));
    }
    terms[t] = kept;
    x.push_back(v);
  }
  if (terms.size() == 1) {
    ctx.set_output(0, out == terms[0] ? ctx.add1("identity", {x[0]}) : transpose_to(x[0], terms[0], out));
    return;
  }
  std::string batch, contracted, fa, fb;
  for (char c : terms[0]) {
    const bool in_b = terms[1].find(c) != std::string::npos, in_out = out.find(c) != std::string::npos;
    if (in_b && in_out)
      batch += c;
    else if (in_b)
      contracted += c;
    else
      fa += c;
  }
  for (char c : terms[1]) {
    if (terms[0].find(c) == std::string::npos) fb += c;
  }
  auto prod = [&](const std::string& letters) {
    int64_t p = 1;
    for (char c : letters) p *= size[c];
    return p;
  };
  const int64_t nb = prod(batch), nc = prod(contracted), na = prod(fa), nf = prod(fb);
  TensorId a = ctx.add1("reshape", {transpose_to(x[0], terms[0], batch + fa + contracted)},
                        Attributes().set("shape", std::vector<int64_t>{nb, na, nc}));
  TensorId bm = ctx.add1("reshape", {transpose_to(x[1], terms[1], batch + contracted + fb)},
                         Attributes().set("shape", std::vector<int64_t>{nb, nc, nf}));
  TensorId y = ctx.add1("matmul", {a, bm});
  const std::string have = batch + fa + fb;
  std::vector<int64_t> dims;
  for (char c : have) dims.push_back(size[c]);
  y = ctx.add1("reshape", {y}, Attributes().set("shape", dims));
  for (char c : out) {
    if (have.find(c) == std::string::npos)
      ctx.fail(std::string("output letter ") + c + " is not an input letter");
  }
  ctx.set_output(0, transpose_to(y, have, out));
}

const ImporterRegistration kRegistered{
    {"GatherND", import_gather_nd},
    {"ScatterND", import_scatter_nd},
    {"Einsum", import_einsum},
};

}  // namespace
}  // namespace kiln::onnx
