"""Checking request bodies against the schemas of the OpenAPI document (JSON Schema 2020-12,
with the ``jsonschema`` library): the document the clients read is the rule the server
applies."""

from __future__ import annotations

from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["errors"]


@cache
def _validator(name: str) -> Draft202012Validator:
    from buildmaster.web.api.openapi import document

    components = document()["components"]
    if name not in components["schemas"]:
        raise KeyError(f"no schema {name!r} in the OpenAPI document")
    root = {"$ref": f"#/components/schemas/{name}", "components": components}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, value: Any) -> list[str]:
    """Every way ``value`` breaks the schema ``name`` (empty: none), for people."""
    found = []
    for error in sorted(_validator(name).iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path)
        found.append(f"{where}: {error.message}" if where else error.message)
    return found
