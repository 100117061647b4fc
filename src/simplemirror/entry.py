"""The ``mirror`` command's entry point, kept light on purpose.

A download process is started by multiprocessing (from its fork server), which runs
the parent's main script again in the child: were that script to import the CLI,
every child would load all of it (rich, sqlite-utils, the server...) for
nothing, ~0.13 s of CPU each time. The CLI is imported only when ``main`` runs.
"""

from __future__ import annotations


def main() -> int:
    from simplemirror.cli.main import main as cli_main

    return cli_main()
