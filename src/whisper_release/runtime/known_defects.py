"""Known defects of the pinned whisper.cpp and the guard this project keeps against each.

One table, tied to the version the binding was written for: tests/unit/runtime/test_known_defects.py fails
once release.toml pins a version at or past a defect's `fixed_in`, naming the guard that can then go
(and the binding refuses a library of any other version, so a guard never silently outlives its pin).
Standard library only: the consumer imports it, and it must not read release.toml.
"""

from __future__ import annotations

from dataclasses import dataclass

# The whisper.cpp release whose C API (whisper.h) and defects this package was written for.
BINDING_VERSION = "1.8.5"


@dataclass(frozen=True)
class KnownDefect:
    key: str
    upstream: str  # the upstream fix (pull request) that describes the defect
    defect: str
    affects: str  # pinned version known to have it
    fixed_in: str  # first release known to hold the fix (see `fixed_in_note`)
    guard: str  # where the guard lives and what it does
    fixed_in_note: str = ""


# 1.8.5 reflect-pads the first 200 samples by reading samples[1..200] before any length check.
SHORT_AUDIO_MIN_SAMPLES = 201

DEFECTS: tuple[KnownDefect, ...] = (
    KnownDefect(
        key="short-audio-overread",
        upstream="ggml-org/whisper.cpp#3956",
        defect="log_mel_spectrogram reads past the end of audio shorter than 201 samples (heap OOB read)",
        affects=BINDING_VERSION,
        fixed_in="1.9.3",
        guard="runtime.binding.Context.transcribe pads audio shorter than "
        f"{SHORT_AUDIO_MIN_SAMPLES} samples with silence before whisper_full",
        fixed_in_note="merged 2026-07-26; 1.9.3 is the newest release known to hold it (the first "
        "release holding it was not checked offline), so the guard may stay a release too long, "
        "never too short",
    ),
    KnownDefect(
        key="malformed-n-dims",
        upstream="ggml-org/whisper.cpp#3957",
        defect="a model tensor header with n_dims > 4 overflows a stack buffer in whisper_model_load",
        affects=BINDING_VERSION,
        fixed_in="1.9.3",
        guard="runtime.binding.Context checks every tensor header (n_dims 1..4) before "
        "whisper_init_from_file_with_params; consume.consumer.open_artifact hashes the model against "
        "SHA256SUMS before it is loaded",
        fixed_in_note="1.9.3 is the newest release known to hold the fix (the first was not checked offline)",
    ),
)


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.8.5' -> (1, 8, 5); a suffix such as '-r1' or '+git' is ignored."""
    head = version.split("-", 1)[0].split("+", 1)[0]
    try:
        return tuple(int(p) for p in head.split("."))
    except ValueError:
        raise ValueError(f"not a dotted release version: {version!r}") from None


def open_defects(version: str) -> list[KnownDefect]:
    """The defects a whisper.cpp of `version` still has (its guards are still needed)."""
    v = version_tuple(version)
    return [d for d in DEFECTS if v < version_tuple(d.fixed_in)]


def defect(key: str) -> KnownDefect:
    return next(d for d in DEFECTS if d.key == key)
