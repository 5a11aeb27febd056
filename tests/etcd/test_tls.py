"""An etcd that wants TLS client certificates: one member on https with
``--client-cert-auth``, certificates made with openssl for the test."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from cosihost import Resource, UnavailableError
from cosihost.state.etcd import EtcdConfig, EtcdState
from cosihost.testing import wait_for
from cosihost.testing.etcdcluster import ETCD, free_ports, require_etcd

OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(where: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=where)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=where)
        (where / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=where)


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(endpoint, folder of certificates) of a running TLS-only etcd member."""
    require_etcd()
    if OPENSSL is None:
        pytest.skip("openssl is not on PATH (apt-get install -y openssl): it makes the test certificates")
    make_certs(tmp_path)
    client_port, peer_port = free_ports(2)
    endpoint = f"https://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    log = open(tmp_path / "etcd.log", "wb")
    proc = subprocess.Popen(
        [ETCD, "--name", "tls", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"tls={peer}", "--listen-metrics-urls", "",
         "--cert-file", str(tmp_path / "server.pem"), "--key-file", str(tmp_path / "server.key"),
         "--client-cert-auth", "--trusted-ca-file", str(tmp_path / "ca.pem")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    try:
        yield endpoint, tmp_path
    finally:
        proc.kill()
        proc.wait(timeout=10)


def tls_config(endpoint: str, certs: Path, **overrides: object) -> EtcdConfig:
    fields = dict(endpoints=(endpoint,), prefix=f"/tls-{uuid.uuid4().hex[:8]}", ca_file=str(certs / "ca.pem"),
                  cert_file=str(certs / "client.pem"), key_file=str(certs / "client.key"), timeout=5.0)
    fields.update(overrides)
    return EtcdConfig(**fields)  # type: ignore[arg-type]


def connect(config: EtcdConfig) -> EtcdState:
    """The member may still be starting: try until it answers."""
    return wait_for(lambda: _try(config), timeout=20, message="the TLS etcd to accept a client")


def _try(config: EtcdConfig) -> EtcdState | None:
    try:
        return EtcdState(config)
    except UnavailableError:
        return None


def test_client_certificate_gets_in(tls_etcd):
    endpoint, certs = tls_etcd
    st = connect(tls_config(endpoint, certs))
    try:
        st.create(Resource("fleet", "T", "a", {"over": "tls"}))
        assert st.get("fleet", "T", "a").spec == {"over": "tls"}
    finally:
        st.close()


def test_without_a_client_certificate_the_error_says_so(tls_etcd):
    endpoint, certs = tls_etcd
    connect(tls_config(endpoint, certs)).close()  # the member is up
    with pytest.raises(UnavailableError) as err:
        EtcdState(tls_config(endpoint, certs, cert_file=None, key_file=None, timeout=1.0))
    assert "etcd" in str(err.value) and endpoint in str(err.value) and "TLS failed" in str(err.value)


def test_a_missing_certificate_file_is_named(tls_etcd):
    endpoint, certs = tls_etcd
    with pytest.raises(UnavailableError, match="cannot read .*nowhere.pem"):
        EtcdState(tls_config(endpoint, certs, cert_file=str(certs / "nowhere.pem")))


def test_a_supervisor_keeps_a_namespace_in_a_tls_etcd(tls_etcd, supervisor_factory):
    endpoint, certs = tls_etcd
    config = tls_config(endpoint, certs)
    connect(config).close()
    sup = supervisor_factory(config=f"""
        [namespaces.fleet]
        backend = "etcd"
        endpoints = ["{endpoint}"]
        prefix = "{config.prefix}"
        ca_file = "{certs / 'ca.pem'}"
        cert_file = "{certs / 'client.pem'}"
        key_file = "{certs / 'client.key'}"
        """)
    with sup.client(admin=True) as c:
        c.create(Resource("fleet", "Notes", "n", {"x": 1}))
    st = EtcdState(config)
    try:
        assert st.get("fleet", "Notes", "n").spec == {"x": 1}
    finally:
        st.close()
