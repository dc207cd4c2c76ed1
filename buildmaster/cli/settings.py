"""Where the master is and which token to use: options, environment, config file.

Each setting is taken from the first of: the command line option (``--url``, ``--token``),
the environment (``BUILDMASTER_URL``, ``BUILDMASTER_TOKEN``), the config file (``url``,
``token``; ``--config``, else ``$BUILDMASTER_CONFIG``, else
``$XDG_CONFIG_HOME/buildmaster/client.toml``, ``~/.config/buildmaster/client.toml`` without
``XDG_CONFIG_HOME``). The URL defaults to the master's default address,
``http://127.0.0.1:8000``; without a token the client is anonymous (reading only).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

import attrs

__all__ = ["DEFAULT_URL", "ConfigError", "Settings", "config_path", "resolve"]

DEFAULT_URL = "http://127.0.0.1:8000"


class ConfigError(Exception):
    """The config file cannot be read, or says something that is not a setting."""


@attrs.frozen
class Settings:
    url: str
    token: str | None
    #: where the URL came from, for error messages ("--url", "$BUILDMASTER_URL", a path...)
    url_from: str


def config_path(environ: Mapping[str, str]) -> Path:
    """The config file to read when ``--config`` is not given."""
    if environ.get("BUILDMASTER_CONFIG"):
        return Path(environ["BUILDMASTER_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "buildmaster" / "client.toml"


def _read(path: Path, explicit: bool) -> dict[str, str]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"url", "token"})
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {', '.join(unknown)} (it knows url and token)"
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    return data


def normalize_url(url: str) -> str:
    """The master's base URL: without a trailing ``/`` or ``/api/v1``."""
    url = url.strip().rstrip("/")
    if url.endswith("/api/v1"):
        url = url[: -len("/api/v1")]
    if not url.startswith(("http://", "https://")) or len(url.split("/", 3)[2]) == 0:
        raise ConfigError(f"{url!r} is not a master's URL: say http://HOST:PORT")
    return url


def resolve(
    url: str | None, token: str | None, config: Path | None, environ: Mapping[str, str]
) -> Settings:
    """The settings from the options given (``None``: not given), the environment and the
    config file (read only when an option and its variable leave something open).

    :raises ConfigError: for an unreadable or malformed config file, or a bad URL.
    """
    chosen_url, url_from = url, "--url"
    if chosen_url is None and environ.get("BUILDMASTER_URL"):
        chosen_url, url_from = environ["BUILDMASTER_URL"], "$BUILDMASTER_URL"
    chosen_token = token if token is not None else environ.get("BUILDMASTER_TOKEN") or None
    if chosen_url is None or chosen_token is None or config is not None:
        path = config if config is not None else config_path(environ)
        data = _read(path, explicit=config is not None)
        if chosen_url is None and "url" in data:
            chosen_url, url_from = data["url"], str(path)
        if chosen_token is None:
            chosen_token = data.get("token") or None
    if chosen_url is None:
        chosen_url, url_from = DEFAULT_URL, "the default"
    return Settings(normalize_url(chosen_url), chosen_token, url_from)
