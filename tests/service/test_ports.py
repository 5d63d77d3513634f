"""A second `vidserve serve` on a port that a running one holds is refused with a clear message
and a non-zero exit, for gRPC as for REST; it never starts beside the first and splits its calls."""

import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.service.conftest import ROOT, Server, free_port


@pytest.fixture(scope="module")
def first():
    server = Server()
    yield server
    server.stop()


def second_serve(rest_port: int, grpc_port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
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


def test_a_busy_grpc_port_is_refused(first):
    result = second_serve(free_port(), first.grpc_port)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"port {first.grpc_port}" in output and "gRPC" in output, output
    assert "Traceback" not in output, "a clear message, not a traceback"
    # Every call still reaches the first server.
    assert all(serving(first) for _ in range(20))


def test_a_busy_rest_port_is_refused(first):
    result = second_serve(first.port, free_port())
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(first.port) in output, output
    assert all(serving(first) for _ in range(5))
