"""The JSON shapes of what the API shows (their schemas are in the OpenAPI document)."""

from __future__ import annotations

import datetime
import functools
from typing import Any

from buildmaster.access import Grant, may_read
from buildmaster.librarian import Librarian
from buildmaster.model import Archive, LibraryFile
from buildmaster.store.views import BuildSummary, EventView

__all__ = [
    "iso",
    "file_json",
    "archive_ref_json",
    "archive_json",
    "build_summary_json",
    "event_json",
    "build_path",
    "later",
]

API = "/api/v1"


def iso(when: datetime.datetime | None) -> str | None:
    """RFC 3339, in UTC, ``Z``-suffixed."""
    if when is None:
        return None
    text = when.isoformat()
    if text.endswith("+00:00"):  # the database's sessions run in UTC: the usual case
        return text[:-6] + "Z"
    return when.astimezone(datetime.UTC).isoformat()[:-6] + "Z"


def later(when: datetime.datetime, seconds: float | None) -> datetime.datetime | None:
    """``seconds`` after ``when`` (``None`` for no estimate)."""
    return when + datetime.timedelta(seconds=seconds) if seconds is not None else None


def build_path(build_id: int) -> str:
    return f"{API}/builds/{build_id}"


def file_json(librarian: Librarian, file: LibraryFile, download_token: bool = False) -> Any:
    """A librarian file: its URL and checksums (and, for a restricted one shown to a token
    that may read it, a download token: the basic-auth password the librarian wants)."""
    shown: dict[str, Any] = {
        "filename": file.filename,
        "size": file.filesize,
        "sha1": file.sha1,
        "sha256": file.sha256,
        "md5": file.md5,
        "content_type": file.mimetype,
        "url": librarian.url_for(file),
        "restricted": file.restricted,
        "expires": iso(file.expires),
    }
    if file.restricted and download_token:
        shown["download_token"] = librarian.token_for(file.id, lifetime=3600.0)
    return shown


def archive_ref_json(archive: Archive) -> Any:
    return _archive_refs(archive)


@functools.lru_cache(maxsize=1024)
def _archive_refs(archive: Archive) -> Any:
    return {"reference": archive.reference, "private": archive.private}


def archive_json(archive: Archive) -> Any:
    return {
        "id": archive.id,
        "reference": archive.reference,
        "owner": archive.owner_name,
        "distribution": archive.distribution_name,
        "name": archive.name,
        "displayname": archive.displayname,
        "purpose": archive.purpose.name.lower(),
        "private": archive.private,
        "require_virtualized": archive.require_virtualized,
        "relative_build_score": archive.relative_build_score,
        "enabled": archive.enabled,
    }


def _seconds(delta: datetime.timedelta | None) -> float | None:
    return delta.total_seconds() if delta is not None else None


def build_summary_json(summary: BuildSummary, now: datetime.datetime) -> Any:
    build, job = summary.build, summary.job
    if build.date_started is not None and build.date_finished is None:
        duration = _seconds(now - build.date_started)
    else:
        duration = _seconds(build.duration)
    return {
        "id": build.id,
        "url": build_path(build.id),
        "title": summary.title,
        "state": build.status.name,
        "source": {"name": summary.source_name, "version": summary.source_version},
        "architecture": {
            "distribution": summary.distribution,
            "series": summary.series,
            "tag": summary.arch_tag,
            "processor": summary.processor,
        },
        "archive": archive_ref_json(summary.archive),
        "pocket": build.pocket.name.lower(),
        "virtualized": build.virtualized,
        "builder": summary.builder_name,
        "created": build.datecreated,
        "started": build.date_started,
        "first_dispatched": build.date_first_dispatched,
        "finished": build.date_finished,
        "duration": duration,
        "failure_reason": build.failure_reason,
        "dependencies": build.dependencies,
        "failure_count": build.failure_count,
        "queue_status": job.status.name.lower() if job is not None else None,
        "score": job.lastscore if job is not None else None,
        "manual_score": job.manual if job is not None else False,
        "estimated_duration": summary.estimated_seconds,
    }


def event_json(event: EventView) -> Any:
    return {
        "id": event.id,
        "date": event.date,
        "kind": event.kind,
        "text": event.text,
        "message": event.message,
        "build": event.build_id,
        "builder": event.builder_name,
    }


def may_see_files(grant: Grant, archive: Archive) -> bool:
    return may_read(grant, archive)
