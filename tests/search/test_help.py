"""`prune-search --help` and each command's: the grouped listing, help on every option, the version,
choices the parser refuses, and every command line the documentation shows parses."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
# The commands and their groups, written out here, not read back from the parser (which would pass
# whatever the parser holds).
GROUPS = {
    "search": ["run", "resume", "pareto", "best", "refine"],
    "model": ["train", "pipeline", "prune", "sensitivity", "eval", "predict", "profile", "compare"],
    "convert": ["import-darknet", "export"],
    "data and tools": ["make-data", "anchors", "eval-dets", "cache"],
}
COMMANDS = [command for commands in GROUPS.values() for command in commands]


def _subparsers(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def _listing(help_text: str) -> dict[str, list[str]]:
    """Each heading of the top-level help (a line `heading:` at the margin) and the names of the
    lines under it indented by two spaces (a wrapped help line is indented further)."""
    listing: dict[str, list[str]] = {}
    for line in help_text.splitlines():
        if re.fullmatch(r"\S.*:", line):
            listing[line[:-1]] = []
        elif listing and (match := re.match(r"  (\S+)", line)):
            listing[list(listing)[-1]].append(match[1])
    return listing


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# --- the top-level help -------------------------------------------------------------------------


def test_the_parser_registers_exactly_the_commands() -> None:
    assert sorted(_subparsers(build_parser()).choices) == sorted(COMMANDS)


def test_help_lists_each_command_under_its_heading(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["--help"], capsys)
    assert out.startswith("usage: prune-search [-h] [--version] [-v] COMMAND ...\n")
    listing = _listing(out)
    assert list(listing) == [*GROUPS, "options"]
    assert {heading: listing[heading] for heading in GROUPS} == GROUPS
    assert listing["options"] == ["-h,", "--version", "-v,"]


def test_top_level_options_have_help() -> None:
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "prune-search"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    listing = _listing(result.stdout)
    assert {heading: listing[heading] for heading in GROUPS} == GROUPS


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["--version"], capsys)
    assert out == f"prune-search {importlib.metadata.version('prune-search')}\n"
    assert re.fullmatch(r"prune-search \d+\.\d+\.\d+\S*\n", out)


# --- each command's help ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_has_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _help([command, "--help"], capsys).startswith(f"usage: prune-search {command}")
    parser = _subparsers(build_parser()).choices[command]
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, f"{command} {'/'.join(action.option_strings) or action.dest}"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "e.yaml"],
        ["train", "e.yaml", "--out", "o"],
        ["pipeline", "e.yaml", "--out", "o"],
        ["anchors", "e.yaml"],
        ["eval", "m.safetensors", "--experiment", "e.yaml"],
        ["eval", "m.safetensors", "--config", "e.yaml"],  # the former spelling, still accepted
        ["sensitivity", "m.safetensors", "--experiment", "e.yaml", "--out", "o"],
        ["sensitivity", "m.safetensors", "--config", "e.yaml", "--out", "o"],
    ],
    ids=" ".join,
)
def test_the_experiment_is_spelled_one_way(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).experiment == Path("e.yaml")


@pytest.mark.parametrize("command", ["eval", "sensitivity"])
def test_the_former_config_option_is_not_shown(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _help([command, "--help"], capsys)
    assert "--experiment EXPERIMENT" in out
    assert "--config" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["sensitivity", "ck", "--groups", "stages"],
            "argument --groups: invalid choice: 'stages'",
        ),
        (["profile", "ck", "--device", "gpu0"], "argument --device: 'gpu0' is not a device"),
        (["predict", "ck", "a.jpg", "--out", "o", "--device", "cuda:"], "argument --device"),
        (["profile", "ck", "--device", "CUDA"], "argument --device"),
    ],
)
def test_bad_choices_exit_2_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_devices_torch_knows_are_accepted(device: str) -> None:
    assert build_parser().parse_args(["profile", "ck", "--device", device]).device == device


# --- the documentation's command lines ----------------------------------------------------------

FENCE = re.compile(r"\s*(`{3,}|~{3,})")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # N, DIR, CHECKPOINT, and <name> once made X


def _command_lines(markdown: str) -> list[tuple[int, str]]:
    """The `prune-search ...` lines of the fenced code blocks, with their line numbers; a line
    continued with a backslash is joined to the next."""
    found: list[tuple[int, str]] = []
    fence, joined, start = "", "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        match = FENCE.match(line)
        if match and (not fence or match[1].startswith(fence)):
            fence = "" if fence else match[1]
            joined = ""
            continue
        if not fence:
            continue
        start = start if joined else number
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip() + " "
            continue
        command = joined.removeprefix("$ ")
        if command.startswith("prune-search "):
            found.append((start, command))
        joined = ""
    return found


def _argv(line: str) -> list[str]:
    """A documented command line as arguments: the comment and any command piped to dropped, then
    `[...]` (optional parts), `...`, the first of `a|b|c`, placeholders given a value that fits."""
    line = re.split(r"\s#(?:\s|$)", line)[0]
    line = re.split(r"\s(?:\||\|\||&&|;|>)\s", line)[0]
    while re.search(r"(?<!\S)\[[^\[\]]*\]", line):
        line = re.sub(r"(?<!\S)\[[^\[\]]*\]", "", line)
    line = re.sub(r"<[^<>]*>", "X", line)  # a placeholder in a word stays one word
    words = [word for word in shlex.split(line)[1:] if word not in ("...", "…")]
    words = [word.split("|")[0] if re.fullmatch(r"[^|\s]+(\|[^|\s]+)+", word) else word
             for word in words]  # fmt: skip
    command = next((word for word in words if not word.startswith("-")), None)
    options = _subparsers(build_parser()).choices.get(command or "")
    argv, option = [], None
    for word in words:
        if word.startswith("-") and options is not None:
            option = options._option_string_actions.get(word)
        takes_value = option is not None and option.nargs != 0
        argv.append(_fitting(option) if takes_value and PLACEHOLDER.fullmatch(word) else word)
    return argv


def _fitting(action: argparse.Action) -> str:
    """A value the option accepts: its first choice, else a number or a device."""
    if action.choices:
        return str(next(iter(action.choices)))
    for value in ("32", "cpu"):
        try:
            (action.type or str)(value)
        except (ValueError, argparse.ArgumentTypeError):
            continue
        return value
    return "x"


def _documented() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [
        (f"{page.relative_to(ROOT)}:{number}", line)
        for page in pages
        if page.is_file()
        for number, line in _command_lines(page.read_text())
    ]


DOCUMENTED = _documented()


def test_the_documentation_shows_command_lines() -> None:
    shown = {_argv(line)[0] for _, line in DOCUMENTED if _argv(line)}
    assert {"run", "pareto", "best", "eval"} <= shown


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("prune-search run [EXPERIMENT] [--storage runs] [--set key=value]", ["run"]),
        ("prune-search pareto runs/x --plot f.png [--cost size_mb|gflops]  # the front",
         ["pareto", "runs/x", "--plot", "f.png"]),
        ("prune-search best runs/x --pick knee|best-map [--min-map 0.8 [--max-gflops 1]] --out b",
         ["best", "runs/x", "--pick", "knee", "--out", "b"]),
        ("prune-search refine <storage URI>/<name> --epochs <n>", ["refine", "X/X", "--epochs", "32"]),
        ("prune-search profile CHECKPOINT --device DEVICE | tee log",
         ["profile", "CHECKPOINT", "--device", "cpu"]),
        ("prune-search eval m.safetensors --set 'data.test_sets=[[2007, test]]'",
         ["eval", "m.safetensors", "--set", "data.test_sets=[[2007, test]]"]),
    ],
)  # fmt: skip
def test_documented_lines_become_arguments(line: str, argv: list[str]) -> None:
    assert _argv(line) == argv


def test_command_lines_are_read_from_fenced_blocks_only() -> None:
    markdown = (
        "prune-search run outside.yaml\n```sh\nprune-search best runs/x \\\n"
        "    --out b  # picks\nray up cluster.yaml\n```\n`prune-search eval x` in prose\n"
    )
    assert _command_lines(markdown) == [(3, "prune-search best runs/x --out b  # picks")]


@pytest.mark.parametrize(("where", "line"), DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_every_documented_command_line_parses(
    where: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        build_parser().parse_args(_argv(line))
    except SystemExit as exit_info:  # --help and --version exit 0
        if exit_info.code != 0:
            pytest.fail(f"{where}: {line}\n{capsys.readouterr().err}")
