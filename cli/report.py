"""rich tables of workflow results."""

from __future__ import annotations

from rich.table import Table


def prep_table(manifest: dict) -> Table:
    """One row per corpus and split."""
    from moe_mt.workflows.common.manifest import upgraded

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


def compare_table(result: dict) -> Table:
    from moe_mt.workflows.compare.comparison import SIGNIFICANCE, mean_score_cell

    where = result.get("eval_name", result["split"])
    directions = result["directions"]
    what = f"{result['lines']} lines"
    if len(directions) > 1:
        what += f", mean of {len(directions)} directions"
    table = Table(title=f"compare {result['split'] or 'files'} ({what}, eval/{where})")
    metrics = result.get("metrics", ["BLEU", "chrF2", "TER"])  # + BLEU4 tok, where reported
    columns = ("run", *metrics, "params", "active/token", "ckpt updates", "updates",
               "train wall s", "sent/s", "act. rate", "dropped")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in result["runs"]:
        table.add_row(
            row["name"],
            *(mean_score_cell(row, m) for m in metrics),
            *(
                "-" if row[k] is None else f"{row[k]:,}"
                for k in (
                    "parameters",
                    "active_parameters",
                    "checkpoint_updates",
                    "updates",
                    "train_wall_seconds",
                    "sentences_per_second",
                )
            ),  # fmt: skip
            *(
                "-" if row[k] is None else f"{row[k]:.3f}"
                for k in ("activation_rate", "dropped_fraction")
            ),
        )
    table.caption = (
        f"baseline {result['baseline']}; mean ± 95% CI (p) of paired bootstrap, "
        f"* p < {SIGNIFICANCE}; " + "; ".join(f"{m} {s}" for m, s in result["signatures"].items())
    )
    return table
