"""INT8 post-training calibration through kiln.compile on a really trained model: a small CNN
trained here on scikit-learn's bundled digits (no downloads), calibrated with each algorithm,
must stay within 1% top-1 of its FP32 accuracy on held-out digits. Also the calibration cache
(reused, refused when it belongs to another network or is malformed) and the INT8 errors.

The engines compute INT8 fake quantization in floating point (Kiln has no INT8 kernels yet), so
these tests check the calibration and its accuracy, not speed (docs/quantization.md)."""

import pytest
import torch
from layer_util import DEVICES

import kiln

sklearn_datasets = pytest.importorskip("sklearn.datasets")


class DigitsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 4 * 4, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        for batch in train[torch.randperm(len(train), generator=g)].split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    return model, x[train], x[test], y[test]


def accuracy(fn, x, y) -> float:
    with torch.no_grad():
        return (fn(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["entropy", "minmax", "percentile"])
def test_ptq_stays_within_one_percent_of_fp32(digits, device, algorithm):
    model, train, test, labels = digits
    model = model.to(device)
    test, labels = test.to(device), labels.to(device)
    fp32 = accuracy(model, test, labels)
    assert fp32 > 0.9  # the model learned the digits
    batches = [(b,) for b in train[:512].split(64)]
    spec = kiln.Input(min_shape=(1, 1, 8, 8), opt_shape=(64, 1, 8, 8), max_shape=(512, 1, 8, 8))
    compiled = kiln.compile(
        model,
        [spec],
        enabled_precisions={torch.int8},
        calibrator=kiln.Calibrator(batches, algorithm=algorithm),
        device=device,
        require_full_compilation=True,
    )
    ops = [la.op for p in kiln.plans(compiled) for la in kiln.inspect(p).layers]
    assert ops.count("fake_quantize") == 4, ops  # the input of each conv and linear layer
    int8 = accuracy(compiled, test, labels)
    assert int8 >= fp32 - 0.01, (algorithm, int8, fp32)
    # Quantization really happened: the outputs move, a little.
    with torch.no_grad():
        diff = (compiled(test) - model(test)).abs().max().item()
    assert diff > 0


def test_cache_is_reused_and_refused_for_another_network(digits, tmp_path):
    model, train, test, labels = digits
    cache = tmp_path / "digits.calib"
    batches = [(b,) for b in train[:256].split(64)]
    first = kiln.compile(
        model,
        [test[:64]],
        enabled_precisions={torch.int8},
        calibrator=kiln.Calibrator(batches, algorithm="minmax", cache_file=cache),
        device="cpu",
    )
    text = cache.read_text().splitlines()
    assert text[0] == "# kiln calibration cache v1" and len(text) == 2 + 4, text
    # No batches at all: the cache alone gives the same ranges, so the same engine.
    again = kiln.compile(
        model,
        [test[:64]],
        enabled_precisions={torch.int8},
        calibrator=kiln.Calibrator([], cache_file=cache),
        device="cpu",
    )
    torch.testing.assert_close(again(test[:64]), first(test[:64]), rtol=0, atol=0)

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(kiln.KilnError, match="made for another network.*Delete it"):
        kiln.compile(
            Other().eval(),
            [test[:4]],
            enabled_precisions={torch.int8},
            calibrator=kiln.Calibrator([], cache_file=cache),
            device="cpu",
        )
    cache.write_text("# kiln calibration cache v1\nnot a valid line at all\n")
    with pytest.raises(kiln.KilnError, match="line 2 is not 'name range'"):
        kiln.compile(
            model,
            [test[:4]],
            enabled_precisions={torch.int8},
            calibrator=kiln.Calibrator([], cache_file=cache),
            device="cpu",
        )
    cache.write_text("some other file\n")
    with pytest.raises(kiln.KilnError, match="not a Kiln calibration cache"):
        kiln.compile(
            model,
            [test[:4]],
            enabled_precisions={torch.int8},
            calibrator=kiln.Calibrator([], cache_file=cache),
            device="cpu",
        )


def test_int8_errors(digits):
    model, _, test, _ = digits
    with pytest.raises(kiln.KilnError, match="INT8 needs either a calibrator"):
        kiln.compile(model, [test[:4]], enabled_precisions={torch.int8}, device="cpu")
    with pytest.raises(ValueError, match="a calibrator is for INT8"):
        kiln.compile(model, [test[:4]], calibrator=kiln.Calibrator([(test[:4],)]), device="cpu")
    with pytest.raises(ValueError, match="unknown calibration algorithm 'kl'"):
        kiln.Calibrator([], algorithm="kl")
    with pytest.raises(kiln.KilnError, match="calibration batches are empty"):
        kiln.compile(
            model,
            [test[:4]],
            enabled_precisions={torch.int8},
            calibrator=kiln.Calibrator([]),
            device="cpu",
        )
