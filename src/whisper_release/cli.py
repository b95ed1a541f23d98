"""The `whisper-release` console script: a thin argparse layer over the library.

Every sub-command is declared here (the library never imports this module); only this module and
tasks.py turn a ReleaseError into an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from whisper_release.core.errors import ReleaseError


def version() -> str:
    """The installed distribution's version: the one source of the version number."""
    try:
        return metadata.version("whisper-release")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _convert(args: argparse.Namespace) -> None:
    from whisper_release.inputs.fetch import convert_dir  # the fetch stack: only this command needs it

    convert_dir(args.src, args.dst, tokenizer=args.tokenizer)


def _pull(args: argparse.Namespace) -> None:
    from whisper_release.consume.consumer import pull_command  # each command loads only its own stack

    pull_command(
        args.release,
        args.model,
        args.dest,
        list_only=args.list,
        as_json=args.json,
        force=args.force,
        progress=not args.no_progress,
        dry_run=args.dry_run,
    )


def _transcribe(args: argparse.Namespace) -> None:
    # each command loads only its own stack (numpy, the binding), so --help and info stay light
    from whisper_release.consume.consumer import transcribe
    from whisper_release.core.console import info
    from whisper_release.runtime import formats

    fmt = args.fmt or (formats.format_for_path(args.output) if args.output else "txt")
    text = transcribe(
        args.audio,
        args.artifact,
        threads=args.threads,
        beam=args.beam,
        fmt=fmt,
        output=args.output,
        language=args.language,
        audio_ctx=args.audio_ctx,
        quant=args.quant,
    )
    if args.output is None:
        sys.stdout.write(text)
    else:
        info(f"wrote {args.output}")


def _info(args: argparse.Namespace) -> None:
    from whisper_release.consume.info import info_text  # each command loads only its own stack

    sys.stdout.write(info_text(args.artifact, as_json=args.json))


def _audit(args: argparse.Namespace) -> None:
    from whisper_release.verify.isa import audit_command  # iced-x86 and pyelftools: the verify extra

    audit_command(args.artifact, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-release",
        description="Pull, inspect and run whisper.cpp release artifacts (and convert CTranslate2 weights).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "convert",
        help="convert a CTranslate2 Whisper model to a whisper.cpp ggml f16 file",
        description="Convert a CTranslate2 (faster-whisper) Whisper model to a whisper.cpp ggml f16 file.",
    )
    p.add_argument("--from", dest="src", required=True, help="CTranslate2 model directory (model.bin)")
    p.add_argument("--to", dest="dst", required=True, help="output ggml file")
    p.add_argument("--tokenizer", choices=["en", "multilingual"], default=None)
    p.set_defaults(run=_convert)

    p = sub.add_parser(
        "pull",
        help="download one verified artifact directory of a published release",
        description="Download one artifact directory of a published release, verified, into DEST.",
    )
    p.add_argument(
        "--release", default="latest", help="release version, or 'latest' (default: what latest.json names)"
    )
    p.add_argument("--model", help="model name, e.g. base")
    p.add_argument("--dest", help="target directory (default ./whisper_<model>_xeon-<version>)")
    p.add_argument("--list", action="store_true", help="list the published releases and their models")
    p.add_argument("--json", action="store_true", help="with --list: print JSON for scripts")
    p.add_argument("--force", action="store_true", help="replace DEST if it holds something else")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (never shown off a terminal)")
    p.add_argument("--dry-run", action="store_true", help="check the release and say what would be pulled")
    p.set_defaults(run=_pull)

    p = sub.add_parser(
        "transcribe",
        help="transcribe an audio file with a pulled artifact directory",
        description="Transcribe an audio file with a pulled artifact directory.",
    )
    p.add_argument("audio", help="audio file (WAV natively; other formats need ffmpeg)")
    p.add_argument("--artifact", required=True, help="a pulled whisper_<model>_xeon directory")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all, at most 8)")
    p.add_argument("--beam", type=int, default=None, help="beam-search width (default: greedy decoding)")
    p.add_argument("--language", default="en", help="spoken language code (default en)")
    p.add_argument(
        "--audio-ctx",
        default="0",
        help="encoder window in frames: 0 = full 30 s window (default), auto = fitted to clips under 15 s "
        "(faster, see docs/performance.md), or N",
    )
    p.add_argument(
        "--quant",
        default=None,
        help="model file type: q8_0 (faster, larger) or q4_0 (fastest, smallest, a little less accurate); "
        "default: the artifact's primary (q5_1)",
    )
    p.add_argument(
        "--format", dest="fmt", default=None, help="txt, json, srt or vtt (default: from --output, else txt)"
    )
    p.add_argument("--output", "-o", default=None, help="write here (atomically) instead of stdout")
    p.set_defaults(run=_transcribe)

    p = sub.add_parser(
        "info",
        help="describe an artifact directory from its artifact.json",
        description="Describe an artifact directory (model, files, CPU, runtime) from its artifact.json.",
    )
    p.add_argument("artifact", help="a whisper_<model>_xeon directory")
    p.add_argument("--json", action="store_true", help="print artifact.json itself (shape-checked)")
    p.set_defaults(run=_info)

    p = sub.add_parser(
        "audit",
        help="check every instruction of an artifact's libraries against its CPU floor",
        description="Decode every instruction of every shipped library and check its CPU features "
        "against the artifact's required_cpu_flags; exit non-zero on any violation.",
    )
    p.add_argument("artifact", help="a whisper_<model>_xeon directory, or a directory of them")
    p.add_argument("--json", action="store_true", help="print the per-library counts as JSON")
    p.set_defaults(run=_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
        return 0
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
