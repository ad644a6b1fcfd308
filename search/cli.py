"""The `prune-search` command line: one console script, its commands listed in groups, clear
one-line errors.

Each command's parser sits beside its function in the module of its group (`cli_search`,
`cli_model`, `cli_convert`, `cli_data`); those modules import Ray, Optuna and the stages inside
the functions, so building the parser, and `--help`, stay fast.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TypeAlias

from search import cli_convert, cli_data, cli_model, cli_search
from search.cli_args import Commands
from yolov2.errors import InputError, TrainingDivergedError

AddCommand: TypeAlias = Callable[[Commands], None]

# The commands as `prune-search --help` lists them: under each heading, in this order. The listing
# is made from what these register, so it names every command and only those.
COMMAND_GROUPS: tuple[tuple[str, tuple[AddCommand, ...]], ...] = (
    ("search", (
        cli_search.add_run, cli_search.add_resume, cli_search.add_pareto, cli_search.add_best,
        cli_search.add_refine,
    )),
    ("model", (
        cli_model.add_train, cli_model.add_pipeline, cli_model.add_prune,
        cli_model.add_sensitivity, cli_model.add_eval, cli_model.add_predict,
        cli_model.add_profile, cli_model.add_compare,
    )),
    ("convert", (cli_convert.add_import_darknet, cli_convert.add_export)),
    ("data and tools", (
        cli_data.add_make_data, cli_data.add_anchors, cli_data.add_eval_dets, cli_data.add_cache,
    )),
)  # fmt: skip
ABOUT = "Search for compressed (pruned) YOLOv2 detectors. Each command has --help."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prune-search",
        # Written out: a generated usage would leave out COMMAND, whose help is suppressed below.
        usage="%(prog)s [-h] [--version] [-v] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prune-search {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # argparse lists subcommands in one block; the grouped listing goes in the description instead.
    # `prog` starts each command's usage `prune-search <command>`, without the usage above.
    commands = parser.add_subparsers(
        prog="prune-search",
        dest="command",
        required=True,
        metavar="COMMAND",
        help=argparse.SUPPRESS,
    )
    listing = []
    for heading, adders in COMMAND_GROUPS:
        first = len(commands._choices_actions)
        for add in adders:
            add(commands)
        listing.append(
            (heading, [(a.dest, a.help or "") for a in commands._choices_actions[first:]])
        )
    parser.description = f"{ABOUT}\n\n{_grouped(listing)}"
    return parser


def _grouped(listing: list[tuple[str, list[tuple[str, str]]]]) -> str:
    """Each heading, then its commands one a line, their help wrapped as argparse wraps options'."""
    column = 2 + max(len(name) for _, commands in listing for name, _ in commands) + 2
    width = max(shutil.get_terminal_size().columns - 2 - column, 20)
    blocks = []
    for heading, commands in listing:
        lines = [f"{heading}:"]
        for name, about in commands:
            wrapped = textwrap.wrap(about, width) or [""]
            lines.append(f"  {name:<{column - 4}}  {wrapped[0]}".rstrip())
            lines.extend(" " * column + more for more in wrapped[1:])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _version() -> str:
    try:
        return version("prune-search")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        code: int = args.run(args)
    except (InputError, TrainingDivergedError) as error:
        print(f"prune-search {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prune-search {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
