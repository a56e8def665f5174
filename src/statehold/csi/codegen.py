"""Generate the Python code for ``csi.proto`` into ``statehold/csi/gen`` (committed).

``python -m statehold.csi.codegen`` regenerates it; ``--check`` regenerates into a temporary
directory and exits 1 if the committed files differ (``make test`` runs it, so stale
generated code fails the build). The gRPC module is rewritten to import its message module
as ``statehold.csi.gen.csi_pb2``: protoc emits a top-level ``import csi_pb2`` which only works
when ``gen/`` itself is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "csi.proto"
GEN = HERE / "gen"
FILES = ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py")
INIT = '"""Code generated from csi.proto by statehold.csi.codegen; do not edit."""\n'


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on csi.proto, writing the modules into ``out``."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = resources.files("grpc_tools") / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        "grpc_tools.protoc",
        f"--proto_path={HERE}",
        f"--proto_path={include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    code = protoc.main(argv)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    grpc_mod = out / "csi_pb2_grpc.py"
    text = grpc_mod.read_text()
    text = text.replace("import csi_pb2 as csi__pb2", "from statehold.csi.gen import csi_pb2 as csi__pb2")
    grpc_mod.write_text(text)
    (out / "__init__.py").write_text(INIT)
    return [out / name for name in (*FILES, "__init__.py")]


def differences(committed: Path, fresh: Path) -> list[str]:
    """Names of generated files whose committed copy differs from a fresh generation."""
    stale = []
    for name in (*FILES, "__init__.py"):
        a, b = committed / name, fresh / name
        if not a.exists() or a.read_bytes() != b.read_bytes():
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m statehold.csi.codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        generate(GEN)
        print(f"generated {', '.join(FILES)} in {GEN}")
        return 0
    with tempfile.TemporaryDirectory(prefix="statehold-codegen-") as tmp:
        generate(Path(tmp))
        stale = differences(GEN, Path(tmp))
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
