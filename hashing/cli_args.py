"""The jobs' command line around a config: ``--config PATH``, ``--print-config``, ``key=value`` overrides,
``--log-level`` / ``-v``. Imports nothing heavy, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hashing.config import Config, ConfigError, config_to_yaml
from hashing.config_loader import load_config

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """``--log-level LEVEL`` (default INFO) and ``-v`` (DEBUG, and Ray's / faiss' own INFO logs too)."""
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                        help="our log level (default INFO); DEBUG also shows Ray's and faiss' INFO logs")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="same as --log-level DEBUG")


def config_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with ``--config PATH``, ``--print-config`` and positional ``key=value`` overrides.

    Jobs add their own flags to it, then call ``config_from_args``.
    """
    parser = argparse.ArgumentParser(
        description=description,
        epilog="overrides: dotted config keys with YAML values, e.g. train.epochs=2 model.pretrained=false",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="YAML config (see configs/); default: schema defaults"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    add_logging_args(parser)
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """Load the config ``args`` (from ``config_parser``) names; a bad config exits via ``parser.error``."""
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.print_config:
        sys.stdout.write(config_to_yaml(config))
        parser.exit(0)
    return config


def parse_cli(argv: Sequence[str] | None = None, description: str = "") -> Config:
    """``--config PATH [key=value ...] [--print-config]`` -> ``Config`` (argv None: ``sys.argv[1:]``)."""
    parser = config_parser(description)
    return config_from_args(parser, parser.parse_intermixed_args(argv))
