"""The known-defects table is tied to the pinned whisper.cpp: a pin bump shows which guards can go."""

from __future__ import annotations

import pytest

from whisper_release.core.pins import load_pins
from whisper_release.runtime import known_defects
from whisper_release.runtime.known_defects import BINDING_VERSION, DEFECTS, open_defects, version_tuple


def test_binding_is_written_for_the_pinned_version() -> None:
    pinned = load_pins().source.version
    assert pinned == BINDING_VERSION, (
        f"release.toml pins whisper.cpp {pinned} but the binding (runtime/known_defects.BINDING_VERSION) "
        f"was written for {BINDING_VERSION}: re-check whisper.h's structs, then each known defect's guard"
    )


def test_every_guard_still_guards_an_open_defect() -> None:
    pinned = load_pins().source.version
    fixed = [d for d in DEFECTS if d not in open_defects(pinned)]
    assert not fixed, "whisper.cpp " + pinned + " holds the fix for: " + "; ".join(
        f"{d.upstream} (fixed in {d.fixed_in}): remove the guard in {d.guard}, then its table row"
        for d in fixed
    )


def test_a_pin_bump_past_fixed_in_closes_the_defects() -> None:
    assert [d.key for d in open_defects("1.8.5")] == ["short-audio-overread", "malformed-n-dims"]
    assert open_defects("1.9.3") == [] and open_defects("1.10.0") == []
    assert version_tuple("1.8.5-r1") == (1, 8, 5) and version_tuple("1.10.0") > version_tuple("1.9.3")
    with pytest.raises(ValueError, match="not a dotted release version"):
        version_tuple("latest")
    assert known_defects.defect("malformed-n-dims").upstream.endswith("#3957")


def test_guards_name_real_places() -> None:
    from whisper_release.runtime import binding

    assert binding.SHORT_AUDIO_MIN_SAMPLES == known_defects.SHORT_AUDIO_MIN_SAMPLES == 201
    assert callable(binding._check_tensor_headers)
    for d in DEFECTS:
        assert d.affects == BINDING_VERSION and d.upstream.startswith("ggml-org/whisper.cpp#")
