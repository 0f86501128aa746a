"""Every command README.md's Quick start names, run (or, for the long maintenance targets, started) by a test.

The commands are read from the README itself: each line of the Quick start's indented code blocks (all of which
must be `make` commands) and each inline code span that starts with `make `. A command whose target no test here
knows fails `test_quick_start_command`, so a README change cannot go untested:

- `make setup`, `make lab`, `make demo` and `make notebooks` run for real (the lab on a free port without a
  browser, the demo into a temporary folder, `notebooks` on a throwaway notebook);
- `make bench` and `make default-model` take tens of minutes: each step of their recipes runs with `--help`;
- `make test` and `make lint` are what CI's .ci/run runs, and `make test`'s parts run within it.

The Colab links of the README and of each notebook, and each notebook's install cell, are checked here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
import soundfile as sf
from lab_server import free_port, isolated_jupyter_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
QUICKSTART = "01_quickstart.ipynb"
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([^/\s]+)/([^/\s]+)/blob/([^/\s]+)/"
                        r"notebooks/([^\s)]+\.ipynb)")


def quick_start() -> str:
    """The README's Quick start section, up to the next second-level heading."""
    text = README.read_text()
    start = text.index("\n## Quick start\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def quick_start_commands() -> list[str]:
    """The commands the Quick start names, in order, each once (comments after `#` dropped)."""
    commands = []
    prose = []
    for line in quick_start().splitlines():
        if line.startswith("    ") and line.strip():
            commands.append(line.split("#", 1)[0].strip())
        else:
            prose.append(line)
    commands += [span.strip() for span in re.findall(r"`([^`\n]+)`", "\n".join(prose)) if span.startswith("make ")]
    return list(dict.fromkeys(commands))


def make_target(command: str) -> tuple[str, list[str]]:
    """(target, variable assignments) of a one-target `make` command line."""
    words = shlex.split(command)
    assert words[0] == "make", f"the Quick start names {command!r}, which is not a make command: no test runs it"
    targets = [word for word in words[1:] if "=" not in word and not word.startswith("-")]
    assert len(targets) == 1, f"{command!r}: expected one make target, got {targets}"
    return targets[0], [word for word in words[1:] if "=" in word]


def make_env(work_dir: Path) -> dict[str, str]:
    """The environment a person's shell gives make: no outer make's flags, Jupyter's state under work_dir."""
    env = isolated_jupyter_env(work_dir)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)
    return env


def run(argv: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result


def dry_run(target: str, env: dict[str, str]) -> list[str]:
    """The recipe lines `make target` would run (the venv is up to date, so only the target's own)."""
    return [line for line in run(["make", "-n", target], env, 60).stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def set_up(tmp_path_factory):
    """`make setup` once first: the other targets depend on it, and a stale .venv reinstalls (minutes)."""
    env = make_env(tmp_path_factory.mktemp("setup"))
    run(["make", "setup"], env, 1800)
    return env


def test_the_quick_start_names_commands():
    commands = quick_start_commands()
    assert "make lab" in commands and "make test" in commands, commands


@pytest.mark.slow
@pytest.mark.parametrize("command", quick_start_commands())
def test_quick_start_command(command, set_up, tmp_path):
    target, assignments = make_target(command)
    # make takes any variable silently: each one the README sets must be one the Makefile reads.
    makefile = (ROOT / "Makefile").read_text()
    for assignment in assignments:
        assert f"$({assignment.split('=')[0]})" in makefile, f"{command!r}: the Makefile never reads it"
    argv = shlex.split(command)
    env = make_env(tmp_path)
    if target == "setup":
        check_setup(argv, env)
    elif target == "lab":
        check_lab(argv, env, tmp_path)
    elif target == "demo":
        check_demo(argv, env, tmp_path)
    elif target == "notebooks":
        check_notebooks(argv, env, tmp_path)
    elif target in ("bench", "default-model"):
        check_steps_start(target, env)
    elif target in ci_targets():
        assert not assignments, f"CI runs plain `make {target}`, not {command!r}"
    else:
        pytest.fail(f"the Quick start names {command!r}, which no test runs: add it to tests/test_readme_commands.py")


def ci_targets() -> set[str]:
    """The targets CI runs: those .ci/run runs, and the parts of `make test`."""
    ci_run = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    targets = {line.split()[1] for line in ci_run if re.fullmatch(r"make [\w-]+", line)}
    assert {"test", "lint"} <= targets, f".ci/run must run `make test` and `make lint`: {sorted(targets)}"
    test_rule = re.search(r"^test:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return targets | set(test_rule.group(1).split())


def check_setup(argv: list[str], env: dict[str, str]) -> None:
    run(argv, env, 1800)
    # Up to date afterwards, with what VS Code needs to run a notebook on the venv: distill_nb and a kernel.
    assert subprocess.run(["make", "-q", *argv[1:]], cwd=ROOT, env=env).returncode == 0
    run([str(ROOT / ".venv" / "bin" / "python"), "-c", "import distill_nb, ipykernel"], env, 120)


def _get(url: str, token: str, timeout_s: float = 10.0) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of a GET with the token, without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=timeout_s) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), dict(error.headers)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM make and the lab (one process group), then SIGKILL whatever is left of the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the lab's process group outlived SIGTERM by 30 s")


def check_lab(argv: list[str], env: dict[str, str], tmp_path: Path) -> None:
    port, token = free_port(), secrets.token_hex(16)
    env["JUPYTER_TOKEN"] = token
    # The README's command, then this test's port, no browser, and no fallback to another port.
    argv = [*argv, f"LAB_PORT={port}", "LAB_ARGS=--no-browser --ServerApp.port_retries=0"]
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                if _get(f"{base}/api/status", token, 2)[0] == 200:
                    break
            assert proc.poll() is None, f"make lab exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no answer in 120 s:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.25)

        # The server's root is notebooks/, and the quickstart is there.
        status, body, _ = _get(f"{base}/api/contents?content=1", token)
        assert status == 200
        assert {item["name"] for item in json.loads(body)["content"]} >= {path.name for path in NOTEBOOKS}
        status, body, _ = _get(f"{base}/api/contents/{QUICKSTART}?content=0", token)
        assert status == 200 and json.loads(body)["type"] == "notebook"
        # What it opens: `/` redirects to the quickstart, whose page is the lab on that notebook ...
        status, _, headers = _get(f"{base}/", token)
        assert status == 302 and headers["Location"].split("?")[0] == f"/lab/tree/{QUICKSTART}", (status, headers)
        status, body, _ = _get(f"{base}/lab/tree/{QUICKSTART}", token)
        assert status == 200 and re.search(rf'"treePath":\s*"{re.escape(QUICKSTART)}"', body), body[:2000]
        # ... and the address printed for the person (and given to the browser) is that page, on 127.0.0.1.
        assert f"{base}/lab/tree/{QUICKSTART}?token=" in log_path.read_text()
    finally:
        _stop_group(proc)


def check_demo(argv: list[str], env: dict[str, str], tmp_path: Path) -> None:
    # The README promises out/demo.wav: that is the target's default; the run itself writes to a temporary folder.
    assert any(line.endswith("-o out/demo.wav") for line in dry_run("demo", env)), dry_run("demo", env)
    out = tmp_path / "out"
    started = time.monotonic()
    run([*argv, f"DEMO_DIR={out}"], env, 300)
    info = sf.info(str(out / "demo.wav"))
    assert info.frames == 10 * info.samplerate, info
    sidecar = json.loads((out / "demo.json").read_text())
    assert sidecar["seed"] == 1234 and sidecar["duration_s"] == 10.0, sidecar
    print(f"make demo: {time.monotonic() - started:.1f} s")


def check_notebooks(argv: list[str], env: dict[str, str], tmp_path: Path) -> None:
    # The real recipe (execute.py, one torch thread) on a throwaway notebook instead of the committed ones.
    assert dry_run("notebooks", env)[-1].endswith("notebooks/execute.py notebooks/0*.ipynb")
    path = tmp_path / "tiny.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, torch\nprint(6 * 7, os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")])
    nbformat.write(notebook, path)
    run([*argv, f"NOTEBOOKS={path}"], env, 300)
    executed = nbformat.read(path, as_version=4)
    assert [output["text"] for output in executed.cells[0].outputs] == ["42 1 1\n"]
    assert executed.metadata["kernelspec"]["name"] == "python3"
    assert "execution" not in executed.cells[0].metadata


def check_steps_start(target: str, env: dict[str, str]) -> None:
    steps = dry_run(target, env)
    assert steps, f"make -n {target} printed nothing"
    for step in steps:
        words = shlex.split(step)
        assert words[0] == ".venv/bin/python", f"{target}: unexpected step {step!r}"
        result = run([*words, "--help"], env, 300)
        assert result.stdout.startswith("usage:"), f"{step} --help:\n{result.stdout[:1000]}"


def test_colab_links_agree_and_each_notebook_installs_distill_nb_when_missing():
    readme_links = COLAB_LINK.findall(README.read_text())
    assert any(link[3] == QUICKSTART for link in readme_links), "README: no Open in Colab link to the quickstart"
    owner, repo, branch = readme_links[0][:3]
    assert all(link[:3] == (owner, repo, branch) for link in readme_links), readme_links
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and "Open In Colab" in first.source, path.name
        assert COLAB_LINK.findall(first.source) == [(owner, repo, branch, path.name)], path.name
        install = next(cell for cell in notebook.cells if cell.cell_type == "code")
        assert f'REPO_URL = "https://github.com/{owner}/{repo}"' in install.source, path.name
        assert 'find_spec("distill_nb") is None' in install.source, path.name
        assert install.outputs == [], f"{path.name}: the install cell printed something where distill_nb is installed"


@pytest.mark.slow
def test_the_install_cell_installs_distill_nb_into_a_running_python(tmp_path):
    """The notebooks' install cell, run where distill_nb is missing, installs it from a git repository and the
    same process imports it: no restart. The repository is a copy of this tree (the real URL is a placeholder);
    the environment sees the project's venv's packages, so pip adds distill_nb alone."""
    assert shutil.which("git"), "git is needed: pip installs from a git URL"
    source = tmp_path / "repo"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "distill_nb", source / "distill_nb", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(source), "-c", "user.name=test", "-c", "user.email=test@localhost", "-c",
           "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *args], check=True, capture_output=True)

    # A bare venv whose site-packages also reads the project's venv's: every dependency, but no distill_nb
    # (its editable install is a .pth file there, which a path added this way does not run).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    site_packages = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    shared = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    (site_packages / "project_venv.pth").write_text(f"{shared}\n")
    python = tmp_path / "venv" / "bin" / "python"

    cell = next(cell for cell in nbformat.read(NOTEBOOKS[0], as_version=4).cells if cell.cell_type == "code")
    cell_source = re.sub(r'REPO_URL = "[^"]*"', f'REPO_URL = "file://{source}"', cell.source)
    script = f"""
import importlib.util, sys
assert importlib.util.find_spec("distill_nb") is None, "distill_nb is already importable"
{cell_source}
import distill_nb
assert distill_nb.__file__.startswith(sys.prefix), distill_nb.__file__
print(distill_nb.__version__, distill_nb.load_default_model().sample_rate)
"""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert result.stdout.strip().splitlines()[-1] == f"{version} 48000", result.stdout
