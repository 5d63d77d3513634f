"""Generate the client's gRPC modules from proto/vidserve.proto into vidserve_client/_proto/.

The generated files are committed: the client package installs without grpcio-tools. They are
made by the server's generator (proto/generate.py: protoc, then a package-relative import), so
client and server always read the one proto the same way.

    uv run python clients/python/generate.py          # (re)write the generated files
    uv run python clients/python/generate.py --check  # exit 1 if they are stale (a test runs this)
"""

import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "vidserve_client" / "_proto"
FILES = ("vidserve_pb2.py", "vidserve_pb2.pyi", "vidserve_pb2_grpc.py")
INIT = '"""Generated from proto/vidserve.proto by clients/python/generate.py; do not edit."""\n'


def _server_generator():
    """proto/generate.py, loaded by path (the proto folder is not a package)."""
    path = ROOT / "proto" / "generate.py"
    spec = importlib.util.spec_from_file_location("_vidserve_proto_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _server_generator().generate(out)
    # protoc's style is not the project's: the linter and the formatter leave generated code
    # alone (the server's is excluded in the root pyproject.toml; these say so themselves).
    for name in FILES:
        path = out / name
        path.write_text("# ruff: noqa\n# fmt: off\n" + path.read_text())
    (out / "__init__.py").write_text(INIT)


def stale() -> list[str]:
    """The generated files that differ from what the proto gives now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [
            name
            for name in (*FILES, "__init__.py")
            if not (OUT / name).is_file()
            or (OUT / name).read_text() != (Path(tmp) / name).read_text()
        ]


if __name__ == "__main__":
    if "--check" in sys.argv:
        old = stale()
        if old:
            print(f"stale: {', '.join(old)}; run: uv run python clients/python/generate.py")
            raise SystemExit(1)
        print("the client's generated gRPC code is fresh")
    else:
        generate(OUT)
        print(f"wrote {', '.join(FILES)} to {OUT}")
