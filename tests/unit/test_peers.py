from pathlib import Path

import pytest

from node.config import load_settings
from node.domain.peers import host_allowed
from node.errors import ConfigError


def resolve(name: str) -> list[str]:
    return {"mri1.example.org": ["10.1.2.3", "fd00::3"]}.get(name, [])


@pytest.mark.parametrize(
    ("address", "entries", "allowed"),
    [
        ("10.1.2.3", ["10.1.2.3"], True),
        ("10.1.2.4", ["10.1.2.3"], False),
        ("10.1.2.4", ["10.1.0.0/16"], True),
        ("::ffff:10.1.2.4", ["10.1.0.0/16"], True),  # IPv4-mapped on a dual-stack socket
        ("fd00::3", ["mri1.example.org"], True),
        ("10.1.2.3", ["mri1.example.org"], True),
        ("10.1.2.9", ["mri1.example.org", "unknown.example.org"], False),
        ("not an address", ["0.0.0.0/0"], False),
    ],
)
def test_host_allowed(address: str, entries: list[str], allowed: bool) -> None:
    assert host_allowed(address, entries, resolve) is allowed


def test_calling_ae_hosts_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "lacuna.toml"
    config.write_text('[scp]\nallowed_calling_aes = ["MRI1", "PACS"]\n'
                      '[scp.calling_ae_hosts]\nMRI1 = ["10.1.2.3", "mri1.example.org"]\n')
    assert load_settings(config, {}).scp.calling_ae_hosts == {
        "MRI1": ("10.1.2.3", "mri1.example.org")}
    settings = load_settings(config, {"LACUNA_SCP_CALLING_AE_HOSTS": '{"PACS": ["10.0.0.0/8"]}'})
    assert settings.scp.calling_ae_hosts == {"PACS": ("10.0.0.0/8",)}
    with pytest.raises(ConfigError, match="scp.calling_ae_hosts: OTHER is not in"):
        load_settings(config, {"LACUNA_SCP_CALLING_AE_HOSTS": '{"OTHER": ["10.0.0.1"]}'})
    with pytest.raises(ConfigError, match="lists no host"):
        load_settings(config, {"LACUNA_SCP_CALLING_AE_HOSTS": '{"MRI1": []}'})
