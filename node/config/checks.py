"""Checks of single setting values: each takes the key (for the error) and the value as
read from TOML or from the environment (a string), and returns the value as the settings
hold it, or raises :class:`ConfigError` naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

from node.errors import ConfigError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def ae_title(key: str, value: Any) -> str:
    title = text(key, value)
    if not _AE_TITLE.match(title):
        raise ConfigError(key, f"{title!r} is not a valid AE title (1-16 ASCII, no backslash)")
    return title


def port(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be an integer, got {value!r}") from None
    if not 0 <= number <= 65535:  # 0 asks the OS for a free port (tests, demo)
        raise ConfigError(key, f"must be 0-65535, got {number}")
    return number


_Number = TypeVar("_Number", int, float)


def _non_negative(key: str, value: Any, kind: type[_Number], what: str) -> _Number:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be {what}, got {value!r}") from None
    if number < 0:
        raise ConfigError(key, f"must not be negative, got {number}")
    return number


def seconds(key: str, value: Any) -> float:
    return _non_negative(key, value, float, "a number of seconds")


def count(key: str, value: Any) -> int:
    """A whole number >= 0 (bytes, megabytes)."""
    return _non_negative(key, value, int, "a whole number")


def positive(key: str, value: Any) -> float:
    number = seconds(key, value)
    if number <= 0:
        raise ConfigError(key, f"must be positive, got {number}")
    return number


def positive_count(key: str, value: Any) -> int:
    return int(positive(key, value))


def flag(key: str, value: Any) -> bool:
    """A TOML boolean, or (from the environment) true/false, 1/0, yes/no."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in {"true", "1", "yes", "on"}:
        return True
    if word in {"false", "0", "no", "off"}:
        return False
    raise ConfigError(key, f"must be true or false, got {value!r}")


def items(key: str, value: Any) -> list[Any]:
    """A TOML array, or (from the environment) a comma-separated string."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"must be a list, got {value!r}")
    return list(value)


def ae_titles(key: str, value: Any) -> tuple[str, ...]:
    return tuple(ae_title(key, title) for title in items(key, value))


def texts(key: str, value: Any) -> tuple[str, ...]:
    return tuple(text(key, entry) for entry in items(key, value))


def path(key: str, value: Any) -> Path:
    return Path(text(key, value))


def readable_file(key: str, value: Any) -> Path | None:
    """A file that exists; an empty value is none."""
    if not value:
        return None
    file = Path(text(key, value))
    if not file.is_file():
        raise ConfigError(key, f"{file} is not a readable file")
    return file


def database_url(key: str, value: Any) -> str:
    url = text(key, value)
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError(key, "must be a sqlite:// or postgresql:// URL")
    return url


def patterns(key: str, value: Any) -> tuple[str, ...]:
    """Regular expressions."""
    compiled = texts(key, value)
    for pattern in compiled:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(key, f"{pattern!r} is not a regular expression: {error}") from None
    return compiled


def calling_ae_hosts(key: str, value: Any) -> dict[str, tuple[str, ...]]:
    """AE title = [addresses, CIDR networks or host names]; from the environment, a JSON
    object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(key, f"is not a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table of AE title = [hosts]")
    hosts = {}
    for title, entries in value.items():
        title = ae_title(key, title)
        listed = texts(f"{key}.{title}", entries)
        if not listed:
            raise ConfigError(f"{key}.{title}", "lists no host; remove the title to allow any")
        hosts[title] = listed
    return hosts


def storage_sop_classes(key: str, value: Any) -> tuple[str, ...]:
    """Storage SOP classes by UID or keyword (``MRImageStorage``), as UIDs; each must be one
    pynetdicom can accept."""
    from pydicom.uid import UID
    from pynetdicom import AllStoragePresentationContexts

    known = {str(context.abstract_syntax) for context in AllStoragePresentationContexts}
    by_keyword = {UID(uid).keyword: uid for uid in known}
    uids = []
    for entry in items(key, value):
        name = text(key, entry)
        uid = by_keyword.get(name, name)
        if uid not in known:
            raise ConfigError(key, f"{name} is not a storage SOP class")
        uids.append(uid)
    return tuple(uids)


RECEIVER_ENGINES = ("pynetdicom", "asyncio")


def receiver_engine(key: str, value: Any) -> str:
    engine = text(key, value).lower()
    if engine not in RECEIVER_ENGINES:
        raise ConfigError(key, f"must be {' or '.join(RECEIVER_ENGINES)}, got {engine!r}")
    return engine
