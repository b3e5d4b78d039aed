"""Reading the settings: a TOML file (``--config`` or ``LACUNA_CONFIG``), then ``LACUNA_*``
environment overrides, checked once at start-up against the declaration in
:mod:`node.config.settings`.

Every scalar key ``[section] key`` is overridden by ``LACUNA_SECTION_KEY``; list keys take a
comma-separated value; ``[[destinations]]`` is overridden whole by ``LACUNA_DESTINATIONS``
holding a JSON array of tables. An unknown key, or a bad or missing value, raises
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

from node.config import checks
from node.config.settings import RESULT_KINDS, Check, Destination, ScpSettings, Settings
from node.domain.series import RoleRules
from node.domain.transfer_syntaxes import uncompressed_uid
from node.errors import ConfigError

# The declared sections by their TOML table name: the fields of Settings whose keys carry
# checks ([series_roles] is the domain's RoleRules, read by _role_rules).
SECTIONS: dict[str, type[Any]] = {
    f.name: f.default_factory for f in fields(Settings)  # type: ignore[misc]
    if f.default_factory is not MISSING and f.name != "series_roles"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LOG_FORMATS = ("text", "json")

_Section = TypeVar("_Section")


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or ``LACUNA_CONFIG``; none means built-in defaults), apply overrides,
    validate."""
    environ = environ if environ is not None else {}
    raw: dict[str, Any] = {}
    path = path or (Path(environ["LACUNA_CONFIG"]) if environ.get("LACUNA_CONFIG") else None)
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as error:
            raise ConfigError("--config", f"{path} does not exist") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("--config", f"{path} is not valid TOML: {error}") from error
    _unknown("", raw, {f.name for f in fields(Settings)})
    sections = {name: section(cls, name, _values(raw, name, environ))
                for name, cls in SECTIONS.items()}
    _check_scp(sections["scp"])
    return Settings(
        **sections,
        series_roles=_role_rules(_values(raw, "series_roles", environ)),
        destinations=_destinations(raw, environ),
        log_level=_log_level(raw, environ),
        log_format=_log_format(raw, environ),
    )


def section(cls: type[_Section], name: str, values: dict[str, Any]) -> _Section:
    """``[name]`` as ``cls``: each key given is read by its field's check; the others keep the
    declared defaults."""
    declared = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    _unknown(name, values, set(declared))
    return cls(**{key: declared[key].metadata["check"](f"{name}.{key}", value)
                  for key, value in values.items()})


def _values(raw: dict[str, Any], name: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The table ``[name]`` with its ``LACUNA_NAME_*`` environment overrides."""
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    values = dict(value)
    prefix = f"LACUNA_{name.upper()}_"
    for variable, override in environ.items():
        if variable.startswith(prefix):
            values[variable[len(prefix):].lower()] = override
    return values


def _unknown(section_name: str, values: Mapping[str, Any], known: set[str]) -> None:
    for key in sorted(set(values) - known):
        raise ConfigError(f"{section_name}.{key}", "unknown key")


def _log_level(raw: dict[str, Any], environ: Mapping[str, str]) -> str:
    level = str(environ.get("LACUNA_LOG_LEVEL", raw.get("log_level", Settings.log_level))).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {level}")
    return level


def _log_format(raw: dict[str, Any], environ: Mapping[str, str]) -> str:
    form = str(environ.get("LACUNA_LOG_FORMAT", raw.get("log_format", Settings.log_format))).lower()
    if form not in _LOG_FORMATS:
        raise ConfigError("log_format", f"must be text or json, got {form}")
    return form


def _check_scp(scp: ScpSettings) -> None:
    """What one key cannot say alone: TLS needs a key pair (and CAs to verify clients by),
    listed calling AE titles must be allowed ones, several processes need a fixed port."""
    if bool(scp.tls_certificate) != bool(scp.tls_private_key):
        raise ConfigError("scp.tls_private_key", "TLS needs both tls_certificate and tls_private_key")
    if (scp.tls_require_client_certificate and scp.tls_certificate
            and not scp.tls_ca_certificates):
        raise ConfigError("scp.tls_ca_certificates",
                          "is needed to verify client certificates (or set "
                          "tls_require_client_certificate = false)")
    for title in scp.calling_ae_hosts:
        if scp.allowed_calling_aes and title not in scp.allowed_calling_aes:
            raise ConfigError("scp.calling_ae_hosts", f"{title} is not in scp.allowed_calling_aes")
    if scp.processes > 1 and scp.port == 0:
        raise ConfigError("scp.processes", "several processes need a fixed scp.port, not 0")


def _destinations(raw: dict[str, Any], environ: Mapping[str, str]) -> tuple[Destination, ...]:
    tables: Any = raw.get("destinations", [])
    if "LACUNA_DESTINATIONS" in environ:
        try:
            tables = json.loads(environ["LACUNA_DESTINATIONS"])
        except json.JSONDecodeError as error:
            raise ConfigError("destinations", f"LACUNA_DESTINATIONS is not JSON: {error}") from None
    if not isinstance(tables, list):
        raise ConfigError("destinations", "must be an array of tables")
    destinations = []
    for index, entry in enumerate(tables):
        key = f"destinations[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(key, "must be a table")
        destinations.append(_destination(key, entry))
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ConfigError("destinations", f"names must be unique, got {names}")
    return tuple(destinations)


def _destination(key: str, entry: dict[str, Any]) -> Destination:
    """One ``[[destinations]]`` table: ``url`` for STOW-RS, else ``ae_title``, ``host``, ``port``."""
    _unknown(key, entry, {f.name for f in fields(Destination)})
    if "name" not in entry:
        raise ConfigError(f"{key}.name", "is missing")
    objects = tuple(kind.upper() for kind in checks.texts(
        f"{key}.objects", entry.get("objects", Destination.objects)))
    for kind in objects:
        if kind not in RESULT_KINDS:
            raise ConfigError(f"{key}.objects", f"{kind} is not one of {', '.join(RESULT_KINDS)}")
    if not objects:
        raise ConfigError(f"{key}.objects", "must name at least one result kind")
    name = checks.text(f"{key}.name", entry["name"])
    if "url" in entry:
        for dimse in ("ae_title", "host", "port"):
            if dimse in entry:
                raise ConfigError(f"{key}.{dimse}", "a STOW-RS destination (url) takes no " + dimse)
        url = checks.text(f"{key}.url", entry["url"]).rstrip("/")
        if not re.match(r"^https?://", url):
            raise ConfigError(f"{key}.url", f"must be an http(s) URL, got {url!r}")
        return Destination(name=name, url=url, objects=objects)
    for required in ("ae_title", "host", "port"):
        if required not in entry:
            raise ConfigError(f"{key}.{required}", "is missing")
    return Destination(
        name=name,
        ae_title=checks.ae_title(f"{key}.ae_title", entry["ae_title"]),
        host=checks.text(f"{key}.host", entry["host"]),
        port=checks.port(f"{key}.port", entry["port"]),
        objects=objects,
        transfer_syntaxes=_transfer_syntaxes(
            f"{key}.transfer_syntaxes", entry.get("transfer_syntaxes", Destination.transfer_syntaxes)),
    )


def _transfer_syntaxes(key: str, value: Any) -> tuple[str, ...]:
    """Uncompressed transfer syntaxes by UID or keyword, as UIDs: results are written
    uncompressed, and pynetdicom re-encodes them to any of these."""
    uids = []
    for name in checks.texts(key, value):
        uid = uncompressed_uid(name)
        if uid is None:
            raise ConfigError(key, f"{name} is not an uncompressed transfer syntax (UID or keyword)")
        uids.append(uid)
    return tuple(uids)


def _role_rules(values: dict[str, Any]) -> RoleRules:
    """``[series_roles]``: thresholds in ms and description patterns; unset keys keep the
    defaults of :class:`RoleRules` (the domain declares them)."""
    default = RoleRules()
    _unknown("series_roles", values, set(vars(default)))
    key = "series_roles.t1_flair_inversion_time"
    t1_ti = [checks.seconds(key, v) for v in checks.items(
        key, values.get("t1_flair_inversion_time", default.t1_flair_inversion_time))]
    if len(t1_ti) != 2 or t1_ti[0] >= t1_ti[1]:
        raise ConfigError(key, f"must be [low, high], got {t1_ti}")
    read: dict[str, Check] = {
        "t2_flair_min_inversion_time": checks.seconds, "t2_flair_min_echo_time": checks.seconds,
        "t1_flair_max_echo_time": checks.seconds, "t2_flair_descriptions": checks.patterns,
        "t1_flair_descriptions": checks.patterns, "ignored_descriptions": checks.patterns,
        "accept_reformats": checks.flag,
    }
    given: dict[str, Any] = {name: check(f"series_roles.{name}", values[name])
                             for name, check in read.items() if name in values}
    return RoleRules(t1_flair_inversion_time=(t1_ti[0], t1_ti[1]), **given)
