"""README.md against the code: its runnable shell blocks run, every `loramint ...`
command it shows exists with the options it shows, and its configuration table
is the settings module's table.

The runnable marker: a fenced block whose info string is ``bash runnable``::

    ```bash runnable
    loramint db upgrade
    ```

GitHub highlights it as bash. Mark only blocks that finish in seconds on an
empty registry (no zoo, no trained generator, no model conversion); they run
in order, as one new user would type them, with ``loramint`` on PATH, in an
empty temporary ``LORAMINT_HOME`` and working folder. Every other block is
still checked command by command against the CLI.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from api.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RUNNABLE = re.compile(r"^```bash runnable\n(.*?)^```", re.M | re.S)
BASH = re.compile(r"^```(?:bash|sh|console)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:\.venv/bin/)?loramint [^`]+)`")


def runnable_blocks() -> list[str]:
    return RUNNABLE.findall(README)


def test_the_readme_marks_some_blocks_runnable() -> None:
    blocks = runnable_blocks()
    assert blocks, "no ```bash runnable block left in README.md"
    assert any("loramint db upgrade" in b for b in blocks)


def test_runnable_blocks_exit_zero_in_a_fresh_home(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAMINT_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "LORAMINT_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "120",
    }
    work = tmp_path / "work"
    work.mkdir()
    for i, block in enumerate(runnable_blocks()):
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=work, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, (
            f"runnable block {i} failed ({run.returncode}):\n{block}\n"
            f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
        )
    assert (tmp_path / "home" / "registry.db").exists(), "the blocks used the temporary home"


def command_lines() -> list[str]:
    """Every `loramint ...` command line in README.md: shell blocks (continuations
    joined, comments dropped, `a | b` read as alternatives) and inline code."""
    found = []
    for block in BASH.findall(README):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            for part in re.split(r" \| | && |; ", line):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith("loramint "):
                    found.append(part)
    found += [" ".join(m.removeprefix(".venv/bin/").split()) for m in INLINE.findall(README)]
    return sorted(set(found))


def tokens_of(line: str) -> list[str]:
    """The words of a README command, with `[--opt X]` brackets and `a|b` choices kept
    as plain words (only the option names are checked)."""
    cleaned = line.replace("[", " ").replace("]", " ").replace("...", " ")
    try:
        return shlex.split(cleaned)
    except ValueError:  # an unbalanced quote in prose: fall back to words
        return cleaned.split()


def resolve(words: list[str]) -> tuple[Any, list[str], list[str]]:
    """The click command a `loramint` command line names, its path and what follows."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = words[1:]
    # typer vendors its own click: a group is whatever has subcommands
    while getattr(command, "commands", None) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            if command.invoke_without_command:  # a group that takes arguments itself
                break
            raise AssertionError(f"`loramint {' '.join(path)}` has no command {rest[0]!r}")
        path.append(rest.pop(0))
        command = sub
    return command, path, rest


def check_line(line: str) -> None:
    command, path, rest = resolve(tokens_of(line))
    assert path or line.strip() == "loramint --help", f"no subcommand in {line!r}"
    options = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if re.fullmatch(r"--?[a-z][a-z0-9-]*(=.*)?", word):
            name = word.split("=", 1)[0]
            assert name in options, f"`loramint {' '.join(path)}` has no option {name}: {line!r}"


@pytest.mark.parametrize("line", command_lines())
def test_every_readme_command_exists_with_its_options(line: str) -> None:
    check_line(line)


def test_readme_finds_commands_and_a_wrong_one_would_fail() -> None:
    lines = command_lines()
    assert len(lines) > 30 and "loramint db upgrade" in lines
    check_line("loramint serve [--host 0.0.0.0] --no-worker")
    check_line("loramint eval --adapter 3 --task t")  # a group with options of its own
    with pytest.raises(AssertionError, match="no command"):
        check_line("loramint adapters frobnicate 1")
    with pytest.raises(AssertionError, match="no option --frob"):
        check_line("loramint serve --frob")
    with pytest.raises(AssertionError, match="no option -q"):
        check_line("loramint adapters search text -q 5")


def test_python_blocks_parse() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    assert blocks
    for block in blocks:
        ast.parse(block)  # a SyntaxError names the line


def test_the_configuration_section_is_the_settings_table() -> None:
    """README's configuration table is ``registry.settings.configuration_table()``:
    every variable the code reads, with its default and meaning, and no other."""
    from registry.settings import configuration_table

    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert configuration_table() in section, (
        "README's Configuration table differs from registry.settings.VARIABLES; paste "
        "the output of `python -c 'from registry.settings import configuration_table as t; "
        "print(t())'`"
    )
