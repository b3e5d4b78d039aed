"""The asyncio receiver (``[scp] engine = "asyncio"``): the DICOM upper layer for the acceptor,
C-ECHO and C-STORE, on one event loop in one thread.

pynetdicom's codecs decode the A-ASSOCIATE-RQ and encode the A-ASSOCIATE-AC, and its
``negotiate_as_acceptor`` negotiates presentation contexts and SCP/SCU roles, so both engines
accept exactly the same; the P-DATA-TF framing, the PDVs and the few DIMSE command sets are
read and written here (PS3.8 9.3, PS3.7 9.3), because that is where pynetdicom's threaded
reactors spend their time. Datasets stream to a temporary file as their PDVs arrive (never
whole in memory) and go to the storage port (:mod:`node.dicom.ports`) in one storing thread,
in batches of whatever is waiting; the port answers with the C-STORE status only once the
instance is durable. Never imports TensorFlow.

Depends on pynetdicom 3.0 (pinned): ``pdu.A_ASSOCIATE_RQ``/``A_ASSOCIATE_AC``,
``pdu_primitives`` (A_ASSOCIATE and the user information items), ``presentation``
(``build_context``, ``negotiate_as_acceptor``), all public modules of that version.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import struct
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from node.config import ScpSettings
from node.dicom import transfer_syntaxes
from node.dicom.part10 import FileMetaError, part10_head
from node.dicom.ports import ReceivedInstance, Reception
from node.dicom.scp import accepted_storage_classes, resolve_host, tls_context
from node.dicom.status import Status
from node.domain.peers import host_allowed

logger = logging.getLogger(__name__)

# Lacuna's implementation class UID (2.25: a UUID-derived root, PS3.5 B.2) and version name.
IMPLEMENTATION_CLASS_UID = "2.25.238219095383462208262367470587862216714"
IMPLEMENTATION_VERSION_NAME = "LACUNA_ASYNC_1"
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3.1).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")
# An A-ASSOCIATE-RQ is a few kB; more is not a DICOM peer.
MAX_ASSOCIATE_RQ_BYTES = 1 << 20

# A-ABORT provider reasons (PS3.8 9.3.8), sent with source 2 (service provider).
UNRECOGNISED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER_VALUE = 0x01, 0x02, 0x06

# DIMSE command fields (PS3.7 E.1) and the command set's elements used here.
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
AFFECTED_SOP_CLASS_UID, COMMAND_FIELD, MESSAGE_ID = 0x00000002, 0x00000100, 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO, COMMAND_DATA_SET_TYPE = 0x00000120, 0x00000800
STATUS, AFFECTED_SOP_INSTANCE_UID = 0x00000900, 0x00001000
NO_DATA_SET = 0x0101


class ProtocolError(Exception):
    """The peer broke the upper layer protocol; the association ends with an A-ABORT."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AssociationEnded(Exception):
    """The peer released or aborted the association, or closed the connection."""


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(pdu_type, len(body)) + body


def abort_pdu(source: int, reason: int) -> bytes:
    return pdu(ABORT, bytes((0, 0, source, reason)))


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


def parse_command(data: bytes) -> dict[int, bytes]:
    """A command set (implicit VR little endian, group 0000) as tag -> value bytes."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        elements[(group << 16) | element] = data[offset:offset + length]
        offset += length
    if offset != len(data) or COMMAND_FIELD not in elements:
        raise ProtocolError(INVALID_PARAMETER_VALUE, "malformed DIMSE command set")
    return elements


def _us(value: bytes) -> int:
    if len(value) != 2:
        raise ProtocolError(INVALID_PARAMETER_VALUE, "malformed US value in a command set")
    return int(struct.unpack("<H", value)[0])


def _ui(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set from (tag, value) in tag order, its group length first."""
    body = b"".join(_ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value
                    for tag, value in elements)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def response(command_field: int, request: dict[int, bytes], status: int) -> bytes:
    """The C-ECHO-RSP or C-STORE-RSP to ``request``."""
    elements = [(AFFECTED_SOP_CLASS_UID, request.get(AFFECTED_SOP_CLASS_UID, b""))]
    elements += [
        (COMMAND_FIELD, struct.pack("<H", command_field)),
        (MESSAGE_ID_BEING_RESPONDED_TO, request.get(MESSAGE_ID, b"\x00\x00")),
        (COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
        (STATUS, struct.pack("<H", status)),
    ]
    if AFFECTED_SOP_INSTANCE_UID in request:  # UIDs go back as they came (even length)
        elements.append((AFFECTED_SOP_INSTANCE_UID, request[AFFECTED_SOP_INSTANCE_UID]))
    return encode_command(elements)


def p_data(context_id: int, command: bytes, max_pdu_length: int) -> bytes:
    """``command`` as P-DATA-TF PDUs of at most ``max_pdu_length`` (0: any) bytes each."""
    room = (max_pdu_length - 6) if max_pdu_length else len(command)
    room = max(room, 1)
    chunks = [command[i:i + room] for i in range(0, len(command), room)] or [b""]
    out = b""
    for index, chunk in enumerate(chunks):
        header = 0x03 if index == len(chunks) - 1 else 0x01  # command; last fragment
        item = _PDV_HEADER.pack(len(chunk) + 2, context_id, header) + chunk
        out += pdu(P_DATA_TF, item)
    return out


def supported_contexts(settings: ScpSettings) -> list[PresentationContext]:
    """The contexts the SCP accepts: every storage SOP class (or those configured) and
    Verification, each in every transfer syntax the node can decode (as pynetdicom's AE)."""
    syntaxes = [str(uid) for uid in transfer_syntaxes.ACCEPTED]
    return [build_context(sop_class, syntaxes)
            for sop_class in [*accepted_storage_classes(settings), VERIFICATION]]


@dataclass
class _Association:
    """An accepted association: what it agreed (contexts by ID -> (abstract syntax, transfer
    syntax)) and the message it is receiving, if any."""

    contexts: dict[int, tuple[str, str]]
    peer_max_pdu: int
    calling_ae: str
    incoming: _Incoming | None = None


@dataclass
class _Incoming:
    """One DIMSE message being received: the command set, then the dataset's temporary file."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    elements: dict[int, bytes] | None = None
    path: Path | None = None
    file: BinaryIO | None = None

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class _Storer:
    """One thread stores what the event loop hands it: whatever is waiting when it is free,
    as one batch through :meth:`Reception.store_many` (one index transaction). Many
    associations then cost one thread beside the loop, not a thread each contending for the
    GIL, and their instances still share transactions."""

    MAX_BATCH = 64

    def __init__(self, reception: Reception, loop: asyncio.AbstractEventLoop) -> None:
        self._reception = reception
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[ReceivedInstance, asyncio.Future[int]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="lacuna-store", daemon=True)
        self._thread.start()

    def store(self, received: ReceivedInstance) -> asyncio.Future[int]:
        """From the loop: the future C-STORE status of ``received``."""
        future: asyncio.Future[int] = self._loop.create_future()
        self._queue.put((received, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                statuses = self._reception.store_many([received for received, _ in batch])
            except BaseException:  # the port never raises; if it does, nothing was stored
                logger.exception("storing a batch of %d failed", len(batch))
                statuses = [int(Status.PROCESSING_FAILURE)] * len(batch)
            try:
                self._loop.call_soon_threadsafe(_resolve, batch, statuses)
            except RuntimeError:  # the loop is closed: shutdown, nobody waits for these
                return


def _resolve(batch: list[tuple[ReceivedInstance, asyncio.Future[int]]],
             statuses: list[int]) -> None:
    for (_, future), status in zip(batch, statuses, strict=True):
        if not future.done():  # an association cancelled meanwhile no longer waits
            future.set_result(status)


class AsyncioScp:
    """Listens on ``settings.host:port`` in a thread of its own; ``server_address`` has the
    bound port once :meth:`start` returns; :meth:`shutdown` stops it."""

    def __init__(self, settings: ScpSettings, reception: Reception) -> None:
        self.settings = settings
        self.reception = reception
        self._contexts = supported_contexts(settings)
        self._tls = tls_context(settings)
        self._active = 0
        # Association events (audit rows) and host name checks, off the loop.
        self._pool = ThreadPoolExecutor(max_workers=max(settings.max_associations, 1),
                                        thread_name_prefix="lacuna-events")
        self._loop = asyncio.new_event_loop()
        self._storer = _Storer(reception, self._loop)
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="lacuna-aioscp",
                                        daemon=True)
        self.server_address: tuple[str, int] = (settings.host, settings.port)

    def start(self) -> AsyncioScp:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=30)
        logger.info("DICOM SCP %s (asyncio) listening on %s:%d%s", self.settings.ae_title,
                    *self.server_address[:2], " (TLS)" if self._tls else "")
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.settings.host, self.settings.port, ssl=self._tls,
            ssl_handshake_timeout=self.settings.acse_timeout if self._tls else None,
            reuse_port=self.settings.processes > 1, limit=1 << 20)
        address = self._server.sockets[0].getsockname()
        self.server_address = (str(address[0]), int(address[1]))

    def shutdown(self) -> None:
        """Stop listening, abort open associations (their partial files removed), stop."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._storer.stop()
        self._loop.close()
        self._pool.shutdown(wait=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        peer_address = f"{peer[0]}:{peer[1]}"
        linger = False
        try:
            linger = await self._association(reader, writer, str(peer[0]), peer_address)
            if linger:
                await writer.drain()
                await self._await_close(reader)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # reported where it happened; the connection is gone
        except asyncio.CancelledError:
            pass  # shutdown: the association's partial file is already removed
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, asyncio.CancelledError):
                # Cancelled here by shutdown: the task ends now anyway, and ending it
                # cancelled makes Python 3.11's stream callback log a spurious traceback.
                pass

    async def _report(self, event: Callable[..., None], *arguments: str) -> None:
        """Call the events sink in the pool: it writes audit rows, and a commit must not
        stall the loop every other association runs on."""
        await asyncio.get_running_loop().run_in_executor(self._pool, event, *arguments)

    async def _await_close(self, reader: asyncio.StreamReader) -> None:
        """After our A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the requestor closes the
        connection (PS3.8 Sta13); closing first could cut our last PDU off. ARTIM bounds it."""
        try:
            async with asyncio.timeout(self.settings.acse_timeout):
                while await reader.read(65536):
                    pass
        except TimeoutError:
            pass

    async def _association(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           host: str, peer_address: str) -> bool:
        """Serve one connection; True when it ended with a PDU of ours that the requestor
        answers by closing the connection."""
        try:  # ARTIM: a connection that sends no A-ASSOCIATE-RQ in time is dropped, no slot held
            pdu_type, body = await asyncio.wait_for(
                read_pdu(reader, MAX_ASSOCIATE_RQ_BYTES), self.settings.acse_timeout)
        except TimeoutError:
            logger.info("dropped %s: no A-ASSOCIATE-RQ within %g s", peer_address,
                        self.settings.acse_timeout)
            return False
        except ProtocolError as error:
            logger.warning("aborted %s before association: %s", peer_address, error)
            writer.write(abort_pdu(2, error.reason))
            return True
        if pdu_type != ASSOCIATE_RQ:
            logger.warning("aborted %s: PDU type 0x%02X before A-ASSOCIATE-RQ", peer_address,
                           pdu_type)
            writer.write(abort_pdu(2, UNEXPECTED_PDU))
            return True
        association = await self._negotiate(body, writer, host, peer_address)
        if association is None:
            return True
        try:  # counted as active by _negotiate
            return await self._established(reader, writer, association, peer_address)
        finally:
            self._active -= 1

    async def _negotiate(self, body: bytes, writer: asyncio.StreamWriter, host: str,
                         peer_address: str) -> _Association | None:
        """Accept (A-ASSOCIATE-AC sent) or reject/abort (None) an A-ASSOCIATE-RQ."""
        request = A_ASSOCIATE_RQ()
        try:
            request.decode(pdu(ASSOCIATE_RQ, body))
            primitive = request.to_primitive()
        except Exception as error:  # any malformed request: pynetdicom raises several types
            logger.warning("aborted %s: malformed A-ASSOCIATE-RQ (%s)", peer_address, error)
            writer.write(abort_pdu(2, INVALID_PARAMETER_VALUE))
            await self._report(self.reception.association_aborted, "", peer_address,
                               "malformed A-ASSOCIATE-RQ")
            return None
        calling_ae = str(primitive.calling_ae_title).strip()
        refusal = await self._refusal(primitive, request.protocol_version, calling_ae, host)
        if refusal is not None:
            (result, source, reason), why = refusal
            logger.warning("rejected association from %s at %s: %s", calling_ae, peer_address,
                           why)
            writer.write(reject_pdu(result, source, reason))
            await self._report(self.reception.association_rejected, calling_ae, peer_address,
                               why)
            return None
        # Counted from here, before anything else can run on the loop: the limit holds.
        self._active += 1
        try:
            return await self._accept_association(primitive, calling_ae, writer, peer_address)
        except BaseException:
            self._active -= 1
            raise

    async def _accept_association(self, primitive: A_ASSOCIATE, calling_ae: str,
                                  writer: asyncio.StreamWriter, peer_address: str,
                                  ) -> _Association:
        roles = {UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
                 for item in primitive.user_information
                 if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
        results, role_items = negotiate_as_acceptor(
            primitive.presentation_context_definition_list, self._contexts, roles)
        writer.write(self._accept(primitive, results, role_items))
        await writer.drain()
        await self._report(self.reception.association_accepted, calling_ae, peer_address)
        peer_max = next((int(item.maximum_length_received or 0)
                         for item in primitive.user_information
                         if isinstance(item, MaximumLengthNotification)), 0)
        contexts = {int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in results if cx.result == 0 and cx.context_id is not None}
        return _Association(contexts, peer_max, calling_ae)

    async def _refusal(self, primitive: A_ASSOCIATE, version: int, calling_ae: str,
                       host: str) -> tuple[tuple[int, int, int], str] | None:
        """Why an association is refused, as the A-ASSOCIATE-RJ (result, source, reason)."""
        settings = self.settings
        if not version & 1:
            return (1, 2, 2), "protocol version not supported"
        if str(primitive.application_context_name) != APPLICATION_CONTEXT_NAME:
            return (1, 1, 2), "application context name not supported"
        if str(primitive.called_ae_title).strip() != settings.ae_title:
            return (1, 1, 7), "called AE title not recognised"
        if settings.allowed_calling_aes and calling_ae not in settings.allowed_calling_aes:
            return (1, 1, 3), "calling AE title not recognised"
        allowed_hosts = settings.calling_ae_hosts.get(calling_ae)
        if allowed_hosts is not None:
            loop = asyncio.get_running_loop()
            allowed = await loop.run_in_executor(
                self._pool, host_allowed, host, allowed_hosts, resolve_host)
            if not allowed:
                return (1, 1, 3), "calling AE title not allowed from this host"
        if self._active >= settings.max_associations:
            return (2, 3, 2), "local limit of associations exceeded"
        return None

    def _accept(self, request: A_ASSOCIATE, results: list[PresentationContext],
                role_items: list[SCP_SCU_RoleSelectionNegotiation]) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID(APPLICATION_CONTEXT_NAME)
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = results
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = self.settings.max_pdu_size
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        # Extended negotiation (SOP class, user identity, asynchronous operations) is not
        # answered: the requestor then works without it (PS3.7 D.3.3).
        primitive.user_information = [maximum, implementation, version, *role_items]
        return bytes(A_ASSOCIATE_AC(primitive).encode())

    async def _established(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           association: _Association, peer_address: str) -> bool:
        limit = self.settings.max_pdu_size or (1 << 31)
        try:
            while True:
                # Between messages the network timeout applies; within one (the rest of a
                # command or dataset still to come), the DIMSE timeout.
                timeout = (self.settings.network_timeout if association.incoming is None
                           else self.settings.dimse_timeout)
                try:  # asyncio.timeout, not wait_for: no task per PDU read
                    async with asyncio.timeout(timeout):
                        pdu_type, body = await read_pdu(reader, limit + 6)
                except TimeoutError:
                    raise ProtocolError(0x00, f"no data for {timeout:g} s") from None
                if pdu_type == P_DATA_TF:
                    await self._p_data(body, association, writer, peer_address)
                elif pdu_type == RELEASE_RQ:
                    writer.write(pdu(RELEASE_RP, bytes(4)))
                    await writer.drain()
                    if association.incoming is not None:  # released mid-message: keep nothing
                        raise AssociationEnded("released during a message")
                    return True
                elif pdu_type == ABORT:
                    raise AssociationEnded("aborted by the peer")
                elif pdu_type in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, RELEASE_RP):
                    raise ProtocolError(UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02X}")
                else:
                    raise ProtocolError(UNRECOGNISED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
        except ProtocolError as error:
            return await self._abort(writer, association, peer_address, error.reason, str(error))
        except (AssociationEnded, asyncio.IncompleteReadError, ConnectionError) as error:
            ended = (str(error) if isinstance(error, AssociationEnded)
                     else "connection closed by the peer")
            if association.incoming is not None or isinstance(error, AssociationEnded):
                logger.warning("association from %s at %s ended: %s", association.calling_ae,
                               peer_address, ended)
                await self._report(self.reception.association_aborted, association.calling_ae,
                                   peer_address, ended)
            return False
        except Exception as error:  # the edge: an internal failure ends this association only
            logger.exception("association from %s at %s failed", association.calling_ae,
                             peer_address)
            return await self._abort(writer, association, peer_address, 0x00,
                                     f"internal error: {type(error).__name__}")
        finally:
            if association.incoming is not None:
                association.incoming.discard()
                association.incoming = None

    async def _abort(self, writer: asyncio.StreamWriter, association: _Association,
                     peer_address: str, reason: int, why: str) -> bool:
        logger.warning("aborted association from %s at %s: %s", association.calling_ae,
                       peer_address, why)
        writer.write(abort_pdu(2, reason))
        await self._report(self.reception.association_aborted, association.calling_ae,
                           peer_address, why)
        return True

    async def _p_data(self, body: bytes, association: _Association,
                      writer: asyncio.StreamWriter, peer_address: str) -> None:
        """Take one P-DATA-TF's PDVs; run each message once its last fragment is in. The
        message being received is ``association.incoming`` throughout, so whatever is raised
        midway, the association's clean-up finds its file."""
        view = memoryview(body)
        offset = 0
        while offset < len(body):
            if offset + 6 > len(body):
                raise ProtocolError(INVALID_PARAMETER_VALUE, "truncated PDV item")
            length, context_id, header = _PDV_HEADER.unpack_from(body, offset)
            end = offset + 4 + length
            if length < 2 or end > len(body):
                raise ProtocolError(INVALID_PARAMETER_VALUE, "PDV item length out of range")
            if context_id not in association.contexts:
                raise ProtocolError(INVALID_PARAMETER_VALUE,
                                    f"PDV for presentation context {context_id}, never accepted")
            if association.incoming is None:
                association.incoming = _Incoming(context_id)
            elif association.incoming.context_id != context_id:
                raise ProtocolError(UNEXPECTED_PDU, "PDVs of two messages interleaved")
            fragment = view[offset + 6:end]
            offset = end
            if header & 0x01:
                await self._command_fragment(association, fragment, header, writer)
            else:
                await self._data_fragment(association, fragment, header, writer, peer_address)

    async def _command_fragment(self, association: _Association, fragment: memoryview,
                                header: int, writer: asyncio.StreamWriter) -> None:
        incoming = association.incoming
        assert incoming is not None
        if incoming.elements is not None:
            raise ProtocolError(UNEXPECTED_PDU, "command fragment after the command set")
        incoming.command += fragment
        if not header & 0x02:
            return
        elements = incoming.elements = parse_command(bytes(incoming.command))
        command_field = _us(elements[COMMAND_FIELD])
        has_data = _us(elements.get(COMMAND_DATA_SET_TYPE, b"\x01\x01")) != NO_DATA_SET
        if command_field == C_ECHO_RQ and not has_data:
            association.incoming = None
            await self._send(writer, association, incoming.context_id,
                             response(C_ECHO_RSP, elements, Status.SUCCESS))
            return
        if command_field == C_STORE_RQ and has_data:
            try:
                self._open_dataset(incoming, association.contexts[incoming.context_id][1])
            except FileMetaError as error:
                raise ProtocolError(INVALID_PARAMETER_VALUE, str(error)) from None
            return
        raise ProtocolError(UNEXPECTED_PDU, f"DIMSE command 0x{command_field:04X} not served")

    async def _data_fragment(self, association: _Association, fragment: memoryview, header: int,
                             writer: asyncio.StreamWriter, peer_address: str) -> None:
        incoming = association.incoming
        assert incoming is not None
        if incoming.file is None or incoming.elements is None or incoming.path is None:
            raise ProtocolError(UNEXPECTED_PDU, "dataset fragment before a C-STORE command")
        incoming.file.write(fragment)
        if not header & 0x02:
            return
        incoming.file.close()
        incoming.file = None
        elements = incoming.elements
        received = ReceivedInstance(
            data=incoming.path, calling_ae=association.calling_ae, peer_address=peer_address,
            affected_sop_class_uid=_ui(elements.get(AFFECTED_SOP_CLASS_UID, b"")),
            affected_sop_instance_uid=_ui(elements.get(AFFECTED_SOP_INSTANCE_UID, b"")))
        status = await self._storer.store(received)
        if status == Status.SUCCESS:  # the store has moved the file into storage
            incoming.path = None
        incoming.discard()  # a refused instance's file goes
        association.incoming = None
        await self._send(writer, association, incoming.context_id,
                         response(C_STORE_RSP, elements, status))

    @staticmethod
    def _open_dataset(incoming: _Incoming, transfer_syntax: str) -> None:
        """A temporary Part 10 file for ``incoming`` (in tempfile's folder: the node puts it on
        the storage volume) with the file meta written; the dataset's fragments are appended
        as they arrive. The file is the message's from the start, so it is removed with it."""
        elements = incoming.elements or {}
        head = part10_head(elements.get(AFFECTED_SOP_CLASS_UID, b""),
                           elements.get(AFFECTED_SOP_INSTANCE_UID, b""), transfer_syntax,
                           IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
        descriptor, name = _create_temporary_file()
        incoming.path = Path(name)
        incoming.file = os.fdopen(descriptor, "wb", buffering=1 << 20)
        incoming.file.write(head)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, association: _Association, context_id: int,
                    command: bytes) -> None:
        writer.write(p_data(context_id, command, association.peer_max_pdu))
        await writer.drain()


_temporary_names = itertools.count()


def _create_temporary_file() -> tuple[int, str]:
    """A new, empty file in ``tempfile``'s folder (0600, opened for writing): like
    ``tempfile.mkstemp`` but named by process and counter, without its random names (a
    twentieth of the receiver's CPU per instance). A name left by an earlier process with the
    same pid is skipped."""
    folder = tempfile.gettempdir()
    while True:
        name = os.path.join(folder, f"lacuna-{os.getpid()}-{next(_temporary_names)}.dcm")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
        except FileExistsError:
            continue


async def read_pdu(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """One PDU: (type, body). Raises IncompleteReadError when the stream ends, ProtocolError
    for a length over ``limit``."""
    header = await reader.readexactly(6)
    pdu_type, length = _PDU_HEADER.unpack(header)
    if length > limit:
        raise ProtocolError(INVALID_PARAMETER_VALUE,
                            f"PDU of {length} bytes exceeds the limit of {limit}")
    return pdu_type, await reader.readexactly(length)


def start_asyncio_scp(settings: ScpSettings, reception: Reception) -> AsyncioScp:
    """Start the asyncio receiver; ``server_address`` has the bound port."""
    return AsyncioScp(settings, reception).start()

