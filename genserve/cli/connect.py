"""The flags of every verb that calls a server: TLS, a client certificate, a bearer token."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genserve.channel import Credentials


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("connection security")
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="connect with TLS, trusting this CA (implies --tls)")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="mutual TLS: this client certificate")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="mutual TLS: the client certificate's key")
    group.add_argument(
        "--tls-server-name", metavar="NAME", help="check the server's certificate for NAME, not the target's host"
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="send `authorization: Bearer <its first line>` (default: $GENSERVE_TOKEN, if set)",
    )


def credentials(args: argparse.Namespace) -> Credentials:
    """The ``Credentials`` the flags ask for; ValueError for a token file without a token."""
    from genserve.channel import Credentials, read_token

    return Credentials(
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        server_name=args.tls_server_name,
        token=read_token(args.token_file),
    )
