"""`python -m whisper_release.runtime.selftest LIB_DIR VARIANT MODEL...`: one CPU module's self-test.

The child process of runtime/modules.py: it registers only VARIANT's module, then transcribes one
second of generated audio (a rising tone) with each model file in a small window, two tokens each.
Exit 0 when every run returned; a SIGILL or any other death is the parent's verdict to read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from whisper_release.runtime import binding, modules


def tone(seconds: float = modules.SELFTEST_SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * binding.SAMPLE_RATE), dtype=np.float32) / binding.SAMPLE_RATE
    return (0.1 * np.sin(2 * np.pi * (200.0 + 400.0 * t) * t)).astype(np.float32)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m whisper_release.runtime.selftest LIB_DIR VARIANT MODEL...", file=sys.stderr)
        return 2
    lib_dir, variant, models = Path(argv[0]), argv[1], argv[2:]
    whisper = binding.load(lib_dir, required_flags=[], cpu_module=variant)
    pcm = tone()
    for model in models:
        whisper.transcribe(
            lib_dir / model,
            pcm,
            threads=2,
            audio_ctx=modules.SELFTEST_AUDIO_CTX,
            max_tokens=modules.SELFTEST_TOKENS,
        )
        print(f"{variant}: {model} ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
