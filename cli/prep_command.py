"""``moemt prep``: parse, load the config, call the workflow (or its plan), print the result.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
from typing import Annotated

import typer
from rich.table import Table

from moe_mt.config import load_config
from moe_mt.workflows.common.manifest import upgraded

EXAMPLES = """Examples:

  moemt prep recipes/demo.yaml --dry-run   # the plan only: nothing written
  moemt prep recipes/demo.yaml
  moemt prep recipes/demo_switch.yaml data.spm.vocab_size=4000"""


def prep_table(manifest: dict) -> Table:
    """One row per corpus and split."""
    manifest = upgraded(manifest)
    title = f"prep {', '.join(manifest['languages']['directions'])}"
    several = len(manifest["corpora"]) > 1
    rows = [
        (f"{name} {split}" if several else split, info, corpus["languages"])
        for name, corpus in manifest["corpora"].items()
        for split, info in corpus["splits"].items()
    ]
    table = Table(title=title)
    for column in ("split", "lines in", "kept", "dropped", "src tokens", "tgt tokens", "unk"):
        table.add_column(column, justify="left" if column in ("split", "dropped") else "right")
    for label, info, (src, tgt) in rows:
        tokens = info.get("tokens", {})
        src_tok = tokens.get(src, {})
        tgt_tok = tokens.get(tgt, {})
        dropped = ", ".join(f"{k} {v:,}" for k, v in info["dropped"].items()) or "-"
        table.add_row(
            label,
            f"{info['lines']['raw']:,}",
            f"{info['lines']['kept']:,}",
            dropped,
            f"{src_tok.get('tokens', 0):,}",
            f"{tgt_tok.get('tokens', 0):,}",
            f"{src_tok.get('unknown', 0) + tgt_tok.get('unknown', 0):,}",
        )
    sizes = manifest["dictionary_size"]
    table.caption = "dictionary: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    return table


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``prep`` to ``app``."""

    def prep_command(
        config: config_arg,
        overrides: overrides_arg = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Print what would be downloaded (URLs, sizes, checksums, cache) and written.",
            ),
        ] = False,
        overwrite: Annotated[
            bool,
            typer.Option(
                "--overwrite",
                help="Replace data that this run's checkpoints were trained on (refused "
                "otherwise).",
            ),
        ] = False,
    ) -> None:
        """Validate, clean, tokenise (sentencepiece) and binarise a parallel corpus.

        Recipe keys: the data section (`moemt config RECIPE data` prints each with its help).
        """
        # The workflow (fairseq, sentencepiece) is imported when the command runs, not at start-up.
        from moe_mt.workflows.prep.pipeline import prep
        from moe_mt.workflows.prep.plan import prep_plan

        cfg = load_config(config, overrides or [])
        if dry_run:
            for line in prep_plan(cfg).lines:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        result = prep(cfg, console=err_console, overwrite=overwrite)
        if result.up_to_date:
            console.print(
                f"data in {result.run_dir}/data is up to date (same inputs and config): nothing "
                "to do"
            )
        console.print(prep_table(result.manifest))
        console.print(f"wrote {result.run_dir}/data (manifest.json)")

    app.command("prep", epilog=EXAMPLES)(user_errors(prep_command))
