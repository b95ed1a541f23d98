"""Render transcription segments as txt, json, srt or vtt: pure functions, no I/O.

A segment is anything with `t0`, `t1` (seconds, float) and `text` attributes, such as
`binding.Segment`. Times are rounded to whole milliseconds once, so a segment's end and the next
segment's start never print differently in srt and vtt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from whisper_release.core.errors import ConfigError


class SegmentLike(Protocol):
    t0: float
    t1: float
    text: str


FORMATS = ("txt", "json", "srt", "vtt")


def _ms(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"negative timestamp {seconds!r}")
    return int(round(seconds * 1000))


def timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS<sep>mmm; hours are not wrapped at 24 (a 30 h recording prints 30:..)."""
    ms = _ms(seconds)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_timestamp(seconds: float) -> str:
    return timestamp(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    return timestamp(seconds, ".")


def _clean(text: str) -> str:
    # whisper.cpp segments start with a space; a blank line would end an srt/vtt cue early.
    return " ".join(text.split())


def _cues(segments: Iterable[SegmentLike]) -> list[tuple[float, float, str]]:
    return [(s.t0, s.t1, _clean(s.text)) for s in segments if _clean(s.text)]


def to_txt(segments: Sequence[SegmentLike]) -> str:
    """The transcript as one line of text (segments joined by single spaces)."""
    text = " ".join(c[2] for c in _cues(segments))
    return text + "\n" if text else ""


def to_json(segments: Sequence[SegmentLike], **meta: Any) -> str:
    """{"text": ..., "segments": [{"start", "end", "text"}], **meta}; times in seconds (ms precision)."""
    cues = _cues(segments)
    doc: dict[str, Any] = dict(meta)
    doc["text"] = " ".join(c[2] for c in cues)
    doc["segments"] = [
        {"id": i, "start": _ms(t0) / 1000, "end": _ms(t1) / 1000, "text": text}
        for i, (t0, t1, text) in enumerate(cues)
    ]
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def to_srt(segments: Sequence[SegmentLike]) -> str:
    """SubRip: numbered cues from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    blocks = [
        f"{i}\n{srt_timestamp(t0)} --> {srt_timestamp(t1)}\n{text}\n"
        for i, (t0, t1, text) in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Sequence[SegmentLike]) -> str:
    """WebVTT: a `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`."""
    blocks = ["WEBVTT\n"]
    blocks += [f"{vtt_timestamp(t0)} --> {vtt_timestamp(t1)}\n{text}\n" for t0, t1, text in _cues(segments)]
    return "\n".join(blocks)


_RENDERERS: dict[str, Callable[..., str]] = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt}


def render(segments: Sequence[SegmentLike], fmt: str, **meta: Any) -> str:
    """Render in `fmt` (one of FORMATS); `meta` goes into json output only."""
    if fmt not in _RENDERERS:
        raise ConfigError(f"Unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    if fmt == "json":
        return to_json(segments, **meta)
    return _RENDERERS[fmt](segments)


def format_for_path(path: str, default: str = "txt") -> str:
    """The format a file name implies by its suffix (`out.srt` -> srt), else `default`."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in _RENDERERS else default
