"""Builders' XML-RPC answers are read with the standard library's parser and handlers, with
text handed over in one piece (rpcanswer.read_xmlrpc_answer): same values, same errors
as xmlrpc.client.loads, on generated answers, faults and damaged bodies, whether read at
once or a slice per turn of the reactor. And within a budget: answers nested too deep, too
wide, too big, or declaring entities are refused, having parsed no more than the budget.
No reactor runs here."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from buildmaster.rpcanswer import (
    SLICE,
    AnswerBudget,
    AnswerReader,
    AnswerRefused,
    answer_budgets,
    read_xmlrpc_answer,
)

#: no limit that a generated answer reaches (the budgets have tests of their own)
AMPLE = AnswerBudget(max_bytes=2**40, max_elements=2**40, max_depth=1000)
STATUS, OTHER = answer_budgets(1000)


class Turns:
    """The reactor's ``callLater(0, ...)``: calls made during a turn run at the next one."""

    def __init__(self) -> None:
        self.next_turn: list[tuple[Any, tuple[Any, ...]]] = []

    def callLater(self, delay: float, f: Any, *args: Any) -> None:
        assert delay == 0
        self.next_turn.append((f, args))

    def turn(self) -> None:
        calls, self.next_turn = self.next_turn, []
        for f, args in calls:
            f(*args)


def read_in_slices(body: bytes, budget: AnswerBudget = AMPLE) -> tuple[Any, ...]:
    turns = Turns()
    d = Deferred.fromCoroutine(AnswerReader(budget).read(body, turns))
    while turns.next_turn:
        turns.turn()
    result: list[Any] = []
    d.addBoth(result.append)
    if isinstance(result[0], Failure):
        result[0].raiseException()
    return tuple(result[0])


def read_at_once(body: bytes) -> tuple[Any, ...]:
    return read_xmlrpc_answer(body, AMPLE)


scalars = (
    st.text()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.binary(max_size=3000).map(xmlrpc.client.Binary)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def outcome(read: Any, body: bytes) -> tuple[str, Any]:
    """What reading ``body`` gives: its values, or the kind of error (and a fault's fields)."""
    try:
        return "values", read(body)
    except xmlrpc.client.Fault as fault:
        return "fault", (fault.faultCode, fault.faultString)
    except Exception as e:
        return "error", type(e)


def standard(body: bytes) -> tuple[Any, ...]:
    return xmlrpc.client.loads(body)[0]


def answer(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(values)
def test_answers_read_as_the_standard_library_reads_them(value: Any) -> None:
    body = answer(value)
    assert outcome(read_at_once, body) == outcome(standard, body)
    assert outcome(read_in_slices, body) == outcome(standard, body)


def test_a_building_status_with_its_log_tail() -> None:
    tail = bytes(range(256)) * 8
    body = answer(
        {
            "builder_status": "BuilderStatus.BUILDING",
            "build_id": "PACKAGEBUILD-1",
            "logtail": xmlrpc.client.Binary(tail),
        }
    )
    (status,) = read_xmlrpc_answer(body, STATUS)
    assert status["logtail"] == xmlrpc.client.Binary(tail)
    assert status["build_id"] == "PACKAGEBUILD-1"


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.text())
def test_faults_are_raised_as_the_standard_library_raises_them(code: int, text: str) -> None:
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(code, text), methodresponse=True).encode()
    assert outcome(read_at_once, body) == outcome(standard, body)


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_damaged_answers_fail_as_the_standard_library_fails(value: Any, data: Any) -> None:
    body = bytearray(answer(value))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        action = data.draw(st.sampled_from(["cut", "flip", "insert"]))
        if action == "cut":
            del body[at:]
            if not body:
                break
        elif action == "flip":
            body[at] = data.draw(st.integers(min_value=0, max_value=255))
        else:
            body[at:at] = data.draw(st.sampled_from([b"<", b">", b"&", b"\r", b"\x00", b"\n"]))
    assert outcome(read_at_once, bytes(body)) == outcome(standard, bytes(body))
    assert outcome(read_in_slices, bytes(body)) == outcome(standard, bytes(body))


# -- budgets --------------------------------------------------------------------------------

HEAD = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
TAIL = b"</param>\n</params>\n</methodResponse>\n"


def refused(body: bytes, budget: AnswerBudget) -> tuple[str, AnswerReader]:
    """Feed ``body`` (in slices, as the client does) until the reader refuses it."""
    reader = AnswerReader(budget)
    with pytest.raises(AnswerRefused) as caught:
        for offset in range(0, len(body), SLICE):
            reader.feed(body[offset : offset + SLICE])
        reader.close()
    return str(caught.value), reader


def test_a_deeply_nested_answer_is_refused_at_its_depth() -> None:
    depth = 200_000  # 8.6 MB: as a status, xmlrpc.client.loads builds it, repr() overflows
    body = HEAD + b"<value><array><data>" * depth + b"</data></array></value>" * depth + TAIL
    reason, reader = refused(body, STATUS)
    assert reason == "arrays and structs nested deeper than 4"
    assert reader.elements < 20 and reader.fed <= SLICE  # it stopped at once


def test_nesting_within_the_depth_is_read() -> None:
    value = {"filemap": {"a": [["x"]]}}
    assert read_xmlrpc_answer(answer(value), STATUS) == (value,)
    with pytest.raises(AnswerRefused):
        read_xmlrpc_answer(answer({"a": [[[{"b": 1}]]]}), STATUS)


def test_a_wide_answer_is_refused_at_its_element_budget() -> None:
    body = HEAD + b"<value><array><data>" + b"<value><nil/></value>" * 100_000
    body += b"</data></array></value>" + TAIL
    reason, reader = refused(body, STATUS)
    assert reason == f"more than {STATUS.max_elements} XML elements"
    assert reader.elements == STATUS.max_elements + 1  # not one element more was parsed
    # elements need not be values to count
    reason, reader = refused(HEAD + b"<x/>" * 10_000 + TAIL, OTHER)
    assert reader.elements == OTHER.max_elements + 1


def test_a_huge_answer_is_refused_at_its_size() -> None:
    body = HEAD + b"<value><string>" + b"A" * (STATUS.max_bytes + 1) + b"</string></value>" + TAIL
    reason, reader = refused(body, STATUS)
    assert reason == f"larger than {STATUS.max_bytes} bytes"
    assert reader.fed <= STATUS.max_bytes + SLICE


@pytest.mark.parametrize(
    "doctype",
    [
        # billion laughs: ten levels of ten references
        b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
            for i in range(1, 10)
        )
        + b"]>",
        # quadratic blowup: one big entity referenced many times
        b'<!DOCTYPE q [<!ENTITY a "' + b"a" * 50_000 + b'">]>',
        # an external entity
        b'<!DOCTYPE x [<!ENTITY ext SYSTEM "file:///etc/passwd">]>',
        b"<!DOCTYPE methodResponse>",
    ],
    ids=["billion laughs", "quadratic", "external", "plain"],
)
def test_document_type_declarations_are_refused(doctype: bytes) -> None:
    body = b"<?xml version='1.0'?>\n" + doctype + b"<methodResponse><params><param>"
    body += b"<value><string>&lol9;&a;&a;&ext;</string></value>" + TAIL
    reason, reader = refused(body, STATUS)
    assert reason == "a document type declaration"
    assert reader.elements == 0  # refused before any element


def test_a_big_answer_is_read_a_slice_per_turn() -> None:
    """A legitimate big status (1,000 result files) does not hold the reactor: one slice
    is parsed, then the reader waits for the next turn."""
    filemap = {f"package{i}_1.0_all.deb": f"{i:040x}" for i in range(1000)}
    value = {"builder_status": "BuilderStatus.WAITING", "filemap": filemap}
    body = answer(value)
    turns = Turns()
    reader = AnswerReader(STATUS)
    d = Deferred.fromCoroutine(reader.read(body, turns))
    parsed = [reader.fed]
    while turns.next_turn:
        turns.turn()
        parsed.append(reader.fed)
    steps = [b - a for a, b in zip([0, *parsed], parsed, strict=False)]
    assert len(steps) == -(-len(body) // SLICE) > 25
    assert max(steps) == SLICE
    assert d.called and d.result == (value,)
