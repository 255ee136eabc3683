"""api/deploy/: the compose file and the Dockerfile describe a setup the code can run.

Every command a container runs exists (``loramint ... --help`` / ``ray ... --help``
answer and list every option used), every ``LORAMINT_*`` variable set is one the
code reads, the loramint services share one environment and one home volume, and
every volume, config and dependency named is declared. ``docker compose config``
checks the file too where Docker Compose is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "api" / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent
IMAGE = "loramint:latest"
# variables the loramint services set for libraries, not for loramint's own code
LIBRARY_ENV = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the << merge keys
    assert isinstance(data, dict)
    return data


def loramint_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    found = {name: s for name, s in services.items() if s.get("image") == IMAGE}
    assert {"migrate", "api", "worker"} <= set(found), sorted(services)
    return found


def source_text() -> str:
    return "\n".join(
        p.read_text() for d in ("registry", "generator", "api") for p in (ROOT / d).rglob("*.py")
    )


def help_text(cli: str, path: list[str]) -> str:
    exe = BIN / cli
    assert exe.exists(), f"{cli} is not installed next to {sys.executable}"
    env = os.environ | {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    run = subprocess.run(
        [str(exe), *path, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, f"`{cli} {' '.join(path)} --help` failed: {run.stderr[-2000:]}"
    return run.stdout


def command_of(service: dict[str, Any]) -> tuple[str, list[str]]:
    entrypoint = service.get("entrypoint") or ["loramint"]
    assert isinstance(entrypoint, list) and len(entrypoint) == 1, entrypoint
    command = service.get("command")
    assert isinstance(command, list) and all(isinstance(c, str) for c in command), command
    return entrypoint[0], command


def check_command(cli: str, argv: list[str]) -> None:
    """The subcommand exists and lists every option the command line uses."""
    path = []
    for token in argv:
        if token.startswith("-"):
            break
        path.append(token)
    text = help_text(cli, path)
    for token in argv[len(path) :]:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert re.search(rf"{re.escape(option)}\b", text), (
                f"`{cli} {' '.join(path)}` has no option {option}"
            )


@pytest.mark.parametrize("name", sorted(loramint_services()))
def test_every_service_command_is_a_real_cli_command(name: str) -> None:
    cli, argv = command_of(loramint_services()[name])
    assert cli in ("loramint", "ray"), f"{name} runs {cli}"
    check_command(cli, argv)


def test_the_image_runs_the_cli_and_its_default_command_exists() -> None:
    text = DOCKERFILE.read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert entry and cmd, "the Dockerfile needs an exec-form ENTRYPOINT and CMD"
    assert json.loads(entry.group(1)) == ["loramint"]
    check_command("loramint", json.loads(cmd.group(1)))


def test_the_image_installs_what_the_project_pins() -> None:
    text = DOCKERFILE.read_text()
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and f'"torch=={pin.group(1)}"' in text, "torch pinned as in pyproject.toml"
    make = (ROOT / "Makefile").read_text()
    block = re.search(r"^DATA_PACKAGES := (.*?)(?:\n(?!\t)|\Z)", make, re.M | re.S)
    assert block
    wanted = set(re.findall(r"[a-z0-9-]+==[0-9.]+", block.group(1)))
    assert wanted and wanted <= set(re.findall(r"[a-z0-9-]+==[0-9.]+", text)), (
        "the image installs the Makefile's DATA_PACKAGES"
    )
    home = re.search(r"LORAMINT_HOME=(\S+)", text)
    assert home and all(
        s["environment"]["LORAMINT_HOME"] == home.group(1) for s in loramint_services().values()
    )


def test_environment_names_are_read_by_the_code_and_shared() -> None:
    services = loramint_services()
    source = source_text()
    envs = [s["environment"] for s in services.values()]
    assert all(e == envs[0] for e in envs), "every loramint service needs the same environment"
    for key in envs[0]:
        if key in LIBRARY_ENV:
            assert f'"{key}"' in source, f"{key} is not one the code sets or reads"
        else:
            assert key.startswith("LORAMINT_") and f'"{key}"' in source, (
                f"{key} is not read anywhere in registry/, generator/ or api/"
            )
    env = envs[0]
    assert {"LORAMINT_DATABASE_URL", "LORAMINT_HOME", "LORAMINT_SESSION_SECRET"} <= set(env)
    url = env["LORAMINT_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://")
    host = re.search(r"@([^:/]+)", url)
    assert host and host.group(1) in compose()["services"], "the database is a service here"
    # an unset secret must stop `compose up`, not start replicas with different secrets
    assert re.fullmatch(r"\$\{LORAMINT_SESSION_SECRET:\?.+\}", env["LORAMINT_SESSION_SECRET"])


def test_volumes_configs_and_dependencies_are_declared() -> None:
    data = compose()
    services = data["services"]
    declared = set(data.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
        for config in service.get("configs", []):
            assert config["source"] in (data.get("configs") or {}), f"{name}: {config}"
        deps = service.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else list(deps):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert used == declared, f"declared but unused volumes: {sorted(declared - used)}"
    home = {s["environment"]["LORAMINT_HOME"] for s in loramint_services().values()}
    mounts = {tuple(s["volumes"]) for s in loramint_services().values()}
    assert len(home) == 1 and len(mounts) == 1, "one shared home volume for every service"
    [[mount]] = mounts
    assert mount.split(":")[1] == home.pop(), "the shared volume is mounted at LORAMINT_HOME"
    assert services["api"]["command"][-1] == "--no-worker", "replicas leave jobs to workers"
    assert services["api"]["deploy"]["replicas"] > 1


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed: the compose file was checked by the tests above")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        said = (version.stderr or version.stdout).strip().splitlines()
        pytest.skip(f"Docker Compose is not available ({said[0] if said else 'no output'})")
    env = os.environ | {"LORAMINT_SESSION_SECRET": "x" * 40}
    run = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--profile", "ray", "config", "-q"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
