"""Resetting a virtualized builder's VM before it builds: a configured command, run without
blocking the reactor, with a deadline.

The command template (``--vm-resume-command``) is split like a shell would split it, then
``%(vm_host)s`` and ``%(buildd_name)s`` are expanded inside each word, so a builder name can
never inject arguments or shell syntax.

A command that fails (exits non-zero, or is too slow) is the builder's failure: its VM did not
reset. A command that is missing or not executable, or that cannot be started for want of
file descriptors, is the master's (:class:`~buildmaster.masterfaults.MasterFault`).
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from buildmaster.masterfaults import VM_RESET_COMMAND, MasterFault, shortage
from buildmaster.protocol import BuilderError

__all__ = ["VMResetFailed", "resume_argv", "reset_vm"]

_OUTPUT_LIMIT = 8 * 1024


class VMResetFailed(BuilderError):
    """The VM reset command failed (non-zero exit, could not start, or too slow)."""


def resume_argv(template: str, vm_host: str | None, buildd_name: str) -> list[str]:
    """The argv for resetting this builder's VM.

    :raises ValueError: for a template that does not split or expand.
    """
    words = shlex.split(template)
    if not words:
        raise ValueError("the VM resume command is empty")
    values = {"vm_host": vm_host or buildd_name, "buildd_name": buildd_name}
    try:
        return [word % values for word in words]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"bad VM resume command {template!r}: {e}") from None


class _Collector(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred[tuple[int | None, bytes]]) -> None:
        self._done = done
        self._output = bytearray()

    def outReceived(self, data: bytes) -> None:
        self._output += data
        del self._output[:-_OUTPUT_LIMIT]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code: int | None = 0
        terminated = reason.value
        if isinstance(terminated, error.ProcessTerminated):
            code = terminated.exitCode
            if code is None:  # killed by a signal
                code = -(terminated.signal or 0)
        if not self._done.called:
            self._done.callback((code, bytes(self._output)))


async def reset_vm(reactor: Any, argv: list[str], timeout: float) -> None:
    """Run the VM reset command and wait for it.

    :raises VMResetFailed: when it exits non-zero, or outlives ``timeout`` (then it is
        killed).
    :raises MasterFault: when it is missing or not executable, or cannot be started.
    """
    if shutil.which(argv[0]) is None:  # a stat or two: not worth a thread
        raise MasterFault(
            VM_RESET_COMMAND,
            f"the VM reset command {argv[0]!r} is missing or not executable: virtualized"
            " builders cannot be reset (fix --vm-resume-command)",
        )
    done: defer.Deferred[tuple[int | None, bytes]] = defer.Deferred()
    try:
        process = reactor.spawnProcess(_Collector(done), argv[0], argv, env=dict(os.environ))
    except OSError as e:
        raise shortage(e, "starting the VM reset command") or MasterFault(
            VM_RESET_COMMAND, f"the VM reset command {argv[0]!r} could not start: {e}"
        ) from None
    timed_out = []

    def expire() -> None:
        timed_out.append(True)
        try:
            process.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    timer = reactor.callLater(timeout, expire)
    try:
        code, output = await done
    finally:
        if timer.active():
            timer.cancel()
    if timed_out:
        raise VMResetFailed(f"VM reset command timed out after {timeout:g} seconds")
    if code != 0:
        tail = output.decode("utf-8", "replace").strip()[-300:]
        raise VMResetFailed(f"VM reset command exited with {code}" + (f": {tail}" if tail else ""))
