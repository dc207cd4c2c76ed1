"""Builders' XML-RPC answers are read with the standard library's parser and handlers, with
text handed over in one piece (builderclient.read_xmlrpc_answer): same values, same errors
as xmlrpc.client.loads, on generated answers, faults and damaged bodies."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from buildmaster.builderclient import read_xmlrpc_answer

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
    assert outcome(read_xmlrpc_answer, body) == outcome(standard, body)


def test_a_building_status_with_its_log_tail() -> None:
    tail = bytes(range(256)) * 8
    body = answer(
        {
            "builder_status": "BuilderStatus.BUILDING",
            "build_id": "PACKAGEBUILD-1",
            "logtail": xmlrpc.client.Binary(tail),
        }
    )
    (status,) = read_xmlrpc_answer(body)
    assert status["logtail"] == xmlrpc.client.Binary(tail)
    assert status["build_id"] == "PACKAGEBUILD-1"


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.text())
def test_faults_are_raised_as_the_standard_library_raises_them(code: int, text: str) -> None:
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(code, text), methodresponse=True).encode()
    assert outcome(read_xmlrpc_answer, body) == outcome(standard, body)


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
    assert outcome(read_xmlrpc_answer, bytes(body)) == outcome(standard, bytes(body))
