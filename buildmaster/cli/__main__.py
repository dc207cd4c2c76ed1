"""``python -m buildmaster.cli``: the ``buildmaster`` command."""

from buildmaster.cli import main

main(prog_name="buildmaster")
