"""Builds a small Kiln engine with the native API and saves it as TorchScript for kiln_infer.

    python examples/cpp/make_model.py OUT_DIR [--device cpu|cuda] [--batch N]

The network is a small CNN (convolution + relu + max pooling + flatten + fully_connected) with a
dynamic batch (1..16), its weights from a seeded torch model. It is wrapped in
kiln.runtime.EngineModule, scripted and saved with torch.jit.save. Writes to OUT_DIR:
  model.ts      the scripted EngineModule (runs in any LibTorch app that links Kiln::runtime)
  input.pt      a sample input, a CPU float32 tensor [N, 3, 16, 16] (torch.save)
  expected.pt   Python's output of the saved module, reloaded, on that input (CPU tensor)
and prints how far the engine is from eager torch.
"""

import argparse
from pathlib import Path

import torch

import kiln
import kiln.runtime


def torch_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 10),
    ).eval()


def build_plan(model: torch.nn.Sequential, device: str) -> kiln.Plan:
    conv, fc = model[0], model[4]
    net = kiln.Network()
    x = net.add_input("x", torch.float32, (-1, 3, 16, 16))  # dynamic batch
    h = net.add_convolution(x, conv.weight.detach(), conv.bias.detach(), padding=1)
    h = net.add_pooling(net.add_activation(h, "relu"), "max", kernel=2)
    h = net.add_flatten(h, start_dim=1)
    y = net.add_fully_connected(h, fc.weight.detach(), fc.bias.detach())
    net.mark_output(y, "logits")
    config = kiln.BuilderConfig(device=device)
    config.add_optimization_profile({"x": ((1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16))})
    return kiln.Builder().build(net, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=3)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = args.device

    model = torch_model()
    module = kiln.runtime.EngineModule(build_plan(model, device), device)
    torch.jit.save(torch.jit.script(module), str(args.out_dir / "model.ts"))

    x = torch.randn(args.batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.save(x, args.out_dir / "input.pt")
    with torch.no_grad():
        expected = torch.jit.load(str(args.out_dir / "model.ts"))(x.to(device)).cpu()
        eager = model(x)
    torch.save(expected, args.out_dir / "expected.pt")
    diff = (expected - eager).abs().max().item()
    print(
        f"wrote {args.out_dir}/model.ts, input.pt, expected.pt (device {device}, "
        f"output {list(expected.shape)}, max |kiln - eager torch| = {diff:.2e})"
    )


if __name__ == "__main__":
    main()
