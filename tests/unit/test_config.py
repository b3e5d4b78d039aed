import json
import re
from pathlib import Path

import pytest

from node.config import load_settings
from node.errors import ConfigError


def test_defaults_are_the_embedded_node() -> None:
    settings = load_settings(None, {})
    assert settings.scp.ae_title == "LACUNA"
    assert settings.scp.port == 11112
    assert settings.database.url.startswith("sqlite:///var/")
    assert settings.storage.root == Path("var/storage")
    assert settings.destinations == ()


def test_toml_then_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "lacuna.toml"
    config.write_text(
        '[scp]\nae_title = "NODE1"\nport = 104\nallowed_calling_aes = ["MRI1", "PACS"]\n'
        '[study]\nstable_seconds = 5\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
    )
    settings = load_settings(config, {"LACUNA_SCP_PORT": "11113", "LACUNA_STUDY_STABLE_SECONDS": "1.5"})
    assert settings.scp.ae_title == "NODE1"
    assert settings.scp.port == 11113
    assert settings.scp.allowed_calling_aes == ("MRI1", "PACS")
    assert settings.study.stable_seconds == 1.5
    assert settings.destinations[0].host == "10.0.0.5"


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[storage]\nroot = "/data/lacuna"\n')
    assert load_settings(None, {"LACUNA_CONFIG": str(config)}).storage.root == Path("/data/lacuna")


def test_destinations_from_environment_json() -> None:
    settings = load_settings(None, {
        "LACUNA_DESTINATIONS": '[{"name": "a", "ae_title": "A", "host": "h", "port": 1}]',
        "LACUNA_SCP_ALLOWED_CALLING_AES": "X,Y",
    })
    assert [d.name for d in settings.destinations] == ["a"]
    assert settings.scp.allowed_calling_aes == ("X", "Y")


def test_urgency_rule_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "lacuna.toml"
    config.write_text('[study]\nurgent_requested_priorities = ["stat", "HIGH"]\n')
    settings = load_settings(config, {"LACUNA_STUDY_URGENT_CALLING_AES": "ER_MR1, ER_MR2"})
    rule = settings.study.urgency_rule()
    assert settings.study.urgent_calling_aes == ("ER_MR1", "ER_MR2")
    assert rule.is_urgent("ER_MR2", ())
    assert rule.is_urgent("WARD_MR", ("ROUTINE", "high"))
    assert not rule.is_urgent("WARD_MR", ("ROUTINE",))
    assert load_settings(None, {}).study.urgency_rule().is_urgent("X", ("STAT",))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[scp]\nport = "eleven"\n', "scp.port"),
        ('[scp]\nport = 70000\n', "scp.port"),
        ('[scp]\nae_title = "A_TITLE_THAT_IS_TOO_LONG"\n', "scp.ae_title"),
        ('[scp]\ncolour = "red"\n', "scp.colour"),
        ('[study]\nstable_seconds = -1\n', "study.stable_seconds"),
        ('[study]\nurgent_calling_aes = "A\\\\B"\n', "study.urgent_calling_aes"),
        ('[worker]\nshutdown_grace_seconds = "soon"\n', "worker.shutdown_grace_seconds"),
        ('[database]\nurl = "mysql://x"\n', "database.url"),
        ('[study]\nmax_wait_seconds = 0\n', "study.max_wait_seconds"),
        ('[scp]\nport = 0\nprocesses = 2\n', "scp.processes"),
        ("[series_roles]\nignored_descriptions = ['(unclosed']\n", "series_roles.ignored_descriptions"),
        ("[series_roles]\nt1_flair_inversion_time = [1200, 600]\n", "series_roles.t1_flair_inversion_time"),
        ("[series_roles]\nflair = true\n", "series_roles.flair"),
        ('[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\n', "destinations[0].port"),
        ('[[destinations]]\nname="p"\nae_title="P"\nhost="h"\nport=1\n'
         '[[destinations]]\nname="p"\nae_title="Q"\nhost="h"\nport=2\n', "destinations"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=f"config {re.escape(key)}:"):
        load_settings(config, {})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", {})


def test_database_password_is_masked() -> None:
    settings = load_settings(None, {"LACUNA_DATABASE_URL": "postgresql://u:secret@db/lacuna"})
    assert "secret" not in str(settings.describe())


def test_the_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "lacuna.example.toml"
    settings = load_settings(example, {})
    assert settings.destinations[0].name == "pacs"
    assert settings.worker.max_attempts == 5
    assert settings.models.require_registered  # the production setting
    assert settings.results.segment_per_lesion
    viewer = settings.destinations[1]
    assert (viewer.protocol, viewer.objects) == ("STOW-RS", ("SR", "GSPS", "SC"))


def test_destinations_are_checked() -> None:
    def load(*tables: dict[str, object]):  # type: ignore[no-untyped-def]
        return load_settings(None, {"LACUNA_DESTINATIONS": json.dumps(list(tables))})

    pacs = {"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104}
    [destination] = load({**pacs, "transfer_syntaxes": ["ImplicitVRLittleEndian", "1.2.840.10008.1.2.1"],
                          "objects": ["seg", "SC"]}).destinations
    assert destination.transfer_syntaxes == ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
    assert destination.objects == ("SEG", "SC") and destination.protocol == "C-STORE"
    web = load({"name": "web", "url": "http://orthanc:8042/dicom-web/"}).destinations[0]
    assert (web.url, web.address, web.objects) == ("http://orthanc:8042/dicom-web",
                                                   "http://orthanc:8042/dicom-web", ("SEG", "SR"))
    for table, key, message in (
        ({**pacs, "objects": ["PDF"]}, "destinations[0].objects", "PDF is not one of"),
        ({**pacs, "objects": []}, "destinations[0].objects", "at least one"),
        ({**pacs, "transfer_syntaxes": ["JPEGBaseline8Bit"]}, "destinations[0].transfer_syntaxes",
         "not an uncompressed"),
        ({"name": "web", "url": "ftp://x"}, "destinations[0].url", "http"),
        ({"name": "web", "url": "http://x", "port": 104}, "destinations[0].port", "takes no"),
        ({"name": "pacs", "host": "h", "port": 104}, "destinations[0].ae_title", "missing"),
        ({**pacs, "colour": "red"}, "destinations[0].colour", "unknown key"),
    ):
        with pytest.raises(ConfigError, match=f"{re.escape(key)}.*{message}"):
            load(table)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    load, Error = load_settings, ConfigError
    cert, key, ca = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("-----BEGIN-----\n")
    with pytest.raises(Error, match="scp.tls_private_key"):
        load(None, {"LACUNA_SCP_TLS_CERTIFICATE": str(cert)})
    with pytest.raises(Error, match="scp.tls_ca_certificates"):
        load(None, {"LACUNA_SCP_TLS_CERTIFICATE": str(cert), "LACUNA_SCP_TLS_PRIVATE_KEY": str(key)})
    with pytest.raises(Error, match="scp.tls_certificate: .* is not a readable file"):
        load(None, {"LACUNA_SCP_TLS_CERTIFICATE": str(tmp_path / "missing.pem")})
    settings = load(None, {"LACUNA_SCP_TLS_CERTIFICATE": str(cert),
                           "LACUNA_SCP_TLS_PRIVATE_KEY": str(key),
                           "LACUNA_SCP_TLS_CA_CERTIFICATES": str(ca)})
    assert settings.scp.tls_require_client_certificate and settings.scp.tls_ca_certificates == ca
    anonymous = load(None, {"LACUNA_SCP_TLS_CERTIFICATE": str(cert),
                            "LACUNA_SCP_TLS_PRIVATE_KEY": str(key),
                            "LACUNA_SCP_TLS_REQUIRE_CLIENT_CERTIFICATE": "false"})
    assert not anonymous.scp.tls_require_client_certificate
