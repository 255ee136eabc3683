"""The prefix cache is passed and read under the installed transformers' name."""

from __future__ import annotations

import dataclasses
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from generator.tasks.kv_cache import cache_name
from generator.tasks.scoring import label_logprobs, prefix_cache


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.train(False)
    return model


def test_the_name_is_the_one_the_model_outputs_carry() -> None:
    assert cache_name() in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}


def test_scoring_with_a_shared_prefix_uses_the_cache_without_deprecation_warnings() -> None:
    model = _tiny()
    prompts, labels = [[1, 2, 3, 4, 5], [1, 2, 3, 6]], [[7, 8], [9]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = label_logprobs(model, prompts, labels, pad_id=0)
        assert prefix_cache(model, [1, 2, 3], torch.device("cpu")) is not None
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    # the cached prefix gives what the whole sequence gives without a cache
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4, 5, 7]])).logits[0].log_softmax(-1)
    assert torch.allclose(scores[0, 0], logits[4, 7] + logits[5, 8], atol=1e-5)
