// Torch ops inside an engine (kiln.compile's torch_ops_in_engine, docs/plugins.md): a node of a
// listed op becomes one `torch_op` layer that calls the op through PyTorch's dispatcher when the
// engine runs, instead of a graph break. The layer's op is defined by libkiln_runtime (it needs
// torch); here, torch-free, the node's arguments are encoded into the layer's attributes.
//
// Argument encoding ("args"): one token per schema argument, in order:
//   N  none            B0 / B1  bool        I<int>;   int      F<hex double>;  float
//   S<len>:<bytes>     string   T<k>;       tensor input k of the layer
//   L<n>;<n tokens>    list
#include <cstdio>
#include <sstream>

#include "converters/converter.h"
#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

// Encodes `a` into `out`; with a context, tensor values become layer inputs (appended to
// `inputs`). False when an argument cannot be encoded (the reason in *why).
bool encode(const Arg& a, ConversionContext* ctx, std::vector<TensorId>* inputs,
            std::vector<int64_t>* in_dtypes, std::ostringstream& out, const KGraph& graph, std::string* why) {
  switch (a.kind) {
    case Arg::Kind::kNone:
      out << 'N';
      return true;
    case Arg::Kind::kBool:
      out << 'B' << (a.b ? 1 : 0);
      return true;
    case Arg::Kind::kInt:
      out << 'I' << a.i << ';';
      return true;
    case Arg::Kind::kFloat: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%a", a.f);
      out << 'F' << buf << ';';
      return true;
    }
    case Arg::Kind::kString:
      out << 'S' << a.s.size() << ':' << a.s;
      return true;
    case Arg::Kind::kValue: {
      const KValue& v = graph.value(a.value);
      if (v.host_scalar) {
        *why = "argument " + v.name + " is a symbolic size (a host scalar), not a tensor";
        return false;
      }
      if (ctx != nullptr) {
        out << 'T' << inputs->size() << ';';
        inputs->push_back(ctx->tensor(a.value));
        in_dtypes->push_back(static_cast<int64_t>(v.dtype));
      }
      return true;
    }
    case Arg::Kind::kList:
      out << 'L' << a.list.size() << ';';
      for (const Arg& e : a.list) {
        if (!encode(e, ctx, inputs, in_dtypes, out, graph, why)) return false;
      }
      return true;
  }
  *why = "an argument of an unknown kind";
  return false;
}

}  // namespace

Converter torch_op_converter(const std::string& target) {
  Converter c;
  c.target = target;
  c.dynamic_shapes = true;
  c.limits = "torch_ops_in_engine: runs through PyTorch inside the engine";
  c.capability = [](const KGraph& graph, const KNode& node) -> std::string {
    if (find_schema("torch_op") == nullptr)
      return "torch_ops_in_engine needs libkiln_runtime (torch) in this process";
    std::ostringstream out;
    std::string why;
    for (const auto& [name, a] : node.args) {
      if (!encode(a, nullptr, nullptr, nullptr, out, graph, &why)) return why;
    }
    for (ValueId v : node.outputs) {
      if (v == kNoValue) return "an output of the op is unused (torch_ops_in_engine needs each one)";
      if (graph.value(v).host_scalar) return "an output is a host scalar, not a tensor";
    }
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& node) {
    std::ostringstream args;
    std::vector<TensorId> inputs;
    std::vector<int64_t> in_dtypes;  // as traced: the op computes in these (builders keep them)
    std::string why;
    for (const auto& [name, a] : node.args) {
      KILN_CHECK(encode(a, &ctx, &inputs, &in_dtypes, args, ctx.graph(), &why), node.describe()
                                                                                    << ": " << why);
    }
    std::vector<int64_t> dtypes, ranks, dims;
    for (ValueId v : node.outputs) {
      const KValue& kv = ctx.graph().value(v);
      dtypes.push_back(static_cast<int64_t>(kv.dtype));
      ranks.push_back(static_cast<int64_t>(kv.dims.size()));
      dims.insert(dims.end(), kv.dims.begin(), kv.dims.end());
    }
    Attributes attrs;
    attrs.set("target", node.target)
        .set("args", args.str())
        .set("in_dtypes", in_dtypes)
        .set("out_dtypes", dtypes)
        .set("out_ranks", ranks)
        .set("out_dims", dims);
    Layer& l = ctx.add(node, "torch_op", inputs, std::move(attrs));
    for (size_t i = 0; i < node.outputs.size(); ++i) ctx.set_output(node, i, l.outputs.at(i));
  };
  return c;
}

}  // namespace kiln
