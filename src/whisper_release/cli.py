"""The `whisper-release` console script: a thin argparse layer over the library.

Only this module and tasks.py turn a ReleaseError into an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from whisper_release.core.errors import ReleaseError

Command = Callable[[argparse.Namespace], int | None]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Command], Command]:
    """Register a sub-command (used by the modules that own it, e.g. the consumer side)."""

    def deco(fn: Command) -> Command:
        _COMMANDS[name] = (configure, fn)
        return fn

    return deco


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="src", required=True, help="CTranslate2 model directory (model.bin)")
    p.add_argument("--to", dest="dst", required=True, help="output ggml file")
    p.add_argument("--tokenizer", choices=["en", "multilingual"], default=None)


@command("convert", _configure_convert)
def _convert(args: argparse.Namespace) -> int:
    from whisper_release.inputs.fetch import convert_dir

    convert_dir(args.src, args.dst, tokenizer=args.tokenizer)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Import the modules that register further sub-commands; absent ones are skipped quietly
    # only because they are optional features of later releases of this tool.
    for mod in ("whisper_release.consume.consumer",):
        try:
            __import__(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    parser = argparse.ArgumentParser(prog="whisper-release", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (configure, _fn) in sorted(_COMMANDS.items()):
        configure(sub.add_parser(name))
    args = parser.parse_args(argv)
    try:
        return int(_COMMANDS[args.cmd][1](args) or 0)
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
