"""Resetting a virtualized builder's VM before it builds: a configured command, run without
blocking the reactor, with a deadline.

The command template (``--vm-resume-command``) is split like a shell would split it, then
``%(vm_host)s`` and ``%(buildd_name)s`` are expanded inside each word; no shell runs it.
What keeps a builder's names from changing the command:

* every value is a checked name (:mod:`buildmaster.names`, checked by the schema too): it
  never starts with ``-`` and holds no whitespace, so it can neither become an option nor
  split into several arguments, wherever the template puts it (``%(vm_host)s``,
  ``--host=%(vm_host)s``, ``%(vm_host)s.example.com``);
* the program itself (the first word) may not contain a field.

No ``--`` is put before the values: the command is the operator's, and many programs do not
take ``--`` as "end of options" (for a shell script it is just another argument).

A template must use ``%(vm_host)s`` or ``%(buildd_name)s``: one that uses neither would reset
the same thing for every builder. ``%(buildd_name)s`` alone is fine where each VM is named
after its builder; ``%(vm_host)s`` is the builder's ``vm_host``, or its name when it has none.

The command's environment is :func:`command_environment` and nothing else: the master's own
environment (its database DSN, passwords) is not passed on; a program named without a
directory is looked up in its ``PATH`` (:data:`COMMAND_PATH`).

A command that fails (exits non-zero, or is too slow) is the builder's failure: its VM did not
reset; so is a builder whose names cannot be passed to it. A command that is missing or not
executable, or that cannot be started for want of file descriptors, is the master's
(:class:`~buildmaster.masterfaults.MasterFault`).
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from buildmaster.masterfaults import VM_RESET_COMMAND, MasterFault, shortage
from buildmaster.names import InvalidName, check_builder_name, check_vm_host
from buildmaster.protocol import BuilderError

__all__ = [
    "COMMAND_PATH",
    "VMResetFailed",
    "check_template",
    "command_environment",
    "resume_argv",
    "reset_vm",
]

_OUTPUT_LIMIT = 8 * 1024
_FIELDS = ("vm_host", "buildd_name")
#: ``PATH`` of the VM reset command (a program named without a directory is looked up there).
COMMAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class VMResetFailed(BuilderError):
    """The VM reset command failed (non-zero exit, could not start, or too slow), or the
    builder's names cannot be passed to it."""


def check_template(template: str) -> list[str]:
    """The words of a VM reset command template, if it is one.

    :raises ValueError: for a template that does not split, is empty, uses an unknown field
        or a bare ``%``, puts a field into the program's name, or uses neither
        ``%(vm_host)s`` nor ``%(buildd_name)s``.
    """
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise ValueError(f"bad VM resume command {template!r}: {e}") from None
    if not words:
        raise ValueError("the VM resume command is empty")
    probe = {field: f"\0{field}\0" for field in _FIELDS}
    try:
        expanded = [word % probe for word in words]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"bad VM resume command {template!r}: {e!r} (the fields are %(vm_host)s and"
            " %(buildd_name)s; write %% for a percent sign)"
        ) from None
    if "\0" in expanded[0]:
        raise ValueError(
            f"bad VM resume command {template!r}: the program may not depend on the builder"
        )
    if not any(marker in word for word in expanded[1:] for marker in probe.values()):
        raise ValueError(
            f"bad VM resume command {template!r}: it uses neither %(vm_host)s nor"
            " %(buildd_name)s, so it would reset the same VM for every builder"
        )
    return words


def resume_argv(template: str, vm_host: str | None, buildd_name: str) -> list[str]:
    """The argv for resetting this builder's VM.

    :raises ValueError: for a bad template (see :func:`check_template`).
    :raises VMResetFailed: when the builder's name or VM host is not a valid name (it would
        not be passed on as a single, plain argument).
    """
    words = check_template(template)
    try:
        values = {
            "vm_host": check_vm_host(vm_host) if vm_host else check_builder_name(buildd_name),
            "buildd_name": check_builder_name(buildd_name),
        }
    except InvalidName as e:
        raise VMResetFailed(f"VM reset refused: {e}") from None
    return [word % values for word in words]


def command_environment() -> dict[str, str]:
    """The whole environment of the VM reset command: ``PATH`` (:data:`COMMAND_PATH`),
    ``LANG=C.UTF-8``, and ``HOME`` when the master has one (ssh and friends find their
    configuration there)."""
    env = {"PATH": COMMAND_PATH, "LANG": "C.UTF-8"}
    home = os.environ.get("HOME")
    if home:
        env["HOME"] = home
    return env


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
    """Run the VM reset command (in :func:`command_environment`) and wait for it.

    :raises VMResetFailed: when it exits non-zero, or outlives ``timeout`` (then it is
        killed).
    :raises MasterFault: when it is missing or not executable, or cannot be started.
    """
    if shutil.which(argv[0], path=COMMAND_PATH) is None:  # a stat or two: not a thread
        raise MasterFault(
            VM_RESET_COMMAND,
            f"the VM reset command {argv[0]!r} is missing or not executable: virtualized"
            " builders cannot be reset (fix --vm-resume-command)",
        )
    done: defer.Deferred[tuple[int | None, bytes]] = defer.Deferred()
    try:
        process = reactor.spawnProcess(_Collector(done), argv[0], argv, env=command_environment())
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
