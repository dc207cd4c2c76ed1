"""Bearer tokens of the operator API: made, looked up by their hash, revoked.

A token's secret is ``bm_`` followed by 43 URL-safe characters (32 random bytes). Only its
SHA-256 is stored; the secret is returned once, by :meth:`TokenSet.create`. An admin token
may do anything; any other token uploads to (and reads, if private) the archives it names.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import attrs

from buildmaster.model import HasId, id_of
from buildmaster.store.database import Database, NotFound, Transaction

__all__ = ["ApiToken", "NewToken", "TokenSet", "hash_secret", "TOKEN_PREFIX"]

TOKEN_PREFIX = "bm_"
#: characters of the secret kept in clear, to tell tokens apart
_SHOWN = 8


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@attrs.frozen
class ApiToken:
    """A token as stored (never its secret)."""

    id: int
    prefix: str
    description: str
    admin: bool
    #: the archives an uploader token may upload to, by id (empty for admin tokens)
    archive_ids: tuple[int, ...]
    datecreated: datetime.datetime
    created_by: int | None
    date_revoked: datetime.datetime | None

    @property
    def revoked(self) -> bool:
        return self.date_revoked is not None


@attrs.frozen
class NewToken:
    """A token just made, with its secret (shown this once)."""

    token: ApiToken
    secret: str = attrs.field(repr=False)


_COLUMNS = (
    "t.id, t.prefix, t.description, t.admin,"
    " coalesce((SELECT array_agg(ta.archive ORDER BY ta.archive) FROM api_token_archive ta"
    "  WHERE ta.token = t.id), '{}'), t.datecreated, t.created_by, t.date_revoked"
)


def _token(row: tuple[Any, ...]) -> ApiToken:
    return ApiToken(
        id=row[0],
        prefix=row[1],
        description=row[2],
        admin=row[3],
        archive_ids=tuple(row[4]),
        datecreated=row[5],
        created_by=row[6],
        date_revoked=row[7],
    )


class TokenSet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        admin: bool = False,
        archives: Sequence[HasId | int] = (),
        description: str = "",
        created_by: HasId | int | None = None,
    ) -> NewToken:
        """Make a token: an admin token, or an uploader token to ``archives``.

        :raises ValueError: for a token that is neither (no archive), or both.
        """
        if admin == bool(archives):
            raise ValueError("a token is either an admin token or an uploader to some archives")
        secret = _new_secret()

        async def create(tx: Transaction) -> int:
            row = await tx.query_one(
                "INSERT INTO api_token (token_hash, prefix, description, admin, created_by)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (
                    hash_secret(secret),
                    secret[:_SHOWN],
                    description,
                    admin,
                    id_of(created_by) if created_by is not None else None,
                ),
            )
            assert row is not None
            if archives:
                await tx.execute(
                    "INSERT INTO api_token_archive (token, archive)"
                    " SELECT %s, a FROM unnest(%s::integer[]) AS a",
                    (row[0], sorted({id_of(a) for a in archives})),
                )
            return int(row[0])

        token_id = await self._db.transaction(create)
        return NewToken(await self.get(token_id), secret)

    async def get(self, token: HasId | int) -> ApiToken:
        """The token with this id (revoked or not). :raises NotFound:"""
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM api_token t WHERE t.id = %s", (id_of(token),)
        )
        if not rows:
            raise NotFound(f"no token {id_of(token)}")
        return _token(rows[0])

    async def authenticate(self, secret: str) -> ApiToken | None:
        """The unrevoked token whose secret this is, or ``None``."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
            return None
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM api_token t WHERE t.token_hash = %s"
            " AND t.date_revoked IS NULL",
            (hash_secret(secret),),
            prepared=True,
        )
        return _token(rows[0]) if rows else None

    async def all(self, include_revoked: bool = False) -> list[ApiToken]:
        """Every token, oldest first."""
        where = "" if include_revoked else " WHERE t.date_revoked IS NULL"
        rows = await self._db.query(f"SELECT {_COLUMNS} FROM api_token t{where} ORDER BY t.id")
        return [_token(r) for r in rows]

    async def revoke(self, token: HasId | int) -> ApiToken:
        """Revoke a token (at once: its next request is refused). Revoking it again changes
        nothing. :raises NotFound:"""
        rows = await self._db.query(
            "UPDATE api_token SET date_revoked = coalesce(date_revoked, now()) WHERE id = %s"
            " RETURNING id",
            (id_of(token),),
        )
        if not rows:
            raise NotFound(f"no token {id_of(token)}")
        return await self.get(token)
