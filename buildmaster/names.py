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
#: A host name or address: letters and digits, then also ``.``, ``-``, ``_`` and ``:``.
VM_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
MAX_VM_HOST = 253


class InvalidName(ValueError):
    """A builder name or VM host that may not be used; the message says why."""


def check_builder_name(name: str) -> str:
    """``name`` if it is a valid builder name.

    :raises InvalidName: otherwise.
    """
    if len(name) > MAX_BUILDER_NAME or not BUILDER_NAME.match(name):
        raise InvalidName(
            f"bad builder name {name!r}: lower-case letters, digits, '+', '.' and '-',"
            f" starting with a letter or digit, at most {MAX_BUILDER_NAME} characters"
        )
    return name


def check_vm_host(host: str) -> str:
    """``host`` if it is a valid VM host (a host name or an address).

    :raises InvalidName: otherwise.
    """
    if len(host) > MAX_VM_HOST or not VM_HOST.match(host):
        raise InvalidName(
            f"bad VM host {host!r}: letters, digits, '.', '-', '_' and ':',"
            f" starting with a letter or digit, at most {MAX_VM_HOST} characters"
        )
    return host
