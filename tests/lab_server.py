"""A throwaway JupyterLab server for the browser tests.

`running_lab(root_dir, work_dir)` starts `jupyter lab` from this interpreter's environment on a free
127.0.0.1 port with a random token, waits until it answers, and always stops it (and its process
group) on exit. Every Jupyter/IPython directory the server writes to lives under `work_dir`, so a test
run never reads or changes the user's configuration; the labextensions of the environment stay visible
because JupyterLab finds them through sys.prefix, which we leave alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# User settings that keep a fresh lab quiet and predictable: no news prompt or update check, and
# every notebook cell kept in the DOM (the default windowing may detach cells scrolled out of view).
LAB_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab: its base URL (no trailing slash), token and server log file."""

    url: str
    token: str
    log_path: Path

    def lab_url(self, notebook: str) -> str:
        """URL that opens `notebook` (a path relative to the root dir) in a fresh workspace."""
        return f"{self.url}/lab/tree/{notebook}?reset&token={self.token}"

    def log_tail(self, n_chars: int = 4000) -> str:
        """The last `n_chars` characters of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-n_chars:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_jupyter_env(work_dir: Path) -> dict[str, str]:
    """os.environ with Jupyter's and IPython's config, data and runtime dirs moved under `work_dir`."""
    env = dict(os.environ)
    for var, name in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
    ]:
        path = work_dir / "jupyter" / name
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    settings_dir = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings"
    for rel_path, settings in LAB_USER_SETTINGS.items():
        path = settings_dir / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env.pop("JUPYTER_TOKEN", None)  # our --IdentityProvider.token must win
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server (it shuts its kernels down on SIGTERM), then SIGKILL whatever is left of it
    and of its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
    # The server was started in its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_lab(root_dir: Path, work_dir: Path, startup_timeout_s: float = 90.0) -> Iterator[LabServer]:
    """Run JupyterLab serving `root_dir`, with all its state under `work_dir`; stop it on exit.

    Raises RuntimeError (with the server log) if it exits or does not answer within
    `startup_timeout_s` seconds.
    """
    port = free_port()
    token = secrets.token_hex(16)
    log_path = work_dir / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells, watch the kernel
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    server = LabServer(url=f"http://127.0.0.1:{port}", token=token, log_path=log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root_dir,
            env=isolated_jupyter_env(work_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _answers(f"{server.url}/api/status?token={token}"):
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"jupyter lab did not answer within {startup_timeout_s:.0f} s:\n{server.log_tail()}"
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(proc)
