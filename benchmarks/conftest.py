"""The benchmark suite's fixtures: a quiet host (CPU lock held for the whole session), the sample
set, and one worker process per engine configuration (whisper_release.bench.engines)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whisper_release.bench import host
from whisper_release.bench.engines import EngineSpec, Worker
from whisper_release.bench.matrix import OPS, Config, bench_threads, matrix, resolve_model, sample_clips
from whisper_release.core.pins import Pins, load_pins
from whisper_release.verify import wer

pytest_plugins = ["whisper_release.testing"]
HERE = Path(__file__).parent
ENV_KEY = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("whisper-release benchmark")
    g.addoption("--bench-quick", action="store_true", help="jfk.wav only; no generated models unless named")
    g.addoption("--bench-models", default="tiny.en,base", help="real models, smallest first")
    g.addoption("--bench-generated", default=None, help="generated models (default: release.toml [bench])")
    g.addoption("--bench-rounds", type=int, default=2, help="timed rounds per benchmark")
    g.addoption("--bench-max-load", type=float, default=host.MAX_LOAD, help="refuse above this load")


def _matrix(config: pytest.Config) -> list[Config]:
    pins = load_pins()
    generated = config.getoption("--bench-generated")
    if generated is not None:
        gen = [g for g in generated.split(",") if g]
    elif config.getoption("--bench-quick"):
        gen = []
    else:
        gen = list(pins.bench.generated_models)
    return matrix(pins, models=[m for m in config.getoption("--bench-models").split(",") if m], generated=gen)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    op = metafunc.function.__name__.removeprefix("test_")
    cases = []
    for c in _matrix(metafunc.config):
        if op not in c.ops:
            continue
        if op == "transcribe":
            cases += [pytest.param((c, d), id=f"{c.id}-{d}") for d in c.decodes]
        else:
            cases.append(pytest.param((c, None), id=c.id))
    metafunc.parametrize("case", cases)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # One configuration after the other, so at most one worker holds its model in memory.
    def key(item: pytest.Item) -> tuple[str, int]:
        cs = getattr(item, "callspec", None)
        cfg = cs.params["case"][0].id if cs else ""
        return (cfg, OPS.index(item.name.split("[")[0].removeprefix("test_")) if cs else 0)

    order = {}
    for i, it in enumerate(items):
        cs = getattr(it, "callspec", None)
        order.setdefault(cs.params["case"][0].id if cs else "", i)
    items.sort(key=lambda it: (order[key(it)[0]], key(it)[1]))


@pytest.fixture(scope="session")
def pins() -> Pins:
    return load_pins()


@pytest.fixture(scope="session")
def threads(pins: Pins) -> int:
    return bench_threads(pins)


@pytest.fixture(scope="session")
def clips(pins: Pins, request: pytest.FixtureRequest) -> list[wer.Clip]:
    return sample_clips(pins, quick=request.config.getoption("--bench-quick"))


@pytest.fixture(scope="session", autouse=True)
def quiet_host(request: pytest.FixtureRequest, threads: int, pins: Pins) -> Iterator[dict[str, Any]]:
    """The CPU lock for the whole session, taken only once nothing builds and the load is low."""
    with host.quiet_host(max_load=request.config.getoption("--bench-max-load")):
        env = host.environment(threads, pins)
        request.config.stash[ENV_KEY] = env
        yield env


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    # Host CPU, threads and versions as seen when the timing started: the report prints them.
    machine_info["whisper_release"] = config.stash.get(ENV_KEY, None)


@pytest.fixture(autouse=True)
def _no_build_started(quiet_host: dict[str, Any]) -> None:
    # A build that started after the session began would triple what follows: refuse at once.
    host.check_quiet(max_load=None)


class _Workers:
    def __init__(self, pins: Pins, threads: int) -> None:
        self.pins, self.threads = pins, threads
        self.current: tuple[str, Worker] | None = None

    def get(self, cfg: Config, clips: list[wer.Clip]) -> Worker:
        if self.current and self.current[0] == cfg.id:
            return self.current[1]
        self.close()
        spec = EngineSpec(**{**cfg.spec.__dict__, "model": resolve_model(cfg.spec.model, self.pins)})
        w = Worker(spec, self.threads)
        w.call("audio", paths=[str(c.path) for c in clips])
        self.current = (cfg.id, w)
        return w

    def close(self) -> None:
        if self.current:
            self.current[1].close()
            self.current = None


@pytest.fixture(scope="session")
def workers(pins: Pins, threads: int) -> Iterator[_Workers]:
    w = _Workers(pins, threads)
    yield w
    w.close()
