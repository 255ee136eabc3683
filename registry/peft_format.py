"""The on-disk PEFT adapter format, in one place.

An adapter is ``adapter_config.json`` + ``adapter_model.safetensors`` in a
folder or at the root (or one folder deep) of a zip. Reading never unpickles:
a ``.bin`` / ``.pt`` weight file is refused. Writing is atomic: a folder is
assembled beside its destination and renamed into place, a zip is written to a
temp file and renamed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from registry.blobs import write_atomic
from registry.errors import Conflict, InvalidAdapter, TooLarge
from registry.lora_spec import Tensors, parse_weights

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class PeftFiles:
    """The two files of a PEFT adapter, as bytes (weights not yet parsed)."""

    config: dict[str, Any]
    weights: bytes

    def parsed(self) -> tuple[dict[str, Any], Tensors]:
        """(config, tensors): the weights parsed (safetensors, no pickle), ready to attach."""
        return self.config, parse_weights(self.weights)


def read_adapter(path: Path, *, max_bytes: int) -> PeftFiles:
    """Read a PEFT adapter from a folder or a zip, refusing anything unsafe or malformed."""
    path = Path(path)
    if not path.exists():
        raise InvalidAdapter(f"{path} does not exist")
    if path.is_dir():
        files = _read_folder(path, max_bytes)
    elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        files = _read_zip(path, max_bytes)
    else:
        raise InvalidAdapter(
            f"{path} is neither a folder nor a .zip: expected {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    return PeftFiles(config=parse_config(files[CONFIG_NAME]), weights=files[WEIGHTS_NAME])


def parse_config(raw: bytes) -> dict[str, Any]:
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(f"{CONFIG_NAME} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidAdapter(f"{CONFIG_NAME} is nested too deeply to be a PEFT config") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{CONFIG_NAME} must hold a JSON object, got {type(config).__name__}")
    if _depth(config) > MAX_CONFIG_DEPTH:
        raise InvalidAdapter(f"{CONFIG_NAME} is nested more than {MAX_CONFIG_DEPTH} levels deep")
    return config


MAX_CONFIG_DEPTH = 16  # PEFT's own configs nest two or three levels


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _missing(names: set[str], where: str) -> InvalidAdapter:
    pickles = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    if WEIGHTS_NAME not in names and pickles:
        return InvalidAdapter(
            f"{where} holds pickle weights ({', '.join(pickles)}); loramint only accepts "
            f"{WEIGHTS_NAME} (re-save with safe_serialization=True)"
        )
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in names]
    return InvalidAdapter(f"{where} is missing {' and '.join(missing)}")


def _read_folder(path: Path, max_bytes: int) -> dict[str, bytes]:
    names = {p.name for p in path.iterdir() if p.is_file()}
    if CONFIG_NAME not in names or WEIGHTS_NAME not in names:
        raise _missing(names, f"folder {path}")
    total = sum((path / n).stat().st_size for n in (CONFIG_NAME, WEIGHTS_NAME))
    if total > max_bytes:
        raise TooLarge(f"adapter in {path} is {total:,} bytes; the limit is {max_bytes:,}")
    return {n: (path / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)}


def _read_zip(path: Path, max_bytes: int) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            root = _zip_root(infos, path)
            wanted = {
                str(root / n) if str(root) != "." else n: n for n in (CONFIG_NAME, WEIGHTS_NAME)
            }
            present = {i.filename: i for i in infos}
            names_here = {
                PurePosixPath(i.filename).name
                for i in infos
                if PurePosixPath(i.filename).parent == root
            }
            if not all(member in present for member in wanted):
                raise _missing(names_here, f"zip {path.name}")
            total = sum(present[m].file_size for m in wanted)
            if total > max_bytes:
                raise TooLarge(
                    f"adapter in {path.name} unpacks to {total:,} bytes; the limit is {max_bytes:,}"
                )
            out: dict[str, bytes] = {}
            for member, name in wanted.items():
                with zf.open(member) as fh:
                    data = fh.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise TooLarge(f"{name} in {path.name} is over the {max_bytes:,}-byte limit")
                out[name] = data
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise InvalidAdapter(
            f"{path.name} is not a readable zip (truncated or corrupt): {exc}"
        ) from exc


def _zip_root(infos: list[zipfile.ZipInfo], path: Path) -> PurePosixPath:
    """The folder inside the zip that holds adapter_config.json (root or one level down)."""
    configs = [
        PurePosixPath(i.filename)
        for i in infos
        if PurePosixPath(i.filename).name == CONFIG_NAME
        and len(PurePosixPath(i.filename).parts) <= 2
    ]
    if len(configs) > 1:
        raise InvalidAdapter(
            f"zip {path.name} holds several {CONFIG_NAME} files; put one adapter per zip"
        )
    for info in infos:
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts:
            raise InvalidAdapter(f"zip {path.name} has an unsafe member path {info.filename!r}")
    return configs[0].parent if configs else PurePosixPath(".")


def config_bytes(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=2) + "\n").encode("utf-8")


def zip_bytes(
    config: dict[str, Any], weights: bytes, extra: Mapping[str, bytes] | None = None
) -> bytes:
    """A zip whose root holds the two adapter files and any ``extra`` ones (the model
    card); stored, not deflated: weights do not compress and this keeps downloads cheap.
    The same files give the same bytes (fixed timestamps), whenever they are zipped."""
    buf = io.BytesIO()
    files = {CONFIG_NAME: config_bytes(config), WEIGHTS_NAME: weights, **(extra or {})}
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's epoch: no clock in the bytes


def write_adapter(
    out: Path,
    config: dict[str, Any],
    weights: bytes,
    *,
    overwrite: bool = False,
    extra: Mapping[str, bytes] | None = None,
) -> Path:
    """Write the adapter (and ``extra`` files, the model card) to folder ``out``, or to a
    zip when ``out`` ends in .zip, atomically."""
    out = Path(out)
    extra = dict(extra or {})
    if out.suffix.lower() == ".zip":
        if out.exists() and not overwrite:
            raise Conflict(f"{out} already exists (pass overwrite to replace it)")
        write_atomic(out, zip_bytes(config, weights, extra))
        return out
    if out.exists():
        if not out.is_dir():
            raise Conflict(f"{out} exists and is not a folder")
        clashing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, *extra) if (out / n).exists()]
        if clashing and not overwrite:
            raise Conflict(f"{out} already holds {', '.join(clashing)} (pass overwrite to replace)")
        # Existing folder (maybe with other files): replace our files, each atomically.
        write_atomic(out / WEIGHTS_NAME, weights)
        write_atomic(out / CONFIG_NAME, config_bytes(config))
        for name, data in extra.items():
            write_atomic(out / name, data)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        write_atomic(tmp / WEIGHTS_NAME, weights)
        write_atomic(tmp / CONFIG_NAME, config_bytes(config))
        for name, data in extra.items():
            write_atomic(tmp / name, data)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
