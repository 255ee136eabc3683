import json
import zipfile
from pathlib import Path

import pytest

from registry import peft_format
from registry.errors import Conflict, InvalidAdapter, TooLarge

CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
WEIGHTS = b"not parsed at this layer"


def _folder(tmp_path: Path, **files: bytes) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _zip(tmp_path: Path, members: dict[str, bytes], name: str = "a.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


GOOD = {peft_format.CONFIG_NAME: json.dumps(CONFIG).encode(), peft_format.WEIGHTS_NAME: WEIGHTS}


def test_reads_folder(tmp_path: Path) -> None:
    files = peft_format.read_adapter(_folder(tmp_path, **GOOD), max_bytes=10_000)
    assert files.config == CONFIG and files.weights == WEIGHTS


@pytest.mark.parametrize("prefix", ["", "my-adapter/"])
def test_reads_zip_at_root_or_one_folder_deep(tmp_path: Path, prefix: str) -> None:
    path = _zip(tmp_path, {prefix + k: v for k, v in GOOD.items()})
    files = peft_format.read_adapter(path, max_bytes=10_000)
    assert files.config == CONFIG and files.weights == WEIGHTS


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {
                peft_format.CONFIG_NAME: json.dumps(CONFIG).encode(),
                "adapter_model.bin": b"\x80\x04",
            },
            "pickle",
        ),
        ({peft_format.WEIGHTS_NAME: WEIGHTS}, "missing adapter_config.json"),
        (
            {peft_format.CONFIG_NAME: b"{not json", peft_format.WEIGHTS_NAME: WEIGHTS},
            "not valid JSON",
        ),
        ({peft_format.CONFIG_NAME: b"[1, 2]", peft_format.WEIGHTS_NAME: WEIGHTS}, "JSON object"),
    ],
)
def test_bad_folders(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidAdapter, match=message):
        peft_format.read_adapter(_folder(tmp_path, **files), max_bytes=10_000)


def test_pickle_zip_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = _zip(tmp_path, {peft_format.CONFIG_NAME: b"{}", "adapter_model.bin": b"\x80\x04boom"})
    with pytest.raises(InvalidAdapter, match="pickle"):
        peft_format.read_adapter(path, max_bytes=10_000)


def test_truncated_zip(tmp_path: Path) -> None:
    path = _zip(tmp_path, GOOD)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidAdapter, match="truncated or corrupt"):
        peft_format.read_adapter(path, max_bytes=10_000)


def test_unsafe_member_path(tmp_path: Path) -> None:
    path = _zip(tmp_path, {**GOOD, "../evil.txt": b"x"})
    with pytest.raises(InvalidAdapter, match="unsafe"):
        peft_format.read_adapter(path, max_bytes=10_000)


def test_size_limit_folder_and_zip(tmp_path: Path) -> None:
    big = {
        peft_format.CONFIG_NAME: json.dumps(CONFIG).encode(),
        peft_format.WEIGHTS_NAME: b"0" * 5000,
    }
    with pytest.raises(TooLarge):
        peft_format.read_adapter(_folder(tmp_path, **big), max_bytes=1000)
    with pytest.raises(TooLarge):
        peft_format.read_adapter(_zip(tmp_path, big), max_bytes=1000)


def test_not_a_folder_or_zip(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(InvalidAdapter, match="neither a folder nor a .zip"):
        peft_format.read_adapter(path, max_bytes=10)
    with pytest.raises(InvalidAdapter, match="does not exist"):
        peft_format.read_adapter(tmp_path / "nope", max_bytes=10)


def test_write_folder_zip_and_refuse_overwrite(tmp_path: Path) -> None:
    folder = peft_format.write_adapter(tmp_path / "out", CONFIG, WEIGHTS)
    assert (folder / peft_format.WEIGHTS_NAME).read_bytes() == WEIGHTS
    assert json.loads((folder / peft_format.CONFIG_NAME).read_text()) == CONFIG
    with pytest.raises(Conflict):
        peft_format.write_adapter(folder, CONFIG, WEIGHTS)
    peft_format.write_adapter(folder, CONFIG, b"new", overwrite=True)
    assert (folder / peft_format.WEIGHTS_NAME).read_bytes() == b"new"
    z = peft_format.write_adapter(tmp_path / "out.zip", CONFIG, WEIGHTS)
    with zipfile.ZipFile(z) as zf:
        assert sorted(zf.namelist()) == [peft_format.CONFIG_NAME, peft_format.WEIGHTS_NAME]
    with pytest.raises(Conflict):
        peft_format.write_adapter(z, CONFIG, WEIGHTS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
