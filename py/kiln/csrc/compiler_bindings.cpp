// kiln._C bindings of the torch-free compiler middle: KGraph, the converter registry, the
// partitioner and segment conversion. py/kiln/compile.py builds the KGraph from torch.export.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "converters/converter.h"
#include "driver/compile.h"
#include "driver/convert_segment.h"
#include "ir/error.h"
#include "lowering/kgraph.h"
#include "partitioning/partition.h"

namespace py = pybind11;
using namespace kiln;

namespace {

// A reference to a KGraph value inside a node argument (plain ints are immediates).
struct ValueRef {
  ValueId id;
};

Arg to_arg(py::handle h) {
  if (h.is_none()) return Arg::none();
  if (py::isinstance<ValueRef>(h)) return Arg::of_value(h.cast<ValueRef>().id);
  if (py::isinstance<py::bool_>(h)) return Arg::of_bool(h.cast<bool>());
  if (py::isinstance<py::int_>(h)) return Arg::of_int(h.cast<int64_t>());
  if (py::isinstance<py::float_>(h)) return Arg::of_float(h.cast<double>());
  if (py::isinstance<py::str>(h)) return Arg::of_string(h.cast<std::string>());
  if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h)) {
    std::vector<Arg> list;
    for (py::handle e : h) list.push_back(to_arg(e));
    return Arg::of_list(std::move(list));
  }
  KILN_FAIL("KGraph argument of unsupported Python type " << std::string(py::str(py::type::handle_of(h))));
}

py::dict segment_dict(const Segment& s) {
  py::dict d;
  d["engine"] = s.engine;
  d["nodes"] = s.nodes;
  d["inputs"] = s.inputs;
  d["outputs"] = s.outputs;
  d["recompute"] = s.recompute;
  return d;
}

Segment to_segment(const py::dict& d) {
  Segment s;
  s.engine = d["engine"].cast<bool>();
  s.nodes = d["nodes"].cast<std::vector<int>>();
  s.inputs = d["inputs"].cast<std::vector<ValueId>>();
  s.outputs = d["outputs"].cast<std::vector<ValueId>>();
  if (d.contains("recompute")) s.recompute = d["recompute"].cast<std::vector<int>>();
  return s;
}

}  // namespace

void bind_compiler(py::module_& m) {
  py::class_<ValueRef>(m, "ValueRef").def(py::init<ValueId>()).def_readonly("id", &ValueRef::id);

  py::class_<KGraph, std::shared_ptr<KGraph>>(m, "KGraph")
      .def(py::init<>())
      .def("add_input", [](KGraph& g, const std::string& name, const std::string& dtype,
                           const Dims& dims) { return g.add_input(name, parse_dtype(dtype), dims); })
      .def(
          "add_constant",
          [](KGraph& g, const std::string& name, const std::string& dtype, const Dims& dims, py::bytes data,
             const std::string& weight) {
            std::string_view bytes = data;
            return g.add_constant(name, parse_dtype(dtype), dims, bytes.data(), bytes.size(), weight);
          },
          py::arg("name"), py::arg("dtype"), py::arg("dims"), py::arg("data"), py::arg("weight") = "")
      .def("add_value",
           [](KGraph& g, const std::string& name, const std::string& dtype, const Dims& dims,
              bool host_scalar) { return g.add_value(name, parse_dtype(dtype), dims, host_scalar); })
      .def("add_node",
           [](KGraph& g, const std::string& name, const std::string& target, const py::list& args,
              const std::vector<ValueId>& outputs, const std::string& location) {
             KNode n;
             n.name = name;
             n.target = target;
             for (py::handle item : args) {
               py::tuple pair = item.cast<py::tuple>();
               n.args.emplace_back(pair[0].cast<std::string>(), to_arg(pair[1]));
             }
             n.outputs = outputs;
             n.location = location;
             return g.add_node(std::move(n));
           })
      .def("mark_output", &KGraph::mark_output)
      .def("num_nodes", [](const KGraph& g) { return g.nodes().size(); })
      .def("node_name", [](const KGraph& g, size_t i) { return g.nodes().at(i).name; })
      .def("node_target", [](const KGraph& g, size_t i) { return g.nodes().at(i).target; })
      .def("value_name", [](const KGraph& g, ValueId v) { return g.value(v).name; })
      .def("check_node", [](const KGraph& g, size_t i) { return check_convertible(g, g.nodes().at(i)); })
      .def("summary", &KGraph::summary);

  m.def("registered_converters", [] {
    std::vector<std::tuple<std::string, bool, std::string>> out;
    for (const Converter* c : registered_converters())
      out.emplace_back(c->target, c->dynamic_shapes, c->limits);
    return out;
  });
  m.def("has_converter", [](const std::string& target) { return find_converter(target) != nullptr; });
  m.def(
      "partition",
      [](const KGraph& g, int64_t min_block_size, const std::vector<std::string>& torch_executed_ops,
         bool require_full_compilation) {
        PartitionOptions o;
        o.min_block_size = min_block_size;
        o.torch_executed_ops = torch_executed_ops;
        o.require_full_compilation = require_full_compilation;
        Partition p = partition_graph(g, o);
        py::dict d;
        py::list segments;
        for (const Segment& s : p.segments) segments.append(segment_dict(s));
        py::list fallbacks;
        for (const Fallback& f : p.fallbacks) fallbacks.append(py::make_tuple(f.node, f.reason));
        d["segments"] = segments;
        d["fallbacks"] = fallbacks;
        d["report"] = describe_partition(g, p);
        return d;
      },
      py::arg("graph"), py::arg("min_block_size"), py::arg("torch_executed_ops"),
      py::arg("require_full_compilation"));
  // The canonical name of a precision spelling ("half" -> "fp16"), through the one C++ table;
  // kiln.dtypes.precision_name (every Python API) asks it.
  m.def("precision_name",
        [](const std::string& name) { return std::string(precision_name(parse_precision(name))); });

  py::class_<CompileOptions>(
      m, "CompileOptions", "The options of one compilation (driver/compile.h), the same for both frontends.")
      .def(py::init<>())
      .def_property(
          "precisions",
          [](const CompileOptions& o) {
            std::vector<std::string> names;
            for (Precision p : o.enabled_precisions) names.push_back(precision_name(p));
            return names;
          },
          [](CompileOptions& o, const std::vector<std::string>& names) {
            o.enabled_precisions = {Precision::kFP32};
            for (const std::string& n : names) o.enabled_precisions.insert(parse_precision(n));
          })
      .def_readwrite("min_block_size", &CompileOptions::min_block_size)
      .def_readwrite("torch_executed_ops", &CompileOptions::torch_executed_ops)
      .def_readwrite("require_full_compilation", &CompileOptions::require_full_compilation)
      .def_property(
          "device", [](const CompileOptions& o) { return o.device; },
          [](CompileOptions& o, const std::string& d) {
            parse_device(d);  // refused here, by name, rather than at build time
            o.device = d;
          })
      .def_readwrite("workspace_size", &CompileOptions::workspace_size)
      .def_readwrite("optimization_level", &CompileOptions::optimization_level)
      .def_readwrite("timing_cache_path", &CompileOptions::timing_cache_path)
      .def_readwrite("engine_cache_dir", &CompileOptions::engine_cache_dir)
      .def_readwrite("engine_cache_max_bytes", &CompileOptions::engine_cache_max_bytes)
      .def_readwrite("tactic_timing", &CompileOptions::tactic_timing)
      .def_readwrite("cuda_graphs", &CompileOptions::cuda_graphs)
      .def_readwrite("dry_run", &CompileOptions::dry_run);

  py::class_<CompileReport::SegmentInfo>(m, "SegmentInfo")
      .def_property_readonly(
          "kind", [](const CompileReport::SegmentInfo& s) { return s.engine ? "engine" : "pytorch"; })
      .def_readonly("nodes", &CompileReport::SegmentInfo::nodes)
      .def_readonly("ops", &CompileReport::SegmentInfo::ops);
  py::class_<CompileReport::FallbackInfo>(m, "FallbackInfo")
      .def_readonly("node", &CompileReport::FallbackInfo::node)
      .def_readonly("target", &CompileReport::FallbackInfo::target)
      .def_readonly("reason", &CompileReport::FallbackInfo::reason);
  py::class_<CompileReport>(m, "CompileReport")
      .def_readonly("num_engines", &CompileReport::num_engines)
      .def_readonly("segments", &CompileReport::segments)
      .def_readonly("fallbacks", &CompileReport::fallbacks)
      .def_readonly("text", &CompileReport::text);

  // compile_graph(graph, options, range, torch_nodes) -> (segments as dicts, report, [Plan]);
  // `range(value)` gives ((min), (opt), (max)) of a segment input with dynamic dims; torch_nodes
  // maps node indices that must run in PyTorch to the reason.
  m.def(
      "compile_graph",
      [](const KGraph& g, const CompileOptions& o, const std::function<py::tuple(ValueId)>& range,
         std::map<int, std::string> torch_nodes) {
        InputRange input_range = [&range](ValueId v) {
          py::tuple t = range(v);
          return ShapeRange{t[0].cast<Dims>(), t[1].cast<Dims>(), t[2].cast<Dims>()};
        };
        CompileResult r = compile_graph(g, o, input_range, std::move(torch_nodes));
        py::list segments, plans;
        for (const Segment& s : r.partition.segments) segments.append(segment_dict(s));
        for (Plan& p : r.plans) plans.append(py::cast(std::move(p)));
        return py::make_tuple(segments, r.report, plans);
      },
      py::arg("graph"), py::arg("options"), py::arg("range"),
      py::arg("torch_nodes") = std::map<int, std::string>{});

  m.def("convert_segment", [](const KGraph& g, const py::dict& segment) {
    return std::make_shared<Network>(convert_segment(g, to_segment(segment)));
  });
}
