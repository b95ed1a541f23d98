"""S3 settings: every source, precedence, validation sentences, and secrets kept out of text."""

from __future__ import annotations

import re

import pytest

from whisper_release.core.errors import ConfigError
from whisper_release.s3.config import S3Config, check_bucket, load_config, normalize_endpoint, validate

DEFAULTS = {"bucket": "whisper-releases", "prefix": "whisper.cpp"}
SECRET = "s3cr3t-VALUE-never-shown"


def load(env, **kw):
    return load_config(env=env, defaults=DEFAULTS, **kw)


def test_nothing_configured_means_embedded_store():
    assert load({}) is None
    assert load({"AWS_REGION": "eu-west-1", "MINIO_BUCKET": "other"}) is None


def test_aws_variables_with_pins_defaults():
    cfg = load({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000/", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "eu-central-1"})
    assert (cfg.endpoint, cfg.bucket, cfg.prefix, cfg.region) == (
        "http://127.0.0.1:9000", "whisper-releases", "whisper.cpp", "eu-central-1")
    assert cfg.url("1.0") == "s3://whisper-releases/whisper.cpp/1.0"
    assert not cfg.create_bucket


def test_minio_names_and_bare_host_port():
    cfg = load({"MINIO_ENDPOINT": "minio.local:9000", "MINIO_ACCESS_KEY": "minio",
                "MINIO_SECRET_KEY": SECRET, "MINIO_BUCKET": "rel", "MINIO_SECURE": "false"})
    assert (cfg.endpoint, cfg.bucket, cfg.access_key) == ("http://minio.local:9000", "rel", "minio")
    assert load({"MINIO_ENDPOINT": "minio.local:9000", "MINIO_ACCESS_KEY": "minio",
                 "MINIO_SECRET_KEY": SECRET}).endpoint == "https://minio.local:9000"


def test_aws_names_win_over_minio_names_and_arguments_over_both():
    env = {"AWS_ENDPOINT_URL": "http://a:1", "MINIO_ENDPOINT": "http://b:2", "AWS_ACCESS_KEY_ID": "aws-key",
           "MINIO_ACCESS_KEY": "minio-key", "AWS_SECRET_ACCESS_KEY": SECRET, "MINIO_BUCKET": "envbucket"}
    cfg = load(env)
    assert (cfg.endpoint, cfg.access_key, cfg.bucket) == ("http://a:1", "aws-key", "envbucket")
    cfg = load(env, endpoint="http://c:3", bucket="argbucket", prefix="")
    assert (cfg.endpoint, cfg.bucket, cfg.prefix) == ("http://c:3", "argbucket", "")


def test_config_file_fills_what_the_environment_lacks(tmp_path):
    f = tmp_path / "s3.toml"
    f.write_text('[s3]\nendpoint = "http://10.0.0.5:9000"\naccess_key = "filekey"\n'
                 f'secret_key = "{SECRET}"\nbucket = "filebucket"\nprefix = "/a/b/"\n')
    cfg = load({"AWS_ACCESS_KEY_ID": "envkey"}, config_file=f)
    assert (cfg.endpoint, cfg.access_key, cfg.secret_key, cfg.bucket, cfg.prefix) == (
        "http://10.0.0.5:9000", "envkey", SECRET, "filebucket", "a/b")
    assert load({"WHISPER_RELEASE_S3_CONFIG": str(f)}).bucket == "filebucket"


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[s3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({}, config_file=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[s3]\nendpiont = "http://x:1"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) endpiont"):
        load({}, config_file=unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load({}, config_file=tmp_path / "missing.toml")


@pytest.mark.parametrize("endpoint, fragment", [
    ("ftp://host:21", "not an http(s) URL"),
    ("http://user:pw@host:9000", "credentials inside the URL"),
    ("http://host:9000/bucket", "has a path or query"),
    ("http://host:99999", "not a URL"),
    ("http://", "not an http(s) URL"),
])
def test_bad_endpoints(endpoint, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)) as e:
        load({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": SECRET})
    assert "$AWS_ENDPOINT_URL" in str(e.value) and "pw@" not in str(e.value)


def test_endpoint_forms():
    assert normalize_endpoint("HTTP://LocalHost:9000/") == "http://localhost:9000"
    assert normalize_endpoint("http://[::1]:9000") == "http://[::1]:9000"


@pytest.mark.parametrize("bucket", ["ab", "a" * 64, "Upper", "under_score", "-start", "end-", "a..b",
                                    "192.168.1.1", "xn--punycode", "x-s3alias", "a.-b"])
def test_bucket_rules(bucket):
    with pytest.raises(ConfigError, match=f"bucket.*{bucket[:10]}"):
        check_bucket(bucket)


def test_good_buckets():
    for b in ("abc", "whisper-releases", "a.b.c", "a" * 63, "0release9"):
        check_bucket(b)


@pytest.mark.parametrize("prefix", ["a//b", "a/../b", "a/./b", "sp ace", "tab\tx"])
def test_bad_prefixes(prefix):
    with pytest.raises(ConfigError, match="invalid segment"):
        load({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": SECRET}, prefix=prefix)


def test_incomplete_or_damaged_credentials():
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY .* is not set"):
        load({"AWS_ENDPOINT_URL": "http://h:1", "AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID .* is not set"):
        load({"AWS_ENDPOINT_URL": "http://h:1", "AWS_SECRET_ACCESS_KEY": SECRET})
    with pytest.raises(ConfigError, match=r"secret key from \$AWS_SECRET_ACCESS_KEY contains whitespace") as e:  # noqa: E501
        load({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": SECRET + "\n"})
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="region"):
        load({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "Not A Region"})


def test_secrets_never_in_repr_or_str():
    cfg = validate(S3Config("http://h:1", "bucket", "p", access_key="AKIAVERYSECRETKEYID", secret_key=SECRET,
                            session_token="tok-secret"))
    for text in (repr(cfg), str(cfg), f"{cfg}"):
        assert SECRET not in text and "tok-secret" not in text and "AKIAVERYSECRETKEYID" not in text
    assert "AKIA…" in repr(cfg)
    env = cfg.client_env()
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"


def test_with_target_revalidates():
    cfg = validate(S3Config("http://h:1", "bucket", "p", access_key="k", secret_key=SECRET))
    assert cfg.with_target(prefix="x/y").key("1.0", "m") == "x/y/1.0/m"
    with pytest.raises(ConfigError):
        cfg.with_target(bucket="NO")
