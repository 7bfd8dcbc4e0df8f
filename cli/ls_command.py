"""``moemt ls archs|recipes|sources|criteria``: what exists, read from where it is defined.

- archs: the fairseq architectures of moemt's models (fairseq's ``ARCH_MODEL_REGISTRY``, the
  model classes under ``moe_mt``), with their family (:mod:`moe_mt.models.families`) and the
  sizes the architecture fills in;
- recipes: every ``*.yaml`` under ``recipes/`` but the pieces, with its header's first line;
- sources: the download registry (:mod:`moe_mt.data_prep.sources`);
- criteria: moemt's registered fairseq criterions and fairseq's label-smoothed cross-entropy
  (the dense baseline's), with the families that train with each by default.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations.
import argparse
import inspect
import re
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # the repository's (cli/ beside it)
#: The family pieces a recipe takes beside it (`moemt train RECIPE recipes/families/<family>.yaml`).
FAMILIES = "families"
#: Folders of recipe pieces, not recipes: shared pieces and the family pieces.
PIECES = ("pieces", FAMILIES)
#: fairseq's own criterion that moemt's dense models train with.
FAIRSEQ_CRITERIA = {
    "label_smoothed_cross_entropy": "fairseq's label-smoothed cross-entropy (dense models)"
}

#: "... (see the module docstring)." at the end of a criterion's summary: not for this listing.
DOCSTRING_POINTER = re.compile(r" \((see )?(the )?module docstring\)\.$")

EPILOG = """Examples:

  moemt ls archs
  moemt ls recipes
  moemt ls sources"""


def arch_table() -> Table:
    """moemt's architectures: family, layers, width, FFN, heads, experts."""
    import moe_mt

    moe_mt.register()
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    from moe_mt.models import families

    table = Table(title="architectures (model.arch)", box=box.SIMPLE)
    columns = ("arch", "family", "layers", "d", "FFN", "heads", "E")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    table.columns[0].no_wrap = True
    for arch, model in ARCH_MODEL_REGISTRY.items():
        if not model.__module__.startswith("moe_mt."):
            continue
        sizes = argparse.Namespace()
        ARCH_CONFIG_REGISTRY[arch](sizes)  # the architecture fills in its defaults
        family = families.family_of_arch(arch)
        experts = getattr(sizes, "moe_num_experts", None)
        table.add_row(
            arch,
            family.name if family is not None else "-",
            f"{sizes.encoder_layers}+{sizes.decoder_layers}",
            str(sizes.encoder_embed_dim),
            str(sizes.encoder_ffn_embed_dim),
            str(sizes.encoder_attention_heads),
            "-" if experts is None else str(experts),
        )
    table.caption = (
        "the architecture's defaults (model.* keys override them): encoder+decoder layers, "
        "width d, FFN width, attention heads, E experts per MoE layer"
    )
    return table


def recipe_lines() -> list[str]:
    """Every recipe under recipes/ (pieces left out), then the family pieces a recipe takes
    beside it; each with its header's first line, indented."""
    from moe_mt.errors import MoeMtError

    if not RECIPES.is_dir():
        raise MoeMtError(f"{RECIPES}: no recipes directory (moemt installed without its sources)")
    lines = []
    for path in sorted(RECIPES.rglob("*.yaml")):
        if path.relative_to(RECIPES).parts[0] in PIECES:
            continue
        lines += [_relative(path), f"    {_header_line(path)}"]
    lines += [
        "",
        f"family pieces (moemt train RECIPE {_relative(RECIPES / FAMILIES)}/<family>.yaml):",
    ]
    for path in sorted((RECIPES / FAMILIES).glob("*.yaml")):
        lines += [_relative(path), f"    {_header_line(path)}"]
    return lines


def _header_line(path: Path) -> str:
    with path.open(encoding="utf-8") as lines:
        first = lines.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def _relative(path: Path) -> str:
    """Relative to the working directory when under it, else absolute."""
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def source_table() -> Table:
    """The download registry: name, languages, splits, download size."""
    from moe_mt.data_prep.sources import SacrebleuPart, list_sources
    from moe_mt.workflows.prep.plan import _size as size_text  # prep --dry-run's units

    table = Table(title="corpus sources (data.source, data.sources)", box=box.SIMPLE)
    for column in ("source", "languages", "splits", "download"):
        table.add_column(column, justify="right" if column == "download" else "left")
    table.columns[0].no_wrap = True
    for source in list_sources():
        sizes = [archive.size for archive in source.archives()]
        known = sum(size for size in sizes if size is not None)
        download = size_text(known) if known or not sizes else ""
        if None in sizes:
            download += (" + " if download else "") + "sizes unknown"
        if any(isinstance(p, SacrebleuPart) for parts in source.splits.values() for p in parts):
            download += " + sacrebleu"
        table.add_row(
            source.name, "-".join(source.languages), ", ".join(source.split_names), download
        )
    table.caption = "download: the registry's archives; + sacrebleu: test sets sacrebleu fetches"
    return table


def criterion_lines() -> list[str]:
    """moemt's criterions and fairseq's label-smoothed CE (the families that default to each),
    then what each optimises (its docstring's first paragraph), indented."""
    import moe_mt

    moe_mt.register()
    from fairseq.criterions import CRITERION_REGISTRY

    from moe_mt.models import families

    lines = []
    for name, criterion in CRITERION_REGISTRY.items():
        if name in FAIRSEQ_CRITERIA:
            description = FAIRSEQ_CRITERIA[name]
        elif criterion.__module__.startswith("moe_mt."):
            description = " ".join(inspect.getdoc(criterion).split("\n\n")[0].split())
            description = DOCSTRING_POINTER.sub(".", description)
        else:
            continue
        users = [f.name for f in families.families() if f.criterion == name]
        lines += [f"{name}" + (f"  (default of {', '.join(users)})" if users else ""),
                  f"    {description}"]  # fmt: skip
    return lines


LISTINGS = {
    "archs": arch_table,
    "recipes": recipe_lines,
    "sources": source_table,
    "criteria": criterion_lines,
}


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``ls`` to ``app``."""

    def ls_command(
        kind: Annotated[str, typer.Argument(help=f"What to list: {' | '.join(LISTINGS)}.")],
    ) -> None:
        """List what exists: architectures, recipes, corpus sources or criteria."""
        from moe_mt.errors import MoeMtError

        if kind not in LISTINGS:
            raise MoeMtError(f"unknown kind '{kind}': one of {', '.join(LISTINGS)}")
        listing = LISTINGS[kind]()
        if isinstance(listing, Table):
            console.print(listing)
            return
        for line in listing:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    app.command("ls", epilog=EPILOG)(user_errors(ls_command))
