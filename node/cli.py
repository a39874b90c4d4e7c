"""The ``ai-node`` console script.

``ai-node [--version] COMMAND ...``: ``serve``, ``status``, ``echo``, ``segment``,
``retry``, ``rerun``, ``followup show``.

Global options go before or after the subcommand (``ai-node --config X status``
and ``ai-node status --config X`` are the same; the later one wins):
``--config`` (else ``$AINODE_CONFIG``, else ``./ae_config.yaml``), ``--data-dir``,
``--log-level``, ``--log-format``.  ``--port`` belongs to ``serve`` alone: no
other command listens.  Precedence: command line > environment (``AINODE_*``) >
the file > defaults.

Exit status: 0 done; 1 the command failed (a :class:`NodeError`, a failed
echo, a series that could not be segmented); 2 a usage or configuration error
(the message names the file, key and value; a missing file or directory is
named as missing).  Subcommands are small functions registered in
:data:`COMMANDS`; each adds its parser and handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, get_args

from common.logs import configure_logging
from config.errors import ConfigError, NodeError
from config.loader import DEFAULT_CONFIG_PATH, load_config
from config.schema import NodeConfig, OutputKind
from node.followup_cli import COMMANDS as FOLLOWUP_COMMANDS
from node.results_cli import COMMANDS as RESULTS_COMMANDS

LOGGER = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, NodeConfig], int]

#: the environment variable naming the configuration file (below --config)
CONFIG_ENVIRONMENT = "AINODE_CONFIG"
#: options every command takes, before or after its name
GLOBAL_OPTIONS = ("config", "data_dir", "log_level", "log_format")


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``--config``, ``--data-dir``, ``--log-level``, ``--log-format`` on one parser level.

    Below the top level the defaults are suppressed, so an option given before
    the subcommand is not reset by the subcommand's parser.
    """
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--config",
        type=Path,
        default=default,
        help=f"configuration file (default: ${CONFIG_ENVIRONMENT}, else ./{DEFAULT_CONFIG_PATH})",
    )
    group.add_argument(
        "--data-dir", type=Path, default=default, help="override data_dir (relative to here)"
    )
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=default,
        help="override log_level",
    )
    group.add_argument(
        "--log-format", choices=["text", "json"], default=default, help="override log_format"
    )


def _with_global_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand parser, at every depth, the global options it lacks."""
    for action in parser._actions:  # argparse keeps its subparsers there, nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if "--config" not in child._option_string_actions:
                    _add_global_options(child, suppress=True)
                _with_global_options_everywhere(child)


def _add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve", parents=[common], help="run the Storage SCP, completion and worker"
    )
    parser.add_argument("--port", type=int, help="override port (the DICOM port listened on)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.server import serve

    for warning in destination_warnings(config):
        LOGGER.warning("%s", warning)
    return serve(config)


def destination_warnings(config: NodeConfig) -> list[str]:
    """One sentence per calling AE whose results could go nowhere (empty when all resolve).

    A job whose results have no destination still runs and keeps them in
    ``data_dir/jobs/<id>/``; it ends in the state ``no_destination``.
    """
    fixed = [d for d in config.destinations if not d.reply_to_sender]
    replies = any(d.reply_to_sender for d in config.destinations)
    if fixed:
        return []
    kept = f"their results will be kept in {config.data_dir / 'jobs'} (job state no_destination)"
    if config.accepts_any_calling_ae:
        how = "replies go only to listed peers" if replies else "destinations is empty"
        return [
            "peers is empty, so any calling AE is accepted, but no destination can be resolved "
            f"for it ({how}, and no fixed destination is configured): {kept}"
        ]
    if replies:
        return []  # every listed peer is replied to
    return [
        f"no destination for calling AE {peer.ae_title!r} ({peer.host}:{peer.port}): "
        f"destinations is empty: {kept}"
        for peer in config.peers
    ]


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


def _output_kinds(text: str) -> tuple[str, ...]:
    """``rtstruct,seg,sr`` -> the kinds, each one known."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in get_args(OutputKind)]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(get_args(OutputKind))}"
        )
    return tuple(dict.fromkeys(kinds))


def _add_segment(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("segment", parents=[common], help="segment a DICOM series directory")
    parser.add_argument("dicom_dir", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--outputs",
        type=_output_kinds,
        help="DICOM outputs to write, e.g. rtstruct,seg,sr (default: the configuration's)",
    )
    parser.set_defaults(handler=_segment)


def _segment(args: argparse.Namespace, config: NodeConfig) -> int:
    from inference.segment_cli import run  # lazily: only this command imports torch

    # a progress bar on a terminal only: piped or logged, stderr stays line by line
    return int(run(config, args.dicom_dir, args.output, progress=sys.stderr.isatty()))


def _add_web(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "web", parents=[common], help="read-only web page of the follow-up record"
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address (default: 127.0.0.1)")
    # dest web_port: --port of serve overrides the configured DICOM port, this one must not
    parser.add_argument("--port", dest="web_port", type=int, default=8080, help="default: 8080")
    parser.add_argument("--token", help="required bearer token (default: $AINODE_WEB_TOKEN)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="and this private key (PEM, owner-only)")
    parser.set_defaults(handler=_web)


def _web(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.web import run  # lazily: only this command serves HTTP

    return run(config, args.bind, args.web_port, args.token, args.tls_cert, args.tls_key)


def _add_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "demo", parents=[common], help="one synthetic patient, three studies, end to end"
    )
    parser.add_argument("peer", nargs="?", help="a running node, AE@HOST:PORT (default: start one)")
    parser.add_argument("--output", type=Path, default=Path("demo_report.html"))
    parser.add_argument("--workdir", type=Path, help="keep the studies (and the node's data) here")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, config: NodeConfig) -> int:
    """demo/ is not runtime code and node/ never imports it (tests/architecture): it runs
    as its own program, as the supervisor runs ``python -m jobs.worker``."""
    command = [sys.executable, "-m", "demo.followup", "--output", str(args.output)]
    command += ["--config", str(config.source or config_path(args))]
    if args.peer:
        command += [args.peer, "--data-dir", str(config.data_dir)]
    if args.workdir is not None:
        command += ["--workdir", str(args.workdir)]
    return subprocess.run(command, check=False).returncode


#: each adds one subcommand: (subparsers, common parent parser) -> None
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _add_serve,
    _add_status,
    _add_echo,
    _add_segment,
    _add_web,  # node/web.py
    _add_demo,  # runs python -m demo.followup (demo/followup/run.py)
    *FOLLOWUP_COMMANDS,  # followup show|export|report|plot|baseline, purge (node/followup_cli.py)
    *RESULTS_COMMANDS,  # retry, rerun, followup show (node/results_cli.py)
]


def package_version() -> str:
    """The installed distribution's version (``pip install -e .`` of this checkout)."""
    try:
        return version("ai-node")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-node", description="DICOM AI node")
    parser.add_argument("--version", action="version", version=f"ai-node {package_version()}")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)
    for add in COMMANDS:
        add(sub, common)
    _with_global_options_everywhere(parser)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line overrides; a relative --data-dir is relative to the current directory."""
    data_dir = args.data_dir.resolve() if args.data_dir is not None else None
    return {
        "port": getattr(args, "port", None),
        "data_dir": data_dir,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "outputs": getattr(args, "outputs", None),
    }


def config_path(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Path:
    """--config, else $AINODE_CONFIG, else ./ae_config.yaml."""
    env = os.environ if environ is None else environ
    if args.config is not None:
        return Path(args.config)
    return Path(env[CONFIG_ENVIRONMENT]) if env.get(CONFIG_ENVIRONMENT) else DEFAULT_CONFIG_PATH


def _missing_input(args: argparse.Namespace, path: Path) -> str | None:
    """Why the command cannot start (a missing file or directory), or None."""
    if not path.is_file():
        where = (
            "--config"
            if args.config is not None
            else f"${CONFIG_ENVIRONMENT}"
            if os.environ.get(CONFIG_ENVIRONMENT)
            else "the default"
        )
        what = "is a directory" if path.is_dir() else "no such file"
        return f"configuration file {path} (from {where}): {what}"
    dicom_dir = getattr(args, "dicom_dir", None)
    if dicom_dir is not None and not dicom_dir.is_dir():
        return f"{dicom_dir}: {'not a directory' if dicom_dir.exists() else 'no such directory'}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = config_path(args)
    missing = _missing_input(args, path)
    if missing is not None:
        print(f"ai-node {args.command}: {missing}", file=sys.stderr)
        return 2
    try:
        config = load_config(path, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"ai-node: configuration error:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format, role="ai-node")
    handler: Handler = args.handler
    try:
        return handler(args, config)
    except NodeError as exc:
        print(f"ai-node {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
