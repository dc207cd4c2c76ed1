"""The command that resets a simulated builder's "VM" (standard library only: it is run as
a script of its own, by a master, with any working directory and ``PYTHONPATH``).

A master resets a virtualized builder with a command (``--vm-resume-command``). For
simulated builders the farm offers one (:meth:`slavesim.Farm.vm_reset_command`)::

    python .../slavesim/vmreset.py 127.0.0.1:<control port> <builder name>

It asks the farm's control port to make a new machine of the builder (IDLE, no build, no
build directory, an empty file cache, its connections dropped) and exits 0 once that is
done, 1 with a reason on stderr otherwise.
"""

from __future__ import annotations

import socket
import sys

__all__ = ["main"]

_TIMEOUT = 30.0


def main(argv: list[str]) -> int:
    """``vmreset.py HOST:PORT NAME``: reset builder NAME; 0 once done."""
    if len(argv) != 2 or ":" not in argv[0]:
        print("usage: vmreset.py HOST:PORT BUILDER", file=sys.stderr)
        return 2
    host, _, port = argv[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_TIMEOUT) as conn:
            conn.sendall(f"reset {argv[1]}\n".encode())
            answer = b""
            while not answer.endswith(b"\n"):
                data = conn.recv(1024)
                if not data:
                    break
                answer += data
    except (OSError, ValueError) as e:
        print(f"cannot reset {argv[1]}: {e}", file=sys.stderr)
        return 1
    text = answer.decode("utf-8", "replace").strip()
    if text != "ok":
        print(f"cannot reset {argv[1]}: {text or 'no answer'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
