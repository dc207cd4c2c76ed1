"""What every command shares: the invocation's context (settings, the API client, the time
now) and the ``--json`` option."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import click

from buildmaster.cli.client import Api, CliError
from buildmaster.cli.settings import ConfigError, Settings, resolve

__all__ = ["Context", "json_option", "pass_context"]

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """The root options; the settings and the client are made when a command needs them."""

    def __init__(self, url: str | None, token: str | None, config: Path | None) -> None:
        self._options = (url, token, config)
        self.now = datetime.datetime.now(datetime.UTC)

    @cached_property
    def settings(self) -> Settings:
        try:
            return resolve(*self._options, os.environ)
        except ConfigError as e:
            raise CliError(str(e)) from None

    @cached_property
    def api(self) -> Api:
        api = Api(self.settings)
        click.get_current_context().call_on_close(api.close)
        return api


pass_context = click.make_pass_decorator(Context)


def json_option(f: F) -> F:
    """``--json``: the API's objects instead of a table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table."
    )(f)
