import pytest
from layer_util import build_plan

import kiln


def tiny_plan(target="cpu"):
    net = kiln.Network()
    x = net.add_input("x", "float32", (2, 3))
    net.mark_output(net.add_activation(x, "sigmoid"), "y")
    return build_plan(net, target)


def test_round_trip_bytes_and_file(tmp_path):
    plan = tiny_plan()
    data = plan.serialize()
    assert kiln.Plan.deserialize(data).serialize() == data
    path = tmp_path / "tiny.plan"
    plan.save(str(path))
    assert kiln.Plan.load(str(path)).serialize() == data
    assert plan.header["format_version"] == 4 and plan.header["sm_arch"] == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"NOTAPLAN" + b[8:], "bad magic"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),
        (lambda b: b"", "bad magic"),
    ],
)
def test_corrupt_plans_give_clear_errors(mutate, message):
    with pytest.raises(kiln.KilnError, match=message):
        kiln.Plan.deserialize(mutate(tiny_plan().serialize()))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(kiln.KilnError, match="cannot open plan file"):
        kiln.Plan.load(str(tmp_path / "absent.plan"))
