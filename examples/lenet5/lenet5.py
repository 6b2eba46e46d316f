"""LeNet-5 built layer by layer with Kiln's native API from a PyTorch state_dict file.

    python examples/lenet5/lenet5_torch.py /tmp/lenet5      # PyTorch writes the weights
    python examples/lenet5/lenet5.py /tmp/lenet5 [reference|cuda]

Compares Kiln's output with the outputs PyTorch wrote (rtol/atol 1e-4, FP32) and exits non-zero
on a mismatch.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import kiln


def build_network(weights):
    """The network, from a LeNet-5 state_dict (name -> tensor)."""
    net = kiln.Network()
    x = net.add_input("input", torch.float32, (-1, 1, 32, 32))  # dynamic batch
    for conv in ("conv1", "conv2"):
        x = net.add_convolution(x, weights[f"{conv}.weight"], weights[f"{conv}.bias"], name=conv)
        x = net.add_activation(x, "relu", name=f"{conv}_relu")
        x = net.add_pooling(x, "max", kernel=[2, 2], name=f"{conv}_pool")
    x = net.add_flatten(x, start_dim=1, name="flatten")
    for i, fc in enumerate(("fc1", "fc2", "fc3")):
        x = net.add_fully_connected(x, weights[f"{fc}.weight"], weights[f"{fc}.bias"], name=fc)
        if i < 2:
            x = net.add_activation(x, "relu", name=f"{fc}_relu")
    net.mark_output(x, "logits")
    return net


def run(data_dir, target="cpu"):
    """Builds and runs LeNet-5 on `target`; returns (kiln output, PyTorch output)."""
    data = Path(data_dir)
    net = build_network(load_file(data / "lenet5.safetensors"))
    io = load_file(data / "lenet5_io.safetensors")
    config = kiln.BuilderConfig(device=target)
    config.add_optimization_profile({"input": ((1, 1, 32, 32), (4, 1, 32, 32), (64, 1, 32, 32))})
    engine = kiln.Engine(kiln.Builder().build(net, config), device=target)
    device = "cuda" if target == "cuda" else "cpu"
    out = engine.create_execution_context().execute({"input": io["input"].to(device)})["logits"]
    return out.cpu(), io["output"]


if __name__ == "__main__":
    target = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    got, want = run(sys.argv[1], target)
    err = (got - want).abs().max().item()
    ok = torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    print(f"lenet5 python {target}: max abs err {err:.3e} -> {'OK' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)
