"""Names that become arguments of commands: builder names and VM hosts (pure).

The VM reset command gets a builder's ``vm_host`` and name as arguments. A name that could
start with ``-`` would turn into an option of the operator's command; whitespace or shell
syntax would be harmless (no shell runs) but is no name either. So both are checked here,
whenever one is written, and the schema checks the same patterns (``builder.name``,
``builder.vm_host``): they never start with ``-`` and hold no whitespace, quotes, ``/``,
``$`` or any other punctuation than listed.
"""

from __future__ import annotations

import re

__all__ = ["InvalidName", "check_builder_name", "check_vm_host"]

#: Launchpad's names: lower-case letters and digits, then also ``+``, ``.`` and ``-``.
BUILDER_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")
MAX_BUILDER_NAME = 100
_VM_HOST = r"[A-Za-z0-9][A-Za-z0-9._:-]*"
#: A host name or address: letters and digits, then also ``.``, ``-``, ``_`` and ``:``.
VM_HOST = re.compile(_VM_HOST + r"\Z")
#: The same as a JSON Schema pattern (the operator API's).
VM_HOST_PATTERN = f"^{_VM_HOST}$"
MAX_VM_HOST = 253


class InvalidName(ValueError):
    """A builder name or VM host that may not be used; the message says why."""


def _check(value: str, pattern: re.Pattern[str], limit: int, what: str, chars: str) -> str:
    if len(value) > limit or not pattern.match(value):
        raise InvalidName(
            f"bad {what} {value!r}: {chars}, starting with a letter or digit,"
            f" at most {limit} characters"
        )
    return value


def check_builder_name(name: str) -> str:
    """``name`` if it is a valid builder name.

    :raises InvalidName: otherwise.
    """
    chars = "lower-case letters, digits, '+', '.' and '-'"
    return _check(name, BUILDER_NAME, MAX_BUILDER_NAME, "builder name", chars)


def check_vm_host(host: str) -> str:
    """``host`` if it is a valid VM host (a host name or an address).

    :raises InvalidName: otherwise.
    """
    chars = "letters, digits, '.', '-', '_' and ':'"
    return _check(host, VM_HOST, MAX_VM_HOST, "VM host", chars)
