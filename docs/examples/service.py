#!/usr/bin/env python3
"""A small HTTP transcription service over one artifact directory (whisper.cpp loaded with ctypes).

    python service.py --artifact /srv/whisper/current [--host 127.0.0.1] [--port 8080] [--threads N]

    curl --data-binary @speech.wav http://127.0.0.1:8080/transcribe?format=srt

The library and model are loaded once at start (the CPU flags are checked first, so an unsuitable
server refuses to start instead of dying of an illegal instruction) and reused for every request.
whisper.cpp contexts are not safe for concurrent use, so requests are served one at a time; run one
process per core group and balance in front of them for more throughput. GET /health answers 200
once the model is loaded. Standard library only, apart from whisper_release.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from whisper_release.consume.consumer import Transcriber
from whisper_release.core.errors import ReleaseError

MAX_BODY = 200 * 1024 * 1024


def make_handler(transcriber: Transcriber) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if urlparse(self.path).path == "/health":
                self._reply(200, json.dumps({"model": transcriber.artifact.model}), "application/json")
            else:
                self._reply(404, "not found\n")

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if url.path != "/transcribe":
                self._reply(404, "not found\n")
                return
            fmt = parse_qs(url.query).get("format", ["txt"])[0]
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._reply(400, f"send the audio as the request body (1 byte to {MAX_BODY} bytes)\n")
                return
            with tempfile.NamedTemporaryFile(suffix=".audio") as f:
                f.write(self.rfile.read(length))
                f.flush()
                try:
                    with lock:
                        text = transcriber.transcribe_file(f.name, fmt)
                except ReleaseError as e:
                    self._reply(400, f"{e}\n")
                    return
            self._reply(200, text, "application/json" if fmt == "json" else "text/plain; charset=utf-8")

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"service: {self.address_string()} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="HTTP transcription over a whisper_<model>_xeon directory.")
    ap.add_argument("--artifact", required=True, type=Path, help="a pulled whisper_<model>_xeon directory")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    ap.add_argument("--threads", type=int, default=None, help="whisper threads (default: all, at most 8)")
    args = ap.parse_args(argv)
    try:
        transcriber = Transcriber(args.artifact, threads=args.threads)
        _ = transcriber.ctx  # load the model now: a broken artifact fails at start, not on a request
    except ReleaseError as e:
        print(f"service: error: {e}", file=sys.stderr)
        return e.exit_code
    server = ThreadingHTTPServer((args.host, args.port), make_handler(transcriber))
    print(f"service: listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        transcriber.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
