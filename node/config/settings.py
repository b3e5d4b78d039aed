"""The settings, declared once: each section's keys with their types, defaults and the check
that reads a configured value (``node.config.checks``). ``node.config.load`` reads TOML and
the environment into these; the defaults here are the only ones (the study's come from
:mod:`node.domain.completeness`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import checks
from node.domain.completeness import CompletenessRules
from node.domain.priority import UrgencyRule
from node.domain.series import RoleRules
from node.domain.transfer_syntaxes import UNCOMPRESSED

Check = Callable[[str, Any], Any]


def checked(check: Check) -> dict[str, Check]:
    """A field's metadata: how a configured value of it is read."""
    return {"check": check}


def setting(default: Any, check: Check) -> Any:
    """A key of a settings section: its default and its check."""
    return field(default=default, metadata=checked(check))


@dataclass(frozen=True)
class ScpSettings:
    ae_title: str = setting("LACUNA", checks.ae_title)
    # The receiver: the node's own asyncio upper layer (node.dicom.aioscp), or pynetdicom's
    # threaded AE; both store through the same intake, audit and metrics.
    engine: str = setting("asyncio", checks.receiver_engine)
    host: str = setting("0.0.0.0", checks.text)
    port: int = setting(11112, checks.port)
    allowed_calling_aes: tuple[str, ...] = setting((), checks.ae_titles)  # empty: any calling AE title
    # Storage SOP class UIDs offered to senders; empty: every storage class pynetdicom knows.
    # Classes not offered are refused at association time (no presentation context).
    accepted_sop_classes: tuple[str, ...] = setting((), checks.storage_sop_classes)
    # Calling AE title -> the addresses, CIDR networks or host names it may connect from; a
    # title not listed here may connect from anywhere.
    calling_ae_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict,
                                                            metadata=checked(checks.calling_ae_hosts))
    # Association limits: more concurrent associations are rejected (transient, local limit
    # exceeded); a bare TCP connect also holds a slot until the ARTIM (acse) timeout.
    max_associations: int = setting(10, checks.positive_count)  # per receiving process
    # Receiving processes sharing the port (SO_REUSEPORT: the kernel spreads associations over
    # them). Python runs one thread at a time per process; more processes use more cores.
    processes: int = setting(1, checks.positive_count)
    # Bytes we accept per P-DATA PDU; 0 means unlimited. Larger PDUs cost fewer trips through
    # pynetdicom's Python reactor: 256 KiB received 512x512 MR ~20 % faster than 16 KiB here.
    max_pdu_size: int = setting(262144, checks.count)
    # Larger datasets are refused (Out of Resources) after they arrive; 0 means no limit.
    max_dataset_mb: int = setting(2048, checks.count)
    acse_timeout: float = setting(30.0, checks.positive)  # seconds for association negotiation (and ARTIM)
    dimse_timeout: float = setting(30.0, checks.positive)  # seconds for a DIMSE message
    network_timeout: float = setting(60.0, checks.positive)  # seconds without any network traffic
    # DICOM TLS (PS3.15 B.1): the port speaks TLS only when a certificate is set. With
    # tls_ca_certificates, clients must present a certificate signed by one of those CAs.
    tls_certificate: Path | None = setting(None, checks.readable_file)  # PEM, with the chain
    tls_private_key: Path | None = setting(None, checks.readable_file)  # PEM
    # PEM bundle of the CAs whose clients we trust
    tls_ca_certificates: Path | None = setting(None, checks.readable_file)
    tls_require_client_certificate: bool = setting(True, checks.flag)


@dataclass(frozen=True)
class StorageSettings:
    root: Path = setting(Path("var/storage"), checks.path)
    # Below this much free disk the SCP answers Out of Resources (0xA700) and /ready fails.
    min_free_mb: int = setting(1024, checks.count)

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

    segment_per_lesion: bool = setting(True, checks.flag)


@dataclass(frozen=True)
class MetricsSettings:
    """The HTTP endpoint with /metrics, /health and /ready. Port 0 picks a free one."""

    enabled: bool = setting(True, checks.flag)
    host: str = setting("0.0.0.0", checks.text)
    port: int = setting(9110, checks.port)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting("sqlite:///var/lacuna.db", checks.database_url)

    def masked_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class StudySettings:
    # The defaults are the domain's (node.domain.completeness), written there once.
    # Quiet period after the last instance.
    stable_seconds: float = setting(CompletenessRules.quiet_seconds, checks.seconds)
    # After the quiet period, how long to keep waiting for a T1 FLAIR that has not come or for
    # instances a FLAIR series announced but has not sent; urgent studies do not wait.
    missing_wait_seconds: float = setting(CompletenessRules.missing_wait_seconds, checks.seconds)
    # After the first instance: process even if still receiving.
    max_wait_seconds: float = setting(CompletenessRules.max_wait_seconds, checks.positive)
    # A study is urgent (its jobs are claimed first) when an instance came from one of these
    # calling AE titles or carries one of these Requested Procedure Priority (0040,1003) values.
    urgent_calling_aes: tuple[str, ...] = setting((), checks.ae_titles)
    urgent_requested_priorities: tuple[str, ...] = setting(("STAT",), checks.texts)

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
    poll_seconds: float = setting(1.0, checks.seconds)
    # A claim not renewed for this long is claimable again.
    lease_seconds: float = setting(120.0, checks.positive)
    max_attempts: int = setting(5, checks.positive_count)
    retry_base_seconds: float = setting(10.0, checks.seconds)  # first retry after 5-10 s, then doubling
    retry_max_seconds: float = setting(600.0, checks.seconds)
    # A result delivery is tried this often (with the same backoff) before it is dead-lettered;
    # `lacuna deliveries retry` sends dead-lettered ones again.
    delivery_max_attempts: int = setting(8, checks.positive_count)
    # On SIGTERM a worker finishes its job if it can within this many seconds, else releases
    # it to the queue (audited) and exits; nothing is left half-claimed.
    shutdown_grace_seconds: float = setting(60.0, checks.seconds)


@dataclass(frozen=True)
class ModelSettings:
    """Where the bundled default package lives; registered and activated on first start if no
    version is, unless ``require_registered`` (the production setting): then nothing runs,
    and nothing is delivered, until an administrator registers and activates a model."""

    # None: the package committed with the source.
    default_package: Path | None = setting(None, checks.path)
    require_registered: bool = setting(False, checks.flag)


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
