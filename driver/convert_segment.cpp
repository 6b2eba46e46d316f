#include "driver/convert_segment.h"

#include "converters/converter.h"
#include "ir/error.h"

namespace kiln {

Network convert_segment(const KGraph& graph, const Segment& segment) {
  KILN_CHECK(segment.engine, "convert_segment: the segment runs in PyTorch");
  Network net;
  ConversionContext ctx(graph, net);
  for (ValueId v : segment.inputs) {
    const KValue& kv = graph.value(v);
    KILN_CHECK(!kv.host_scalar, "engine segment input '" << kv.name << "' is a symbolic size, not a tensor");
    ctx.bind(v, net.add_input(kv.name, kv.dtype, kv.dims));
  }
  std::vector<int> nodes = segment.recompute;  // symbolic sizes recomputed here come first
  nodes.insert(nodes.end(), segment.nodes.begin(), segment.nodes.end());
  for (int index : nodes) {
    const KNode& node = graph.nodes().at(index);
    const std::string reason = check_convertible(graph, node);
    KILN_CHECK(reason.empty(), node.describe() << ": cannot convert: " << reason);
    try {
      find_converter(node.target)->convert(ctx, node);
    } catch (const Error& e) {
      // Layer errors start with the node ("cat_3 (aten.cat.default) at model.py:12: ..."); the
      // reason is shown after the node already.
      std::string why = e.what();
      const std::string prefix = node.describe();
      if (why.rfind(prefix, 0) == 0 && why.find(": ", prefix.size()) != std::string::npos)
        why = why.substr(why.find(": ", prefix.size()) + 2);
      throw NodeConversionError(index, "its conversion failed: " + why,
                                node.describe() + ": conversion failed: " + why);
    }
    for (ValueId v : node.outputs) {
      KILN_CHECK(v == kNoValue || ctx.has(v),
                 node.describe() << ": the converter did not produce output '" << graph.value(v).name << "'");
    }
  }
  for (ValueId v : segment.outputs) {
    const KValue& kv = graph.value(v);
    TensorId t = ctx.tensor(v);
    if (net.tensor(t).kind != TensorKind::kActivation) {
      t = net.add_identity(t, kv.name + "/out").outputs[0];  // an output must be computed by a layer
    }
    const TensorDesc d = net.desc(t);
    KILN_CHECK(d.dtype == kv.dtype, "segment output '" << kv.name << "' converted to " << dtype_name(d.dtype)
                                                       << ", torch has " << dtype_name(kv.dtype));
    net.mark_output(t, kv.name);
  }
  return net;
}

}  // namespace kiln
