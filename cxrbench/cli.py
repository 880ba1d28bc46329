"""``cxrbench`` command line: parse, call the library, print. One module per subcommand in ``commands/``."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .errors import CxrbenchError
from .kernels import portable_cpu_kernels
from .version import __version__

# subcommand name (= its module under cxrbench.commands) -> its one-line help. `cxrbench NAME ...` imports only
# NAME's module and `cxrbench --help` none (the list needs only these lines): the engine, torch and sklearn load
# only when a command runs
COMMANDS = {
    "augment": "train a classifier on real, real+synthetic and synthetic images; report the gain on held-out real",
    "evaluate": "evaluate generated images against a reference set",
    "ls": "list registered feature extractors, metrics, generators, protocols, downstream classifiers and named references",
    "stats": "save a reference set's per-extractor mean/covariance (for FID against it without its images)",
    "report": "write an HTML and Markdown report with figures for a result JSON",
    "train": "train a reference generator (vae, gmvae, fs-gmvae, lsgan, pggan, ...) on a folder of images",
    "sample": "draw N images from a trained model folder into PNGs plus manifest.csv (requested labels)",
    "submit": "evaluate a samples folder and write a leaderboard entry (leaderboard/entries/NAME.json)",
    "resubmit": "re-make entries from their recorded samples under the current version of their protocol",
    "verify": "re-check a leaderboard entry against its samples folder (hashes and recomputed metrics)",
    "check": "exit 1 when new samples are worse than a stored entry or result by more than noise or a tolerance",
    "leaderboard": "render leaderboard/README.md and leaderboard/index.html from the entries in leaderboard/entries/",
    "reproduce": "train, sample and submit one leaderboard recipe (leaderboard/recipes/NAME.toml)",
    "validate": "run the validity suite (real < degraded < anatomy violated, eye-ranked generators) on an extractor",
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
    """The whole CLI; with ``only`` (a subcommand name) that subcommand alone; with ``only=""`` every command
    listed by its help line, none of their modules imported (the top-level ``--help``)."""
    parser = _Parser(prog="cxrbench", description="Evaluate generative chest X-ray models.")
    parser.add_argument("--version", action="version", version=f"cxrbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        if only is not None and name != only:
            if only == "":  # the top-level --help: each command listed by its line, its module not imported
                sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name, help=help_text, description=getattr(mod, "DESCRIPTION", help_text),
                           epilog=getattr(mod, "EPILOG", None), formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, cli_main=main)  # `reproduce` runs its stages as CLI commands
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    portable_cpu_kernels()  # before any tensor: the same bits on every x86 CPU
    # the subcommand is the first word (the top level takes no option with a value): its parser alone will do
    # no subcommand (`cxrbench`, `--help`, `--version`): the list of commands alone, no command module imported
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "" if not argv or argv[0].startswith("-") else None)
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
