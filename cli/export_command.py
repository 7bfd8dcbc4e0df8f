"""``moemt export``: parse, load the config, call the workflow, print what was exported.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
import inspect
from typing import Annotated

import typer
from rich.table import Table


def export_table(info: dict, out_dir, reused: bool) -> Table:
    """Source, checkpoint, model and quantization of an export, one row each."""
    table = Table(title=f"export {out_dir}" + (" (reused: same inputs)" if reused else ""))
    table.add_column("", justify="left")
    table.add_column("", justify="left")
    checkpoint, arch = info["checkpoint"], info["architecture"]
    single, merge = info.get("single_expert"), info.get("merge")
    languages = info["languages"]
    rows = [
        ("source run", info["source_run"]),
        ("checkpoint", f"{checkpoint['path']} ({checkpoint['choice']}, "
                       f"{checkpoint['num_updates']:,} updates)"),
        ("sha256", checkpoint["sha256"]),
        ("model", f"{arch['arch']} ({arch['parameters']:,} parameters)"
                  + (f", expert {single['expert']} in every MoE layer" if single else "")),
        *([("merged", f"experts {merge['method']} per MoE layer, calibrated on "
                      f"{merge['calibration']['sentences']:,} valid sentences: a different "
                      "model, score it")] if merge else []),
        ("quantization", info["quantization"]),
        ("directions", ", ".join(languages["directions"])
                       + (" (language tokens)" if languages["tokens"] else "")),
        ("sentencepiece", ", ".join(sorted(set(info["spm"].values())))),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, str(value))
    table.show_header = False
    return table


EXAMPLES = """Examples:

  moemt export runs/demo                     # into runs/demo/export/ct2-float32
  moemt export runs/demo_switch eval.merge_experts=most_used --quantization int8 --out deploy/sw
  moemt export runs/demo_thor eval.thor_inference=fixed eval.thor_expert=0"""


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``export`` to ``app``."""

    def export_command(
        config: config_arg,
        overrides: overrides_arg = None,
        out: Annotated[
            str | None,
            typer.Option(help="Export directory (default: RUN_DIR/export/ct2-<quantization>)."),
        ] = None,
        quantization: Annotated[
            str | None,
            typer.Option(
                help="int8 | int8_float32 | int16 | float16 | bfloat16 | float32 "
                "(default: eval.quantization, float32)."
            ),
        ] = None,
    ) -> None:
        """Export a trained run's checkpoint to CTranslate2, with its sentencepiece model(s)."""
        from moe_mt.config import load_config
        from moe_mt.workflows.export.exporter import export

        chosen = [f"eval.quantization={quantization}"] if quantization is not None else []
        cfg = load_config(config, [*(overrides or []), *chosen])
        result = export(cfg, out)
        console.print(export_table(result.info, result.out_dir, result.reused))
        merge = cfg.eval.get("merge_experts")
        keys = f"eval.quantization={cfg.eval.quantization}" + (
            f" eval.merge_experts={merge}" if merge else ""
        )
        console.print(
            f"{'reused' if result.reused else 'wrote'} {result.out_dir} (CTranslate2 model, "
            f"export.json, sentencepiece); translate with: moemt translate {cfg.run_dir} "
            f"--engine ctranslate2 {keys}",
            highlight=False,
        )
        if merge:
            console.print(
                f"the merged model is not the routed one: score it with moemt eval {cfg.run_dir} "
                f"eval.engine=ctranslate2 {keys}",
                highlight=False,
            )

    help_text = "\n\n".join([
        inspect.cleandoc(export_command.__doc__),
        "The checkpoint is the one eval.checkpoint chooses (last, best, average, a path).",
        "Dense Transformers, distilled students and THOR with eval.thor_inference=fixed export; "
        "a routed Switch or X-MoE model exports with eval.merge_experts=most_used | "
        "usage_average (its experts pruned or merged per layer, calibrated on its valid split: "
        "a different model, to be scored); other MoE models are refused (distil them first: "
        "moemt distill).",
        "An export whose inputs (checkpoint sha256, quantization, THOR expert) are unchanged is "
        "reused; eval.engine=ctranslate2 (moemt eval) and --engine ctranslate2 (moemt translate) "
        "decode it. See docs/deploy.md.",
    ])  # fmt: skip
    app.command("export", help=help_text, epilog=EXAMPLES)(user_errors(export_command))
