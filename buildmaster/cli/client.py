"""A small synchronous client of the operator API (httpx), and the errors a person reads.

Every failure becomes a :class:`CliError` with one line that says what went wrong and what
to do: the master could not be reached (with the URL tried), a problem document's ``detail``
(and ``errors``) for a 4xx, the status for a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import click
import httpx
import httpx_sse

from buildmaster.cli.settings import Settings

__all__ = ["Api", "CliError", "EXIT_ERROR", "EXIT_UNREACHABLE", "Unreachable"]

#: the master (or a local check) refused or failed
EXIT_ERROR = 1
#: the master could not be reached
EXIT_UNREACHABLE = 3

#: how long to wait for the master to connect, and for each answer
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: a log stream has a comment line every 15 s: a minute without one is a dead connection
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
#: a big upload may take the master a while to store once the body is sent
TRANSFER_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class CliError(click.ClickException):
    """One line on standard error, and an exit status."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def show(self, file: Any = None) -> None:
        click.echo(f"buildmaster: {self.format_message()}", err=True)


class Unreachable(CliError):
    """The master could not be reached (or did not answer in time)."""

    exit_code = EXIT_UNREACHABLE


def _problem_line(response: httpx.Response) -> str:
    status = f"{response.status_code} {response.reason_phrase}".strip()
    try:
        problem = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        line = f"{status}: {problem['detail']}"
        errors = problem.get("errors")
        if isinstance(errors, list) and errors:
            line += " (" + "; ".join(str(e) for e in errors) + ")"
        return line
    return status


class Api:
    """Requests to the master's operator API, with the bearer token when there is one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.url
        headers = {"User-Agent": "buildmaster-cli"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=TIMEOUT)
        #: for files elsewhere (the librarian's URLs): never the API's token
        self.files = httpx.Client(headers={"User-Agent": "buildmaster-cli"}, timeout=TIMEOUT)

    def close(self) -> None:
        self.http.close()
        self.files.close()

    def _fail(self, error: httpx.HTTPError, url: str) -> CliError:
        if isinstance(error, httpx.TimeoutException):
            return Unreachable(f"the master at {self.base} did not answer in time ({url})")
        if isinstance(error, httpx.TransportError):
            cause = str(error) or type(error).__name__
            return Unreachable(
                f"cannot reach the master at {self.base} ({cause}): is it running there? (the"
                f" URL comes from {self.settings.url_from}; --url, $BUILDMASTER_URL or url in"
                " the config file set it)"
            )
        return CliError(f"{url}: {error}")

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise self._fail(e, path) from None
        if not response.is_success:
            raise _as_error(self, response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        # (httpx replaces a path's own query with params, even empty ones)
        return _json(self.request("GET", path, params=query or None))

    def post(self, path: str, body: Any = None) -> Any:
        response = self.request("POST", path, json=body if body is not None else {})
        return _json(response) if response.content else None

    def patch(self, path: str, body: Any) -> Any:
        return _json(self.request("PATCH", path, json=body))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def put_stream(
        self, path: str, chunks: Iterable[bytes], length: int, headers: dict[str, str]
    ) -> Any:
        """PUT a body given in pieces (never held whole), with its length."""
        sent = {**headers, "Content-Length": str(length)}
        try:
            response = self.http.put(path, content=chunks, headers=sent, timeout=TRANSFER_TIMEOUT)
        except httpx.HTTPError as e:
            raise self._fail(e, path) from None
        if not response.is_success:
            raise _as_error(self, response)
        return _json(response)

    def pages(self, path: str, key: str, most: int | None, **params: Any) -> Iterator[Any]:
        """The items of a listing, page after page (following ``next``), at most ``most``."""
        query: dict[str, Any] | None = {k: v for k, v in params.items() if v is not None}
        count = 0
        next_path: str | None = path
        while next_path is not None:
            page = self.get(next_path, **(query or {}))
            query = None  # the next path carries the filters and the cursor
            for item in page[key]:
                if most is not None and count >= most:
                    return
                count += 1
                yield item
            next_path = page.get("next")

    def events(self, path: str) -> Iterator[tuple[str, Any]]:
        """The server-sent events of a stream: ``(event, data)``, until it ends."""
        try:
            with httpx_sse.connect_sse(self.http, "GET", path, timeout=STREAM_TIMEOUT) as source:
                if not source.response.is_success:
                    raise _as_error(self, source.response)
                for event in source.iter_sse():
                    yield event.event, event.json()
        except httpx.HTTPError as e:
            raise self._fail(e, path) from None

    def download(self, url: str, password: str | None) -> Any:
        """A context manager streaming a file (a librarian URL); basic auth with a
        restricted file's download token."""
        auth = httpx.BasicAuth("buildmaster", password) if password is not None else None
        return _Download(self, url, auth)


class _Download:
    def __init__(self, api: Api, url: str, auth: httpx.BasicAuth | None) -> None:
        self.api = api
        self.url = url
        self.auth = auth
        self._context: Any = None

    def __enter__(self) -> httpx.Response:
        try:
            self._context = self.api.files.stream(
                "GET", self.url, auth=self.auth, timeout=TRANSFER_TIMEOUT
            )
            response: httpx.Response = self._context.__enter__()
        except httpx.HTTPError as e:
            raise self.api._fail(e, self.url) from None
        if not response.is_success:
            response.read()
            error = _as_error(self.api, response)
            self._context.__exit__(None, None, None)
            raise error
        return response

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)


def _json(response: httpx.Response) -> Any:
    """The JSON of a successful answer (one that is not JSON is not the API's)."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CliError(
            f"{response.request.method} {response.url} answered {response.status_code} without"
            " JSON: is the URL the master's?"
        ) from None


def _as_error(api: Api, response: httpx.Response) -> CliError:
    if not response.is_stream_consumed:
        response.read()
    line = _problem_line(response)
    if response.status_code == 401 and api.settings.token is None:
        line += " (give a token: --token, $BUILDMASTER_TOKEN or token in the config file)"
    elif response.status_code >= 500:
        line = f"the master failed: {line} ({response.request.method} {response.url})"
    return CliError(line)
