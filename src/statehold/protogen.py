"""Generate the Python code for Statehold's protos into each package's ``gen/`` (committed).

Two protos: ``csi/csi.proto`` (the CSI spec's wire facts) and ``agent/agent.proto`` (the
node agent's API). ``python -m statehold.protogen`` regenerates both; ``--check``
regenerates into a temporary directory and exits 1 if a committed file differs (``make
proto-check`` runs it through ``statehold.csi.codegen``, so stale code fails the build).
The gRPC module is rewritten to import its message module by its package path
(``statehold.csi.gen.csi_pb2``): protoc emits a top-level ``import csi_pb2`` which only works
when ``gen/`` itself is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Target:
    """One proto and where its generated modules go."""

    package: str   # the package holding the proto, e.g. "csi"
    stem: str      # the proto's file name without ".proto", e.g. "csi"

    @property
    def source_dir(self) -> Path:
        return ROOT / self.package

    @property
    def proto(self) -> Path:
        return self.source_dir / f"{self.stem}.proto"

    @property
    def gen(self) -> Path:
        return self.source_dir / "gen"

    @property
    def files(self) -> tuple[str, ...]:
        """The generated files, ``__init__.py`` included."""
        s = self.stem
        return (f"{s}_pb2.py", f"{s}_pb2.pyi", f"{s}_pb2_grpc.py", "__init__.py")


CSI = Target("csi", "csi")
AGENT = Target("agent", "agent")
TARGETS = (CSI, AGENT)


def generate(target: Target, out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on the target's proto, writing its modules into ``out``."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = resources.files("grpc_tools") / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        "grpc_tools.protoc",
        f"--proto_path={target.source_dir}",
        f"--proto_path={include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(target.proto),
    ]
    code = protoc.main(argv)
    if code != 0:
        raise SystemExit(f"protoc failed on {target.proto.name} with exit code {code}")
    s = target.stem
    grpc_mod = out / f"{s}_pb2_grpc.py"
    text = grpc_mod.read_text()
    text = text.replace(f"import {s}_pb2 as {s}__pb2",
                        f"from statehold.{target.package}.gen import {s}_pb2 as {s}__pb2")
    grpc_mod.write_text(text)
    (out / "__init__.py").write_text(
        f'"""Code generated from {s}.proto by statehold.protogen; do not edit."""\n')
    return [out / name for name in target.files]


def differences(target: Target, committed: Path, fresh: Path) -> list[str]:
    """Names of generated files whose committed copy differs from a fresh generation."""
    stale = []
    for name in target.files:
        a, b = committed / name, fresh / name
        if not a.exists() or a.read_bytes() != b.read_bytes():
            stale.append(name)
    return stale


def check(targets: tuple[Target, ...] = TARGETS) -> list[str]:
    """Every stale generated file, as ``package/gen/name``; empty when all are current."""
    stale: list[str] = []
    with tempfile.TemporaryDirectory(prefix="statehold-protogen-") as tmp:
        for t in targets:
            fresh = Path(tmp) / t.package
            generate(t, fresh)
            stale += [f"{t.package}/gen/{name}" for name in differences(t, t.gen, fresh)]
    return stale


def main(argv: list[str] | None = None, prog: str = "python -m statehold.protogen") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        for t in TARGETS:
            generate(t, t.gen)
            print(f"generated {', '.join(t.files)} in {t.gen}")
        return 0
    stale = check()
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
