"""Build a one-layer network around torch tensors and run it on a backend."""

import torch

import kiln


def run_layer(add_layer, inputs, target, dynamic=False):
    """add_layer(net, *input_tensors) -> Layer; returns the layer's output as a CPU torch tensor.

    dynamic=True declares dim 0 of the first input dynamic (when its rank is >= 1), with a profile
    from 1 to twice the given size, so the engine runs with shapes resolved at run time.
    """
    net = kiln.Network()
    tensors, profile = [], {}
    for i, t in enumerate(inputs):
        name = f"in{i}"
        shape = list(t.shape)
        if dynamic and shape and i == 0:
            lo, hi = min(1, shape[0]), max(1, 2 * shape[0])
            profile[name] = ([lo, *shape[1:]], list(shape), [hi, *shape[1:]])
            shape[0] = -1
        tensors.append(net.add_input(name, t.dtype, shape))
    net.mark_output(add_layer(net, *tensors), "out")
    config = kiln.BuilderConfig(device=target)
    if profile:
        config.add_optimization_profile(profile)
    engine = kiln.Engine(kiln.Builder().build(net, config), device=target)
    device = "cuda" if target == "cuda" else "cpu"
    feed = {f"in{i}": t.to(device) for i, t in enumerate(inputs)}
    out = engine.create_execution_context().execute(feed)["out"]
    if target == "cuda":
        torch.cuda.synchronize()
    return out.cpu()


# Tolerances for a result computed in float32 and rounded once to the output dtype. float32:
# a few ulp of the math library on top of float32 rounding (ulp 6e-8). float16/bfloat16: one
# rounding step (ulp 2^-10 / 2^-7) may land on either side, so allow about two ulp.
TOLERANCE = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
}
