"""Turn the benchmark's pytest-benchmark JSON into dist/bench/report.md and PNG charts.

Ratios are time ratios, subject ÷ baseline on the median: below 1 the subject is faster.
Memory ratios compare peak RSS of the worker process of each configuration.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_release.bench.host import MAX_FOREIGN_SHARE
from whisper_release.core.errors import ConfigError, ReleaseError
from whisper_release.layout.libraries import CPU_FLOOR

MiB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    config: str
    engine: str
    build: str
    model: str
    quant: str
    op: str
    decode: str | None
    median: float
    minimum: float
    stddev: float
    rounds: int
    peak_rss: int | None = None
    rtf: float | None = None
    wer: float | None = None
    audio_seconds: float | None = None
    random_weights: bool = False
    foreign_cpu_share: float | None = None  # CPU share other processes took while this was timed
    cpu_module: str | None = None  # the CPU module the binding registered (whisper.cpp rows)
    stages_ms: dict[str, float] | None = None  # whisper.cpp's stage timings of the last round

    @property
    def disturbed(self) -> bool:
        return (self.foreign_cpu_share or 0.0) > MAX_FOREIGN_SHARE

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.model, self.op, self.decode)


@dataclass(frozen=True)
class Ratio:
    section: str
    what: str  # e.g. "base q5_1 transcribe greedy"
    subject: str
    baseline: str
    subject_value: float
    baseline_value: float
    unit: str = "s"
    disturbed: bool = False  # either side was timed while other processes took the CPUs

    @property
    def ratio(self) -> float:
        return self.subject_value / self.baseline_value if self.baseline_value else float("inf")


def load_rows(path: str | os.PathLike[str]) -> tuple[list[Row], dict[str, Any]]:
    """Rows of a pytest-benchmark JSON written by the benchmarks/ suite, and its machine info."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Benchmark results {p} do not exist; run `nox -s benchmark` first.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"Benchmark results {p} are not JSON ({e}); run the benchmark again.") from None
    rows = []
    for b in doc.get("benchmarks", []):
        x = b.get("extra_info", {})
        if "config" not in x:
            continue  # not one of ours
        s = b["stats"]
        rows.append(
            Row(
                config=x["config"], engine=x["engine"], build=x["build"], model=x["model"], quant=x["quant"],
                op=x["op"], decode=x.get("decode"), median=float(s["median"]), minimum=float(s["min"]),
                stddev=float(s["stddev"]), rounds=int(s["rounds"]), peak_rss=x.get("peak_rss"),
                rtf=x.get("rtf"), wer=x.get("wer"), audio_seconds=x.get("audio_seconds"),
                random_weights=bool(x.get("random_weights", False)),
                foreign_cpu_share=x.get("foreign_cpu_share"), cpu_module=x.get("cpu_module"),
                stages_ms=x.get("stages_ms"),
            )
        )  # fmt: skip
    if not rows:
        raise ConfigError(
            f"{p} holds no results of the benchmarks/ suite (no extra_info.config); wrong file?"
        )
    return rows, doc.get("machine_info", {})


def _find(rows: Iterable[Row], **kw: Any) -> Row | None:
    for r in rows:
        if all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def _label(r: Row) -> str:
    if r.engine == "whisper.cpp":
        module = f" ({r.cpu_module})" if r.cpu_module and r.build == "artifact" else ""
        return f"whisper.cpp {r.build}{module} {r.quant}"
    return f"{r.engine} {r.quant}"


def _ratio(section: str, what: str, a: Row, b: Row, subject: str, baseline: str, rss: bool = False) -> Ratio:
    if rss:
        va, vb, unit = (a.peak_rss or 0) / MiB, (b.peak_rss or 0) / MiB, "MiB"
    else:
        va, vb, unit = a.median, b.median, "s"
    return Ratio(section, what, subject, baseline, va, vb, unit, a.disturbed or b.disturbed)


def shipped_quants(rows: Sequence[Row]) -> list[str]:
    """The quantized types the artifact ships, as measured (every non-f16 artifact row)."""
    return sorted(
        {r.quant for r in rows if r.engine == "whisper.cpp" and r.build == "artifact" and r.quant != "f16"}
    )


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    """Every comparison the report makes, where both sides were measured."""
    out: list[Ratio] = []
    quants = shipped_quants(rows)
    keys = sorted({r.key for r in rows}, key=lambda k: (k[0], k[1], k[2] or ""))
    for model, op, decode in keys:
        what = f"{model} {op}" + (f" {decode}" if decode else "")
        same = [r for r in rows if r.key == (model, op, decode)]
        for q in sorted({r.quant for r in same if r.engine == "whisper.cpp"}):
            art = _find(same, build="artifact", quant=q, engine="whisper.cpp")
            if not art:
                continue
            for ref in ("native", "generic"):
                other = _find(same, build=ref, quant=q, engine="whisper.cpp")
                if other:
                    out.append(
                        Ratio("builds", f"{what} {q}", _label(art), _label(other), art.median, other.median)
                    )
        forced = [r for r in same if r.build.startswith("module:")]
        for quant in sorted({r.quant for r in forced}):
            floor = _find(forced, build=f"module:{CPU_FLOOR}", quant=quant)
            for mod in (r for r in forced if r.quant == quant and floor and r is not floor):
                assert floor is not None
                out.append(_ratio("modules", f"{what} {quant}", mod, floor, mod.build, floor.build))
        for quant in quants:
            for subject_build in ("artifact", "tuned"):
                art = _find(same, build=subject_build, quant=quant, engine="whisper.cpp")
                if not art or op != "transcribe":
                    continue
                for peer in same:
                    if peer.engine != "whisper.cpp":
                        out.append(_ratio("peers", what, art, peer, _label(art), _label(peer)))
            if op == "transcribe":
                art = _find(same, build="artifact", quant=quant, engine="whisper.cpp")
                tuned = _find(same, build="tuned", quant=quant, engine="whisper.cpp")
                if art and tuned:
                    out.append(_ratio("tuning", what, tuned, art, _label(tuned), _label(art)))
            qr = _find(same, build="artifact", quant=quant, engine="whisper.cpp")
            fr = _find(same, build="artifact", quant="f16", engine="whisper.cpp")
            if qr and fr:
                out.append(_ratio("quantisation", f"{what} speed", qr, fr, quant, "f16"))
                if op == "load" and qr.peak_rss and fr.peak_rss:
                    out.append(_ratio("quantisation", f"{model} peak RSS", qr, fr, quant, "f16", rss=True))
    return out


STAGES = ("mel", "encode", "decode", "batchd", "prompt", "sample")


def stage_table(rows: Sequence[Row]) -> list[str]:
    """Where whisper.cpp's transcription time goes, from its own per-stage totals (whisper_print_timings)
    of the last round: the rest is the binding, tokenisation and what whisper.cpp does not time."""
    staged = [r for r in rows if r.op == "transcribe" and r.stages_ms]
    if not staged:
        return []
    out = [
        "## Where the time goes (whisper.cpp's stage timings, last round)",
        "",
        "| config | decode | total s | " + " | ".join(f"{s} s" for s in STAGES) + " | rest s |",
        "|---|---|---:|" + "---:|" * (len(STAGES) + 1),
    ]
    for r in sorted(staged, key=lambda r: (r.model, r.decode or "", r.config)):
        st = r.stages_ms or {}
        parts = [st.get(s, 0.0) / 1000 for s in STAGES]
        out.append(f"| {r.config} | {r.decode or ''} | {r.median:.2f} | "
                   + " | ".join(f"{v:.2f}" for v in parts) + f" | {r.median - sum(parts):.2f} |")  # fmt: skip
    return [*out, ""]


def _fmt(v: float, unit: str) -> str:
    return f"{v:.0f} {unit}" if unit == "MiB" else f"{v:.3f} {unit}"


def render_markdown(rows: Sequence[Row], machine: dict[str, Any], charts: Sequence[str] = ()) -> str:
    env = machine.get("whisper_release", {})
    picked = ", ".join(sorted({r.cpu_module for r in rows if r.build == "artifact" and r.cpu_module}))
    lines = ["# whisper-release benchmark", ""]
    lines += [
        f"- Host CPU: {env.get('cpu', machine.get('cpu', {}).get('brand_raw', 'unknown'))}"
        f" ({env.get('cpu_count', '?')} logical CPUs); threads: {env.get('threads', '?')}",
        f"- whisper.cpp {env.get('whisper_cpp', '?')} (release {env.get('release', '?')}); "
        f"faster-whisper {env.get('faster_whisper')} / CTranslate2 {env.get('ctranslate2')}; "
        f"pywhispercpp {env.get('pywhispercpp')}; Python {env.get('python', '?')}, "
        f"kernel {env.get('kernel', '?')}",
        f"- CPU module the dispatcher picked on this host (artifact rows): {picked or 'none'}",
        f"- Load average at start: {env.get('load_average_at_start', '?')} "
        "(runs refuse to start during builds)",
        "- Times are medians of the timed rounds after a warm-up round; ratios are subject ÷ baseline "
        "(below 1: the subject is faster).",
        f"- †: other processes took more than {MAX_FOREIGN_SHARE:.0%} of the CPUs while this was timed "
        "(measured from /proc/stat); rerun before trusting it.",
        "",
    ]
    groups: dict[str, list[Ratio]] = {}
    for rt in ratios(rows):
        groups.setdefault(rt.section, []).append(rt)
    titles = {
        "peers": "Artifact vs peer engines (same weights, audio, threads)",
        "tuning": "Recommended decoding settings vs library defaults",
        "builds": "Artifact (AVX2+FMA) vs reference builds of the same source",
        "quantisation": "Shipped quantized files vs f16 (artifact build)",
        "modules": "CPU modules this host runs vs the floor (each forced; the artifact rows show the "
        "module the dispatcher picked)",
    }
    for section in ("peers", "tuning", "builds", "quantisation", "modules"):
        if section not in groups:
            continue
        lines += [
            f"## {titles[section]}",
            "",
            "| measurement | subject | baseline | subject | baseline | ratio |",
            "|---|---|---|---:|---:|---:|",
        ]
        for q in groups[section]:
            lines.append(
                f"| {q.what} | {q.subject} | {q.baseline} | {_fmt(q.subject_value, q.unit)} | "
                f"{_fmt(q.baseline_value, q.unit)} | {q.ratio:.2f}{' †' if q.disturbed else ''} |"
            )
        lines.append("")
    lines += stage_table(rows)
    lines += [
        "## All measurements",
        "",
        "| config | op | decode | median s | min s | rounds | RTF | WER | peak RSS MiB | others' CPU "
        "| weights |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.model, r.op, r.decode or "", r.median)):
        others = (
            ""
            if r.foreign_cpu_share is None
            else f"{r.foreign_cpu_share:.0%}" + (" †" if r.disturbed else "")
        )
        lines.append(
            f"| {r.config} | {r.op} | {r.decode or ''} | {r.median:.3f} | {r.minimum:.3f} | {r.rounds} | "
            f"{'' if r.rtf is None else f'{r.rtf:.3f}'} | {'' if r.wer is None else f'{r.wer:.3f}'} | "
            f"{'' if not r.peak_rss else f'{r.peak_rss / MiB:.0f}'} | "
            f"{others} | "
            f"{'random weights' if r.random_weights else 'real'} |"
        )
    if charts:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    lines.append("")
    return "\n".join(lines)


def write_charts(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """PNG bar charts: transcription per engine, encoder per build, peak RSS per configuration."""
    # matplotlib is in the [test] and [bench] extras only, and slow to import: charts alone need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display on a server

    made: list[Path] = []

    def bar(name: str, title: str, xlabel: str, items: list[tuple[str, float]]) -> None:
        if not items:
            return
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(items) + 1.4))
        labels, values = zip(*items, strict=True)
        ax.barh(range(len(items)), values, color="#4c72b0")
        ax.set_yticks(range(len(items)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        tmp = out_dir / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        made.append(path)

    for model in sorted({r.model for r in rows if r.op == "transcribe"}):
        for decode in ("greedy", "beam5"):
            sel = sorted(
                (r for r in rows if r.op == "transcribe" and r.model == model and r.decode == decode),
                key=lambda r: r.median,
            )
            bar(
                f"transcribe-{model}-{decode}",
                f"{model}: {decode} transcription of {sel[0].audio_seconds or 0:.0f} s of audio "
                "(median s, lower is better)"
                if sel
                else "",
                "seconds",
                [(_label(r), r.median) for r in sel],
            )
    enc = sorted((r for r in rows if r.op == "encode"), key=lambda r: (r.model, r.median))
    bar(
        "encode",
        "Encoder, one 30 s window (median s)",
        "seconds",
        [
            (f"{r.model} {_label(r)}" + (" (random weights)" if r.random_weights else ""), r.median)
            for r in enc
        ],
    )
    mem = sorted((r for r in rows if r.op == "load" and r.peak_rss), key=lambda r: (r.model, r.peak_rss or 0))
    bar(
        "peak-rss",
        "Peak RSS after load (MiB)",
        "MiB",
        [(f"{r.model} {_label(r)}", (r.peak_rss or 0) / MiB) for r in mem],
    )
    return made


def write_report(results: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """report.md and charts beside the results; the markdown is written last, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, machine = load_rows(results)
    charts = write_charts(rows, out)
    text = render_markdown(rows, machine, [str(c) for c in charts])
    tmp = out / ".report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    """`python -m whisper_release.bench.report RESULTS.json [OUT_DIR]`."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m whisper_release.bench.report RESULTS.json [OUT_DIR]", file=sys.stderr)
        return 2
    try:
        path = write_report(args[0], args[1] if len(args) > 1 else Path(args[0]).parent)
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
