"""rich tables of workflow results."""

from __future__ import annotations

from rich.table import Table


def prep_table(manifest: dict) -> Table:
    langs = manifest["languages"]
    table = Table(title=f"prep {langs['src']}-{langs['tgt']}")
    for column in ("split", "lines in", "kept", "dropped", "src tokens", "tgt tokens", "unk"):
        table.add_column(column, justify="left" if column in ("split", "dropped") else "right")
    for split, info in manifest["splits"].items():
        tokens = info.get("tokens", {})
        src_tok = tokens.get(langs["src"], {})
        tgt_tok = tokens.get(langs["tgt"], {})
        dropped = ", ".join(f"{k} {v:,}" for k, v in info["dropped"].items()) or "-"
        table.add_row(
            split,
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
