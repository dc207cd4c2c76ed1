"""``/api/v1/tokens``: bearer tokens (admin: list, make, revoke; any token: itself)."""

from __future__ import annotations

from typing import Any

from buildmaster.store.database import NotFound
from buildmaster.store.tokens import ApiToken
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, created, no_content, numeric_id, ok
from buildmaster.web.api.problems import forbidden, not_found, unprocessable
from buildmaster.web.api.representations import iso

__all__ = ["Tokens"]


async def token_json(ctx: Any, token: ApiToken) -> Any:
    archives = [(await ctx.store.archives.get(a)).reference for a in token.archive_ids]
    return {
        "id": token.id,
        "url": f"/api/v1/tokens/{token.id}",
        "prefix": token.prefix,
        "description": token.description,
        "scope": "admin" if token.admin else "uploader",
        "archives": archives,
        "created": iso(token.datecreated),
        "created_by": token.created_by,
        "revoked": iso(token.date_revoked),
    }


class Tokens(Endpoint):
    methods = ("get", "post")

    def child(self, segment: str) -> Endpoint | None:
        if segment == "current":
            return CurrentToken(self.ctx)
        token_id = numeric_id(segment)
        return Token(self.ctx, token_id) if token_id is not None else None

    async def get(self, call: Call) -> Reply:
        await call.require_admin("listing tokens")
        include = bool(call.bool_param("include_revoked"))
        tokens = await self.ctx.store.tokens.all(include_revoked=include)
        return ok({"tokens": [await token_json(self.ctx, t) for t in tokens]})

    async def post(self, call: Call) -> Reply:
        grant = await call.require_admin("making a token")
        body = call.json("TokenCreate")
        admin = body["scope"] == "admin"
        references = body.get("archives", [])
        if admin == bool(references):
            raise unprocessable(
                "an admin token names no archive; an uploader token names the archives it"
                " uploads to"
            )
        archives = []
        for reference in references:
            try:
                archives.append(await self.ctx.store.views.catalog.archive(reference, grant))
            except (ValueError, NotFound) as e:
                raise unprocessable(f"{e}; GET /api/v1/archives lists them") from None
        new = await self.ctx.store.tokens.create(
            admin=admin,
            archives=archives,
            description=body.get("description", ""),
            created_by=grant.token_id,
        )
        shown = await token_json(self.ctx, new.token)
        shown["secret"] = new.secret
        return created(shown, f"/api/v1/tokens/{new.token.id}")


class CurrentToken(Endpoint):
    methods = ("get",)

    async def get(self, call: Call) -> Reply:
        await call.require_token("asking about a token")
        assert call.token is not None
        return ok(await token_json(self.ctx, call.token))


class Token(Endpoint):
    methods = ("get", "delete")

    def __init__(self, ctx: Any, token_id: int) -> None:
        super().__init__(ctx)
        self.token_id = token_id

    async def get(self, call: Call) -> Reply:
        await call.require_admin("reading a token")
        try:
            token = await self.ctx.store.tokens.get(self.token_id)
        except NotFound:
            raise not_found(f"no token {self.token_id}") from None
        return ok(await token_json(self.ctx, token))

    async def delete(self, call: Call) -> Reply:
        grant = await call.require_token("revoking a token")
        if not grant.admin and grant.token_id != self.token_id:
            raise forbidden("an uploader token may revoke itself only")
        try:
            await self.ctx.store.tokens.revoke(self.token_id)
        except NotFound:
            raise not_found(f"no token {self.token_id}") from None
        return no_content()
