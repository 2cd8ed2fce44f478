"""Regenerate the committed Python stubs from ``proto/fedprune/v1/*.proto``: ``python -m proto.generate``.

The sources are compiled with the repository root as the include path, so the stubs import each other as
``proto.fedprune.v1.*_pb2`` (a bare ``fedprune.v1`` would collide with the ``fedprune`` CLI package).
Needs grpcio-tools (in the ``dev`` extras); nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRECTORY = Path("proto") / "fedprune" / "v1"
"""Where the ``.proto`` sources live, relative to the repository root (and to any output root)."""

GENERATED_SUFFIXES: tuple[str, ...] = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class GenerationError(RuntimeError):
    """protoc rejected the sources or is not installed."""


def proto_sources(root: Path = REPOSITORY_ROOT) -> list[Path]:
    """Return the ``.proto`` files, relative to ``root``, in a stable order."""
    return sorted(path.relative_to(root) for path in (root / SOURCE_DIRECTORY).glob("*.proto"))


def generated_files(root: Path = REPOSITORY_ROOT) -> list[Path]:
    """Return the stub paths (relative to ``root``) that the sources generate."""
    return [
        source.with_name(source.stem + suffix)
        for source in proto_sources(root)
        for suffix in GENERATED_SUFFIXES
    ]


def _protoc(arguments: list[str]) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as error:  # a runtime install has no grpcio-tools; say how to get it
        raise GenerationError(
            "grpcio-tools is not installed; install the dev extras: pip install -e '.[dev]'"
        ) from error
    # grpc_tools ships the well-known types (google/protobuf/*.proto) beside its module.
    well_known = Path(protoc.__file__).parent / "_proto"
    command = ["protoc", f"--proto_path={REPOSITORY_ROOT}", f"--proto_path={well_known}", *arguments]
    status = protoc.main(command)
    if status != 0:
        raise GenerationError(f"protoc failed with status {status}: {' '.join(command)}")


def generate(out_root: Path = REPOSITORY_ROOT) -> list[Path]:
    """Return the stub files written under ``out_root`` (the repository root unless told otherwise)."""
    out_root.mkdir(parents=True, exist_ok=True)
    sources = [str(REPOSITORY_ROOT / source) for source in proto_sources()]
    _protoc(
        [
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *sources,
        ]
    )
    written = [out_root / path for path in generated_files()]
    missing = [str(path) for path in written if not path.exists()]
    if missing:
        raise GenerationError(f"protoc did not write {', '.join(missing)}")
    return written


def descriptor_set(out_file: Path) -> bytes:
    """Return the serialized ``FileDescriptorSet`` of the sources (written to ``out_file``).

    Unlike the stubs, the descriptors do not depend on the protoc version, so the staleness test can
    compare them with the committed stubs even when another grpcio-tools is installed.
    """
    sources = [str(REPOSITORY_ROOT / source) for source in proto_sources()]
    _protoc([f"--descriptor_set_out={out_file}", *sources])
    return out_file.read_bytes()


def tools_version() -> str:
    """Return the installed grpcio-tools version, or "" without one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the stubs in place (or under ``--out``) and return an exit code."""
    parser = argparse.ArgumentParser(prog="python -m proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY_ROOT, help="output root [the repository]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        written = generate(args.out)
    except GenerationError as error:
        print(f"proto.generate: error: {error}", file=sys.stderr)
        return 1
    for path in written:
        logger.info("wrote %s", path)
    logger.info("generated with grpcio-tools %s", tools_version())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
