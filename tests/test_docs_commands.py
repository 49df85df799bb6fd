"""The documentation only shows commands, links and names that exist.

Every ``edge-runtime ...`` and ``edge-convert ...`` line in a shell code block of README.md and
docs/*.md, and every code span in their prose that is a command (``fleet rollback NAME --to V``),
is walked through the real argparse parsers (built in-process, never run): each subcommand must
exist and each option must belong to the subcommand it is given to. Every relative markdown
link must point at a file (and heading) that exists, and so must every ``docs/X.md`` the code
names. docs/configuration.md must list every config key, docs/architecture.md's tree every
module, and the README every doc. Docs rot silently when the code moves; this keeps them honest
for about a second of CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from converter.cli import build_parser as build_convert_parser
from edge_runtime.cli import COMMANDS as RUNTIME_COMMANDS
from edge_runtime.cli import build_parser as build_runtime_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "sh", "bash", "console", "shell", "shell-session", "zsh"}
PROGRAMS = {"edge-runtime", "edge-convert"}
SEPARATORS = {"|", "||", "&&", "&", ";", "|&"}
# Words that may precede the program on a command line without being the program.
PREFIXES = {"sudo", "exec", "time", "nohup", "env", "command"}
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Command:
    """One command line found in a doc: where it is and its words from the program on."""

    path: Path
    line: int
    text: str
    words: tuple[str, ...]
    inline: bool = False  # a code span in prose may name a group (`keys root`) rather than a command

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def _shell_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of shell code blocks, continuation lines joined."""
    in_block = False
    shell = False
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(raw)
        if fence:
            in_block = not in_block
            shell = in_block and fence.group(2).lower() in SHELL_LANGS
            pending = None
            continue
        if not (in_block and shell):
            continue
        start, text = pending if pending else (number, "")
        text += " " + raw.strip() if text else raw.strip()
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        yield start, text


def _segments(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, as word lists: prompt, comment and pipes removed."""
    line = line.lstrip()
    line = line[2:] if line.startswith("$ ") else line
    try:
        lexer = shlex.shlex(line, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError:  # unbalanced quotes in a pseudo-shell example: fall back to plain words
        words = line.split("#", 1)[0].split()
    current: list[str] = []
    for word in words:
        if word in SEPARATORS:
            yield current
            current = []
        elif word.endswith(";"):
            current.append(word.rstrip(";"))
            yield current
            current = []
        else:
            # Usage lines write optional parts as [--flag VALUE]: the brackets are not part of the name.
            current.append(word.strip("[]") if word.startswith("[") or word.endswith("]") else word)
    yield current


def _command(words: list[str]) -> list[str] | None:
    """The words from the program on, when the simple command runs edge-runtime/edge-convert."""
    index = 0
    while index < len(words) and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[index]) or words[index] in PREFIXES):
        index += 1
    if index < len(words) and words[index].rsplit("/", 1)[-1] in PROGRAMS:
        return words[index:]
    return None


def _prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    in_block = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(raw):
            in_block = not in_block
        elif not in_block:
            yield number, raw


def _inline_commands(path: Path) -> Iterator[tuple[int, str]]:
    """Code spans in prose that are command lines: `edge-runtime fleet rollback ...` or `fleet rollback NAME`."""
    for number, raw in _prose_lines(path):
        for span in re.findall(r"`([^`]+)`", raw):
            words = span.split()
            if len(words) < 2:
                continue  # `fleet` alone names a group, not a command
            if words[0] in PROGRAMS:
                yield number, span
            elif words[0] in RUNTIME_COMMANDS:
                yield number, f"edge-runtime {span}"


def doc_commands() -> list[Command]:
    found = []
    for path in DOCS:
        lines = [(n, text, False) for n, text in _shell_lines(path)]
        lines += [(n, text, True) for n, text in _inline_commands(path)]
        for number, text, inline in lines:
            for segment in _segments(text):
                words = _command(segment)
                if words:
                    found.append(Command(path, number, text, tuple(words), inline))
    return found


PARSERS: dict[str, argparse.ArgumentParser] = {}


def _parser(program: str) -> argparse.ArgumentParser:
    if program not in PARSERS:
        PARSERS[program] = build_runtime_parser() if program == "edge-runtime" else build_convert_parser()
    return PARSERS[program]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def check(words: tuple[str, ...]) -> str | None:
    """Why the command line does not parse as far as names go, or None when it does."""
    program = words[0].rsplit("/", 1)[-1]
    parser = _parser(program)
    path = [program]
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not re.match(r"^-\d", word):
            name = word.split("=", 1)[0]
            options = _options(parser)
            if name not in options and not (len(name) > 2 and name[1] != "-" and name[:2] in options):
                return f"{' '.join(path)} has no option {name}"
            action = options.get(name) or options[name[:2]]
            if "=" not in word and len(name) == len(word) and _takes_value(action):
                if action.nargs in (None, 1, "?") and rest and (action.nargs != "?" or not rest[0].startswith("-")):
                    rest.pop(0)
                elif action.nargs in ("*", "+", argparse.REMAINDER):
                    while rest and not rest[0].startswith("-"):
                        rest.pop(0)
                elif isinstance(action.nargs, int):
                    del rest[: action.nargs]
            continue
        subs = _subcommands(parser)
        if subs is not None:
            # Prose writes "models install|activate": every alternative must exist; walk the first.
            alternatives = word.split("|")
            word = next((name for name in alternatives if name not in subs), alternatives[0])
            if word not in subs:
                return f"{' '.join(path)} has no subcommand {word!r} (has {', '.join(sorted(subs))})"
            parser = subs[word]
            path.append(word)
    if _subcommands(parser) is not None and len(words) > 1:
        return f"{' '.join(path)} needs a subcommand"
    return None


COMMANDS = doc_commands()


def test_the_docs_show_commands() -> None:
    """The extractor finds the commands (a regex that matches nothing would pass everything)."""
    programs = {c.words[0].rsplit("/", 1)[-1] for c in COMMANDS}
    assert programs == PROGRAMS
    assert len(COMMANDS) > 50


def test_every_documented_command_line_names_real_subcommands_and_options() -> None:
    problems = [
        f"{c.where()}\n    -> {why}"
        for c in COMMANDS
        if (why := check(c.words)) and not (c.inline and why.endswith("needs a subcommand"))
    ]
    assert not problems, "commands in the docs that the CLI does not have:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("edge-runtime fleet publish --nope x", "has no option --nope"),
        ("edge-runtime fleet nosuch", "has no subcommand 'nosuch'"),
        ("edge-runtime keys", "needs a subcommand"),
        ("edge-runtime models install|nosuch", "has no subcommand 'nosuch'"),
        ("edge-convert model.onnx --name m --version 2 -o m.bundle --no-such-flag", "has no option --no-such-flag"),
    ],
)
def test_the_checker_catches_a_wrong_command(line: str, why: str) -> None:
    problem = check(tuple(shlex.split(line)))
    assert problem is not None and why in problem


def test_the_checker_accepts_real_commands() -> None:
    assert check(tuple(shlex.split("edge-runtime fleet rollback --help"))) is None
    assert check(tuple(shlex.split("edge-convert m.onnx --name m --version=2 -o m.bundle --quantize fp16"))) is None


def _links(path: Path) -> Iterator[tuple[int, str]]:
    for number, raw in _prose_lines(path):
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", raw)):
            yield number, match.group(1) or match.group(2)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    in_block = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(raw):
            in_block = not in_block
        elif not in_block and raw.startswith("#"):
            title = raw.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_docs_points_at_a_file() -> None:
    broken = []
    for path in DOCS:
        for number, target in _links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            file, _, anchor = target.partition("#")
            if not (path.parent / file).exists():
                broken.append(f"{path.relative_to(ROOT)}:{number}: {target}")
            elif anchor and file.endswith(".md") and anchor not in _anchors(path.parent / file):
                broken.append(f"{path.relative_to(ROOT)}:{number}: {target} (no such heading)")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_every_docs_path_named_in_the_code_exists() -> None:
    """Code that tells the reader to see docs/X.md (docstrings, generated config comments)."""
    missing = []
    for source in [*ROOT.glob("edge_runtime/**/*.py"), *ROOT.glob("converter/**/*.py")]:
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            for name in re.findall(r"docs/[\w./-]+?\.md", line):
                if not (ROOT / name).exists():
                    missing.append(f"{source.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "the code points readers at docs that do not exist:\n" + "\n".join(missing)


def test_every_config_key_is_in_the_configuration_reference() -> None:
    """docs/configuration.md, which config.py and generated device configs point at, lists every key."""
    from edge_runtime import config

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = []
    tables = (config.DeviceConfig, config.StoreConfig, config.ServerConfig, config.TrustConfig, config.MqttConfig,
              config.ModelConfig, config.DriftConfig, config.CaptureConfig, config.MonitoringConfig,
              config.InferenceConfig, config.LoggingConfig)
    for cls in tables:
        for field in dataclasses.fields(cls):
            if field.name in {"drift", "capture"}:
                continue  # sub-tables, listed under their own heading
            if f"`{field.name}`" not in text:
                missing.append(f"{cls.__name__}.{field.name}")
    assert not missing, "config keys docs/configuration.md does not list: " + ", ".join(missing)


def test_the_architecture_tree_names_every_module() -> None:
    """docs/architecture.md's tree lists every module and package under edge_runtime/ (cli/ as one)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = text.split("```", 2)[1]
    missing = []
    package = ROOT / "edge_runtime"
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if relative.parts[0] in {"cli", "__pycache__"} or "grpc_proto" in relative.parts[:-1] or "static" in relative.parts[:-1]:
            continue
        if "__pycache__" in relative.parts or path.name in {"__init__.py", "__main__.py"}:
            continue
        if path.is_dir() or path.suffix == ".py":
            name = path.name + ("/" if path.is_dir() else "")
            if name not in tree:
                missing.append(str(relative))
    assert not missing, "docs/architecture.md's tree does not name: " + ", ".join(missing)


def test_the_readme_lists_every_doc() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name})" not in table]
    assert not missing, "docs missing from the README's Documentation table: " + ", ".join(missing)


def test_every_test_the_docs_name_exists() -> None:
    """security.md and reliability.md cite a test per finding: each file and test name must exist."""
    defined = set()
    for source in (ROOT / "tests").rglob("*.py"):
        defined.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", source.read_text(encoding="utf-8"), re.MULTILINE))
    missing = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for file in re.findall(r"\btests/[\w/]+\.py\b", line):
                if not (ROOT / file).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {file}")
            for name, glob in re.findall(r"::(test_\w+)(\*?)", line):
                if name not in defined and not (glob and any(d.startswith(name) for d in defined)):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: ::{name}")
    assert not missing, "tests the docs cite that do not exist:\n" + "\n".join(missing)
