"""Generate the Python gRPC code from proto/vidserve.proto into service/gateway/grpc_gen/.

uv run python proto/generate.py          # (re)write the generated files
uv run python proto/generate.py --check  # exit 1 if they are stale (a test runs this)
"""

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "vidserve.proto"
OUT = ROOT / "service" / "gateway" / "grpc_gen"
FILES = ("vidserve_pb2.py", "vidserve_pb2.pyi", "vidserve_pb2_grpc.py")


def generate(out: Path) -> None:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO.parent}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    # The generated service module imports its messages as a top-level module; make it relative
    # so that the package needs no entry on sys.path.
    grpc_file = out / "vidserve_pb2_grpc.py"
    grpc_file.write_text(
        grpc_file.read_text().replace(
            "import vidserve_pb2 as vidserve__pb2", "from . import vidserve_pb2 as vidserve__pb2"
        )
    )


def stale() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [
            name
            for name in FILES
            if not (OUT / name).is_file()
            or (OUT / name).read_text() != (Path(tmp) / name).read_text()
        ]


if __name__ == "__main__":
    if "--check" in sys.argv:
        old = stale()
        if old:
            print(f"stale generated files: {', '.join(old)}; run: uv run python proto/generate.py")
            raise SystemExit(1)
        print("generated gRPC code is fresh")
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        generate(OUT)
        (OUT / "__init__.py").write_text(
            '"""Generated from proto/vidserve.proto by proto/generate.py; do not edit."""\n'
        )
        print(f"wrote {', '.join(FILES)} to {OUT}")
