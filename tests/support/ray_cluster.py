"""One real local Ray cluster for a test session, in a helper process of its own.

``python -m tests.support.ray_cluster N`` starts Ray with N CPUs (``ray.init``), prints the
cluster's address and keeps it up until its stdin closes. The test process never becomes a
Ray driver itself: sweeps connect to the address like to any cluster, and the cluster's worker
processes are the helper's descendants, so a test can find (and kill) exactly those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT_S = 180.0


@dataclass
class RayCluster:
    proc: subprocess.Popen[str]
    log_path: Path
    # What a driver needs to join: Ray 2.5x clusters require a token (RAY_AUTH_TOKEN).
    env: dict[str, str] = field(default_factory=dict)
    _address: str = ""

    @property
    def address(self) -> str:
        """The cluster's GCS address; waits for the helper to print it (Ray starts meanwhile, so
        a session's other servers can start beside it)."""
        if not self._address:
            self._address = _read_address(self)
        return self._address

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the helper shuts Ray down and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def worker_pids(self, title: str) -> list[int]:
        """Processes of this cluster whose title starts with ``title`` (Ray names a busy actor
        ``ray::Class.method``)."""
        found = []
        for pid in descendants(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if cmdline.startswith(title):
                found.append(pid)
        return found


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def start_cluster(num_cpus: int, log_path: Path) -> RayCluster:
    """Start the helper; its first stdout line (read by ``RayCluster.address``) is the address."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child process owns the handle
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ray_cluster", str(num_cpus)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, **auth},
        start_new_session=True,
    )
    return RayCluster(proc, log_path, auth)


def _read_address(cluster: RayCluster) -> str:
    import selectors

    proc = cluster.proc
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=STARTUP_TIMEOUT_S):
            cluster.stop()
            raise RuntimeError(f"Ray did not start within {STARTUP_TIMEOUT_S:.0f} s; see {cluster.log_path}")
    address = proc.stdout.readline().strip()
    if not address:
        proc.wait(timeout=30)
        raise RuntimeError(f"Ray failed to start; log:\n{cluster.log_path.read_text()[-3000:]}")
    return address


def _serve(num_cpus: int) -> None:
    import ray

    # address="local": always a new Ray, never one that a `ray start` on this machine left running
    context = ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING
    )
    print(context.address_info["gcs_address"], flush=True)
    sys.stdin.read()
    ray.shutdown()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
