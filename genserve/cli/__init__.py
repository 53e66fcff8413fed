"""The ``genserve`` command: train, eval, export, serve, and the client verbs."""

# One module per verb group, each registering its verbs with ``add_parser(sub)``; the verbs import
# what they need (torch, grpc, serving.config) when they run, so ``--help`` and the client verbs stay fast.

from __future__ import annotations

import argparse
import logging
import os
import sys

from genserve.cli import bench, client, export, profile, serve, train
from genserve.cli import eval as eval_
from genserve.cli.defaults import DEFAULT_CHECKPOINTS, DEFAULT_CLASSIFIER, DEFAULT_MODELS, DEFAULT_SERVER, REPO_ROOT

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_MODELS",
    "DEFAULT_SERVER",
    "EXIT_BROKEN_PIPE",
    "REPO_ROOT",
    "build_parser",
    "main",
]

log = logging.getLogger("genserve")

VERB_GROUPS = (train, export, eval_, serve, client, bench, profile)  # in the order `genserve --help` lists them

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a writer that SIGPIPE ended


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in VERB_GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from genserve.manifest import ManifestError

    try:
        return args.func(args)
    except (ManifestError, FileNotFoundError) as exc:  # a missing or broken model/checkpoint folder
        log.error("%s", exc)
        return 1
    except BrokenPipeError:  # the reader left early (`genserve models | head -1`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail too
        return EXIT_BROKEN_PIPE
