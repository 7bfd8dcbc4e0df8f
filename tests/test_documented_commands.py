"""Every `moemt` command shown in README.md and docs/*.md (```bash blocks) holds as written: its
command and options parse as `moemt` parses them, and its recipe, pieces and overrides load
(for a run directory, those of the recipe that names the run). A renamed key, option, piece or
recipe fails here, not in a reader's shell."""

from __future__ import annotations

import re
import shlex

import click
import pytest
import typer.main

from moe_mt.cli.main import app
from moe_mt.config import load_config
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: benchmarks.md writes `O` for the common overrides it spells out in the text.
PLACEHOLDERS = {"O"}


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv after 'moemt')`` of every moemt command in the docs' bash blocks."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            for n, line in enumerate(block.replace("\\\n", " ").splitlines()):
                if line.lstrip().startswith("#"):
                    continue
                for part in re.split(r"&&|\|", line.split(" #")[0]):
                    match = re.match(r"^\s*(?:\.venv/bin/)?moemt\s+(.*)$", part)
                    if match:
                        argv = [a for a in shlex.split(match[1]) if a not in PLACEHOLDERS]
                        found.append((f"{doc.name}:{n}:{argv[0]}", argv))
    return found


COMMANDS = documented_commands()


def _recipe_of(argv: list[str]):
    """The recipe a command loads: its first argument, or the recipe named after its run."""
    first = next((a for a in argv[1:] if not a.startswith("-") and "=" not in a), None)
    if first is None:
        return None
    if first.endswith(".yaml"):
        return REPO / first
    name = first.removeprefix("runs/")
    candidates = [p for p in (REPO / "recipes").rglob(f"{name}.yaml") if "pieces" not in p.parts]
    return candidates[0] if len(candidates) == 1 and "/" not in name else None


def test_the_docs_show_the_pipeline():
    shown = {argv[0] for _, argv in COMMANDS}
    assert {"prep", "train", "eval", "translate", "distill", "export", "compare"} <= shown
    assert len(COMMANDS) >= 50


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_a_documented_command_holds(argv, monkeypatch):
    monkeypatch.chdir(REPO)  # the docs' paths are relative to the repository
    group = typer.main.get_command(app)
    command = group.commands.get(argv[0])
    assert command is not None, f"moemt has no command {argv[0]!r}"
    try:
        command.make_context(argv[0], list(argv[1:]), resilient_parsing=False)
    except click.UsageError as exc:
        pytest.fail(f"moemt {shlex.join(argv)}: {exc.format_message()}")
    recipe = _recipe_of(argv)
    if recipe is None or argv[0] == "compare":
        return
    rest = [a for a in argv[1:] if not a.startswith("--")]
    flags_with_values = {"--out", "--quantization", "--finetune-from", "--src", "--tgt",
                         "--engine", "--resamples"}  # fmt: skip
    values = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags_with_values}
    pieces = [str(REPO / a) for a in rest[1:] if a.endswith(".yaml") and a not in values]
    overrides = [a for a in rest if "=" in a and a not in values]
    load_config(recipe, [*pieces, *overrides])
