"""Build a torch MLP's inference engine by hand with Kiln's native network API.

    python examples/native_mlp.py

Runs on the GPU when one is visible, else on the CPU reference backend, and compares with torch.
"""

import torch

import kiln

model = torch.nn.Sequential(
    torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
).eval()

net = kiln.Network()
x = net.add_input("x", torch.float32, (-1, 64))  # dynamic batch
h = net.add_matmul(x, model[0].weight, transpose_b=True)  # torch stores Linear weights as [out, in]
h = net.add_activation(net.add_elementwise(h, model[0].bias, "add"), "relu")
y = net.add_elementwise(net.add_matmul(h, model[2].weight, transpose_b=True), model[2].bias, "add")
net.mark_output(y, "logits")

config = kiln.BuilderConfig()
config.add_optimization_profile({"x": ((1, 64), (16, 64), (256, 64))})
plan = kiln.Builder().build(net, config)
plan.save("/tmp/mlp.plan")  # versioned bytes; kiln.Plan.load() reads them back

engine = kiln.Engine(kiln.Plan.load("/tmp/mlp.plan"))
device = engine.device  # "cuda" or "cpu"
inp = torch.randn(16, 64, device=device)
out = engine.create_execution_context().execute({"x": inp})["logits"]
with torch.no_grad():
    want = model.to(device)(inp)
err = (out.cpu() - want.cpu()).abs().max().item()
print(f"device {engine.device}: max abs error vs torch {err:.2e}")
for line in engine.describe():
    print("  ", line)
