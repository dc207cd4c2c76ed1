"""The OpenAPI 3.1 document of the operator API: the contract.

Long: the OpenAPI document is one contract, data rather than code, read as a whole.

Request bodies are checked against its schemas (:mod:`buildmaster.web.api.schemas`), and
the test suite checks the answers against it with schemathesis.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from buildmaster.builderstate import BuilderState
from buildmaster.enums import BuildStatus, PackagePublishingPocket, SourcePackageUrgency
from buildmaster.names import MAX_VM_HOST, VM_HOST_PATTERN
from buildmaster.web.api.problems import PROBLEM_TYPES, problem_type

__all__ = ["document"]

NAME = r"^[a-z0-9][a-z0-9+.-]*$"
#: a builder's VM host: an argument of the VM reset command (buildmaster.names)
VM_HOST = {"type": "string", "pattern": VM_HOST_PATTERN, "maxLength": MAX_VM_HOST}
STATES = [s.name for s in BuildStatus]
POCKETS = [p.name.lower() for p in PackagePublishingPocket]
URGENCIES = [u.name.lower() for u in SourcePackageUrgency]


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    return {**schema, "type": [kind, "null"]}


def obj(properties: dict[str, Any], optional: tuple[str, ...] = (), **more: Any) -> dict[str, Any]:
    """An object with these properties, all required but ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [p for p in properties if p not in optional],
        **more,
    }


STRING = {"type": "string"}
INT = {"type": "integer"}
NUMBER = {"type": "number"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
N_STRING = nullable(STRING)
N_INT = nullable(INT)
N_NUMBER = nullable(NUMBER)
N_TIME = nullable(TIME)
PATH = {"type": "string", "pattern": "^/api/v1/"}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


SCHEMAS: dict[str, Any] = {
    "Problem": obj(
        {
            "type": {"type": "string", "enum": [problem_type(k) for k in PROBLEM_TYPES]},
            "title": STRING,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": STRING,
            "instance": STRING,
            "errors": array(STRING),
        },
        optional=("errors",),
    ),
    "File": obj(
        {
            "filename": STRING,
            "size": {"type": "integer", "minimum": 0},
            "sha1": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "md5": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "content_type": STRING,
            "url": {"type": "string", "format": "uri"},
            "restricted": BOOL,
            "expires": N_TIME,
            "download_token": {
                "type": "string",
                "description": "For a restricted file shown to a token that may read it: the"
                " basic-auth password the librarian wants (any user name), valid an hour.",
            },
        },
        optional=("download_token",),
    ),
    "ArchiveRef": obj({"reference": STRING, "private": BOOL}),
    "Archive": obj(
        {
            "id": INT,
            "reference": STRING,
            "owner": STRING,
            "distribution": STRING,
            "name": STRING,
            "displayname": STRING,
            "purpose": {"type": "string", "enum": ["primary", "ppa", "partner", "copy"]},
            "private": BOOL,
            "require_virtualized": BOOL,
            "relative_build_score": INT,
            "enabled": BOOL,
        }
    ),
    "ArchiveList": obj({"archives": array(ref("Archive"))}),
    "ArchiveCreate": obj(
        {
            "owner": {"type": "string", "pattern": NAME, "maxLength": 64},
            "distribution": {"type": "string", "pattern": NAME, "maxLength": 64},
            "name": {"type": "string", "pattern": NAME, "maxLength": 64, "default": "ppa"},
            "displayname": {"type": "string", "maxLength": 200},
            "private": {"type": "boolean", "default": False},
        },
        optional=("name", "displayname", "private"),
        additionalProperties=False,
        examples=[{"owner": "cprov", "name": "tools", "distribution": "ubuntu"}],
    ),
    "ArchiveUpdate": obj(
        {"enabled": BOOL},
        additionalProperties=False,
        examples=[{"enabled": False}],
    ),
    "BuildSummary": obj(
        {
            "id": INT,
            "url": PATH,
            "title": STRING,
            "state": {"type": "string", "enum": STATES},
            "source": obj({"name": STRING, "version": STRING}),
            "architecture": obj(
                {"distribution": STRING, "series": STRING, "tag": STRING, "processor": STRING}
            ),
            "archive": ref("ArchiveRef"),
            "pocket": {"type": "string", "enum": POCKETS},
            "virtualized": BOOL,
            "builder": N_STRING,
            "created": TIME,
            "started": N_TIME,
            "first_dispatched": N_TIME,
            "finished": N_TIME,
            "duration": {**N_NUMBER, "description": "seconds (so far, while it builds)"},
            "failure_reason": N_STRING,
            "dependencies": N_STRING,
            "failure_count": INT,
            "queue_status": nullable(
                {"type": "string", "enum": ["waiting", "running", "suspended", "cancelling"]}
            ),
            "score": N_INT,
            "manual_score": BOOL,
            "estimated_duration": {**N_NUMBER, "description": "seconds, while it is queued"},
        }
    ),
    "BuildPage": obj(
        {
            "builds": array(ref("BuildSummary")),
            "next": {**nullable(PATH), "description": "the next (older) page"},
        }
    ),
    "Event": obj(
        {
            "id": INT,
            "date": TIME,
            "kind": STRING,
            "text": {**STRING, "description": "the event in words"},
            "message": STRING,
            "build": N_INT,
            "builder": N_STRING,
        }
    ),
    "Standing": obj(
        {
            "position": {
                "type": "integer",
                "minimum": 1,
                "description": "its place among the waiting builds of its kind in dispatch"
                " order (the order builders will take them in: a forecast, see /queue/jobs)",
            },
            "position_exact": {
                **BOOL,
                "description": "false: at least this far back (a suspended build is out of"
                " the dispatch order, behind every waiting build)",
            },
            "ahead_seconds": NUMBER,
            "share": nullable(ref("Share")),
            "estimated_start_in": N_NUMBER,
            "estimated_start": N_TIME,
            "reason": obj(
                {
                    "code": {
                        "type": "string",
                        "enum": [
                            "archive-disabled",
                            "suspended",
                            "no-chroot",
                            "no-builder",
                            "no-working-builder",
                            "manual",
                            "busy",
                            "next",
                        ],
                    },
                    "text": STRING,
                }
            ),
        }
    ),
    "Share": obj(
        {
            "owner": {**STRING, "description": "the archive's owner (the primary archive is one)"},
            "weight": NUMBER,
            "usage_seconds": {
                **NUMBER,
                "description": "builder-seconds the owner used of this kind, decayed",
            },
            "half_life_seconds": NUMBER,
            "deficit": {
                **NUMBER,
                "description": "weight share minus usage share among the owners with waiting"
                " builds of this kind: the largest is served first",
            },
            "owner_rank": {"type": "integer", "minimum": 1},
            "owners_waiting": {"type": "integer", "minimum": 1},
            "waited_seconds": NUMBER,
            "aged_after_seconds": NUMBER,
            "aged": {
                **BOOL,
                "description": "it goes before fair shares, the longest waiting first",
            },
            "running": {
                **INT,
                "description": "the owner's builds of this kind on builders now",
            },
            "held_back": {
                **BOOL,
                "description": "the owner runs at least its fair share while at most the"
                " reserve is idle: it waits for a builder beyond the reserve",
            },
            "builders": {
                **N_INT,
                "description": "the kind's builders (null: the reserve is off, or no other"
                " owner has work of the kind)",
            },
            "idle_builders": N_INT,
            "reserve": {
                **INT,
                "description": "the idle builders kept for owners under their fair share",
            },
            "share_builders": {
                **N_NUMBER,
                "description": "the owner's fair share of the builders beyond the reserve"
                " (null unless they are scarce)",
            },
            "text": STRING,
        }
    ),
    "BuildDetail": {
        "allOf": [
            ref("BuildSummary"),
            obj(
                {
                    "cookie": STRING,
                    "events": array(ref("Event")),
                    "log": nullable(ref("File")),
                    "files": array(ref("File")),
                    "logtail": N_STRING,
                    "score_parts": array(obj({"reason": STRING, "points": INT})),
                    "waiting": nullable(ref("Standing")),
                }
            ),
        ]
    },
    "LogTail": obj(
        {
            "build": INT,
            "state": {"type": "string", "enum": STATES},
            "live": {**BOOL, "description": "whether the build may still change"},
            "logtail": N_STRING,
            "log": nullable(ref("File")),
        }
    ),
    "Rescore": obj(
        {"score": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}},
        additionalProperties=False,
    ),
    "Builder": obj(
        {
            "name": STRING,
            "url": PATH,
            "builder_url": STRING,
            "title": STRING,
            "processors": array(STRING),
            "virtualized": BOOL,
            "vm_host": N_STRING,
            "state": {"type": "string", "enum": [s.value for s in BuilderState]},
            "ok": BOOL,
            "failnotes": N_STRING,
            "failed_by_master": BOOL,
            "out_of_service_since": N_TIME,
            "manual": BOOL,
            "active": BOOL,
            "failure_count": INT,
            "clean_status": {"type": "string", "enum": ["clean", "dirty", "cleaning"]},
            "version": N_STRING,
            "busy": BOOL,
            "current_build": nullable(ref("CurrentBuild")),
        }
    ),
    "BuilderList": obj({"builders": array(ref("Builder"))}),
    "CurrentBuild": obj(
        {
            "id": INT,
            "url": PATH,
            "title": STRING,
            "state": {"type": "string", "enum": STATES},
            "started": N_TIME,
            "duration": {**N_NUMBER, "description": "seconds so far"},
        }
    ),
    "BuilderDetail": {
        "allOf": [
            ref("Builder"),
            obj(
                {
                    "logtail": N_STRING,
                    "recent_builds": array(ref("BuildSummary")),
                    "events": array(ref("Event")),
                }
            ),
        ]
    },
    "BuilderCreate": obj(
        {
            "name": {"type": "string", "pattern": NAME, "maxLength": 64},
            "url": {"type": "string", "pattern": r"^https?://[^/\s]+(/\S*)?$", "maxLength": 500},
            "processors": {**array({"type": "string", "pattern": NAME}), "minItems": 1},
            "virtualized": {"type": "boolean", "default": False},
            "vm_host": nullable(VM_HOST),
            "title": {"type": "string", "maxLength": 200},
            "manual": {"type": "boolean", "default": False},
        },
        optional=("virtualized", "vm_host", "title", "manual"),
        additionalProperties=False,
        examples=[
            {
                "name": "bob2",
                "url": "http://bob2.example.com:8221/",
                "processors": ["386"],
                "virtualized": False,
            }
        ],
    ),
    "BuilderUpdate": {
        "type": "object",
        "properties": {
            "enabled": BOOL,
            "reason": {"type": "string", "maxLength": 500},
            "manual": BOOL,
            "virtualized": BOOL,
            "vm_host": nullable(VM_HOST),
            "url": {"type": "string", "pattern": r"^https?://[^/\s]+(/\S*)?$", "maxLength": 500},
            "processors": {**array({"type": "string", "pattern": NAME}), "minItems": 1},
            "active": BOOL,
        },
        "minProperties": 1,
        "additionalProperties": False,
    },
    "QueueKind": obj(
        {
            "kind": STRING,
            "processor": STRING,
            "virtualized": BOOL,
            "waiting": INT,
            "suspended": INT,
            "running": INT,
            "oldest_waiting": N_TIME,
            "oldest_wait_seconds": N_NUMBER,
            "builders": INT,
            "usable_builders": INT,
            "estimated_drain_seconds": {
                **N_NUMBER,
                "description": "until the last waiting build starts; null when no builder"
                " takes them",
            },
            "estimated_drain": N_TIME,
        }
    ),
    "Queue": obj({"as_of": TIME, "kinds": array(ref("QueueKind"))}),
    "WaitingJob": obj(
        {
            "position": {
                "type": "integer",
                "minimum": 1,
                "description": "its place among the waiting jobs of its kind (1: the next"
                " free builder of that kind takes it)",
            },
            "aged": {
                **BOOL,
                "description": "it has waited long enough to go before fair shares (the"
                " longest waiting first)",
            },
            "score": INT,
            "manual_score": BOOL,
            "processor": STRING,
            "virtualized": BOOL,
            "queued": TIME,
            "estimated_duration": NUMBER,
            "hidden": {**BOOL, "description": "a private archive's build this token may not see"},
            "build": nullable(ref("BuildSummary")),
        }
    ),
    "WaitingPage": obj(
        {
            "as_of": {**TIME, "description": "when the dispatch order was forecast"},
            "jobs": array(ref("WaitingJob")),
            "next": nullable(PATH),
        }
    ),
    "QueueHistory": obj(
        {
            "since": TIME,
            "until": TIME,
            "samples": array(
                obj(
                    {
                        "minute": TIME,
                        "finished": {**INT, "description": "builds that ended in this minute"},
                        "waiting": {**INT, "description": "waiting builds when sampled"},
                        "running": {**INT, "description": "running builds when sampled"},
                    }
                )
            ),
        }
    ),
    "UploadCreate": obj(
        {"archive": {"type": "string", "maxLength": 200}},
        additionalProperties=False,
        examples=[{"archive": "~cprov/ubuntu/ppa"}],
    ),
    "UploadSession": obj(
        {
            "id": INT,
            "url": PATH,
            "archive": ref("ArchiveRef"),
            "created": TIME,
            "expires": TIME,
            "submitted": N_TIME,
            "source": nullable(PATH),
            "files": array(obj({"filename": STRING, "file": nullable(ref("File"))})),
        }
    ),
    "UploadedFile": obj({"filename": STRING, "file": ref("File")}),
    "UploadSubmit": obj(
        {
            "dsc": {"type": "string", "pattern": r"^[^/]+\.dsc$", "maxLength": 255},
            "series": {"type": "string", "pattern": NAME, "maxLength": 64},
            "pocket": {"type": "string", "enum": POCKETS, "default": "release"},
            "architectures": {
                **array({"type": "string", "pattern": NAME}),
                "minItems": 1,
                "description": "build only on these (of those the .dsc asks for)",
            },
            "component": {"type": "string", "pattern": NAME, "default": "main"},
            "section": {"type": "string", "maxLength": 64, "default": "misc"},
            "urgency": {"type": "string", "enum": URGENCIES, "default": "low"},
        },
        optional=("series", "pocket", "architectures", "component", "section", "urgency"),
        additionalProperties=False,
    ),
    "Source": obj(
        {
            "id": INT,
            "url": PATH,
            "name": STRING,
            "version": STRING,
            "component": STRING,
            "section": STRING,
            "urgency": {"type": "string", "enum": URGENCIES},
            "series": STRING,
            "files": array(ref("File")),
            "builds": array(ref("BuildSummary")),
        }
    ),
    "Submitted": obj(
        {
            "source": ref("Source"),
            "builds": array(ref("BuildSummary")),
            "signed": {**BOOL, "description": "whether the .dsc was clearsigned (not verified)"},
        }
    ),
    "Chroot": obj(
        {
            "distribution": STRING,
            "series": STRING,
            "architecture": STRING,
            "processor": STRING,
            "enabled": BOOL,
            "chroot": nullable(ref("File")),
        }
    ),
    "ChrootList": obj({"chroots": array(ref("Chroot"))}),
    "Series": obj(
        {
            "distribution": STRING,
            "name": STRING,
            "version": STRING,
            "architectures": array(
                obj({"tag": STRING, "processor": STRING, "enabled": BOOL, "has_chroot": BOOL})
            ),
        }
    ),
    "SeriesList": obj({"series": array(ref("Series"))}),
    "ProcessorList": obj({"processors": array(obj({"name": STRING, "title": STRING}))}),
    "Token": obj(
        {
            "id": INT,
            "url": PATH,
            "prefix": STRING,
            "description": STRING,
            "scope": {"type": "string", "enum": ["admin", "uploader"]},
            "archives": array(STRING),
            "created": TIME,
            "created_by": N_INT,
            "revoked": N_TIME,
        }
    ),
    "TokenList": obj({"tokens": array(ref("Token"))}),
    "TokenCreate": obj(
        {
            "scope": {"type": "string", "enum": ["admin", "uploader"]},
            "archives": {**array({"type": "string", "maxLength": 200}), "maxItems": 100},
            "description": {"type": "string", "maxLength": 200},
        },
        optional=("archives", "description"),
        additionalProperties=False,
    ),
    "NewToken": {
        "allOf": [
            ref("Token"),
            obj({"secret": {**STRING, "description": "shown this once: keep it"}}),
        ]
    },
    "Index": obj(
        {
            "api": STRING,
            "version": STRING,
            "openapi": STRING,
            "links": {"type": "object", "additionalProperties": STRING},
        }
    ),
}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": ref(schema)}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": ref("Problem")}},
    }


_ERRORS = {
    "400": _problem("a malformed request (parameters, body)"),
    "401": _problem("a bearer token is needed, or the one sent is unknown or revoked"),
    "403": _problem("the token does not allow this"),
    "404": _problem("no such resource (or one the token may not see)"),
    "409": _problem("the request conflicts with the current state"),
    "413": _problem("the body is too large"),
    "415": _problem("the body is not JSON"),
    "422": _problem("the request cannot be carried out (unknown references, a refused upload)"),
    "503": _problem("the database is unavailable for a moment"),
}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[str, ...] = ("400", "404", "503"),
    body: str | dict[str, Any] | None = None,
    params: tuple[dict[str, Any], ...] = (),
    auth: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {**ok}}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        content = _json(body) if isinstance(body, str) else body
        operation["requestBody"] = {"required": True, "content": content}
    # any request may carry a token, and a bad one is refused whatever it asks
    codes = set(errors) | {"400", "401", "503"}
    if auth:
        codes |= {"403"}
    if body is not None:
        codes |= {"413", "415"}
    operation["responses"].update({c: _ERRORS[c] for c in sorted(codes)})
    if auth:
        operation["security"] = [{"bearer": []}]
    else:
        operation["security"] = [{}, {"bearer": []}]
    return operation


def _answer(code: str, description: str, schema: str | None = None) -> dict[str, Any]:
    if schema is None:
        return {code: {"description": description}}
    return {code: {"description": description, "content": _json(schema)}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (50)")
BUILD_ID = _path("id", {"type": "integer", "minimum": 1, "maximum": 999_999_999}, "build id")
BUILDER = _path("name", {"type": "string", "pattern": NAME}, "builder name")
UPLOAD_ID = _path("id", {"type": "integer", "minimum": 1, "maximum": 999_999_999}, "upload id")
DISTRIBUTION = _query("distribution", {"type": "string"}, "only this distribution")
DIGEST = {
    "name": "Content-Digest",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "sha-256=:<base64>: (RFC 9530): checked, nothing stored if it differs",
}
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _paths() -> dict[str, Any]:
    state_param = _query(
        "state",
        {"type": "array", "items": {"type": "string", "enum": [s.lower() for s in STATES]}},
        "only builds in these states (repeat or comma-separate)",
    )
    return {
        "/api/v1": {"get": _op("What the API has", _answer("200", "the index", "Index"))},
        "/api/v1/openapi.json": {
            "get": _op(
                "This document",
                {
                    "200": {
                        "description": "the OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            )
        },
        "/api/v1/builders": {
            "get": _op(
                "List builders",
                _answer(
                    "200",
                    "active builders by name (inactive ones with state=inactive)",
                    "BuilderList",
                ),
                params=(
                    _query("processor", {"type": "string"}, "only builders for this processor"),
                    _query(
                        "virtualized", {"type": "boolean"}, "only virtualized (or trusted) builders"
                    ),
                    _query(
                        "state",
                        {
                            "type": "array",
                            "items": {"type": "string", "enum": [s.value for s in BuilderState]},
                        },
                        "only builders in these states",
                    ),
                    _query("ok", {"type": "boolean"}, "only builders in (or out of) service"),
                ),
            ),
            "post": _op(
                "Add a builder",
                _answer("201", "the new builder", "Builder"),
                errors=("409", "422"),
                body="BuilderCreate",
                auth=True,
            ),
        },
        "/api/v1/builders/{name}": {
            "parameters": [BUILDER],
            "get": _op(
                "Show a builder: state, current build and its log tail, failnotes, recent builds, history",
                _answer("200", "the builder", "BuilderDetail"),
            ),
            "patch": _op(
                "Change a builder: enable/disable (with a reason), manual mode, virtualized, VM host, URL, processors, active",
                _answer("200", "the builder", "Builder"),
                errors=("404", "422"),
                body="BuilderUpdate",
                auth=True,
            ),
            "delete": _op(
                "Remove a builder that has no job (one with history is made inactive)",
                _answer("204", "removed"),
                errors=("404", "409"),
                auth=True,
            ),
        },
        "/api/v1/queue": {
            "get": _op(
                "The queue per processor and virtualization: waiting, oldest, estimated drain time",
                _answer("200", "the queue", "Queue"),
            )
        },
        "/api/v1/queue/history": {
            "get": _op(
                "The farm minute by minute over the last hours: builds finished, queue depth",
                _answer("200", "the samples, oldest first", "QueueHistory"),
                params=(
                    _query(
                        "hours",
                        {"type": "integer", "minimum": 1, "maximum": 48},
                        "how many hours back (6 by default)",
                    ),
                ),
            )
        },
        "/api/v1/queue/jobs": {
            "get": _op(
                "Waiting jobs in dispatch order",
                _answer("200", "a page of waiting jobs", "WaitingPage"),
                params=(
                    _query("processor", {"type": "string"}, "only this processor's"),
                    _query(
                        "virtualized", {"type": "boolean"}, "only virtualized (or trusted) jobs"
                    ),
                    _query(
                        "after",
                        {"type": "string", "pattern": r"^\d+:\d+$"},
                        "COUNT:JOB: how many jobs were listed so far and the last one's id"
                        " (the next page's link has it)",
                    ),
                    LIMIT,
                ),
                description="The order builders will take the waiting jobs in, as the"
                " claim's rules forecast it from the queue as it is now: aged jobs first (the"
                " longest waiting first), then the owner with the largest fair-share deficit,"
                " each job taken charging its estimate to its owner, by score within an owner"
                " (docs/api.md says what the forecast assumes). Of several kinds: the first"
                " of each kind, then the second of each, and so on. Readers within ten"
                " seconds share one forecast (as_of).",
            )
        },
        "/api/v1/builds": {
            "get": _op(
                "List builds, newest first",
                _answer("200", "a page of builds", "BuildPage"),
                params=(
                    state_param,
                    _query(
                        "archive",
                        {"type": "string"},
                        "an archive reference (ubuntu, ~cprov/ubuntu/ppa, ppa:cprov/ppa)",
                    ),
                    _query("source", {"type": "string"}, "a source package name"),
                    _query("builder", {"type": "string"}, "a builder name"),
                    _query("arch", {"type": "string"}, "an architecture tag"),
                    _query(
                        "created_after",
                        {"type": "string", "format": "date-time"},
                        "created at or after",
                    ),
                    _query(
                        "created_before",
                        {"type": "string", "format": "date-time"},
                        "created before",
                    ),
                    _query(
                        "finished_after",
                        {"type": "string", "format": "date-time"},
                        "finished at or after",
                    ),
                    _query(
                        "finished_before",
                        {"type": "string", "format": "date-time"},
                        "finished before",
                    ),
                    _query(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                        "only builds with lower ids (the next page)",
                    ),
                    LIMIT,
                ),
            )
        },
        "/api/v1/builds/{id}": {
            "parameters": [BUILD_ID],
            "get": _op(
                "Show a build: times, builder, cookie, score and its parts, history, log tail, log and files, where it waits and why",
                _answer("200", "the build", "BuildDetail"),
            ),
        },
        "/api/v1/builds/{id}/log": {
            "parameters": [BUILD_ID],
            "get": _op(
                "The live log tail of a build, or its collected log",
                _answer("200", "the log", "LogTail"),
            ),
        },
        "/api/v1/builds/{id}/log/stream": {
            "parameters": [BUILD_ID],
            "get": _op(
                "Follow a build's log tail (server-sent events: logtail, then end)",
                {
                    "200": {
                        "description": "an event stream; 'logtail' events ({state, logtail}) while it may change, then one 'end' event (a LogTail)",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
            ),
        },
        **{
            f"/api/v1/builds/{{id}}/{action}": {
                "parameters": [BUILD_ID],
                "post": _op(
                    summary,
                    _answer("200", "the build", "BuildSummary"),
                    errors=("404", "409"),
                    body="Rescore" if action == "rescore" else None,
                    auth=True,
                ),
            }
            for action, summary in (
                ("cancel", "Cancel a build (a waiting one at once; a running one is aborted)"),
                ("retry", "Queue a failed or cancelled build again"),
                ("rescore", "Give a waiting build a manual score (admin)"),
            )
        },
        "/api/v1/uploads": {
            "post": _op(
                "Open an upload session for a source package, in an archive",
                _answer("201", "the session", "UploadSession"),
                errors=("409", "422"),
                body="UploadCreate",
                auth=True,
            )
        },
        "/api/v1/uploads/{id}": {
            "parameters": [UPLOAD_ID],
            "get": _op(
                "Show an upload session", _answer("200", "the session", "UploadSession"), auth=True
            ),
            "delete": _op(
                "Abandon an upload session",
                _answer("204", "abandoned"),
                errors=("404", "409"),
                auth=True,
            ),
        },
        "/api/v1/uploads/{id}/files/{filename}": {
            "parameters": [
                UPLOAD_ID,
                _path("filename", {"type": "string", "pattern": r"^[^/]+$"}, "the file's name"),
            ],
            "put": _op(
                "Upload one file of the source (the body is its bytes, streamed)",
                _answer("201", "the stored file", "UploadedFile"),
                errors=("404", "409", "413", "422"),
                body=BINARY,
                params=(DIGEST,),
                auth=True,
            ),
        },
        "/api/v1/uploads/{id}/submit": {
            "parameters": [UPLOAD_ID],
            "post": _op(
                "Check the files against the .dsc; create the source and its builds",
                _answer("201", "the source and its builds", "Submitted"),
                errors=("404", "409", "422"),
                body="UploadSubmit",
                auth=True,
            ),
        },
        "/api/v1/sources/{id}": {
            "parameters": [
                _path("id", {"type": "integer", "minimum": 1, "maximum": 999_999_999}, "source id")
            ],
            "get": _op(
                "Show a source package release: files and builds",
                _answer("200", "the source", "Source"),
            ),
        },
        "/api/v1/chroots": {
            "get": _op(
                "Every architecture's chroot, with size and checksums",
                _answer("200", "the chroots", "ChrootList"),
                params=(DISTRIBUTION,),
            )
        },
        "/api/v1/chroots/{distribution}/{series}/{architecture}": {
            "parameters": [
                _path("distribution", {"type": "string"}, "distribution"),
                _path("series", {"type": "string"}, "series"),
                _path("architecture", {"type": "string"}, "architecture tag"),
            ],
            "get": _op("Show one chroot", _answer("200", "the chroot", "Chroot")),
            "put": _op(
                "Upload or replace a chroot (the body is the tarball, streamed)",
                {**_answer("200", "replaced", "Chroot"), **_answer("201", "uploaded", "Chroot")},
                errors=("404", "413"),
                body=BINARY,
                params=(
                    DIGEST,
                    _query("filename", {"type": "string", "pattern": r"^[^/]+$"}, "its file name"),
                ),
                auth=True,
            ),
        },
        "/api/v1/archives": {
            "get": _op(
                "List archives (private ones only with a token that may read them)",
                _answer("200", "the archives", "ArchiveList"),
                params=(DISTRIBUTION,),
            ),
            "post": _op(
                "Create a PPA (its owner is made if new)",
                _answer("201", "the PPA", "Archive"),
                errors=("409", "422"),
                body="ArchiveCreate",
                auth=True,
            ),
        },
        "/api/v1/archives/{reference}": {
            "parameters": [
                _path(
                    "reference",
                    {"type": "string", "minLength": 1, "maxLength": 200},
                    "ubuntu, ubuntu/partner, ~cprov/ubuntu/ppa or ppa:cprov/ppa",
                )
            ],
            "get": _op("Show an archive", _answer("200", "the archive", "Archive")),
            "patch": _op(
                "Disable an archive (its waiting builds are suspended; those on builders go on)"
                " or enable it (its suspended builds go back in the queue)",
                _answer("200", "the archive", "Archive"),
                errors=("404", "422"),
                body="ArchiveUpdate",
                auth=True,
            ),
        },
        "/api/v1/series": {
            "get": _op(
                "Distribution series with their architectures",
                _answer("200", "the series", "SeriesList"),
                params=(DISTRIBUTION,),
            )
        },
        "/api/v1/processors": {
            "get": _op("Processors", _answer("200", "the processors", "ProcessorList"))
        },
        "/api/v1/tokens": {
            "get": _op(
                "List tokens (admin)",
                _answer("200", "the tokens", "TokenList"),
                params=(_query("include_revoked", {"type": "boolean"}, "revoked ones too"),),
                auth=True,
            ),
            "post": _op(
                "Make a token (admin): admin, or uploader to named archives",
                _answer("201", "the token, with its secret (shown once)", "NewToken"),
                errors=("422",),
                body="TokenCreate",
                auth=True,
            ),
        },
        "/api/v1/tokens/current": {
            "get": _op("The token of this request", _answer("200", "the token", "Token"), auth=True)
        },
        "/api/v1/tokens/{id}": {
            "parameters": [
                _path("id", {"type": "integer", "minimum": 1, "maximum": 999_999_999}, "token id")
            ],
            "get": _op("Show a token (admin)", _answer("200", "the token", "Token"), auth=True),
            "delete": _op(
                "Revoke a token (admin, or the token itself)",
                _answer("204", "revoked"),
                auth=True,
            ),
        },
    }


_ETAG = {
    "description": "the answer's entity tag: send it back as If-None-Match to revalidate",
    "schema": {"type": "string"},
}
_NOT_MODIFIED = {"description": "not modified: the If-None-Match sent names this answer's ETag"}


def _revalidated(paths: dict[str, Any]) -> dict[str, Any]:
    """Every JSON GET answers with an ETag, and 304 to an If-None-Match that names it."""
    for item in paths.values():
        get = item.get("get")
        ok = get["responses"].get("200") if get is not None else None
        if ok is None or "application/json" not in ok.get("content", {}):
            continue
        ok.setdefault("headers", {})["ETag"] = _ETAG
        get["responses"]["304"] = _NOT_MODIFIED
    return paths


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "buildmaster operator API",
            "version": "1",
            "description": "The build farm over HTTP: builders, the queue, builds, source"
            " uploads, chroots, archives and tokens. Reading is open except for private"
            " archives; writing needs a bearer token. Errors are RFC 9457 problem documents."
            " An anonymous GET may be answered from the answers of the last second; a GET"
            " with a token is always answered afresh. Every JSON GET has an ETag.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [{"url": "/"}],
        "paths": _revalidated(_paths()),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from POST /api/v1/tokens or python -m buildmaster.tokens create",
                }
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
