"""Stop a private PostgreSQL server when the process that started it goes away.

Run as ``python -m buildmaster.store.watchdog (--remove|--keep) DIRECTORY -- STOP-COMMAND...``
with a pipe on standard input. It blocks reading that pipe; end of file means the parent
has stopped the cluster on purpose, or has died (even by SIGKILL). Either way it runs the
stop command (harmless when the server is already down) and, with ``--remove``, deletes the
throwaway cluster's directory.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    mode, directory, separator, *stop_command = argv
    if mode not in ("--remove", "--keep") or separator != "--" or not stop_command:
        print(__doc__, file=sys.stderr)
        return 2
    # The parent's terminal may send SIGINT/SIGHUP to everyone; only end of file counts.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    subprocess.run(stop_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if mode == "--remove":
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
