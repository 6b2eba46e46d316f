"""transformers models as users call them: keyword inputs (input_ids=, attention_mask=), the
default config (decoders return their KV cache, a DynamicCache inside a ModelOutput), dynamic
batch and sequence shared by both inputs. Small configs, compiled whole and compared with eager
(logits and every cache tensor) on the reference backend; marked gpu, on CUDA.
"""

import pytest
import torch

import kiln
from kiln import runtime as rt

pytestmark = pytest.mark.skipif(not rt.is_available(), reason="libkiln_runtime.so was not built")
transformers = pytest.importorskip("transformers")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2)


def decoder(name):
    tf = transformers
    if name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        return tf.GPT2LMHeadModel(cfg)
    heads = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if name == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL, **heads))
    if name == "mistral":
        return tf.MistralModel(tf.MistralConfig(**SMALL, **heads, sliding_window=None))
    if name == "qwen2":
        return tf.Qwen2Model(tf.Qwen2Config(**SMALL, **heads))
    raise ValueError(name)


def tokens(batch, seq, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, : seq // 4] = 0  # left padding in the first row
    return ids, mask


def flat(output):
    leaves = [output.last_hidden_state if "last_hidden_state" in output else output.logits]
    cache = output.past_key_values
    for layer in cache.layers:
        leaves += [layer.keys, layer.values]
    return leaves


def check(want, got):
    assert type(got) is type(want) and type(got.past_key_values) is type(want.past_key_values)
    for w, g in zip(flat(want), flat(got), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "gpt2"])
def test_decoder_with_cache_and_keyword_inputs(name, device):
    torch.manual_seed(0)
    model = decoder(name).eval().to(device)
    spec = kiln.Input(min_shape=(1, 4), opt_shape=(2, 16), max_shape=(3, 32), dtype=torch.int64)
    compiled = kiln.compile(
        model,
        [],
        kwarg_inputs={"input_ids": spec, "attention_mask": spec},
        device=device,
        min_block_size=1,
    )
    assert compiled.report.num_engines == 1 and not compiled.report.fallbacks, str(compiled.report)
    with torch.no_grad():
        for batch, seq, seed in [(2, 16, 1), (1, 5, 2), (3, 32, 3)]:
            ids, mask = (t.to(device) for t in tokens(batch, seq, seed))
            check(
                model(input_ids=ids, attention_mask=mask),
                compiled(input_ids=ids, attention_mask=mask),
            )


def test_inputs_traced_equal_must_be_equal_when_called():
    model = decoder("llama").eval()
    spec = kiln.Input(min_shape=(1, 4), opt_shape=(2, 16), max_shape=(3, 32), dtype=torch.int64)
    compiled = kiln.compile(
        model, [], kwarg_inputs={"input_ids": spec, "attention_mask": spec}, device="cpu"
    )
    ids, _ = tokens(2, 16, 0)
    _, mask = tokens(2, 12, 0)
    with pytest.raises(kiln.KilnError, match="traced with them equal"):
        compiled(input_ids=ids, attention_mask=mask)
    with pytest.raises(kiln.KilnError, match="keyword inputs"):
        compiled(ids, mask)
