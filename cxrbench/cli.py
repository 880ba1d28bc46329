"""``cxrbench`` command line: parse, call the library, print. One module per subcommand in ``commands/``."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .errors import CxrbenchError
from .version import __version__

# subcommand name -> module under cxrbench.commands; `cxrbench NAME ...` imports only NAME's module
# (`cxrbench --help` and `build_parser()` import them all; the evaluation engine loads only when a command runs)
COMMANDS = {
    "augment": "augment",
    "evaluate": "evaluate",
    "ls": "ls",
    "stats": "stats",
    "report": "report",
    "train": "train",
    "sample": "sample",
    "submit": "submit",
    "verify": "verify",
    "check": "check",
    "leaderboard": "leaderboard",
    "reproduce": "reproduce",
    "validate": "validate",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        print(f"cxrbench: error: {message}", file=sys.stderr)
        sys.exit(2)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their layout, and every option shows its default unless its help already says it (a None
    default is resolved later and described in the help; a switch's False needs no saying)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.required or "default" in text.lower()
                or any(action.default is x for x in (None, False, True, argparse.SUPPRESS)) or action.default == []):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with ``only`` (a subcommand name) that subcommand alone."""
    parser = _Parser(prog="cxrbench", description="Evaluate generative chest X-ray models.")
    parser.add_argument("--version", action="version", version=f"cxrbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            continue
        mod = importlib.import_module(f".commands.{module}", __package__)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           epilog=getattr(mod, "EPILOG", None), formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, cli_main=main)  # `reproduce` runs its stages as CLI commands
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the subcommand is the first word (the top level takes no option with a value): its parser alone will do
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2

    def one_line(message, category, filename, lineno, file=None, line=None):  # a user reads it: no source line
        print(f"cxrbench {args.command}: warning: {message}", file=sys.stderr if file is None else file)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return int(args._run(args) or 0)
    except CxrbenchError as e:
        print(f"cxrbench {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk or a folder that cannot be written, wherever it strikes: the file, one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"cxrbench {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cxrbench {args.command}: interrupted; finished feature chunks are cached and will be reused",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
