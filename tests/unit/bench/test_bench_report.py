"""The report: ratios computed from pytest-benchmark JSON, the markdown tables, the PNG charts."""

from __future__ import annotations

import json

import pytest

from whisper_release.bench import report as br
from whisper_release.core.errors import ConfigError


def _bench(config, engine, build, model, quant, op, median, decode=None, rss=None, **extra):
    info = {
        "config": config,
        "engine": engine,
        "build": build,
        "model": model,
        "quant": quant,
        "op": op,
        "threads": 2,
        "random_weights": config.endswith("-random"),
        "peak_rss": rss,
        **extra,
    }
    if decode:
        info["decode"] = decode
    return {"name": f"test_{op}[{config}]", "extra_info": info,
            "stats": {"median": median, "min": median * 0.9, "stddev": 0.01, "rounds": 2}}  # fmt: skip


MiB = 1024 * 1024
ART = ("whisper.cpp", "artifact")
BENCHES = [
    _bench("whisper.cpp-artifact-base-q5_1", *ART, "base", "q5_1", "load", 0.2, rss=200 * MiB),
    _bench("whisper.cpp-artifact-base-f16", *ART, "base", "f16", "load", 0.3, rss=300 * MiB),
    _bench("whisper.cpp-artifact-base-q5_1", *ART, "base", "q5_1", "encode", 1.2),
    _bench("whisper.cpp-artifact-base-f16", *ART, "base", "f16", "encode", 1.0),
    _bench("whisper.cpp-native-base-q5_1", "whisper.cpp", "native", "base", "q5_1", "encode", 1.0),
    _bench("whisper.cpp-generic-base-q5_1", "whisper.cpp", "generic", "base", "q5_1", "encode", 4.8),
    _bench("whisper.cpp-artifact-base-q5_1", *ART, "base", "q5_1", "transcribe", 13.0,
           decode="greedy", rtf=0.2, wer=0.05),
    _bench("whisper.cpp-tuned-base-q5_1", "whisper.cpp", "tuned", "base", "q5_1", "transcribe", 5.2,
           decode="greedy", rtf=0.08, wer=0.06),
    _bench("faster-whisper-base-int8", "faster-whisper", "ctranslate2", "base", "int8", "transcribe", 6.5,
           decode="greedy", wer=0.05),
    _bench("whisper.cpp-artifact-medium-q5_1-random", *ART, "medium", "q5_1", "encode", 14.0),
]  # fmt: skip


@pytest.fixture
def results(tmp_path):
    p = tmp_path / "results.json"
    machine = {
        "whisper_release": {
            "cpu": "Test CPU 9000",
            "cpu_count": 2,
            "threads": 2,
            "whisper_cpp": "1.8.5",
            "faster_whisper": "1.2.1",
            "ctranslate2": "4.8.5",
            "pywhispercpp": "1.5.1",
        }
    }
    other = {
        "name": "test_other",
        "extra_info": {},
        "stats": {"median": 1, "min": 1, "stddev": 0, "rounds": 1},
    }
    p.write_text(json.dumps({"machine_info": machine, "benchmarks": [*BENCHES, other]}))
    return p


def _get(ratios, section, what, baseline=None):
    hits = [
        r
        for r in ratios
        if r.section == section and r.what == what and (baseline is None or r.baseline == baseline)
    ]
    assert len(hits) == 1, (section, what, baseline, ratios)
    return hits[0]


def test_ratios(results):
    rows, _ = br.load_rows(results)
    assert len(rows) == len(BENCHES)  # the foreign benchmark is ignored
    rs = br.ratios(rows)
    assert _get(rs, "builds", "base encode q5_1", "whisper.cpp native q5_1").ratio == pytest.approx(1.2)
    assert _get(rs, "builds", "base encode q5_1", "whisper.cpp generic q5_1").ratio == pytest.approx(0.25)
    peer = [r for r in rs if r.section == "peers" and r.baseline == "faster-whisper int8"]
    assert {r.subject: round(r.ratio, 3) for r in peer} == {
        "whisper.cpp artifact q5_1": 2.0,
        "whisper.cpp tuned q5_1": 0.8,
    }
    assert _get(rs, "tuning", "base transcribe greedy").ratio == pytest.approx(0.4)
    assert _get(rs, "quantisation", "base encode speed").ratio == pytest.approx(1.2)
    mem = _get(rs, "quantisation", "base peak RSS")
    assert (mem.subject_value, mem.baseline_value, mem.unit) == (200, 300, "MiB")
    assert not [r for r in rs if "medium" in r.what]  # nothing to compare it with


def test_markdown_states_host_threads_versions_and_labels(results):
    rows, machine = br.load_rows(results)
    md = br.render_markdown(rows, machine, ["/x/encode.png"])
    assert (
        "Test CPU 9000" in md
        and "threads: 2" in md
        and "whisper.cpp 1.8.5" in md
        and "faster-whisper 1.2.1" in md
    )
    assert (
        "| base transcribe greedy | whisper.cpp artifact q5_1 | faster-whisper int8 | 13.000 s | 6.500 s "
        "| 2.00 |" in md
    )
    assert "| 200 MiB | 300 MiB | 0.67 |" in md
    medium = [ln for ln in md.splitlines() if ln.startswith("| whisper.cpp-artifact-medium")]
    assert medium and medium[0].endswith("| random weights |")
    assert "![encode](encode.png)" in md


def test_write_report_makes_pngs_and_markdown(results, tmp_path):
    out = tmp_path / "out"
    path = br.write_report(results, out)
    assert path == out / "report.md" and "## All measurements" in path.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["encode.png", "peak-rss.png", "transcribe-base-greedy.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    assert not list(out.glob(".*"))


def test_bad_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="do not exist; run `nox -s benchmark` first"):
        br.load_rows(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="are not JSON"):
        br.load_rows(bad)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ConfigError, match="holds no results of the benchmarks/ suite"):
        br.load_rows(empty)
    assert br.main([str(empty)]) == ConfigError.exit_code


def test_measurements_disturbed_by_other_processes_are_flagged(tmp_path):
    doc = {
        "benchmarks": [
            _bench("whisper.cpp-artifact-base-q5_1", *ART, "base", "q5_1", "transcribe", 2.0, decode="greedy",
                   foreign_cpu_share=0.46),
            _bench("faster-whisper-base-int8", "faster-whisper", "ctranslate2", "base", "int8", "transcribe",
                   1.0, decode="greedy", foreign_cpu_share=0.01),
        ]
    }  # fmt: skip
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    rows, machine = br.load_rows(p)
    (r,) = br.ratios(rows)
    assert r.disturbed and r.ratio == pytest.approx(2.0)
    md = br.render_markdown(rows, machine)
    assert "| 2.00 † |" in md and "| 46% † |" in md and "| 1% |" in md


def test_every_shipped_type_is_compared_with_the_peers_and_f16(tmp_path):
    doc = {
        "benchmarks": [
            _bench(f"whisper.cpp-artifact-base-{q}", *ART, "base", q, "transcribe", t, decode="greedy")
            for q, t in (("q5_1", 2.0), ("q8_0", 1.5), ("f16", 1.8))
        ] + [
            _bench("faster-whisper-base-int8", "faster-whisper", "ctranslate2", "base", "int8", "transcribe",
                   1.0, decode="greedy"),
        ]
    }  # fmt: skip
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    rows, machine = br.load_rows(p)
    assert br.shipped_quants(rows) == ["q5_1", "q8_0"]
    got = {(r.section, r.subject, r.baseline): round(r.ratio, 3) for r in br.ratios(rows)}
    assert got[("peers", "whisper.cpp artifact q8_0", "faster-whisper int8")] == 1.5
    assert got[("peers", "whisper.cpp artifact q5_1", "faster-whisper int8")] == 2.0
    assert got[("quantisation", "q8_0", "f16")] == round(1.5 / 1.8, 3)
    assert "## Shipped quantized files vs f16 (artifact build)" in br.render_markdown(rows, machine)


def test_cpu_modules_are_compared_with_the_floor_and_the_pick_is_named(tmp_path):
    """Issue 14: every module this host ran, per shipped file, as a ratio to the floor module; the
    artifact rows name the module the dispatcher picked."""
    benches = [
        _bench("whisper.cpp-artifact-base-q5_1", *ART, "base", "q5_1", "encode", 1.0, cpu_module="zen4"),
        _bench("faster-whisper-base-int8", "faster-whisper", "ctranslate2", "base", "int8", "encode", 0.5),
        *(
            _bench(f"whisper.cpp-module-{m}-base-{q}", "whisper.cpp", f"module:{m}", "base", q, "encode", t,
                   cpu_module=m)
            for m, q, t in [("haswell", "q5_1", 1.5), ("zen4", "q5_1", 1.2), ("haswell", "q8_0", 1.0),
                            ("icelake", "q8_0", 0.9)]
        ),
    ]  # fmt: skip
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    rows, machine = br.load_rows(p)
    rs = [r for r in br.ratios(rows) if r.section == "modules"]
    assert {(r.what, r.subject, r.baseline): round(r.ratio, 3) for r in rs} == {
        ("base encode q5_1", "module:zen4", "module:haswell"): 0.8,
        ("base encode q8_0", "module:icelake", "module:haswell"): 0.9,
    }
    md = br.render_markdown(rows, machine)
    assert "## CPU modules this host runs vs the floor" in md
    assert "- CPU module the dispatcher picked on this host (artifact rows): zen4" in md


def test_stage_table_splits_whisper_cpp_time_by_stage(tmp_path):
    stages = {"mel": 200.0, "sample": 300.0, "encode": 9000.0, "decode": 2500.0, "batchd": 0.0,
              "prompt": 1000.0}  # fmt: skip
    benches = [
        _bench("whisper.cpp-artifact-base-q5_1", *ART, "base", "q5_1", "transcribe", 13.0, decode="greedy",
               stages_ms=stages),
        _bench("faster-whisper-base-int8", "faster-whisper", "ctranslate2", "base", "int8", "transcribe", 6.5,
               decode="greedy", stages_ms=None),
    ]  # fmt: skip
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    rows, machine = br.load_rows(p)
    md = br.render_markdown(rows, machine)
    # mel, encode, decode, batchd, prompt, sample, then the rest (binding, tokens)
    row = ("| whisper.cpp-artifact-base-q5_1 | greedy | 13.00 | 0.20 | 9.00 | 2.50 | 0.00 | 1.00 | 0.30 "
           "| 0.00 |")
    assert row in md
    assert "| faster-whisper-base-int8 | greedy | 6.50 |" not in md


def test_stage_totals_read_whisper_print_timings():
    from whisper_release.bench.engines import stage_totals

    log = [
        "whisper_print_timings:     load time =    80.00 ms",
        "whisper_print_timings:      mel time =    12.50 ms",
        "whisper_print_timings:   sample time =    30.25 ms /    60 runs (     0.50 ms per run)",
        "whisper_print_timings:   encode time =   700.00 ms /     1 runs (   700.00 ms per run)",
        "whisper_print_timings:   decode time =    90.00 ms /    30 runs (     3.00 ms per run)",
        "whisper_print_timings:    total time =   950.00 ms",
    ]
    assert stage_totals(log) == {"mel": 12.5, "sample": 30.25, "encode": 700.0, "decode": 90.0}
