"""The PyTorch side of the LeNet-5 example: the model, and a writer for its weights.

    python examples/lenet5/lenet5_torch.py OUT_DIR

writes OUT_DIR/lenet5.safetensors (the model's state_dict, as `safetensors.torch.save_file`
writes it) and OUT_DIR/lenet5_io.safetensors (a batch of inputs and PyTorch's outputs for them),
which lenet5.py and the C++ lenet5 program read.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


class LeNet5(torch.nn.Module):
    """LeCun et al.'s LeNet-5 on 1x32x32 images, with ReLU and max pooling."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.fc1 = torch.nn.Linear(16 * 5 * 5, 120)
        self.fc2 = torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def write(out_dir, batch=4, seed=0):
    """Writes a seeded LeNet-5's state_dict and a sample batch with its outputs; returns it."""
    torch.manual_seed(seed)
    model = LeNet5().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, out / "lenet5.safetensors"
    )
    x = torch.randn(batch, 1, 32, 32)
    with torch.no_grad():
        y = model(x)
    save_file({"input": x, "output": y}, out / "lenet5_io.safetensors")
    return model


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else ".")
