from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whisper_release.core.errors import ConfigError
from whisper_release.runtime import formats


@dataclass
class Seg:
    t0: float
    t1: float
    text: str


FIRST = "And so my fellow Americans, ask not what your country can do for you,"
SEGS = [
    Seg(0.0, 7.6, " And so my fellow Americans, ask not what your country can do for you,"),
    Seg(7.6, 11.0, " ask what you can do for your country."),
]


def test_timestamps_pad_and_round_to_milliseconds():
    assert formats.srt_timestamp(0) == "00:00:00,000"
    assert formats.vtt_timestamp(3723.4567) == "01:02:03.457"
    assert formats.srt_timestamp(59.9996) == "00:01:00,000"  # rounding carries into minutes
    assert formats.vtt_timestamp(100 * 3600 + 0.001) == "100:00:00.001"


def test_negative_timestamp_is_refused():
    with pytest.raises(ValueError):
        formats.srt_timestamp(-0.5)


@given(st.integers(min_value=0, max_value=99 * 3_600_000))
def test_timestamp_parses_back_to_the_same_milliseconds(ms):
    for sep in (",", "."):
        m = re.fullmatch(
            r"(\d{2,}):(\d{2}):(\d{2})" + re.escape(sep) + r"(\d{3})", formats.timestamp(ms / 1000, sep)
        )
        assert m, formats.timestamp(ms / 1000, sep)
        h, mi, s, frac = map(int, m.groups())
        assert mi < 60 and s < 60
        assert ((h * 60 + mi) * 60 + s) * 1000 + frac == ms


def test_txt_joins_stripped_segments():
    assert formats.to_txt(SEGS) == (
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.\n"
    )
    assert formats.to_txt([]) == ""


def test_srt_layout():
    assert formats.to_srt(SEGS) == (
        f"1\n00:00:00,000 --> 00:00:07,600\n{FIRST}\n"
        "\n"
        "2\n00:00:07,600 --> 00:00:11,000\nask what you can do for your country.\n"
    )


def test_vtt_layout():
    out = formats.to_vtt(SEGS)
    assert out.startswith("WEBVTT\n\n")
    assert out == (
        "WEBVTT\n\n"
        f"00:00:00.000 --> 00:00:07.600\n{FIRST}\n"
        "\n"
        "00:00:07.600 --> 00:00:11.000\nask what you can do for your country.\n"
    )


def test_json_carries_segments_times_and_meta():
    doc = json.loads(formats.render(SEGS, "json", model="base"))
    assert doc["model"] == "base"
    assert doc["text"].startswith("And so my fellow")
    assert [(s["start"], s["end"]) for s in doc["segments"]] == [(0.0, 7.6), (7.6, 11.0)]
    assert doc["segments"][1]["text"] == "ask what you can do for your country."


def test_blank_segments_and_embedded_newlines_cannot_break_cues():
    segs = [Seg(0, 1, "   "), Seg(1, 2, " two\n\nlines ")]
    assert formats.to_srt(segs) == "1\n00:00:01,000 --> 00:00:02,000\ntwo lines\n"
    assert formats.to_vtt(segs).count("-->") == 1


def test_unknown_format_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="txt, json, srt, vtt"):
        formats.render(SEGS, "docx")


@pytest.mark.parametrize(
    "name,fmt", [("a.srt", "srt"), ("b.VTT", "vtt"), ("c.json", "json"), ("d.out", "txt"), ("e", "txt")]
)
def test_format_for_path(name, fmt):
    assert formats.format_for_path(name) == fmt
