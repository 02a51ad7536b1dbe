"""Generate the Python code for the audiochat contract: `python proto/generate.py OUTDIR`.

`make proto` writes into gen/; the test suite writes into a temporary folder and diffs, so the committed
code can never drift from the .proto files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = Path("audiochat", "v1")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc with the Python, gRPC and mypy plugins; return the files written, relative to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    plugin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={shutil.which('protoc-gen-mypy', path=str(plugin_dir))}",
        f"--plugin=protoc-gen-mypy_grpc={shutil.which('protoc-gen-mypy_grpc', path=str(plugin_dir))}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    package = out_dir / PACKAGE_DIR
    # Empty markers make audiochat.v1 a regular package that mypy and setuptools both find.
    for marker in (package / "__init__.py", package / "py.typed", package.parent / "__init__.py"):
        marker.touch()
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python proto/generate.py OUTDIR")
    for path in generate(Path(sys.argv[1])):
        print(path)
