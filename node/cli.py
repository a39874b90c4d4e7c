"""The ``ai-node`` console script.

``ai-node serve | status [--json] | echo AE@HOST:PORT | segment DICOM_DIR --output OUT_DIR``

Every subcommand takes ``--config`` (default ``./ae_config.yaml``), ``--port``
and ``--data-dir`` (which override the file).  A configuration error names the
file, the key and the value, and exits with status 2.  Subcommands are small
functions registered in :data:`COMMANDS`; each adds its parser and handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from config.errors import ConfigError, NodeError
from config.loader import DEFAULT_CONFIG_PATH, load_config
from config.schema import NodeConfig
from node.followup_cli import COMMANDS as FOLLOWUP_COMMANDS
from node.results_cli import COMMANDS as RESULTS_COMMANDS

LOGGER = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, NodeConfig], int]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help="configuration file (ae_config.yaml)",
    )
    common.add_argument("--port", type=int, help="override port")
    common.add_argument("--data-dir", type=Path, help="override data_dir")
    return common


def _add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve", parents=[common], help="run the Storage SCP, completion and worker"
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.server import serve

    return serve(config)


def _add_status(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("status", parents=[common], help="series, jobs and deliveries")
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output (docs/node.md)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many series and jobs")
    parser.set_defaults(handler=_status)


def _status(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.report import print_status
    from storage.db import init_database
    from storage.models import connected
    from storage.status import snapshot

    init_database(config.database_path, config.database_url)
    with connected():
        report = snapshot(args.limit)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_status(report, sys.stdout)
    return 0


def _add_echo(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("echo", parents=[common], help="C-ECHO a peer: AE@HOST:PORT")
    parser.add_argument("peer", help="AE@HOST:PORT")
    parser.set_defaults(handler=_echo)


def _echo(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.echo import Address, echo

    result = echo(config, Address.parse(args.peer))
    print(result.message)
    return 0 if result.ok else 1


def _add_segment(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("segment", parents=[common], help="segment a DICOM series directory")
    parser.add_argument("dicom_dir", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.set_defaults(handler=_segment)


def _segment(args: argparse.Namespace, config: NodeConfig) -> int:
    from inference.segment_cli import run  # lazily: only this command imports torch

    return int(run(config, args.dicom_dir, args.output))


#: each adds one subcommand: (subparsers, common parent parser) -> None
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _add_serve,
    _add_status,
    _add_echo,
    _add_segment,
    *FOLLOWUP_COMMANDS,  # followup show|export|report|plot|baseline, purge (node/followup_cli.py)
    *RESULTS_COMMANDS,  # retry, followup show (node/results_cli.py)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-node", description="DICOM AI node")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()
    for add in COMMANDS:
        add(sub, common)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every PDU and request at INFO; keep its warnings only, unless debugging
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line overrides; a relative --data-dir is relative to the current directory."""
    data_dir = args.data_dir.resolve() if args.data_dir is not None else None
    return {"port": args.port, "data_dir": data_dir}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"ai-node: configuration error:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    handler: Handler = args.handler
    try:
        return handler(args, config)
    except NodeError as exc:
        print(f"ai-node {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
