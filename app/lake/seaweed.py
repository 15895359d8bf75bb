"""A local S3 store for the demo and the tests: SeaweedFS ``weed mini`` on loopback.

The ``weed`` binary is built once from its Go module (the Go module proxy serves it)
into ``<cache>/seaweedfs-<version>/weed`` (``LEDGERFLOW_WEED`` overrides the path);
the build takes about four minutes on two cores and prints progress. The server runs
every component (master, volume, filer, S3) in one process on ports ``base..base+9``,
with the admin UI, WebDAV and telemetry off, a throwaway data dir, and signature
checking on: the identities file holds a read-write key and a read-only key.
It is ready when a put succeeds, not when the port opens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.kafka.local_broker import cache_dir

log = logging.getLogger("ledgerflow.seaweedfs")

MODULE = "github.com/seaweedfs/seaweedfs"
VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
DEFAULT_BASE_PORT = 8330
RW = ("ledgerflow", "ledgerflow-local-secret")  # local demo/test store only; never a production key
RO = ("reader", "reader-local-secret")


class SeaweedError(RuntimeError):
    """The local S3 store could not be built or started (the message says what to do)."""


def weed_binary(build: bool = True) -> Path:
    """The ``weed`` binary, built into the cache when missing (``build=False``: just the path)."""
    env = os.environ.get("LEDGERFLOW_WEED")
    if env:
        return Path(env)
    target = cache_dir() / f"seaweedfs-{VERSION}" / "weed"
    if target.exists() or not build:
        return target
    go = shutil.which("go")
    if go is None:
        raise SeaweedError("building SeaweedFS needs Go (https://go.dev/dl/) or LEDGERFLOW_WEED=<path to weed>")
    sys.stderr.write(f"seaweedfs: downloading {MODULE}@{VERSION} and building weed (about 4 minutes, once)\n")
    env_go = {**os.environ, "GOFLAGS": "-mod=mod"}
    dl = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], capture_output=True, text=True, env=env_go, check=False
    )
    if dl.returncode != 0:
        raise SeaweedError(
            f"go mod download {MODULE}@{VERSION} failed: {dl.stderr.strip()[-2000:] or dl.stdout[-2000:]}"
        )
    src = json.loads(dl.stdout)["Dir"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".building")
    started = time.monotonic()
    build_log = target.with_suffix(".build.log")
    with open(build_log, "wb") as out:  # a file, not a pipe: go prints a line per module it fetches
        proc = subprocess.Popen([go, "build", "-o", str(tmp), "./weed"], cwd=src, env=env_go, stderr=out)
        while proc.poll() is None:
            time.sleep(15)
            if proc.poll() is None:
                sys.stderr.write(f"seaweedfs: still building ({time.monotonic() - started:.0f} s)\n")
    err = build_log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SeaweedError(f"go build ./weed failed (exit {proc.returncode}): {err[-2000:]}")
    tmp.replace(target)
    sys.stderr.write(f"seaweedfs: built {target} in {time.monotonic() - started:.0f} s\n")
    return target


@dataclass
class SeaweedServer:
    """One ``weed mini`` process; ``endpoint`` is its S3 URL."""

    data_dir: Path
    base_port: int = DEFAULT_BASE_PORT
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 6}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _identities(self) -> Path:
        path = self.data_dir / "s3-identities.json"
        rw = {"name": "ledgerflow", "credentials": [{"accessKey": RW[0], "secretKey": RW[1]}]}
        ro = {"name": "reader", "credentials": [{"accessKey": RO[0], "secretKey": RO[1]}]}
        rw["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        ro["actions"] = ["Read", "List"]
        path.write_text(json.dumps({"identities": [rw, ro]}))
        return path

    def command(self) -> list[str]:
        b = self.base_port
        return [
            str(weed_binary()),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={b}",
            f"-master.port.grpc={b + 1}",
            f"-volume.port={b + 2}",
            f"-volume.port.grpc={b + 3}",
            f"-filer.port={b + 4}",
            f"-filer.port.grpc={b + 5}",
            f"-s3.port={b + 6}",
            f"-s3.port.grpc={b + 7}",
            f"-admin.port={b + 8}",
            f"-admin.port.grpc={b + 9}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-admin.port.legacy=0",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.config={self._identities()}",
        ]

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until a put succeeds."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        cmd = self.command()
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
        out.close()
        self.wait_ready(timeout)

    def client(self, keys: tuple[str, str] = RW) -> Any:
        import boto3
        from botocore.config import Config

        cfg = Config(
            region_name="us-east-1",
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 2, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=keys[0], aws_secret_access_key=keys[1], config=cfg
        )

    def wait_ready(self, timeout: float = 60) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        s3 = self.client()
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SeaweedError(f"weed mini exited with {self.proc.returncode}; see {self.log_path}")
            try:
                try:
                    s3.create_bucket(Bucket="ledgerflow-ready")
                except ClientError as exc:
                    if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                        raise
                s3.put_object(Bucket="ledgerflow-ready", Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as exc:
                last = str(exc)
                time.sleep(0.5)
        raise SeaweedError(
            f"SeaweedFS at {self.endpoint} not ready after {timeout:.0f} s ({last}); see {self.log_path}"
        )

    def create_bucket(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=bucket)
        except ClientError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL (no shutdown work); pending uploads survive on disk."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 60) -> None:
        self.kill()
        self.start(timeout)
