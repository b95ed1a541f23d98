#!/usr/bin/env python3
"""A transcription worker: pull the newest release once, cache it, transcribe a folder.

    python worker.py INBOX [--outbox DIR] [--cache DIR] [--model base] [--format srt] [--threads N]

Run it as often as you like (cron, a systemd timer, a CI job): it is idempotent.
- The release is pulled only when the bucket's newest complete release is not already in the cache
  (`<cache>/<version>/whisper_<model>_xeon`, verified against SHA256SUMS on every start). If the
  bucket cannot be reached, the newest cached release is used.
- An audio file whose transcript already exists in OUTBOX is skipped; transcripts are written
  atomically, so a killed worker never leaves half a transcript that would be skipped next time.
- A file that cannot be transcribed is reported and left for the next run; the exit code is 1 if any
  file failed, 0 otherwise.

S3 settings come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
WHISPER_RELEASE_BUCKET, WHISPER_RELEASE_PREFIX), as for `whisper-release pull`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisper_release.consume import pull
from whisper_release.consume.consumer import Transcriber, remote_from_env, write_atomic
from whisper_release.core.errors import FetchError, ReleaseError
from whisper_release.layout import artifacts as layout

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4"}


def cached_releases(cache: Path, model: str) -> list[Path]:
    """Artifact directories in the cache, oldest pull first."""
    dirs = [d for d in cache.glob(f"*/{layout.model_dir_name(model)}") if (d / pull.SUMS).is_file()]
    return sorted(dirs, key=lambda d: d.stat().st_mtime)


def ensure_release(cache: Path, model: str, release: str = "latest") -> Path:
    """The artifact directory of the newest release, pulled into the cache only if it is not there."""
    try:
        remote = remote_from_env()
        latest = pull.read_latest(remote) if release == pull.LATEST else None  # <prefix>/latest.json
        version = pull.resolve_release(pull.list_releases(remote), release, remote, latest)
    except FetchError as e:
        cached = cached_releases(cache, model)
        if not cached:
            raise
        print(f"worker: bucket unreachable ({e}); using cached {cached[-1]}", file=sys.stderr)
        return cached[-1]
    dest = cache / version / layout.model_dir_name(model)
    res = pull.pull(remote, version, model, dest, progress=sys.stderr.isatty())
    print(
        f"worker: release {version} {'cached' if res.already_present else 'pulled'} at {dest}",
        file=sys.stderr,
    )
    return dest


def pending(inbox: Path, outbox: Path, fmt: str) -> tuple[list[tuple[Path, Path]], int]:
    """(audio, transcript) pairs still to do, and how many are already done."""
    todo, done = [], 0
    for audio in sorted(p for p in inbox.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
        out = outbox / audio.relative_to(inbox).with_suffix(f".{fmt}")
        if out.exists():
            done += 1
        else:
            todo.append((audio, out))
    return todo, done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inbox", type=Path, help="folder of audio files (searched recursively)")
    ap.add_argument("--outbox", type=Path, help="where transcripts go (default: INBOX/transcripts)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "whisper-release")
    ap.add_argument("--model", default="base")
    ap.add_argument("--release", default="latest")
    ap.add_argument("--format", dest="fmt", default="txt", choices=["txt", "json", "srt", "vtt"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    outbox = args.outbox or args.inbox / "transcripts"
    try:
        if not args.inbox.is_dir():
            print(f"error: inbox {args.inbox} is not a folder; create it or pass another.", file=sys.stderr)
            return 2
        todo, done = pending(args.inbox, outbox, args.fmt)
        print(f"worker: {len(todo)} to transcribe, {done} already done", file=sys.stderr)
        if not todo:
            return 0  # nothing to do: do not even contact the bucket
        artifact = ensure_release(args.cache, args.model, args.release)
        failed = 0
        with Transcriber(artifact, threads=args.threads) as t:
            for audio, out in todo:
                try:
                    write_atomic(out, t.transcribe_file(audio, args.fmt))
                    print(f"worker: {audio} -> {out}", file=sys.stderr)
                except ReleaseError as e:  # one bad file must not stop the folder
                    failed += 1
                    print(f"worker: skipped {audio}: {e}", file=sys.stderr)
        print(
            f"worker: {len(todo) - failed} transcribed, {failed} failed, {done} already done", file=sys.stderr
        )
        return 1 if failed else 0
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
