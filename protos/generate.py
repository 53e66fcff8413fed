"""Regenerate the committed Python stubs in serving/pb/ from protos/ (see protos/README.md).

    .venv/bin/python protos/generate.py            # rewrite serving/pb/
    .venv/bin/python protos/generate.py --out DIR  # write elsewhere (the staleness test does this)

protoc names modules after the proto's path (``genserve.v1.genserve_pb2``); the stubs live flat
in the package ``genserve.serving.pb``, so the script rewrites those references to package-relative
imports and the real module name. The output depends only on the .proto files and the pinned
grpcio-tools version.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent
REPO = PROTOS.parent
DEFAULT_OUT = REPO / "serving" / "pb"
PACKAGE = "genserve.serving.pb"
PROTO_FILES = ["genserve/v1/genserve.proto"]

log = logging.getLogger("generate")


def _fix(text: str, stem_modules: dict[str, str]) -> str:
    """Point protoc's path-based module names at the flat ``genserve.serving.pb`` package."""
    for dotted, stem in stem_modules.items():
        # _pb2_grpc.py: ``from genserve.v1 import genserve_pb2 as genserve_dot_v1_dot_genserve__pb2``
        parent, _, name = dotted.rpartition(".")
        text = re.sub(rf"^from {re.escape(parent)} import {name}\b", f"from . import {stem}", text, flags=re.M)
        # _pb2.py: the module name given to the descriptor builder (sets the classes' __module__)
        text = text.replace(f"'{dotted}'", f"'{PACKAGE}.{stem}'")
    return text


def generate(out: Path) -> list[Path]:
    """Run protoc on PROTO_FILES and write the fixed-up stubs into ``out``; return the files written."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTO_FILES,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        stem_modules = {p.removesuffix(".proto").replace("/", ".") + "_pb2": Path(p).stem + "_pb2" for p in PROTO_FILES}
        for proto in PROTO_FILES:
            stem = proto.removesuffix(".proto")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                src = Path(tmp) / f"{stem}{suffix}"
                dst = out / f"{Path(stem).name}{suffix}"
                dst.write_text(_fix(src.read_text(), stem_modules))
                written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(args.out):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
