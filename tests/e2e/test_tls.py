"""DICOM TLS with real certificates (openssl) and a real peer (dcmtk storescu): a client with
a certificate from the trusted CA stores; one from another CA, one without a certificate and
one speaking plain TCP are refused, and the node keeps serving."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.app import EmbeddedNode
from node.db.tables import Instance
from tests.conftest import require_tool
from tests.e2e.conftest import ENGINES, Pacs, node_settings, requested_engine, storescu

pytestmark = pytest.mark.e2e


def openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", str(key), "-out", str(cert))
    return key, cert


def issue(folder: Path, name: str, ca: tuple[Path, Path], server: bool) -> tuple[Path, Path]:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
            "-out", str(request))
    extensions = folder / f"{name}.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server
                          else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(extensions))
    return key, cert


@pytest.fixture
def tls_node(tmp_path: Path, pacs: Pacs, request: pytest.FixtureRequest,
             ) -> Iterator[tuple[EmbeddedNode, dict[str, Path]]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    trusted = make_ca(pki, "hospital-ca")
    other = make_ca(pki, "other-ca")
    server_key, server_cert = issue(pki, "lacuna", trusted, server=True)
    client_key, client_cert = issue(pki, "scanner", trusted, server=False)
    rogue_key, rogue_cert = issue(pki, "rogue", other, server=False)
    settings = node_settings(tmp_path, pacs, engine=requested_engine(request))
    settings = replace(settings, scp=replace(
        settings.scp, tls_certificate=server_cert, tls_private_key=server_key,
        tls_ca_certificates=trusted[1], tls_require_client_certificate=True))
    node = EmbeddedNode(settings, process=False)
    node.start()
    yield node, {"ca": trusted[1], "client_key": client_key, "client_cert": client_cert,
                 "rogue_key": rogue_key, "rogue_cert": rogue_cert}
    node.stop()


def stored(node: EmbeddedNode) -> int:
    with node.database.sessions.begin() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_tls_stores_from_trusted_clients_and_refuses_the_others(
    tls_node: tuple[EmbeddedNode, dict[str, Path]], synthetic_study, engine: str  # type: ignore[no-untyped-def]
) -> None:
    node, pki = tls_node
    one = next(synthetic_study.folder.rglob("*.dcm"))
    trusted = ("+tls", str(pki["client_key"]), str(pki["client_cert"]), "+cf", str(pki["ca"]))
    rogue = ("+tls", str(pki["rogue_key"]), str(pki["rogue_cert"]), "+cf", str(pki["ca"]))
    anonymous = ("+tla", "+cf", str(pki["ca"]))

    assert storescu(node.port, one, *rogue).returncode != 0  # client CA not trusted
    assert storescu(node.port, one, *anonymous).returncode != 0  # no client certificate
    assert storescu(node.port, one).returncode != 0  # plain TCP to a TLS port
    assert stored(node) == 0

    sent = storescu(node.port, synthetic_study.folder, *trusted)
    assert sent.returncode == 0, sent.stderr
    assert stored(node) == len(list(synthetic_study.folder.rglob("*.dcm")))
