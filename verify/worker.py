"""Runs in a fresh interpreter with no LD_LIBRARY_PATH: loads the shipped libwhisper with ctypes,
reports what the library says about itself, loads one model and transcribes the clips.

Input (stdin, JSON): {"lib_dir", "required_flags", "model", "clips": [{"name", "path"}], "threads"},
optionally "audio_ctx" and "max_tokens" (kept tiny for runs on an emulated CPU).
Output (stdout, JSON): {"version", "system_info", "cpu_module" (the module runtime/modules.py chose),
"hparams", "model_type", "segments": {name: [...]}}
or {"error": "..."} with the error's exit code. A separate process is the point: whatever the
library needs must come from its own directory ($ORIGIN), not from this test process.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from whisper_release.core.errors import ReleaseError
    from whisper_release.runtime import audio, binding

    job = json.load(sys.stdin)
    try:
        whisper = binding.load(job["lib_dir"], required_flags=job["required_flags"])
        out: dict[str, object] = {
            "version": whisper.version,
            "system_info": whisper.system_info(),
            "cpu_module": whisper.cpu_module.as_dict(),
        }
        if job.get("model"):
            with whisper.open(job["model"]) as ctx:
                out["hparams"] = ctx.hparams()
                out["model_type"] = ctx.model_type()
                segments = {}
                for clip in job.get("clips", []):
                    pcm = audio.read_wav(clip["path"])
                    segs = ctx.transcribe(
                        pcm,
                        threads=int(job.get("threads", 2)),
                        beam=job.get("beam"),
                        audio_ctx=job.get("audio_ctx"),
                        max_tokens=job.get("max_tokens"),
                    )
                    segments[clip["name"]] = [[s.t0, s.t1, s.text] for s in segs]
                out["segments"] = segments
    except ReleaseError as e:
        json.dump({"error": str(e), "type": type(e).__name__}, sys.stdout)
        return e.exit_code
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
