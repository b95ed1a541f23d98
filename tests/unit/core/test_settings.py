"""Issue 13 item 15: every environment knob is parsed in core/settings.py, and a bad value is one
ConfigError naming the variable (WHISPER_RELEASE_RETRIES=-1 used to end in FileNotFoundError)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from whisper_release.core import settings
from whisper_release.core.errors import ConfigError
from whisper_release.core.pins import project_root
from whisper_release.inputs.download import RetryPolicy, download

SRC = Path(settings.__file__).resolve().parents[1]
DOCS = project_root() / "docs" / "troubleshooting.md"

# (knob, a value it must refuse, a value it must accept)
CASES = [
    ("WHISPER_RELEASE_RETRIES", "-1", "0"),
    ("WHISPER_RELEASE_RETRIES", "2.5", "20"),
    ("WHISPER_RELEASE_BACKOFF", "-0.5", "0"),
    ("WHISPER_RELEASE_BACKOFF", "nan", "2.5"),
    ("WHISPER_RELEASE_TIMEOUT", "0", "0.5"),
    ("WHISPER_RELEASE_TIMEOUT", "inf", "60"),
    ("WHISPER_RELEASE_INDEX_URL", "pypi.org/simple", "https://pypi.org/simple/"),
    ("PIP_INDEX_URL", "file:///srv/simple", "http://127.0.0.1:8080/simple"),
    ("WHISPER_RELEASE_CACHE", "{file}", "{tmp}/new-cache"),
    ("XDG_CACHE_HOME", "{file}", "{tmp}"),
    ("WHISPER_RELEASE_ASSETS", "{tmp}/missing", "{tmp}"),
    ("WHISPER_RELEASE_ROOT", "{tmp}", str(project_root())),
    ("WHISPER_RELEASE_STORE", "{file}", "{tmp}/store"),
    ("MINIO_SECURE", "flase", "off"),
    ("WHISPER_RELEASE_CPU_LOCK", "{tmp}", "{tmp}/cpu.lock"),
    ("BENCH_THREADS", "0", "4"),
    ("WHISPER_RELEASE_BENCH_GATE", "fifteen", "15"),
    ("WHISPER_RELEASE_CPU_MODULE", "Zen4; rm", "zen4"),
]


def test_every_knob_has_a_case_here() -> None:
    assert {name for name, _, _ in CASES} == set(settings.KNOBS)


@pytest.mark.parametrize(("name", "bad", "good"), CASES)
def test_a_bad_value_is_one_config_error_naming_the_variable(name: str, bad: str, good: str, tmp_path: Path):
    (tmp_path / "a-file").write_text("x")
    fill = {"tmp": str(tmp_path), "file": str(tmp_path / "a-file")}
    with pytest.raises(ConfigError) as e:
        settings.get(name, {name: bad.format(**fill)})
    text = str(e.value)
    assert text.startswith(f"The environment variable {name}=") and "expected" in text
    assert "\n" not in text
    assert settings.get(name, {name: good.format(**fill)}) is not None
    assert settings.get(name, {name: ""}) == settings.KNOBS[name].default


def test_retries_minus_one_is_a_config_error_not_file_not_found(tmp_path: Path, monkeypatch) -> None:
    """The reported symptom: zero attempts, then a stat of a part file that was never written."""
    monkeypatch.setenv("WHISPER_RELEASE_RETRIES", "-1")
    want = r"WHISPER_RELEASE_RETRIES='-1' is not valid: expected a whole number"
    with pytest.raises(ConfigError, match=want):
        download("http://127.0.0.1:9/x", tmp_path / "x", what="x", sha256="0" * 64)
    with pytest.raises(ConfigError):
        RetryPolicy.from_env()


def test_an_index_url_with_a_token_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as e:
        settings.get("PIP_INDEX_URL", {"PIP_INDEX_URL": "ftp://__token__:pypi-SECRET@host/simple"})
    assert "pypi-SECRET" not in str(e.value)


_DIRECT_READ = re.compile(r"os\.environ\s*(?:\.get\s*\(|\[)|os\.getenv\s*\(")


def test_no_module_reads_a_knob_from_the_environment_directly() -> None:
    """Copying the whole environment for a child process is fine; reading one variable is settings'
    job. testing.py is the pytest plugin (CI and WHISPER_RELEASE_STRICT are presence flags there)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ("settings.py", "testing.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _DIRECT_READ.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not offenders, "read these through whisper_release.core.settings:\n" + "\n".join(offenders)


def test_every_knob_is_documented() -> None:
    text = DOCS.read_text()
    missing = [name for name in settings.KNOBS if f"`{name}`" not in text]
    assert not missing, f"docs/troubleshooting.md does not list {missing}"


def test_a_misspelt_minio_secure_is_refused_not_read_as_true(tmp_path: Path) -> None:
    """`MINIO_SECURE=flase` used to mean https, silently."""
    from whisper_release.s3.config import load_config

    keys = {"MINIO_ENDPOINT": "minio.local:9000", "MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}
    defaults = {"bucket": "whisper-releases", "prefix": ""}
    with pytest.raises(ConfigError, match="MINIO_SECURE='flase' is not valid: expected true or false"):
        load_config(env={**keys, "MINIO_SECURE": "flase"}, defaults=defaults)
    cfg_file = tmp_path / "s3.toml"
    cfg_file.write_text(
        '[s3]\nendpoint = "minio.local:9000"\naccess_key = "k"\nsecret_key = "s"\nsecure = "flase"\n'
    )
    with pytest.raises(ConfigError, match=r"s3.toml has secure = 'flase': expected true or false"):
        load_config(env={}, config_file=cfg_file, defaults=defaults)
    cfg_file.write_text(cfg_file.read_text().replace('"flase"', "false"))
    cfg = load_config(env={}, config_file=cfg_file, defaults=defaults)
    assert cfg is not None and cfg.endpoint == "http://minio.local:9000"
