"""Saved modules return what the compiled module returned: a transformers ModelOutput loads in a
fresh process without the user importing transformers (kiln.load imports the module defining
it), from both save formats, and a missing library gets an error that says what to install."""

import subprocess
import sys
import textwrap

import pytest
import torch

import kiln

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=100,
    )  # fmt: skip
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    compiled = kiln.compile(model, [ids], device="cpu")
    out = compiled(ids)
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
    torch.save(ids, tmp / "ids.pt")
    torch.save(out.last_hidden_state, tmp / "want.pt")
    for name, fmt in (("bert.pt2", "exported_program"), ("bert.ts", "torchscript")):
        kiln.save(compiled, tmp / name, output_format=fmt)
    return tmp


@pytest.mark.parametrize("name", ["bert.pt2", "bert.ts"])
def test_model_outputs_load_in_a_fresh_process_without_importing_transformers(saved_bert, name):
    script = textwrap.dedent(
        f"""
        import sys, torch, kiln
        assert "transformers" not in sys.modules
        module = kiln.load({str(saved_bert / name)!r})
        out = module(torch.load({str(saved_bert / "ids.pt")!r}))
        want = torch.load({str(saved_bert / "want.pt")!r})
        torch.testing.assert_close(out.last_hidden_state, want)
        print(type(out).__module__ + "." + type(out).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions"
    )


def test_the_torchscript_module_inside_stays_plain_for_torch_jit_load(saved_bert):
    loaded = kiln.load(saved_bert / "bert.ts")
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert len(kiln.plans(loaded)) == 1 and loaded.report is not None
    assert isinstance(
        torch.jit.load(saved_bert / "bert.ts")(torch.load(saved_bert / "ids.pt")), dict
    )


def test_a_missing_library_says_what_to_install(tmp_path, monkeypatch):
    from kiln import serialize

    model = torch.nn.Linear(4, 2).eval()
    compiled = kiln.compile(model, [torch.randn(1, 4)], device="cpu")
    fake = serialize.OUTPUT_FILE
    monkeypatch.setattr(
        serialize,
        "_output_file",
        lambda spec: {fake: '{"types": ["kiln_no_such_pkg.outputs.Out"], "spec": null}'},
    )
    kiln.save(compiled, tmp_path / "m.pt2")
    with pytest.raises(
        kiln.KilnError,
        match=r"kiln_no_such_pkg\.outputs\.Out objects.*pip install kiln_no_such_pkg",
    ):
        kiln.load(tmp_path / "m.pt2")
