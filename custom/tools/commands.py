"""The command registry of ``python -m custom.cli``: help built from each command's signature and
docstring, options checked, then the command run with ``fire``.

A command is a function registered with :meth:`Registry.command`. Its options are its keyword
parameters, or, for a thin wrapper, the parameters of the function it passes them to
(``options_from="module:function"``); their defaults come from the signature and their descriptions
from the Google-style docstring (``Args:``; the implementation's docstring, then an
``OPTION_HELP`` dict of the implementation's module, fill in what the command's does not
describe). The docstring's ``Example:`` section is the help's example. A command
that also takes config-id overrides (``--key value`` pairs of ``train.json``) says what they are in
``overrides``.

``-h`` or ``--help`` anywhere in the arguments prints the command's help and exits 0 before
anything is imported or run; an unknown option or a missing required one stops with a one-line
message naming it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable

HELP_FLAGS = ("-h", "--help")
_SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Example|Examples|Note|Notes|Yields):\s*$")
_ENTRY = re.compile(r"^([A-Za-z_*][\w*]*(?:\s*,\s*[A-Za-z_*][\w*]*)*)(?:\s*\([^)]*\))?:\s*(.*)$")


class UsageError(Exception):
    """A command line that does not fit the command (unknown option, missing value); exit status 2."""


@dataclass
class Docstring:
    summary: str = ""
    description: str = ""
    args: dict = field(default_factory=dict)
    example: list = field(default_factory=list)


def parse_docstring(doc: str | None) -> Docstring:
    """Summary, description, ``Args`` (name -> text) and ``Example`` lines of a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out = Docstring()
    section, intro, entry, entry_indent = None, [], None, 0
    for line in lines:
        stripped = line.strip()
        match = _SECTION.match(stripped) if not line.startswith(" ") else None
        if match:
            section, entry = match.group(1), None
            continue
        if section is None:
            intro.append(line)
        elif section in ("Args", "Arguments"):
            indent = len(line) - len(line.lstrip())
            found = _ENTRY.match(stripped)
            if found and (entry is None or indent <= entry_indent):
                names = [n.strip().lstrip("*") for n in found.group(1).split(",")]
                entry, entry_indent = names, indent
                for name in names:
                    out.args[name] = found.group(2).strip()
            elif entry and stripped:
                for name in entry:
                    out.args[name] = f"{out.args[name]} {stripped}".strip()
        elif section in ("Example", "Examples") and stripped:
            out.example.append(stripped)
    paragraphs = "\n".join(intro).strip().split("\n\n")
    out.summary = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    out.description = "\n\n".join(" ".join(p.split()) for p in paragraphs[1:] if p.strip())
    return out


@dataclass
class Option:
    name: str
    required: bool
    default: object
    text: str


def _resolve(dotted: str) -> Callable:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Command:
    """One command: its function, where its options come from, what its config overrides are."""

    name: str
    function: Callable
    options_from: str | None = None  #: "module:function" whose parameters are the options of a ``**options`` wrapper
    overrides: str | None = None  #: what extra ``--key value`` pairs mean, for commands that take config overrides
    hidden: tuple = ()  #: parameters of ``options_from`` not offered on the command line

    @property
    def doc(self) -> Docstring:
        return parse_docstring(self.function.__doc__)

    def options(self) -> list[Option]:
        """The command's options, in signature order, with defaults and descriptions."""
        own = self.doc.args
        params = [p for p in inspect.signature(self.function).parameters.values() if p.kind not in (p.VAR_KEYWORD,
                                                                                                    p.VAR_POSITIONAL)]
        texts = dict(own)
        if self.options_from:
            target = _resolve(self.options_from)
            shared = getattr(importlib.import_module(target.__module__), "OPTION_HELP", {})
            texts = {**shared, **parse_docstring(target.__doc__).args, **own}
            names = {p.name for p in params}
            params += [p for p in inspect.signature(target).parameters.values()
                       if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names | set(self.hidden)]
        empty = inspect.Parameter.empty
        return [Option(p.name, p.default is empty, None if p.default is empty else p.default, texts.get(p.name, ""))
                for p in params]

    def takes_any_option(self) -> bool:
        return self.overrides is not None

    def help(self, prog: str) -> str:
        doc, options = self.doc, self.options()
        required = " ".join(f"--{o.name} {o.name.upper()}" for o in options if o.required)
        lines = [f"usage: {prog} {self.name} {required} [--option value ...]".replace("  ", " "), "", doc.summary]
        if doc.description:
            for paragraph in _plain(doc.description).split("\n\n"):
                lines += ["", *textwrap.wrap(paragraph, 100)]
        lines += ["", "options:"]
        for o in options:
            state = "required" if o.required else f"default: {_show(o.default)}"
            lines.append(f"  --{o.name}  ({state})")
            lines += textwrap.wrap(_plain(o.text) or "(see the code)", 96, initial_indent="      ",
                                   subsequent_indent="      ")
        if self.overrides:
            lines.append("  --<config id> <value>  (any number)")
            lines += textwrap.wrap(self.overrides, 96, initial_indent="      ", subsequent_indent="      ")
        lines.append("  -h, --help  print this help and exit")
        if doc.example:
            lines += ["", "example:", *(f"  {line}" for line in doc.example)]
        return "\n".join(lines)

    def check_args(self, args: list[str]) -> None:
        """Raise :class:`UsageError` for an unknown option or a required option not given."""
        options = {o.name: o for o in self.options()}  # parsed once: signatures and docstrings
        given, positional, i = set(), 0, 0
        while i < len(args):
            token = args[i]
            if token.startswith("--") and len(token) > 2:
                name, has_value = token[2:].split("=", 1)[0].replace("-", "_"), "=" in token
                flag = name[2:] if name.startswith("no") and name[2:] in options else name
                if flag not in options and not self.takes_any_option():
                    known = ", ".join(f"--{n}" for n in options)
                    raise UsageError(f"{self.name} has no option --{name} (its options: {known})")
                given.add(flag)
                if not has_value and i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1  # its value
            else:
                positional += 1
            i += 1
        missing = [name for name, o in options.items() if o.required and name not in given]
        missing = missing[positional:]
        if missing:
            more = f" (and {', '.join('--' + m for m in missing[1:])})" if missing[1:] else ""
            raise UsageError(f"{self.name} needs --{missing[0]}{more}")


def _plain(text: str) -> str:
    """Docstring markup as plain text: ``code`` and :role:`name` lose their marks."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


class Registry:
    """The commands of a command line, by name, in registration order."""

    def __init__(self, prog: str, summary: str = ""):
        self.prog, self.summary = prog, summary
        self.commands: dict[str, Command] = {}

    def command(self, options_from: str | None = None, overrides: str | None = None, hidden: tuple = ()):
        """Decorator registering a function as the command of its name."""

        def register(function):
            self.commands[function.__name__] = Command(function.__name__, function, options_from, overrides,
                                                       tuple(hidden))
            return function

        return register

    def overview(self) -> str:
        width = max(len(n) for n in self.commands) + 2
        lines = [f"usage: {self.prog} <command> [--option value ...]", "", self.summary, "", "commands:"]
        lines += [f"  {name:{width}}{cmd.doc.summary}" for name, cmd in self.commands.items()]
        lines += ["", f"{self.prog} <command> --help shows a command's options, their defaults and an example."]
        return "\n".join(lines)

    def main(self, argv: list[str] | None = None) -> int:
        """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status of help and usage
        errors."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if not argv or argv[0] in HELP_FLAGS:
            print(self.overview())
            return 0
        name, args = argv[0], argv[1:]
        if name not in self.commands:
            print(f"{self.overview()}\n\nerror: unknown command {name!r}", file=sys.stderr)
            return 2
        command = self.commands[name]
        if any(a in HELP_FLAGS for a in args):
            print(command.help(self.prog))
            return 0
        try:
            command.check_args(args)
        except UsageError as e:
            print(f"error: {e}; see {self.prog} {name} --help", file=sys.stderr)
            return 2
        import fire

        fire.Fire(command.function, args, name=f"{self.prog} {name}")
        return 0


#: the registry of ``python -m custom.cli`` (its commands: :mod:`custom.tools.cli`,
#: :mod:`custom.tools.benchmark_commands`).
cli = Registry("python -m custom.cli",
               "Tools of the NVUM bundle that are not bundle workflows (bundle/docs/development.md).")

TRAIN_OVERRIDES = ("overrides of train.json config ids, as `python -m monai.bundle run training` takes them, e.g. "
                   "--max_epochs 3, --datalist#num_training 1500, "
                   "--datalist \"{'_target_': 'custom.DataList', 'path': 'list.json'}\"")
