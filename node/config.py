"""Settings: a TOML file (``--config`` or ``LACUNA_CONFIG``) with ``LACUNA_*`` environment
overrides, validated once at start-up.

Every scalar key ``[section] key`` is overridden by ``LACUNA_SECTION_KEY``; list keys take a
comma-separated value; ``[[destinations]]`` is overridden whole by ``LACUNA_DESTINATIONS``
holding a JSON array of tables. A bad or missing value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from node.domain.completeness import CompletenessRules
from node.domain.priority import UrgencyRule
from node.domain.series import RoleRules
from node.domain.transfer_syntaxes import UNCOMPRESSED, uncompressed_uid
from node.errors import ConfigError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash


@dataclass(frozen=True)
class ScpSettings:
    ae_title: str = "LACUNA"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()  # empty: any calling AE title
    # Storage SOP class UIDs offered to senders; empty: every storage class pynetdicom knows.
    # Classes not offered are refused at association time (no presentation context).
    accepted_sop_classes: tuple[str, ...] = ()
    # Calling AE title -> the addresses, CIDR networks or host names it may connect from; a
    # title not listed here may connect from anywhere.
    calling_ae_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Association limits: more concurrent associations are rejected (transient, local limit
    # exceeded); a bare TCP connect also holds a slot until the ARTIM (acse) timeout.
    max_associations: int = 10  # per receiving process
    # Receiving processes sharing the port (SO_REUSEPORT: the kernel spreads associations over
    # them). Python runs one thread at a time per process; more processes use more cores.
    processes: int = 1
    # Bytes we accept per P-DATA PDU; 0 means unlimited. Larger PDUs cost fewer trips through
    # pynetdicom's Python reactor: 256 KiB received 512x512 MR ~20 % faster than 16 KiB here.
    max_pdu_size: int = 262144
    # Larger datasets are refused (Out of Resources) after they arrive; 0 means no limit.
    max_dataset_mb: int = 2048
    acse_timeout: float = 30.0  # seconds for association negotiation (and ARTIM)
    dimse_timeout: float = 30.0  # seconds for a DIMSE message
    network_timeout: float = 60.0  # seconds without any network traffic
    # DICOM TLS (PS3.15 B.1): the port speaks TLS only when a certificate is set. With
    # tls_ca_certificates, clients must present a certificate signed by one of those CAs.
    tls_certificate: Path | None = None  # PEM, with the chain
    tls_private_key: Path | None = None  # PEM
    tls_ca_certificates: Path | None = None  # PEM bundle of the CAs whose clients we trust
    tls_require_client_certificate: bool = True


@dataclass(frozen=True)
class StorageSettings:
    root: Path = Path("var/storage")
    # Below this much free disk the SCP answers Out of Resources (0xA700) and /ready fails.
    min_free_mb: int = 1024

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * 2**20

    @property
    def model_store(self) -> Path:
        """Where registered model packages are kept, by manifest SHA-256 (read-only copies)."""
        return self.root / "models"


@dataclass(frozen=True)
class ResultSettings:
    """What the SEG holds: one segment per lesion (default; each SR measurement group references
    its own lesion's segment) or, for viewers that want few segments, one per lesion class."""

    segment_per_lesion: bool = True


@dataclass(frozen=True)
class MetricsSettings:
    """The HTTP endpoint with /metrics, /health and /ready. Port 0 picks a free one."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 9110


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/lacuna.db"

    def masked_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class StudySettings:
    # The defaults are the domain's (node.domain.completeness), written there once.
    stable_seconds: float = CompletenessRules.quiet_seconds  # quiet period after the last instance
    # After the quiet period, how long to keep waiting for a T1 FLAIR that has not come or for
    # instances a FLAIR series announced but has not sent; urgent studies do not wait.
    missing_wait_seconds: float = CompletenessRules.missing_wait_seconds
    # After the first instance: process even if still receiving.
    max_wait_seconds: float = CompletenessRules.max_wait_seconds
    # A study is urgent (its jobs are claimed first) when an instance came from one of these
    # calling AE titles or carries one of these Requested Procedure Priority (0040,1003) values.
    urgent_calling_aes: tuple[str, ...] = ()
    urgent_requested_priorities: tuple[str, ...] = ("STAT",)

    def completeness_rules(self) -> CompletenessRules:
        return CompletenessRules(quiet_seconds=self.stable_seconds,
                                 missing_wait_seconds=self.missing_wait_seconds,
                                 max_wait_seconds=self.max_wait_seconds)

    def urgency_rule(self) -> UrgencyRule:
        return UrgencyRule(
            calling_aes=frozenset(self.urgent_calling_aes),
            requested_priorities=frozenset(p.upper() for p in self.urgent_requested_priorities),
        )


@dataclass(frozen=True)
class WorkerSettings:
    poll_seconds: float = 1.0
    lease_seconds: float = 120.0  # a claim not renewed for this long is claimable again
    max_attempts: int = 5
    retry_base_seconds: float = 10.0  # first retry after 5-10 s, then doubling
    retry_max_seconds: float = 600.0
    # A result delivery is tried this often (with the same backoff) before it is dead-lettered;
    # `lacuna deliveries retry` sends dead-lettered ones again.
    delivery_max_attempts: int = 8
    # On SIGTERM a worker finishes its job if it can within this many seconds, else releases
    # it to the queue (audited) and exits; nothing is left half-claimed.
    shutdown_grace_seconds: float = 60.0


@dataclass(frozen=True)
class ModelSettings:
    """Where the bundled default package lives; registered and activated on first start if no
    version is, unless ``require_registered`` (the production setting): then nothing runs,
    and nothing is delivered, until an administrator registers and activates a model."""

    default_package: Path | None = None  # None: the package committed with the source
    require_registered: bool = False


# KOS: the IHE IOCM rejection note a re-run sends to withdraw the results it replaces.
RESULT_KINDS = ("SEG", "SR", "GSPS", "SC", "KOS")


@dataclass(frozen=True)
class Destination:
    """Where results go: by C-STORE (``ae_title``, ``host``, ``port``) or, when ``url`` is set,
    by DICOMweb STOW-RS to ``{url}/studies``. ``objects`` are the result kinds it receives
    (SEG, SR and the fallbacks GSPS and SC, for viewers without SEG support);
    ``transfer_syntaxes`` are proposed to a C-STORE peer in order of preference."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str | None = None
    objects: tuple[str, ...] = ("SEG", "SR")
    transfer_syntaxes: tuple[str, ...] = (UNCOMPRESSED["ExplicitVRLittleEndian"],
                                          UNCOMPRESSED["ImplicitVRLittleEndian"])

    @property
    def protocol(self) -> str:
        return "STOW-RS" if self.url else "C-STORE"

    @property
    def address(self) -> str:
        return self.url or f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    scp: ScpSettings = field(default_factory=ScpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    study: StudySettings = field(default_factory=StudySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    results: ResultSettings = field(default_factory=ResultSettings)
    series_roles: RoleRules = field(default_factory=RoleRules)
    destinations: tuple[Destination, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line

    def describe(self) -> dict[str, Any]:
        """The effective settings with secrets masked, for the start-up log."""
        return {
            "scp": vars(self.scp),
            "storage": str(self.storage.root),
            "database": self.database.masked_url(),
            "study": vars(self.study),
            "metrics": vars(self.metrics),
            "results": vars(self.results),
            "series_roles": vars(self.series_roles),
            "destinations": [vars(d) for d in self.destinations],
        }


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
    return _build(raw, environ)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    return dict(value)


def _override(section: str, values: dict[str, Any], environ: Mapping[str, str]) -> None:
    prefix = f"LACUNA_{section.upper()}_"
    for variable, value in environ.items():
        if variable.startswith(prefix):
            values[variable[len(prefix) :].lower()] = value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _ae_title(key: str, value: Any) -> str:
    title = _text(key, value)
    if not _AE_TITLE.match(title):
        raise ConfigError(key, f"{title!r} is not a valid AE title (1-16 ASCII, no backslash)")
    return title


def _port(key: str, value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be an integer, got {value!r}") from None
    if not 0 <= port <= 65535:  # 0 asks the OS for a free port (tests, demo)
        raise ConfigError(key, f"must be 0-65535, got {port}")
    return port


_Number = TypeVar("_Number", int, float)


def _non_negative(key: str, value: Any, kind: type[_Number], what: str) -> _Number:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be {what}, got {value!r}") from None
    if number < 0:
        raise ConfigError(key, f"must not be negative, got {number}")
    return number


def _seconds(key: str, value: Any) -> float:
    return _non_negative(key, value, float, "a number of seconds")


def _count(key: str, value: Any) -> int:
    """A whole number >= 0 (bytes, megabytes)."""
    return _non_negative(key, value, int, "a whole number")


def _positive(key: str, value: Any) -> float:
    number = _seconds(key, value)
    if number <= 0:
        raise ConfigError(key, f"must be positive, got {number}")
    return number


def _existing_file(key: str, value: Any) -> Path:
    path = Path(_text(key, value))
    if not path.is_file():
        raise ConfigError(key, f"{path} is not a readable file")
    return path


def _flag(key: str, value: Any) -> bool:
    """A TOML boolean, or (from the environment) true/false, 1/0, yes/no."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _list(key: str, value: Any) -> list[Any]:
    """A TOML array, or (from the environment) a comma-separated string."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"must be a list, got {value!r}")
    return list(value)


def _unknown(section: str, values: dict[str, Any], known: set[str]) -> None:
    for key in sorted(set(values) - known):
        raise ConfigError(f"{section}.{key}", "unknown key")


def _build(raw: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    _unknown("", raw, {"scp", "storage", "database", "study", "worker", "models", "metrics",
                       "results", "series_roles", "destinations", "log_level", "log_format"})
    sections = {}
    for name in ("scp", "storage", "database", "study", "worker", "models", "metrics", "results",
                 "series_roles"):
        sections[name] = _section(raw, name)
        _override(name, sections[name], environ)

    scp = sections["scp"]
    _unknown("scp", scp, {"ae_title", "host", "port", "allowed_calling_aes", "calling_ae_hosts",
                          "accepted_sop_classes",
                          "max_associations", "processes", "max_pdu_size", "max_dataset_mb",
                          "acse_timeout",
                          "dimse_timeout", "network_timeout",
                          "tls_certificate", "tls_private_key", "tls_ca_certificates",
                          "tls_require_client_certificate"})
    tls_files = {key: _existing_file(f"scp.{key}", scp[key]) if scp.get(key) else None
                 for key in ("tls_certificate", "tls_private_key", "tls_ca_certificates")}
    if bool(tls_files["tls_certificate"]) != bool(tls_files["tls_private_key"]):
        raise ConfigError("scp.tls_private_key", "TLS needs both tls_certificate and tls_private_key")
    require_client = _flag("scp.tls_require_client_certificate",
                           scp.get("tls_require_client_certificate", True))
    if require_client and tls_files["tls_certificate"] and not tls_files["tls_ca_certificates"]:
        raise ConfigError("scp.tls_ca_certificates",
                          "is needed to verify client certificates (or set "
                          "tls_require_client_certificate = false)")
    allowed = _list("scp.allowed_calling_aes", scp.get("allowed_calling_aes", ()))
    calling_ae_hosts = _calling_ae_hosts(scp.get("calling_ae_hosts", {}), allowed)
    if int(_positive("scp.processes", scp.get("processes", 1))) > 1 and int(
            _port("scp.port", scp.get("port", 11112))) == 0:
        raise ConfigError("scp.processes", "several processes need a fixed scp.port, not 0")
    scp_settings = ScpSettings(
        ae_title=_ae_title("scp.ae_title", scp.get("ae_title", "LACUNA")),
        host=_text("scp.host", scp.get("host", "0.0.0.0")),
        port=_port("scp.port", scp.get("port", 11112)),
        allowed_calling_aes=tuple(
            _ae_title("scp.allowed_calling_aes", title) for title in allowed
        ),
        calling_ae_hosts=calling_ae_hosts,
        accepted_sop_classes=_storage_sop_classes(scp.get("accepted_sop_classes", ())),
        max_associations=int(_positive("scp.max_associations", scp.get("max_associations", 10))),
        processes=int(_positive("scp.processes", scp.get("processes", 1))),
        max_pdu_size=_count("scp.max_pdu_size", scp.get("max_pdu_size", 262144)),
        max_dataset_mb=_count("scp.max_dataset_mb", scp.get("max_dataset_mb", 2048)),
        acse_timeout=_positive("scp.acse_timeout", scp.get("acse_timeout", 30.0)),
        dimse_timeout=_positive("scp.dimse_timeout", scp.get("dimse_timeout", 30.0)),
        network_timeout=_positive("scp.network_timeout", scp.get("network_timeout", 60.0)),
        tls_certificate=tls_files["tls_certificate"],
        tls_private_key=tls_files["tls_private_key"],
        tls_ca_certificates=tls_files["tls_ca_certificates"],
        tls_require_client_certificate=require_client,
    )

    storage = sections["storage"]
    _unknown("storage", storage, {"root", "min_free_mb"})
    metrics = sections["metrics"]
    _unknown("metrics", metrics, {"enabled", "host", "port"})
    results = sections["results"]
    _unknown("results", results, {"segment_per_lesion"})
    database = sections["database"]
    _unknown("database", database, {"url"})
    url = _text("database.url", database.get("url", DatabaseSettings.url))
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError("database.url", "must be a sqlite:// or postgresql:// URL")
    study = sections["study"]
    _unknown("study", study, {"stable_seconds", "missing_wait_seconds", "max_wait_seconds",
                              "urgent_calling_aes", "urgent_requested_priorities"})
    worker = sections["worker"]
    _unknown("worker", worker, {"poll_seconds", "lease_seconds", "max_attempts",
                                "retry_base_seconds", "retry_max_seconds", "delivery_max_attempts",
                                "shutdown_grace_seconds"})
    models = sections["models"]
    _unknown("models", models, {"default_package", "require_registered"})

    destinations_raw: Any = raw.get("destinations", [])
    if "LACUNA_DESTINATIONS" in environ:
        try:
            destinations_raw = json.loads(environ["LACUNA_DESTINATIONS"])
        except json.JSONDecodeError as error:
            raise ConfigError("destinations", f"LACUNA_DESTINATIONS is not JSON: {error}") from None
    if not isinstance(destinations_raw, list):
        raise ConfigError("destinations", "must be an array of tables")
    destinations = []
    for index, entry in enumerate(destinations_raw):
        key = f"destinations[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(key, "must be a table")
        destinations.append(_destination(key, entry))
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ConfigError("destinations", f"names must be unique, got {names}")

    log_level = str(environ.get("LACUNA_LOG_LEVEL", raw.get("log_level", "INFO"))).upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {log_level}")

    log_format = str(environ.get("LACUNA_LOG_FORMAT", raw.get("log_format", "text"))).lower()
    if log_format not in {"text", "json"}:
        raise ConfigError("log_format", f"must be text or json, got {log_format}")

    return Settings(
        scp=scp_settings,
        storage=StorageSettings(
            root=Path(_text("storage.root", storage.get("root", "var/storage"))),
            min_free_mb=_count("storage.min_free_mb", storage.get("min_free_mb", 1024)),
        ),
        metrics=MetricsSettings(
            enabled=_flag("metrics.enabled", metrics.get("enabled", True)),
            host=_text("metrics.host", metrics.get("host", "0.0.0.0")),
            port=_port("metrics.port", metrics.get("port", 9110)),
        ),
        database=DatabaseSettings(url=url),
        results=ResultSettings(segment_per_lesion=_flag("results.segment_per_lesion",
                                                        results.get("segment_per_lesion", True))),
        study=StudySettings(
            stable_seconds=_seconds("study.stable_seconds",
                                    study.get("stable_seconds", StudySettings.stable_seconds)),
            missing_wait_seconds=_seconds("study.missing_wait_seconds", study.get(
                "missing_wait_seconds", StudySettings.missing_wait_seconds)),
            max_wait_seconds=_positive("study.max_wait_seconds", study.get(
                "max_wait_seconds", StudySettings.max_wait_seconds)),
            urgent_calling_aes=tuple(
                _ae_title("study.urgent_calling_aes", title)
                for title in _list("study.urgent_calling_aes", study.get("urgent_calling_aes", ()))
            ),
            urgent_requested_priorities=tuple(
                _text("study.urgent_requested_priorities", value)
                for value in _list("study.urgent_requested_priorities",
                                   study.get("urgent_requested_priorities", ["STAT"]))
            ),
        ),
        worker=WorkerSettings(
            poll_seconds=_seconds("worker.poll_seconds", worker.get("poll_seconds", 1.0)),
            lease_seconds=_positive("worker.lease_seconds", worker.get("lease_seconds", 120.0)),
            max_attempts=int(_positive("worker.max_attempts", worker.get("max_attempts", 5))),
            retry_base_seconds=_seconds(
                "worker.retry_base_seconds", worker.get("retry_base_seconds", 10.0)
            ),
            retry_max_seconds=_seconds(
                "worker.retry_max_seconds", worker.get("retry_max_seconds", 600.0)
            ),
            delivery_max_attempts=int(_positive("worker.delivery_max_attempts",
                                                worker.get("delivery_max_attempts", 8))),
            shutdown_grace_seconds=_seconds(
                "worker.shutdown_grace_seconds", worker.get("shutdown_grace_seconds", 60.0)
            ),
        ),
        models=ModelSettings(
            default_package=(Path(_text("models.default_package", models["default_package"]))
                             if "default_package" in models else None),
            require_registered=_flag("models.require_registered",
                                     models.get("require_registered", False)),
        ),
        series_roles=_role_rules(sections["series_roles"]),
        destinations=tuple(destinations),
        log_level=log_level,
        log_format=log_format,
    )


def _destination(key: str, entry: dict[str, Any]) -> Destination:
    """One ``[[destinations]]`` table: ``url`` for STOW-RS, else ``ae_title``, ``host``, ``port``."""
    _unknown(key, entry, {"name", "ae_title", "host", "port", "url", "objects", "transfer_syntaxes"})
    if "name" not in entry:
        raise ConfigError(f"{key}.name", "is missing")
    objects = tuple(_text(f"{key}.objects", kind).upper()
                    for kind in _list(f"{key}.objects", entry.get("objects", ["SEG", "SR"])))
    for kind in objects:
        if kind not in RESULT_KINDS:
            raise ConfigError(f"{key}.objects", f"{kind} is not one of {', '.join(RESULT_KINDS)}")
    if not objects:
        raise ConfigError(f"{key}.objects", "must name at least one result kind")
    syntaxes = []
    for entry_syntax in _list(f"{key}.transfer_syntaxes",
                              entry.get("transfer_syntaxes", list(Destination.transfer_syntaxes))):
        text = _text(f"{key}.transfer_syntaxes", entry_syntax)
        # Results are written uncompressed; pynetdicom re-encodes them to any of these.
        uid = uncompressed_uid(text)
        if uid is None:
            raise ConfigError(f"{key}.transfer_syntaxes",
                              f"{text} is not an uncompressed transfer syntax (UID or keyword)")
        syntaxes.append(str(uid))
    name = _text(f"{key}.name", entry["name"])
    if "url" in entry:
        for dimse in ("ae_title", "host", "port"):
            if dimse in entry:
                raise ConfigError(f"{key}.{dimse}", "a STOW-RS destination (url) takes no " + dimse)
        url = _text(f"{key}.url", entry["url"]).rstrip("/")
        if not re.match(r"^https?://", url):
            raise ConfigError(f"{key}.url", f"must be an http(s) URL, got {url!r}")
        return Destination(name=name, url=url, objects=objects)
    for required in ("ae_title", "host", "port"):
        if required not in entry:
            raise ConfigError(f"{key}.{required}", "is missing")
    return Destination(
        name=name,
        ae_title=_ae_title(f"{key}.ae_title", entry["ae_title"]),
        host=_text(f"{key}.host", entry["host"]),
        port=_port(f"{key}.port", entry["port"]),
        objects=objects,
        transfer_syntaxes=tuple(syntaxes),
    )


def _patterns(key: str, value: Any) -> tuple[str, ...]:
    patterns = tuple(_text(key, item) for item in _list(key, value))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(key, f"{pattern!r} is not a regular expression: {error}") from None
    return patterns


def _role_rules(values: dict[str, Any]) -> RoleRules:
    """``[series_roles]``: thresholds in ms and description patterns; unset keys keep the
    defaults of :class:`RoleRules`."""
    default = RoleRules()
    _unknown("series_roles", values, set(vars(default)))
    t1_ti = [_seconds("series_roles.t1_flair_inversion_time", v)
             for v in _list("series_roles.t1_flair_inversion_time",
                            values.get("t1_flair_inversion_time", default.t1_flair_inversion_time))]
    if len(t1_ti) != 2 or t1_ti[0] >= t1_ti[1]:
        raise ConfigError("series_roles.t1_flair_inversion_time", f"must be [low, high], got {t1_ti}")
    return RoleRules(
        t2_flair_min_inversion_time=_seconds(
            "series_roles.t2_flair_min_inversion_time",
            values.get("t2_flair_min_inversion_time", default.t2_flair_min_inversion_time)),
        t2_flair_min_echo_time=_seconds(
            "series_roles.t2_flair_min_echo_time",
            values.get("t2_flair_min_echo_time", default.t2_flair_min_echo_time)),
        t1_flair_inversion_time=(t1_ti[0], t1_ti[1]),
        t1_flair_max_echo_time=_seconds(
            "series_roles.t1_flair_max_echo_time",
            values.get("t1_flair_max_echo_time", default.t1_flair_max_echo_time)),
        t2_flair_descriptions=_patterns(
            "series_roles.t2_flair_descriptions",
            values.get("t2_flair_descriptions", default.t2_flair_descriptions)),
        t1_flair_descriptions=_patterns(
            "series_roles.t1_flair_descriptions",
            values.get("t1_flair_descriptions", default.t1_flair_descriptions)),
        ignored_descriptions=_patterns(
            "series_roles.ignored_descriptions",
            values.get("ignored_descriptions", default.ignored_descriptions)),
        accept_reformats=_flag("series_roles.accept_reformats",
                               values.get("accept_reformats", default.accept_reformats)),
    )


def _calling_ae_hosts(value: Any, allowed: list[Any]) -> dict[str, tuple[str, ...]]:
    """``[scp.calling_ae_hosts]``: AE title = [addresses, CIDR networks or host names]; from
    the environment, a JSON object."""
    key = "scp.calling_ae_hosts"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(key, f"is not a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table of AE title = [hosts]")
    hosts = {}
    for title, entries in value.items():
        title = _ae_title(key, title)
        if allowed and title not in allowed:
            raise ConfigError(key, f"{title} is not in scp.allowed_calling_aes")
        listed = tuple(_text(f"{key}.{title}", entry) for entry in _list(f"{key}.{title}", entries))
        if not listed:
            raise ConfigError(f"{key}.{title}", "lists no host; remove the title to allow any")
        hosts[title] = listed
    return hosts


def _storage_sop_classes(value: Any) -> tuple[str, ...]:
    """``[scp] accepted_sop_classes``: storage SOP classes by UID or keyword
    (``MRImageStorage``), as UIDs; each must be one pynetdicom can accept."""
    from pydicom.uid import UID
    from pynetdicom import AllStoragePresentationContexts

    known = {str(context.abstract_syntax) for context in AllStoragePresentationContexts}
    by_keyword = {UID(uid).keyword: uid for uid in known}
    uids = []
    for entry in _list("scp.accepted_sop_classes", value):
        text = _text("scp.accepted_sop_classes", entry)
        uid = by_keyword.get(text, text)
        if uid not in known:
            raise ConfigError("scp.accepted_sop_classes", f"{text} is not a storage SOP class")
        uids.append(uid)
    return tuple(uids)
