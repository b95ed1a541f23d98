"""`python -m whisper_release.bench run | tune | reference | worker`: the benchmark's command line."""

from __future__ import annotations

import argparse
import sys

from whisper_release.bench.engines import worker_main
from whisper_release.bench.matrix import run
from whisper_release.bench.references import build_reference
from whisper_release.bench.tune import tune
from whisper_release.core.console import info
from whisper_release.core.errors import ReleaseError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m whisper_release.bench",
        description="Benchmarks of the release artifacts against reference builds and peer engines "
        "(docs/performance.md). Every timing holds the CPU lock and refuses to run beside a build.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "run",
        help="the benchmark suite (`nox -s benchmark`): missing reference builds, benchmarks/, the report "
        "in dist/bench/; every other option goes to pytest (e.g. --bench-quick)",
        description="Build the missing reference libraries, run benchmarks/ with pytest-benchmark and "
        "write dist/bench/ (results.json, history/, report.md, charts). Options other than --help go to "
        "pytest: --bench-quick, --bench-models, --bench-generated, --bench-rounds, --bench-max-load.",
    )
    t = sub.add_parser(
        "tune",
        help="the speed investigation on MODEL (dist/bench/tuning-MODEL.json)",
        description="Time each tuning variant against the library defaults on MODEL under the CPU lock; "
        "write dist/bench/tuning-MODEL[-quick].json and print a table.",
    )
    t.add_argument("model", nargs="?", default="base", help="a model with release artifacts (default: base)")
    t.add_argument("--quick", action="store_true", help="jfk.wav only instead of the whole sample set")
    t.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only the variants whose name contains TEXT (repeatable)",
    )
    r = sub.add_parser(
        "reference",
        help="(re)build reference libraries into dist/reference/NAME/",
        description="Build the Dockerfile's reference stage with release.toml [bench.reference.NAME]'s "
        "flags and extract its libraries into dist/reference/NAME/.",
    )
    r.add_argument("names", nargs="+", metavar="NAME", help="e.g. native generic llamafile")
    sub.add_parser(
        "worker",
        help="internal: one engine configuration's worker process (JSON requests on stdin)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # `run` hands what it does not know to pytest; the other commands take only their own options.
    args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and args.command != "run":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "worker":
        return worker_main()
    try:
        if args.command == "run":
            return run(extra)
        if args.command == "tune":
            info(f"results: {tune(args.model, quick=args.quick, only=args.only)}")
        else:
            for name in args.names:
                build_reference(name)
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
