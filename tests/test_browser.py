"""Real-browser test: the quickstart notebook runs in JupyterLab and its GeneratorPanel plays audio.

JupyterLab is started on a copy of notebooks/ (running cells must not touch the committed outputs) and
driven by headless Debian Chromium through Playwright. The lab's own app object (window.jupyterapp,
exposed with --LabApp.expose_app_in_browser) runs all cells and tells when the kernel is done; the
panel itself is found the way a user finds it: by its "Generate" button and its "Duration" slider.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_server import LabServer, running_lab
from playwright.sync_api import Locator, Page, sync_playwright

pytestmark = pytest.mark.browser

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = "01_quickstart.ipynb"

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium as root in a container: no sandbox, no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Budgets for a 2-core CPU machine; each step fails on its own timeout with a report.
LAB_LOAD_TIMEOUT_MS = 90_000  # page load, app restore and kernel start
RUN_ALL_TIMEOUT_MS = 120_000  # every cell, the default model load included
PANEL_RENDER_TIMEOUT_MS = 30_000
GENERATE_TIMEOUT_MS = 120_000
METADATA_TIMEOUT_MS = 30_000

GENERATE_BUTTON = re.compile(r"^\W*generate\W*$", re.IGNORECASE)
DURATION_LABEL = re.compile(r"duration", re.IGNORECASE)
SHORT_DURATION_S = 2.0  # typed into the duration readout to keep generation quick
DURATION_TOLERANCE_S = 0.005
WAV_DATA_URI = "data:audio/wav;base64,"

# JS: the notebook panel open on `path`, or null. Inlined into each snippet that needs it.
_FIND_NOTEBOOK = """
const findNotebook = (path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.sessionContext) return w;
  }
  return null;
};
"""

_KERNEL_READY_JS = (
    "(path) => {"
    + _FIND_NOTEBOOK
    + """
  const nb = findNotebook(path);
  if (!nb || !nb.context.isReady || !nb.sessionContext.isReady) return false;
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
)

# Starts "Run All Cells" on the notebook; the command's promise settles once every cell has run
# (or the first error stopped the rest), which sets window.__dnRunAll.
_START_RUN_ALL_JS = (
    "(path) => {"
    + _FIND_NOTEBOOK
    + """
  const nb = findNotebook(path);
  window.jupyterapp.shell.activateById(nb.id);
  window.__dnRunAll = undefined;
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    (ok) => { window.__dnRunAll = { ok: ok !== false }; },
    (err) => { window.__dnRunAll = { ok: false, error: String(err) }; });
}"""
)

_RUN_ALL_DONE_JS = (
    "(path) => {"
    + _FIND_NOTEBOOK
    + """
  const nb = findNotebook(path);
  const kernel = nb && nb.sessionContext.session && nb.sessionContext.session.kernel;
  return window.__dnRunAll !== undefined && !!kernel && kernel.status === 'idle';
}"""
)

# The notebook's error outputs, one "cell i: Name: value" string each (from the model, not the DOM).
_ERROR_OUTPUTS_JS = (
    "(path) => {"
    + _FIND_NOTEBOOK
    + """
  const nb = findNotebook(path);
  if (!nb) return ['notebook ' + path + ' is not open'];
  const errors = [];
  const cells = nb.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    for (const out of cell.outputs.toJSON()) {
      if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
    }
  }
  return errors;
}"""
)

# IPython.display.Audio puts the URI on a <source> child; a bare <audio src=...> works too.
_AUDIO_SRC_JS = "a => a.getAttribute('src') || a.querySelector('source')?.getAttribute('src') || ''"
_AUDIO_LOADED_JS = "a => (a.readyState >= 1 && Number.isFinite(a.duration)) || a.error !== null"


@dataclass(frozen=True)
class PanelAudio:
    """What the browser made of one click on Generate: the duration slider's readout (s), the new
    <audio> element's source URI and the duration Chromium decoded from it (s)."""

    slider_duration_s: float
    src: str
    audio_duration_s: float


def require_chromium() -> None:
    """Skip without Chromium on a developer machine; under CI (env CI set) its absence is a failure."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing; under CI the browser test must run (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); set CI=1 to make this a failure")


def _readout_seconds(slider: Locator) -> float:
    text = slider.locator(".widget-readout").inner_text()
    match = re.search(r"-?\d+(?:\.\d*)?", text)
    assert match, f"duration readout {text!r} holds no number"
    return float(match.group())


def _set_duration(slider: Locator, seconds: float) -> float:
    """Type `seconds` into the slider's readout (the widget clamps it to its range); return the value
    the readout then shows."""
    readout = slider.locator(".widget-readout")
    if readout.is_visible() and readout.get_attribute("contenteditable") == "true":
        readout.fill(f"{seconds:g}")
        readout.press("Enter")
    return _readout_seconds(slider)


def _failure_report(page: Page, notebook: str, server: LabServer, console: list[str], shot: Path) -> str:
    """Everything worth reading after a failure: error outputs, the panel's text, console, server log."""
    parts = [f"screenshot: {shot}"]
    try:
        page.screenshot(path=str(shot), full_page=True)
        errors = page.evaluate(_ERROR_OUTPUTS_JS, notebook)
        parts.append("error outputs (model):\n" + ("\n".join(errors) or "none"))
        stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        texts = [t.strip()[-2000:] for t in stderr.all_inner_texts()]
        parts.append("error/stderr outputs (page):\n" + ("\n---\n".join(texts) or "none"))
        widgets = page.locator(".jp-OutputArea-output > .jupyter-widgets")
        texts = [t.strip() for t in widgets.all_inner_texts()]
        parts.append("widget outputs (page):\n" + "\n---\n".join(texts)[-3000:])
    except Exception as exc:  # the page itself may be gone; still report the rest
        parts.append(f"(could not inspect the page: {exc!r})")
    parts.append("browser console:\n" + "\n".join(console[-30:]))
    parts.append("server log tail:\n" + server.log_tail(3000))
    return "\n\n".join(parts)


def _generate_in_open_notebook(page: Page, notebook: str) -> PanelAudio:
    """Run all cells of the open `notebook`, set a short duration, click Generate, and return what the
    browser shows. Each step waits on its own bounded timeout."""
    page.wait_for_function(_KERNEL_READY_JS, arg=notebook, timeout=LAB_LOAD_TIMEOUT_MS)
    page.evaluate(_START_RUN_ALL_JS, notebook)
    page.wait_for_function(_RUN_ALL_DONE_JS, arg=notebook, timeout=RUN_ALL_TIMEOUT_MS)
    run_all = page.evaluate("window.__dnRunAll")
    errors = page.evaluate(_ERROR_OUTPUTS_JS, notebook)
    assert run_all["ok"] and not errors, f"Run All Cells failed: {errors or run_all}"

    generate_buttons = page.get_by_role("button", name=GENERATE_BUTTON)
    generate_buttons.first.wait_for(state="visible", timeout=PANEL_RENDER_TIMEOUT_MS)
    duration_sliders = page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=DURATION_LABEL)
    )
    # The panel is the innermost widget holding both a Generate button and a duration slider
    # (ancestors come first in document order, so it is the last match).
    panel = page.locator(".jupyter-widgets").filter(has=generate_buttons).filter(has=duration_sliders).last
    panel.wait_for(state="visible", timeout=PANEL_RENDER_TIMEOUT_MS)
    button = panel.get_by_role("button", name=GENERATE_BUTTON).first
    slider_duration_s = _set_duration(panel.locator(duration_sliders).first, SHORT_DURATION_S)

    # Audio already in the panel is not the take we are waiting for.
    panel.evaluate("p => p.querySelectorAll('audio').forEach(a => { a.dataset.dnSeen = '1'; })")
    button.click()
    audio = panel.locator("audio:not([data-dn-seen])").first
    audio.wait_for(state="attached", timeout=GENERATE_TIMEOUT_MS)
    audio.scroll_into_view_if_needed()
    src = audio.evaluate(_AUDIO_SRC_JS)
    page.wait_for_function(_AUDIO_LOADED_JS, arg=audio.element_handle(), timeout=METADATA_TIMEOUT_MS)
    media_error = audio.evaluate("a => a.error && `MediaError ${a.error.code}: ${a.error.message}`")
    assert not media_error, f"the browser could not decode the take ({src[:40]}...): {media_error}"
    return PanelAudio(slider_duration_s, src, audio.evaluate("a => a.duration"))


def assert_panel_generates_audio(notebook_dir: Path, notebook: str, tmp_path: Path) -> PanelAudio:
    """Open `notebook` (relative to `notebook_dir`, served from a copy in tmp_path) in JupyterLab in
    headless Chromium, run it, click the panel's Generate button and assert that a WAV take whose
    decoded duration matches the panel's duration slider appears. On failure, the assertion message
    carries the notebook's error outputs and a screenshot is saved in tmp_path."""
    require_chromium()
    root = tmp_path / "notebooks"
    shutil.copytree(notebook_dir, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    console: list[str] = []
    with running_lab(root, tmp_path) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            try:
                page.goto(server.lab_url(notebook), timeout=LAB_LOAD_TIMEOUT_MS)
                result = _generate_in_open_notebook(page, notebook)
                src_head = result.src[:60]
                assert src_head.startswith(WAV_DATA_URI), f"take source is not a WAV data URI: {src_head!r}"
                drift_s = abs(result.audio_duration_s - result.slider_duration_s)
                assert drift_s <= DURATION_TOLERANCE_S, (
                    f"decoded take lasts {result.audio_duration_s:.4f} s, "
                    f"the duration slider says {result.slider_duration_s} s"
                )
            except Exception as exc:
                report = _failure_report(page, notebook, server, console, tmp_path / "browser-failure.png")
                raise AssertionError(f"{exc}\n\n{report}") from exc
        finally:
            browser.close()
    return result


def test_quickstart_panel_generates_playable_audio(tmp_path: Path) -> None:
    assert_panel_generates_audio(NOTEBOOKS_DIR, QUICKSTART, tmp_path)
