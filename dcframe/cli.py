"""The `dcframe` command line: one module per command under dcframe/commands, errors as one line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from dcframe import __version__
from dcframe.console import one_line
from dcframe.core.errors import DcfError

# Each module exposes add_parser(subparsers) -> ArgumentParser and run(args) -> int.
COMMANDS = (
    "dcframe.commands.calibrate",
    "dcframe.commands.compress",
    "dcframe.commands.decompress",
    "dcframe.commands.inspect",
    "dcframe.commands.stages",
    "dcframe.commands.verify",
    "dcframe.commands.compare",
    "dcframe.commands.demo",
    "dcframe.commands.tune",
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. Given the arguments, only the command they name is imported (a command module pulls in what
    it runs: importing all of them would cost every run ~0.05 s of start-up); else every command, for the help."""
    chosen = [name for name in COMMANDS if name.rsplit(".", 1)[1] == _command_word(argv)]
    parser = argparse.ArgumentParser(
        prog="dcframe",
        description="Deep Compression for trained networks: prune, share weights, Huffman-code, into a .dcf file.",
    )
    parser.add_argument("--version", action="version", version=f"dcframe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in chosen or COMMANDS:
        module = importlib.import_module(name)
        command = module.add_parser(sub)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 error, 2 usage, 130 interrupted)."""
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)  # `kill PID` cleans up as Ctrl-C does
    except ValueError:  # not the main thread: leave signals to the caller
        previous = None
    try:
        return int(args._run(args) or 0)
    except DcfError as exc:
        if args.debug:
            raise
        _error(exc)
        return 1
    except KeyboardInterrupt:
        print("dcframe: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except (OSError, MemoryError) as exc:
        if args.debug:
            raise
        _error(exc)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _command_word(argv: Sequence[str] | None) -> str | None:
    """The command the arguments name: their first word that is not an option (the top-level options take no value)."""
    return next((word for word in argv or () if not word.startswith("-")), None)


def _error(exc: BaseException) -> None:
    """Print an error as one line, `dcframe: error: ...`; an exception without a message is named by its type."""
    message = str(exc) or {"MemoryError": "out of memory"}.get(type(exc).__name__, type(exc).__name__)
    print(f"dcframe: error: {one_line(message)}", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so temporary files are removed and worker processes are shut down."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
