"""The example plugin from PyTorch: a torch custom op ``kiln_example::erfinv(x, scale=1.0)``
(CPU and CUDA through torch.erfinv) and the Kiln converter that makes it the plugin's layer, so
``kiln.compile`` keeps a model using it in one engine (docs/plugins.md).

    import erfinv_torch
    erfinv_torch.load("build/examples/plugins/erfinv/libkiln_erfinv.so")
    y = torch.ops.kiln_example.erfinv(x, 2.0)      # eager
    compiled = kiln.compile(model, [x])            # the op runs as the plugin layer
"""

import torch

import kiln


@torch.library.custom_op("kiln_example::erfinv", mutates_args=())
def erfinv(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return torch.erfinv(x) * scale


@erfinv.register_fake
def _(x, scale=1.0):
    return torch.empty_like(x)


def convert(net: kiln.Network, node):
    """kiln_example::erfinv -> the plugin layer (its converter; registered by load())."""
    return net.add_plugin(
        "kiln_example::erfinv", [node.args["x"]], {"scale": node.args["scale"]}, name=node.name
    )


def load(library: str) -> None:
    """Loads the plugin library and registers the converter."""
    kiln.load_plugin_library(library)
    kiln.converter("kiln_example::erfinv.default")(convert)
