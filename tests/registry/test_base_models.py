from pathlib import Path

import pytest

from registry import base_models
from registry.errors import UnknownBaseModel
from registry.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, database_url="sqlite://", model_cache=tmp_path / "models")


def test_local_folder(tiny_base: Path, settings: Settings) -> None:
    resolved = base_models.resolve(str(tiny_base), settings)
    assert resolved.path == tiny_base.resolve() and resolved.source.startswith("local:")
    shapes = base_models.describe(resolved.path)
    assert shapes.architecture == "LlamaForCausalLM"
    assert shapes.num_layers == 2 and shapes.hidden_size == 32
    assert shapes.linear_shapes["model.layers.1.self_attn.q_proj"] == [32, 32]
    assert shapes.linear_shapes["model.layers.0.self_attn.v_proj"] == [32, 16]  # 2 kv heads of 8


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "empty"),
        ("gpt-17", "unknown base model 'gpt-17'"),
        ("nobody/not-cached", "not in the local Hugging Face cache"),
    ],
)
def test_unresolvable_names(settings: Settings, name: str, message: str) -> None:
    with pytest.raises(UnknownBaseModel, match=message):
        base_models.resolve(name, settings)


def test_folder_without_config(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownBaseModel, match="a model folder with a config.json"):
        base_models.resolve(str(tmp_path / "empty"), settings)


def test_hugging_face_id_from_the_local_cache(
    tiny_base: Path, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lay out a hub cache the way huggingface_hub writes it, offline.
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-llama"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in tiny_base.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    resolved = base_models.resolve("acme/tiny-llama", settings)
    assert resolved.source == "hf:acme/tiny-llama"
    assert base_models.describe(resolved.path).num_layers == 2


def test_offline_models_are_known() -> None:
    assert set(base_models.OFFLINE_MODELS) == {"smollm2-135m-instruct", "gemma3-270m"}
