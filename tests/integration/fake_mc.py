"""A stand-in for MinIO's client `mc`, for tests of minio/push_to_minio.sh's mc path.

The real client cannot be installed here (../shared/FACTS.md: no package carries it), so this
script answers the few commands the publisher uses (ls, cp, stat, rm) over a directory that plays
the store: $FAKE_MC_ROOT/<bucket>/<key>. It is no S3 server: it exists to drive the publisher's
mc branch, including failures only a stand-in can stage on demand:

  FAKE_MC_FAIL_READ=<suffix>   downloading an object whose key ends with <suffix> fails the way a
                               store in trouble does (HTTP 503), while listing still works.
  FAKE_MC_CORRUPT_WRITE=<suffix>  an upload to a key ending with <suffix> succeeds but stores other
                               bytes (the first byte flipped), as a broken transfer or store would.

Every call is appended to $FAKE_MC_ROOT.calls, one line of arguments each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ALIAS = "wrpush/"


def fail(message: str) -> None:
    print(f"mc: <ERROR> {message}", file=sys.stderr)
    sys.exit(1)


def local(url: str) -> Path:
    root = Path(os.environ["FAKE_MC_ROOT"])
    if not url.startswith(ALIAS):
        fail(f"Unknown alias in `{url}`.")
    return root / url[len(ALIAS):]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--version"]:
        print("mc version RELEASE.2025-01-01T00-00-00Z (commit-id=0123abc)")
        return
    with open(os.environ["FAKE_MC_ROOT"] + ".calls", "a") as log:
        log.write(" ".join(a for a in argv if not a.startswith("/")) + "\n")
    args = []
    it = iter(argv)
    for a in it:
        if a == "--config-dir":
            next(it)
        elif a not in ("--no-color", "--quiet"):
            args.append(a)
    cmd, rest = args[0], args[1:]
    flags = [a for a in rest if a.startswith("--")]
    paths = [a for a in rest if not a.startswith("--") and not a.startswith("sha256=")]
    if cmd == "ls":
        where = local(paths[0])
        bucket = Path(os.environ["FAKE_MC_ROOT"]) / paths[0][len(ALIAS):].split("/")[0]
        if not bucket.is_dir():
            fail(f"Unable to list folder. Bucket `{bucket.name}` does not exist.")
        if "--recursive" not in flags:
            return
        if not where.is_dir():
            fail("Unable to list folder. Object does not exist.")
        for f in sorted(p for p in where.rglob("*") if p.is_file()):
            data = f.read_bytes()
            print(json.dumps({"status": "success", "type": "file", "lastModified": "2026-12-02T00:00:00Z",
                              "size": len(data), "key": f.relative_to(where).as_posix(),
                              "etag": hashlib.md5(data).hexdigest(), "url": "http://fake/",
                              "versionOrdinal": 1, "storageClass": "STANDARD"}))
    elif cmd == "cp":
        src, dst = paths
        if src.startswith(ALIAS):
            suffix = os.environ.get("FAKE_MC_FAIL_READ")
            if suffix and src.endswith(suffix):
                fail(f"Unable to download `{src}`. Server not responding (503 Service Unavailable).")
            if not local(src).is_file():
                fail(f"Unable to validate source `{src}`: Object does not exist.")
            shutil.copyfile(local(src), dst)
        else:
            local(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, local(dst))
            suffix = os.environ.get("FAKE_MC_CORRUPT_WRITE")
            if suffix and dst.endswith(suffix):
                data = bytearray(local(dst).read_bytes() or b"\0")
                data[0] ^= 0xFF
                local(dst).write_bytes(bytes(data))
    elif cmd == "stat":
        target = local(paths[0])
        if not target.is_file():
            fail("Unable to stat. Object does not exist.")
        print(json.dumps({"status": "success", "size": target.stat().st_size}, indent=1))
    elif cmd == "rm":
        target = local(paths[0])
        if not target.is_file():
            fail("Unable to remove. Object does not exist.")
        target.unlink()
    else:
        fail(f"fake mc: unsupported command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
