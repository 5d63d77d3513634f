"""TLS on both ports (VIDSERVE_TLS_CERT_FILE, VIDSERVE_TLS_KEY_FILE, VIDSERVE_TLS_CLIENT_CA_FILE),
against a real `vidserve serve` with a self-signed certificate the test makes (openssl)."""

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import time

import grpc
import httpx
import pytest

from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.settings import SHIPPED_CHECKPOINTS
from tests.service.conftest import ROOT, free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def make_certificate(folder, name: str, ca=None):
    """A certificate and key for 127.0.0.1 / localhost: self-signed, or signed by `ca`."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subject = ["-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    if ca is None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            + ["-keyout", str(key), "-out", str(cert), *subject],
            check=True,
            capture_output=True,
        )
    else:
        request = folder / f"{name}.csr"
        subprocess.run(
            ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes"]
            + ["-keyout", str(key), "-out", str(request), *subject],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca[0])]
            + ["-CAkey", str(ca[1]), "-CAcreateserial", "-days", "2", "-out", str(cert)],
            check=True,
            capture_output=True,
        )
    return cert, key


class TlsServer:
    def __init__(self, env: dict, verify):
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--store", str(SHIPPED_CHECKPOINTS)]
            + ["--port", str(self.port), "--grpc-port", str(self.grpc_port)],
            cwd=ROOT,
            env={**os.environ, "VIDSERVE_HOST": "127.0.0.1", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", verify=verify, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the TLS server did not get ready")
            time.sleep(0.3)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    server = make_certificate(folder, "server")
    ca = make_certificate(folder, "client-ca")
    client = make_certificate(folder, "client", ca=ca)
    return {"server": server, "ca": ca, "client": client}


def trust(cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def list_models(target: str, credentials) -> list[str]:
    async def run():
        async with grpc.aio.secure_channel(target, credentials) as channel:
            stub = pb_grpc.VideoSegmentationStub(channel)
            answer = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
            return [m.name for m in answer.models]

    return asyncio.run(run())


def plain_list_models(target: str) -> grpc.StatusCode:
    async def run():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.VideoSegmentationStub(channel)
            try:
                await stub.ListModels(pb.ListModelsRequest(), timeout=5)
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

    return asyncio.run(run())


def test_https_and_secure_grpc_work_and_plaintext_does_not(certs):
    cert, key = certs["server"]
    env = {"VIDSERVE_TLS_CERT_FILE": str(cert), "VIDSERVE_TLS_KEY_FILE": str(key)}
    server = TlsServer(env, verify=trust(cert))
    try:
        answer = httpx.get(f"{server.url}/v1/models", verify=trust(cert))
        assert answer.status_code == 200 and answer.json()["models"]
        with pytest.raises(httpx.HTTPError):  # an unknown certificate is not trusted
            httpx.get(f"{server.url}/healthz")
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        target = f"127.0.0.1:{server.grpc_port}"
        trusted = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        assert list_models(target, trusted)
        assert plain_list_models(target) == grpc.StatusCode.UNAVAILABLE
        # The image's HEALTHCHECK follows the TLS setting.
        probe_env = {**os.environ, "VIDSERVE_PORT": str(server.port), **env}
        probe_env.pop("VIDSERVE_WORKER_PORT", None)
        probe = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]
        assert subprocess.run(probe, env=probe_env, timeout=30).returncode == 0
    finally:
        server.stop()


def test_a_client_ca_requires_client_certificates(certs):
    cert, key = certs["server"]
    client_cert, client_key = certs["client"]
    env = {
        "VIDSERVE_TLS_CERT_FILE": str(cert),
        "VIDSERVE_TLS_KEY_FILE": str(key),
        "VIDSERVE_TLS_CLIENT_CA_FILE": str(certs["ca"][0]),
    }
    context = trust(cert)
    context.load_cert_chain(str(client_cert), str(client_key))
    server = TlsServer(env, verify=context)
    try:
        assert httpx.get(f"{server.url}/v1/models", verify=context).status_code == 200
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
            httpx.get(f"{server.url}/v1/models", verify=trust(cert))
        target = f"127.0.0.1:{server.grpc_port}"
        with_cert = grpc.ssl_channel_credentials(
            cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes()
        )
        assert list_models(target, with_cert)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            list_models(target, grpc.ssl_channel_credentials(cert.read_bytes()))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
