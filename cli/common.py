"""What several commands share: the help paragraph that names a recipe section's keys."""

from moe_mt.config import schema_keys


def section_help(section: str) -> str:
    """A help paragraph naming the keys of a recipe section (from the schema, so always true)."""
    docs = schema_keys()
    keys = [k for k, doc in docs.items() if k.startswith(f"{section}.") and not doc.section]
    return (
        f"Recipe keys (override as key=value): {', '.join(keys)}. "
        f"`moemt config RECIPE {section}` prints each with its value, origin and help."
    )
