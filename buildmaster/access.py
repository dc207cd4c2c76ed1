"""Who may do what through the operator API. Pure.

Reading is open, except what belongs to a private archive. Writing needs a token: an admin
token may do anything; an uploader token uploads to the archives it names, may cancel and
retry their builds, and reads them when they are private.
"""

from __future__ import annotations

import attrs

from buildmaster.model import Archive

__all__ = ["Grant", "may_read", "may_upload", "may_operate"]


@attrs.frozen
class Grant:
    """What the request's token grants (nothing, for a request without one)."""

    token_id: int | None = None
    admin: bool = False
    archive_ids: frozenset[int] = frozenset()

    @property
    def authenticated(self) -> bool:
        return self.token_id is not None

    @property
    def sees_every_archive(self) -> bool:
        """Whether every private archive is visible (the store's listings use this)."""
        return self.admin


ANONYMOUS = Grant()


def may_read(grant: Grant, archive: Archive) -> bool:
    """Whether the archive's builds, sources and files may be shown."""
    return not archive.private or grant.admin or archive.id in grant.archive_ids


def may_upload(grant: Grant, archive: Archive) -> bool:
    """Whether sources may be uploaded to the archive."""
    return grant.admin or archive.id in grant.archive_ids


def may_operate(grant: Grant, archive: Archive) -> bool:
    """Whether the archive's builds may be cancelled and retried (rescoring is for admins)."""
    return may_upload(grant, archive)
