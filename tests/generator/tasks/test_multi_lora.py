"""Many adapters scored in the same passes give what scoring each alone gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from generator.tasks import multi_lora
from generator.tasks.evaluation import Evaluator, load_base
from generator.tasks.multi_lora import MultiLora, label_logprobs_many
from generator.tasks.scoring import label_logprobs, length_batches
from registry.errors import InvalidAdapter
from registry.lora_spec import Tensors


@pytest.fixture(scope="module")
def evaluator(tiny_base: Path) -> Evaluator:
    model, tok = load_base(tiny_base)
    return Evaluator(model, tok, batch_size=3)


def _loras(
    evaluator: Evaluator, config: dict[str, Any], count: int, seed: int = 0
) -> list[Tensors]:
    from peft import get_peft_model, get_peft_model_state_dict

    from generator.tasks.evaluation import lora_config_from

    peft_model = get_peft_model(evaluator.model, lora_config_from(config))
    shapes = {k: v.shape for k, v in get_peft_model_state_dict(peft_model).items()}
    peft_model.unload()
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()} for _ in range(count)]


CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _prompts(count: int, seed: int = 1, prefix: int = 5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(4, 100, (prefix,), generator=g).tolist()
    lengths = torch.randint(1, 25, (count,), generator=g)
    return [shared + torch.randint(4, 100, (int(n),), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize(
    ("labels", "config"),
    [
        ([[5], [6]], CONFIG),
        ([[7, 8, 9], [10, 11], [12]], CONFIG),
        ([[5, 9], [6]], {**CONFIG, "use_rslora": True, "target_modules": ["k_proj", "o_proj"]}),
    ],
    ids=["single-token", "multi-token-labels", "rslora-other-modules"],
)
def test_scores_equal_each_adapter_attached_alone(
    evaluator: Evaluator, labels: list[list[int]], config: dict[str, Any]
) -> None:
    weights: list[Tensors | None] = [*_loras(evaluator, config, 3), None]
    prompts = _prompts(9)
    before = label_logprobs(evaluator.model, prompts, labels, pad_id=0)
    got = label_logprobs_many(evaluator.model, config, weights, prompts, labels, pad_id=0)
    for c, w in enumerate(weights):
        if w is None:
            alone = before
        else:
            with evaluator.attached(config, w) as model:
                alone = label_logprobs(model, prompts, labels, pad_id=0)
        assert torch.allclose(got[c], alone, atol=1e-4), c
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # the candidates do differ
    # the model is left as it was
    assert torch.equal(label_logprobs(evaluator.model, prompts, labels, pad_id=0), before)
    assert not any(isinstance(m, multi_lora.RowLora) for m in evaluator.model.modules())


def test_small_batches_and_no_shared_prefix(
    evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multi_lora, "ROWS_PER_BATCH", 2)
    weights: list[Tensors | None] = [None, *_loras(evaluator, CONFIG, 2, seed=3)]
    prompts = [[4, 5, 6], [7], [8, 9, 10, 11, 12]]  # no common first token
    got = label_logprobs_many(evaluator.model, CONFIG, weights, prompts, [[5], [6]], pad_id=0)
    with evaluator.attached(CONFIG, weights[2]) as model:  # type: ignore[arg-type]
        alone = label_logprobs(model, prompts, [[5], [6]], pad_id=0)
    assert torch.allclose(got[2], alone, atol=1e-4)
    assert torch.allclose(got[0], label_logprobs(evaluator.model, prompts, [[5], [6]], pad_id=0))


def test_bad_weights_are_refused_and_change_nothing(evaluator: Evaluator) -> None:
    good = _loras(evaluator, CONFIG, 1)[0]
    bad = dict(good)
    bad.pop(next(iter(bad)))
    with pytest.raises(InvalidAdapter, match="missing tensor"):
        label_logprobs_many(evaluator.model, CONFIG, [good, bad], [[4, 5]], [[5], [6]], pad_id=0)
    assert not any(isinstance(m, multi_lora.RowLora) for m in evaluator.model.modules())
    assert not MultiLora.supports({**CONFIG, "rank_pattern": {"q_proj": 2}})
    with pytest.raises(ValueError, match="plain LoRA"):
        MultiLora(evaluator.model, {**CONFIG, "alpha_pattern": {"q_proj": 2.0}}, [good])


@pytest.mark.parametrize(
    ("lengths", "most", "per_batch", "expected"),
    [
        ([3, 9, 5], 16, 10**9, [[1, 2, 0]]),  # one pass when passes are dear
        ([3, 9, 5], 16, 0, [[1], [2], [0]]),  # no padding at all when they are free
        ([30, 2, 2, 2, 2], 16, 8, [[0], [1, 2, 3, 4]]),  # the long one alone
        ([4, 4, 4, 4, 4], 2, 1, [[0], [1, 2], [3, 4]]),  # never more than ``most``
        ([], 4, 8, []),
    ],
)
def test_length_batches(
    lengths: list[int], most: int, per_batch: int, expected: list[list[int]]
) -> None:
    batches = length_batches(lengths, most, per_batch)
    assert batches == expected
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
