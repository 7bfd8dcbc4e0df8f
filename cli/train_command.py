"""``moemt train``: parse, load the config, call the workflow, print the result (or, with
``--dry-run``, the resolved config, fairseq's arguments and the model's size).

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
import shlex
from typing import Annotated

import typer
from rich.table import Table

from moe_mt.config import load_config, to_yaml

EXAMPLES = """Examples:

  moemt train recipes/demo_switch.yaml --dry-run   # parameters, FLOPs
  moemt train recipes/demo.yaml train.max_update=3000
  moemt train recipes/europarl/en_ro.yaml recipes/families/switch.yaml model.moe.top_k=2"""


def train_table(result) -> Table:
    summary = result.summary
    table = Table(title=f"train {result.run_dir}")
    table.add_column("")
    table.add_column("", justify="right")
    valid = summary.get("last_valid") or {}
    rows = {
        "updates": summary.get("num_updates"),
        "epochs": summary.get("epoch"),
        "resumed from update": result.resumed_from_update or "-",
        "train loss": summary.get("train_loss"),
        "valid loss (last)": valid.get("loss", "-"),
        "valid loss (best)": valid.get("best_loss", "-"),
        "wall-clock s (total)": summary.get("wall_seconds"),
        "CPU s (total)": summary.get("cpu_seconds"),
    }
    for key, value in rows.items():
        seconds = key.endswith("s (total)") and isinstance(value, float)
        table.add_row(key, f"{value:,.1f}" if seconds else str(value))
    return table


def training_config(cfg):
    """What a training uses of ``cfg``, for the dry run: ``model.moe`` without the keys that
    the run's family does not take, and no ``distill`` section (``moemt distill`` shows it)."""
    from omegaconf import OmegaConf

    from moe_mt.models import families

    shown = OmegaConf.to_container(cfg, resolve=False)
    shown.pop("distill", None)
    family = families.family_of_arch(cfg.model.arch)
    taken = {o.name for o in family.all_options()} if family is not None else set()
    moe = shown.get("model", {}).get("moe") or {}
    shown["model"]["moe"] = {k: v for k, v in moe.items() if k in taken}
    return OmegaConf.create(shown)


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``train`` to ``app``."""

    def train_command(
        config: config_arg,
        overrides: overrides_arg = None,
        overwrite: Annotated[
            bool,
            typer.Option(
                "--overwrite",
                help="Delete this run's checkpoints, logs and eval reports, start over.",
            ),
        ] = False,
        finetune_from: Annotated[
            str | None,
            typer.Option(
                help="Start from this checkpoint or run directory's weights (new optimizer)."
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Print the resolved config, fairseq arguments and parameter/FLOP summary "
                "only.",
            ),
        ] = False,
    ) -> None:
        """Train (or resume) the model of CONFIG with fairseq, in its run directory.

        Recipe keys: the model and train sections (`moemt config RECIPE model`, `... train`);
        architectures: `moemt ls archs`.
        """
        # The workflow (torch, fairseq) is imported when the command runs, not at start-up.
        from moe_mt.workflows.train.model_summary import model_summary, summary_table
        from moe_mt.workflows.train.trainer import train

        cfg = load_config(config, overrides or [])
        result = train(
            cfg,
            overwrite=overwrite,
            finetune_from=finetune_from,
            dry_run=dry_run,
            console=err_console,
        )
        if dry_run:
            console.print(to_yaml(training_config(cfg)), highlight=False, markup=False)
            console.print(
                "fairseq-train " + shlex.join(result.fairseq_args), highlight=False, markup=False
            )
            console.print(summary_table(model_summary(cfg)))
            return
        if result.rank == 0:  # under torchrun/srun, rank 0 alone reports
            console.print(train_table(result))

    app.command("train", epilog=EXAMPLES)(user_errors(train_command))
