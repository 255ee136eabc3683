"""Upload validation is total: every adapter_config.json PEFT would refuse or choke on
is an InvalidAdapter naming the field before anything is written (it used to escape
as a 500: PEFT's re.error, a RecursionError), and every config accepted here loads
with PeftModel.from_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from registry.errors import InvalidAdapter
from registry.service import Registry
from tests.conftest import make_lora

BAD: list[tuple[dict[str, Any], str]] = [
    ({"target_modules": "(["}, "target_modules"),
    ({"exclude_modules": "(["}, "exclude_modules"),
    ({"rank_pattern": {"([": 2}}, "rank_pattern key"),
    ({"rank_pattern": {"q_proj": "x"}}, "rank_pattern"),
    ({"rank_pattern": {"q_proj": None}}, "rank_pattern"),
    ({"alpha_pattern": {"([": 4}}, "alpha_pattern key"),
    ({"alpha_pattern": {"q_proj": "x"}}, "alpha_pattern"),
    ({"layers_to_transform": "abc"}, "layers_to_transform"),
    ({"layers_pattern": 5}, "layers_pattern"),
    ({"layers_pattern": [[]]}, "layers_pattern"),
    ({"task_type": "BOGUS"}, "task_type"),
    ({"lora_dropout": 2}, "lora_dropout"),
    ({"fan_in_fan_out": "yes"}, "fan_in_fan_out"),
]
GOOD: list[dict[str, Any]] = [
    {},
    {"task_type": None},
    {"target_modules": r".*\.q_proj", "exclude_modules": ["layers.0.self_attn.q_proj"]},
    {"rank_pattern": {"v_proj": 4}, "alpha_pattern": {"v_proj": 3.5}},
    {"layers_to_transform": [1], "layers_pattern": "layers"},
]


def adapter_with(source: Path, dest: Path, change: dict[str, Any]) -> Path:
    shutil.copytree(source, dest)
    path = dest / "adapter_config.json"
    config = json.loads(path.read_text()) | change
    path.write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def lora(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(tiny_base, tmp_path_factory.mktemp("lora") / "a")


@pytest.mark.parametrize(("change", "field"), BAD)
def test_a_config_peft_would_refuse_is_refused_and_nothing_is_written(
    registry: Registry,
    tiny_base: Path,
    lora: Path,
    tmp_path: Path,
    change: dict[str, Any],
    field: str,
) -> None:
    folder = adapter_with(lora, tmp_path / "bad", change)
    with pytest.raises(InvalidAdapter, match=field):
        registry.add_adapter(folder, base_model=str(tiny_base), description="bad config")
    assert registry.count_adapters() == 0 and registry.list_base_models() == []


def test_a_config_nested_past_any_peft_config_is_refused(
    registry: Registry, tiny_base: Path, lora: Path, tmp_path: Path
) -> None:
    folder = adapter_with(lora, tmp_path / "deep", {})
    config = json.loads((folder / "adapter_config.json").read_text())
    deep = "[" * 50_000 + "]" * 50_000
    raw = json.dumps(config)[:-1] + ', "extra": ' + deep + "}"
    (folder / "adapter_config.json").write_text(raw)
    with pytest.raises(InvalidAdapter, match="nested"):
        registry.add_adapter(folder, base_model=str(tiny_base), description="deep config")
    assert registry.count_adapters() == 0


@pytest.mark.parametrize("change", GOOD)
def test_every_accepted_config_loads_with_peft(
    tiny_base: Path,
    lora: Path,
    tmp_path: Path,
    settings_for: Any,
    embedder: Any,
    change: dict[str, Any],
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    registry = Registry(settings_for(f"sqlite:///{tmp_path / 'r.db'}"), embedder=embedder)
    try:
        source = make_lora(
            tiny_base, tmp_path / "src", targets=change.get("target_modules", ["q_proj", "v_proj"]),
            **{k: v for k, v in change.items() if k in ("rank_pattern", "alpha_pattern",
               "layers_to_transform", "layers_pattern", "exclude_modules")},
        )  # fmt: skip
        folder = adapter_with(source, tmp_path / "good", change)
        rec = registry.add_adapter(folder, base_model=str(tiny_base), description="good config")
        out = registry.export_adapter(rec.id, tmp_path / "out")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(out))
        assert any("lora_" in name for name, _ in model.named_parameters())
    finally:
        registry.close()


def test_a_refused_upload_leaves_no_base_model_behind(
    registry: Registry, tiny_base: Path, tiny_gemma: Path, lora: Path
) -> None:
    """A LoRA of the tiny Llama offered for the tiny Gemma (a local model folder the
    registry has never seen): the shapes are wrong, so the upload is refused, and the
    Gemma is not registered either (it used to be, before the shapes were checked)."""
    with pytest.raises(InvalidAdapter):
        registry.add_adapter(lora, base_model=str(tiny_gemma), description="wrong shapes")
    assert registry.list_base_models() == [] and registry.count_adapters() == 0
    rec = registry.add_adapter(lora, base_model=str(tiny_base), description="right shapes")
    assert [b.name for b in registry.list_base_models()] == [rec.base_model]


def test_base_model_errors_do_not_tell_which_paths_exist(
    registry: Registry, lora: Path, tmp_path: Path
) -> None:
    from registry.errors import UnknownBaseModel

    (tmp_path / "a-folder").mkdir()
    messages = []
    for probe in (tmp_path / "a-folder", tmp_path / "no-such-folder"):
        with pytest.raises(UnknownBaseModel) as err:
            registry.add_adapter(lora, base_model=str(probe), description="probe")
        messages.append(str(err.value).replace(str(probe), "PATH"))
    assert messages[0] == messages[1]
