"""``moemt config``: the resolved config of a recipe or run directory, key by key, with each
key's value, its help (the schema's, :func:`moe_mt.config.schema_keys`) and where the value came
from (:func:`moe_mt.config.load_config_with_origins`: a recipe file, an included piece, an
override or the schema's default).

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
import difflib
from pathlib import Path
from typing import Annotated

import typer

EPILOG = """Examples:

  moemt config recipes/demo_switch.yaml model.moe   # a section
  moemt config recipes/demo.yaml eval.beam eval.beam=4
  moemt config runs/demo   # a run directory's config.yaml"""


def split_key(arguments: list[str]) -> tuple[str | None, list[str]]:
    """``[PIECE.yaml ...] [KEY] [key=value ...]``: the one argument that is neither a recipe piece
    (``*.yaml``) nor ``key=value`` is KEY; the others go to the loader."""
    from moe_mt.errors import MoeMtError

    keys = [a for a in arguments if "=" not in a and not a.endswith((".yaml", ".yml"))]
    if len(keys) > 1:
        raise MoeMtError(f"one KEY at most, got {', '.join(keys)} (overrides are key=value)")
    return (keys[0] if keys else None), [a for a in arguments if a not in keys]


def selected_keys(key: str | None, docs: dict) -> list[str]:
    """The leaf keys ``key`` names: itself (a leaf), every leaf under it (a section), or all."""
    from moe_mt.errors import MoeMtError

    leaves = [k for k, doc in docs.items() if not doc.section]
    if key is None:
        return leaves
    if key not in docs:
        closest = difflib.get_close_matches(key, list(docs), n=3, cutoff=0.6)
        hint = f" (closest: {', '.join(closest)})" if closest else ""
        raise MoeMtError(f"unknown key '{key}'{hint}")
    if not docs[key].section:
        return [key]
    return [k for k in leaves if k.startswith(f"{key}.")]


def other_familys_key(cfg, key: str) -> bool:
    """A ``model.moe`` key left null that the run's model family does not take (another
    family's option): left out of a section's listing."""
    from omegaconf import OmegaConf

    from moe_mt.models import families

    prefix = "model.moe."
    if not key.startswith(prefix) or OmegaConf.select(cfg, key) is not None:
        return False
    family = families.family_of_arch(cfg.model.arch)
    taken = {o.name for o in family.all_options()} if family is not None else set()
    return key.removeprefix(prefix) not in taken


def value_text(cfg, key: str) -> str:
    """A value as a recipe would write it (null, true, [a, b], {k: v}; ??? when unset)."""
    from omegaconf import OmegaConf

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if OmegaConf.is_missing(parent, leaf):
        return "??? (unset)"
    value = parent[leaf]
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return _yaml_flow(value)


def _yaml_flow(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def origin_text(origin: str) -> str:
    """A file origin relative to the working directory when under it; other origins as given."""
    path = Path(origin)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return origin


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``config`` to ``app``."""

    def config_command(
        config: config_arg,
        arguments: Annotated[
            list[str] | None,
            typer.Argument(
                help="An optional KEY, a section (eval) or a key (eval.beam), then key=value "
                "overrides.",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Print the resolved config: each key's value, where it came from, and its help.

        A value comes from the schema's default, the recipe, one of the pieces it includes, a
        run directory's config.yaml, or an override (key=value), later ones winning.
        """
        from moe_mt.config import load_config_with_origins, schema_keys

        key, overrides = split_key(arguments or [])
        docs = schema_keys()
        keys = selected_keys(key, docs)  # an unknown KEY fails before the recipe is read
        cfg, origins = load_config_with_origins(config, overrides)
        if key is None or docs[key].section:
            keys = [k for k in keys if not other_familys_key(cfg, k)]
        for name in keys:
            console.print(
                f"{name} = {value_text(cfg, name)}  ({origin_text(origins[name])})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            if docs[name].help:
                console.print(
                    f"    {docs[name].help}", markup=False, highlight=False, soft_wrap=True
                )

    app.command("config", epilog=EPILOG)(user_errors(config_command))
