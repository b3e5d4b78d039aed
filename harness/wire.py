"""A raw DICOM upper-layer client for tests and bench/: pynetdicom's encoders, our own socket,
so the bytes can be timed, cut and mutated. Contexts are proposed with odd IDs 1, 3, 5, ..."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)

VERIFICATION = "1.2.840.10008.1.1"
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def associate_rq(called: str, calling: str = "RAW",
                 contexts: tuple[tuple[str, tuple[str, ...]], ...] = ((VERIFICATION, ()),),
                 max_pdu: int = 16384, extra: tuple[Any, ...] = ()) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing (abstract syntax, transfer syntaxes; empty: pynetdicom's
    default ones) as contexts 1, 3, 5, ..."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = [build_context(abstract, list(syntaxes) or None) for abstract, syntaxes in contexts]
    for number, context in enumerate(proposed):
        context.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = proposed
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [maximum, implementation, *extra]
    return bytes(A_ASSOCIATE_RQ(primitive).encode())


def p_data_pdus(message: C_STORE_RQ | C_ECHO_RQ, context_id: int, max_pdu: int) -> list[bytes]:
    """``message`` as the P-DATA-TF PDUs a requestor sends."""
    return [bytes(P_DATA_TF(p).encode()) for p in message.encode_msg(context_id, max_pdu)]


def echo_message(message_id: int = 1) -> C_ECHO_RQ:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return message


def read_pdu(stream: socket.socket) -> tuple[int, bytes] | None:
    """One PDU as (type, body); None when the connection closes first."""
    header = b""
    while len(header) < 6:
        chunk = stream.recv(6 - len(header))
        if not chunk:
            return None
        header += chunk
    pdu_type, length = struct.unpack(">BxI", header)
    body = b""
    while len(body) < length:
        chunk = stream.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return pdu_type, body
