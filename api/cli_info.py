"""``loramint info``: where this machine will run what, before a long job finds out.

An operator's first question on a new node (a GPU box, a Ray worker, a container)
is what ``auto`` means there: which device the zoo build and the service's base
model get, whether the description embedder runs in bfloat16, how many threads
torch has, and which registry the settings point at. Nothing is written and the
database is not opened, so it works on a fresh home too. It exits 1 when
``LORAMINT_DEVICE`` names a GPU this machine does not have (the service and the
worker would refuse to start), after printing everything else.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What ``loramint info`` reports, as a JSON-ready dict."""
    import sqlalchemy as sa
    import torch

    from generator.tasks.device import resolve_device
    from registry.embeddings import native_bf16, runs_in_bfloat16
    from registry.errors import InvalidInput
    from registry.settings import get_settings

    settings = get_settings()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        service: dict[str, Any] = {"device": str(resolve_device(settings.device))}
    except InvalidInput as exc:
        service = {"device": None, "problem": str(exc)}
    try:
        import faiss

        faiss_gpus: int | None = int(faiss.get_num_gpus())
    except (ImportError, AttributeError):  # a CPU build without the GPU call
        faiss_gpus = None
    url = sa.engine.make_url(settings.database_url)
    return {
        "loramint": _version("loramint"),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_gpus": gpus,
        "cpu_native_bfloat16": native_bf16(),
        "training_device": str(resolve_device("auto")),  # --device auto
        "service_device": {"setting": settings.device, **service},  # LORAMINT_DEVICE
        "embedder_precision": {
            "setting": settings.embed_precision,
            "runs_in": "bfloat16" if runs_in_bfloat16(settings.embed_precision) else "float32",
        },
        "faiss": {"version": _version("faiss-cpu") or _version("faiss-gpu"), "gpus": faiss_gpus},
        "home": str(settings.home),
        "database": url.render_as_string(hide_password=True),
        "generated_storage": settings.generated_storage,
    }


def info_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What this machine runs where: devices, precisions, threads, the registry in use."""
    info = machine_info()
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        table = Table("what", "here")
        for key, value in info.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(value) or "none"
            table.add_row(key.replace("_", " "), str(value))
        out.print(table)
    if info["service_device"]["device"] is None:
        Console(stderr=True, soft_wrap=True).print(
            f"error: LORAMINT_DEVICE: {info['service_device']['problem']}", markup=False
        )
        raise typer.Exit(1)
