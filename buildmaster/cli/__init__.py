"""``buildmaster``: the command line of the build farm, a client of the operator API.

One module per family of commands (:mod:`~buildmaster.cli.builders`,
:mod:`~buildmaster.cli.queue`, :mod:`~buildmaster.cli.builds`,
:mod:`~buildmaster.cli.upload`, :mod:`~buildmaster.cli.chroots`,
:mod:`~buildmaster.cli.tokens`) over a small synchronous HTTP client
(:mod:`~buildmaster.cli.client`, httpx). Only ``token ... --dsn/--state-dir`` and
``migrate`` reach the database. docs/cli.md has the commands.
"""

from buildmaster.cli.root import main

__all__ = ["main"]
