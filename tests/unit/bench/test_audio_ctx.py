"""binding.fitted_audio_ctx: the encoder window docs/performance.md measured for short clips."""

from __future__ import annotations

import pytest

from whisper_release.bench import engines
from whisper_release.core.errors import ConfigError
from whisper_release.runtime import binding
from whisper_release.runtime.binding import fitted_audio_ctx

SECOND = 16_000


def test_short_clips_get_the_floor() -> None:
    assert fitted_audio_ctx(0) == 750
    assert fitted_audio_ctx(1) == 750
    assert fitted_audio_ctx(3 * SECOND) == 750  # 150 frames + 64 margin, below the floor
    # jfk.wav: 176,000 samples = 550 frames + 64 = 614, still below the floor.
    assert fitted_audio_ctx(176_000) == 750


def test_clips_just_under_15_s_get_their_frames_plus_margin() -> None:
    # 686 frames + 64 = 750: the last clip length the floor alone covers.
    assert fitted_audio_ctx(686 * 320) == 750
    assert fitted_audio_ctx(686 * 320 + 1) == 751  # a started frame counts
    assert fitted_audio_ctx(15 * SECOND - 1) == 750 + 64


def test_15_s_and_longer_keep_the_full_window() -> None:
    assert fitted_audio_ctx(15 * SECOND) == 0
    assert fitted_audio_ctx(15 * SECOND + 1) == 0
    assert fitted_audio_ctx(30 * SECOND) == 0
    assert fitted_audio_ctx(10 * 60 * SECOND) == 0


def test_floor_is_a_parameter() -> None:
    assert fitted_audio_ctx(0, floor=0) == 64
    assert fitted_audio_ctx(11 * SECOND, floor=0) == 550 + 64
    assert fitted_audio_ctx(11 * SECOND, floor=1000) == 1000
    assert fitted_audio_ctx(11 * SECOND, floor=1500) == 1500
    assert fitted_audio_ctx(20 * SECOND, floor=1000) == 0


@pytest.mark.parametrize(
    ("n_samples", "floor", "needle"),
    [(-1, 750, "got -1"), (0, -1, "got -1"), (0, 1501, "0 to 1500 encoder frames")],
)
def test_bad_arguments_are_config_errors(n_samples: int, floor: int, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        fitted_audio_ctx(n_samples, floor=floor)


def test_the_benchmark_times_the_products_formula() -> None:
    assert engines.fitted_audio_ctx is binding.fitted_audio_ctx
