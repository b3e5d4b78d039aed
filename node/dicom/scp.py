"""The Storage SCP on pynetdicom: an Application Entity plus plain handlers bound to events.

It depends on the storage port and events sink of :mod:`node.dicom.ports` only, passed in
when the handlers are bound; there are no globals. This module never imports TensorFlow.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from pynetdicom import (
    AE,
    AllStoragePresentationContexts,
    VerificationPresentationContexts,
    _config,
    evt,
)
from pynetdicom.transport import ThreadedAssociationServer

from node.config import ScpSettings
from node.dicom import transfer_syntaxes
from node.dicom.ports import ReceivedInstance, Reception
from node.dicom.status import Status
from node.domain.peers import host_allowed

logger = logging.getLogger(__name__)


def _requestor(event: Any) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"


def handle_echo(event: Any) -> int:
    return Status.SUCCESS


def handle_store(event: Any, reception: Reception) -> int:
    """The storage port's status: success only once the instance is durably stored."""
    calling_ae, peer = _requestor(event)
    request = event.request
    # Streamed to a temporary file by pynetdicom (node.app.configure_libraries turns that on);
    # intake moves it into storage.
    data = (Path(event.dataset_path) if _config.STORE_RECV_CHUNKED_DATASET
            else event.encoded_dataset(include_meta=True))
    return reception.store(ReceivedInstance(
        data=data,
        calling_ae=calling_ae,
        peer_address=peer,
        affected_sop_class_uid=str(request.AffectedSOPClassUID),
        affected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
    ))


def resolve_host(name: str) -> list[str]:
    """The addresses of a host name; none when it does not resolve (the peer is refused)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None)})
    except OSError:
        return []


def handle_requested(event: Any, settings: ScpSettings, reception: Reception) -> None:
    """Refuse a calling AE title that connects from a host it is not configured for, as
    "calling AE title not recognised" (rejected-permanent), before any negotiation."""
    calling_ae = str(event.assoc.requestor.primitive.calling_ae_title).strip()
    allowed = settings.calling_ae_hosts.get(calling_ae)
    address = str(event.assoc.requestor.address)
    if allowed is None or host_allowed(address, allowed, resolve_host):
        return
    logger.warning("refused %s: not allowed from %s", calling_ae, address)
    event.assoc.acse.send_reject(0x01, 0x01, 0x03)
    reception.association_rejected(calling_ae, f"{address}:{event.assoc.requestor.port}",
                                   "calling AE title not allowed from this host")
    event.assoc.kill()


def handle_accepted(event: Any, reception: Reception) -> None:
    reception.association_accepted(*_requestor(event))


def handle_rejected(event: Any, reception: Reception) -> None:
    calling_ae, peer = _requestor(event)
    logger.warning("rejected association from %s at %s", calling_ae, peer)
    reception.association_rejected(calling_ae, peer)


def accepted_storage_classes(settings: ScpSettings) -> list[str]:
    """Every storage SOP class pynetdicom knows, or those configured: accepted and stored
    (only MR is processed), by either receiver."""
    accepted = set(settings.accepted_sop_classes)
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
            if cx.abstract_syntax is not None and (not accepted or cx.abstract_syntax in accepted)]


def build_ae(settings: ScpSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    # Stored as received, in any transfer syntax we can also decode.
    for sop_class in accepted_storage_classes(settings):
        ae.add_supported_context(sop_class, list(transfer_syntaxes.ACCEPTED))
    ae.supported_contexts = [*ae.supported_contexts, *VerificationPresentationContexts]
    ae.require_called_aet = True
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    if settings.allowed_calling_aes:
        ae.require_calling_aet = list(settings.allowed_calling_aes)
    return ae


def tls_context(settings: ScpSettings) -> ssl.SSLContext | None:
    """The server-side TLS context (TLS 1.2 or newer), or None when TLS is off. Clients must
    present a certificate from ``tls_ca_certificates`` when that is required."""
    if settings.tls_certificate is None or settings.tls_private_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
    if settings.tls_ca_certificates is not None:
        context.load_verify_locations(cafile=settings.tls_ca_certificates)
        context.verify_mode = (ssl.CERT_REQUIRED if settings.tls_require_client_certificate
                               else ssl.CERT_OPTIONAL)
    return context


class SharedPortServer(ThreadedAssociationServer):
    """Binds with SO_REUSEPORT, so several receiving processes can listen on one port."""

    def server_bind(self) -> None:
        if self.socket is None:
            raise RuntimeError("the server has no socket to bind")
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_scp(settings: ScpSettings, reception: Reception) -> ThreadedAssociationServer:
    """Start listening in background threads; ``server.server_address`` has the bound port."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [settings, reception]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [reception]),
        (evt.EVT_ACCEPTED, handle_accepted, [reception]),
        (evt.EVT_REJECTED, handle_rejected, [reception]),
    ]
    tls = tls_context(settings)
    # AE.start_server(block=False) as pynetdicom writes it, with our server class.
    server = ae.make_server((settings.host, settings.port), evt_handlers=handlers,
                            ssl_context=tls,
                            server_class=SharedPortServer if settings.processes > 1
                            else ThreadedAssociationServer)
    ae._servers.append(server)  # as start_server does: the server's shutdown() removes it
    threading.Thread(target=server.serve_forever, name="lacuna-scp", daemon=True).start()
    logger.info("DICOM SCP %s listening on %s:%d%s", settings.ae_title,
                *server.server_address[:2], " (TLS)" if tls else "")
    return server
