"""``moemt version``: the moemt version and the versions it runs with.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

import moe_mt
from moe_mt.provenance import provenance

EXAMPLES = """Examples:

  moemt version
  moemt version | grep fairseq"""


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``version`` to ``app``."""

    def version_command() -> None:
        """Print the moemt version and the versions it runs with."""
        info = provenance()
        console.print(f"moemt {moe_mt.__version__} (commit {info['git_commit']})")
        for name, value in info["versions"].items():
            console.print(f"  {name} {value}")

    app.command("version", epilog=EXAMPLES)(user_errors(version_command))
