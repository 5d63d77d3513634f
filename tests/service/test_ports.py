"""A second `vidserve serve` on a port that a running one holds is refused with a clear message
and a non-zero exit, for gRPC as for REST; it never starts beside the first and splits its calls."""

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.service.conftest import ROOT, Server, free_port


@pytest.fixture
def first(server):
    """The running server whose ports a second one asks for: the session's shared one (its
    limits play no part here)."""
    return server


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """The second server's store. `serve` loads its models before it binds its ports, and the
    shipped ones take two thirds of its time to fail; what it would serve plays no part in the
    refusal of a busy port."""
    return tmp_path_factory.mktemp("empty-store")


def second_serve(rest_port: int, grpc_port: int, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--store",
            str(store),
            "--port",
            str(rest_port),
            "--grpc-port",
            str(grpc_port),
        ],
        cwd=ROOT,
        env={**os.environ, "VIDSERVE_HOST": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=180,
    )


def serving(server: Server) -> bool:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_busy_grpc_port_is_refused(first, empty_store):
    result = second_serve(free_port(), first.grpc_port, empty_store)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"port {first.grpc_port}" in output and "gRPC" in output, output
    assert "Traceback" not in output, "a clear message, not a traceback"
    # Every call still reaches the first server.
    assert all(serving(first) for _ in range(20))


def test_a_busy_rest_port_is_refused(first, empty_store):
    result = second_serve(first.port, free_port(), empty_store)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(first.port) in output, output
    assert all(serving(first) for _ in range(5))
