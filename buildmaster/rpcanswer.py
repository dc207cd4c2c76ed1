"""Reading a builder's XML-RPC answer within a budget (builders are untrusted).

An answer is parsed by expat into the values :func:`xmlrpc.client.loads` gives (the same
handlers, the same errors), within an :class:`AnswerBudget`: its size in bytes (the HTTP
client stops reading beyond it), the number of XML elements, and how deep arrays and
structs nest. Every answer of the protocol has a small, fixed shape (a status is a struct
holding at most a filemap struct; the other calls answer a few scalars in at most a list of
lists), so the budgets are tight: anything beyond, and any document type declaration (so no
entity is ever defined, let alone expanded), is :class:`AnswerRefused`, which the builder
client reports as a protocol error charged to the builder.

An answer larger than one :data:`SLICE` is parsed a slice at a time, with a turn of the
reactor between slices (:meth:`AnswerReader.read`): no answer holds the reactor for longer
than one slice takes to parse, whatever it holds.
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any
from xml.parsers import expat

import attrs
from twisted.internet import defer

__all__ = [
    "AnswerBudget",
    "AnswerReader",
    "AnswerRefused",
    "SLICE",
    "answer_budgets",
    "read_xmlrpc_answer",
]

#: Bytes parsed in one go; a larger answer is parsed a slice per turn of the reactor. The
#: densest slice (``<value/>`` after ``<value/>``) is about a thousand elements.
SLICE = 4096


@attrs.frozen
class AnswerBudget:
    """How much of an answer is read, and how much it may hold."""

    #: the answer's body, in bytes
    max_bytes: int
    #: XML elements, all of them
    max_elements: int
    #: arrays and structs inside one another (a status with its filemap: 2)
    max_depth: int = 4


#: A status: its fixed fields (the builder's state, the build id, a log tail, dependencies:
#: 512 KiB leave room for a log tail many times what the real daemon sends) and a filemap
#: of up to twice the result files a build may hand back, so that a build with too many is
#: still seen, and refused as the build's fault (FAILEDTOUPLOAD) rather than the builder's.
_STATUS_FIXED_BYTES = 512 * 1024
_STATUS_FIXED_ELEMENTS = 200
_BYTES_PER_FILE = 512
_ELEMENTS_PER_FILE = 4  # <member><name/><value><string/></value></member>
#: Every other answer: a message of up to 64 KiB (ensurepresent's), a few values.
OTHER_ANSWER = AnswerBudget(max_bytes=128 * 1024, max_elements=256)


def answer_budgets(max_result_files: int) -> tuple[AnswerBudget, AnswerBudget]:
    """The budgets of ``status()`` and of every other call, for builds that may hand back
    up to ``max_result_files`` files."""
    files = 2 * max_result_files
    status = AnswerBudget(
        max_bytes=_STATUS_FIXED_BYTES + files * _BYTES_PER_FILE,
        max_elements=_STATUS_FIXED_ELEMENTS + files * _ELEMENTS_PER_FILE,
    )
    return status, OTHER_ANSWER


class AnswerRefused(ValueError):
    """The answer goes beyond its budget, or declares a document type."""


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    """The standard library's unmarshaller, counting elements and nesting as it goes."""

    def __init__(self, budget: AnswerBudget) -> None:
        super().__init__()
        self.elements = 0
        self._max_elements = budget.max_elements
        self._max_depth = budget.max_depth

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        # the stdlib's start(), with the budget checked before anything is kept
        self.elements += 1
        if self.elements > self._max_elements:
            raise AnswerRefused(f"more than {self._max_elements} XML elements")
        if ":" in tag:
            tag = tag.split(":")[-1]
        if tag == "array" or tag == "struct":
            if len(self._marks) >= self._max_depth:
                raise AnswerRefused(f"arrays and structs nested deeper than {self._max_depth}")
            self._marks.append(len(self._stack))
        self._data = []
        if self._value and tag not in self.dispatch:
            raise xmlrpc.client.ResponseError(f"unknown tag {tag!r}")
        self._value = tag == "value"


def _refuse_doctype(*args: object) -> None:
    raise AnswerRefused("a document type declaration")


class AnswerReader:
    """Parses one answer, fed in pieces, within ``budget``.

    ``elements`` and ``fed`` (bytes parsed so far) tell how much work it has done.
    """

    def __init__(self, budget: AnswerBudget) -> None:
        self.budget = budget
        self._unmarshaller = _Unmarshaller(budget)
        parser = expat.ParserCreate(None, None)
        # each run of text in one piece: a log tail's base64 is read at half the cost of
        # xmlrpc.client.loads, which takes it line by line
        parser.buffer_text = True
        parser.StartElementHandler = self._unmarshaller.start
        parser.EndElementHandler = self._unmarshaller.end
        parser.CharacterDataHandler = self._unmarshaller.data
        parser.StartDoctypeDeclHandler = _refuse_doctype
        self._parser = parser
        self._unmarshaller.xml(None, None)  # type: ignore[arg-type]  # as ExpatParser does
        self.fed = 0

    @property
    def elements(self) -> int:
        return self._unmarshaller.elements

    def feed(self, data: bytes | memoryview) -> None:
        """Parse the next piece of the answer.

        :raises AnswerRefused: beyond the budget.
        :raises ExpatError, ValueError, ...: as :func:`xmlrpc.client.loads` would.
        """
        self.fed += len(data)
        if self.fed > self.budget.max_bytes:
            raise AnswerRefused(f"larger than {self.budget.max_bytes} bytes")
        self._parser.Parse(data, False)

    def close(self) -> tuple[Any, ...]:
        """The answer's values, once all of it was fed (a Fault is raised)."""
        self._parser.Parse(b"", True)
        return self._unmarshaller.close()

    async def read(self, body: bytes, clock: Any) -> tuple[Any, ...]:
        """All of ``body``, a :data:`SLICE` per turn of ``clock`` (an IReactorTime)."""
        view = memoryview(body)
        for offset in range(0, len(body), SLICE):
            if offset:
                turn: defer.Deferred[None] = defer.Deferred()
                clock.callLater(0, turn.callback, None)
                await turn
            self.feed(view[offset : offset + SLICE])
        return self.close()


def read_xmlrpc_answer(body: bytes, budget: AnswerBudget) -> tuple[Any, ...]:
    """The values of a whole answer, parsed at once (:class:`AnswerReader`)."""
    reader = AnswerReader(budget)
    reader.feed(body)
    return reader.close()
