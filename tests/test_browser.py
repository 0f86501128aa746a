"""Real-browser tests: the quickstart notebook runs in JupyterLab and its GeneratorPanel plays audio, keeps
a history of takes with working Download links, stops a long take, and shows every label whole.

JupyterLab is started on a copy of notebooks/ (running cells must not touch the committed outputs) and
driven by headless Debian Chromium through Playwright. The lab's own app object (window.jupyterapp,
exposed with --LabApp.expose_app_in_browser) runs all cells and tells when the kernel is done; the
panel itself is found the way a user finds it: by its "Generate" button and its "Duration" slider.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_server import LabServer, running_lab
from playwright.sync_api import Locator, Page, expect, sync_playwright

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
STOP_TIMEOUT_MS = 60_000  # Stop ends a take at its next window: a window's sampling, not the whole take

GENERATE_BUTTON = re.compile(r"^\W*generate\W*$", re.IGNORECASE)
DURATION_LABEL = re.compile(r"duration", re.IGNORECASE)
SHORT_DURATION_S = 2.0  # typed into the duration readout to keep generation quick
LONG_DURATION_S = 30.0  # a take long enough to be still running when Stop is clicked
STOP_BUTTON = re.compile(r"^\W*stop\W*$", re.IGNORECASE)
SAVE_BUTTON = re.compile(r"^\W*save\W*$", re.IGNORECASE)
STOPPED = re.compile(r"^\s*Stopped\s*$")
HISTORY_ROW = ".distill-nb-history-row"
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

# The visible text elements of the panel whose content is wider than their box, i.e. cut short (ellipsis
# or hidden overflow): descriptions, readouts, labels, buttons and HTML.
_CUT_LABELS_JS = """
p => Array.from(p.querySelectorAll(
      '.widget-label, .widget-label-basic, .widget-readout, .widget-html-content, button, label'))
  .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
  .map(e => `${e.className} "${e.textContent.trim().slice(0, 60)}": ${e.scrollWidth} > ${e.clientWidth}`)
"""

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


def _run_notebook(page: Page, notebook: str) -> Locator:
    """Run all cells of the open `notebook` and return the panel: the innermost widget holding both a
    Generate button and a duration slider. Each step waits on its own bounded timeout."""
    page.wait_for_function(_KERNEL_READY_JS, arg=notebook, timeout=LAB_LOAD_TIMEOUT_MS)
    page.evaluate(_START_RUN_ALL_JS, notebook)
    page.wait_for_function(_RUN_ALL_DONE_JS, arg=notebook, timeout=RUN_ALL_TIMEOUT_MS)
    run_all = page.evaluate("window.__dnRunAll")
    errors = page.evaluate(_ERROR_OUTPUTS_JS, notebook)
    assert run_all["ok"] and not errors, f"Run All Cells failed: {errors or run_all}"

    generate_buttons = page.get_by_role("button", name=GENERATE_BUTTON)
    generate_buttons.first.wait_for(state="visible", timeout=PANEL_RENDER_TIMEOUT_MS)
    # Ancestors come first in document order, so the innermost match is the last.
    panel = page.locator(".jupyter-widgets").filter(has=generate_buttons).filter(has=_duration_sliders(page)).last
    panel.wait_for(state="visible", timeout=PANEL_RENDER_TIMEOUT_MS)
    return panel


def _duration_sliders(page: Page) -> Locator:
    return page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=DURATION_LABEL))


def _generate(page: Page, panel: Locator, seconds: float) -> PanelAudio:
    """Set the duration, click Generate and return what the browser shows of the new take."""
    slider_duration_s = _set_duration(panel.locator(_duration_sliders(page)).first, seconds)
    # Audio already in the panel is not the take we are waiting for.
    panel.evaluate("p => p.querySelectorAll('audio').forEach(a => { a.dataset.dnSeen = '1'; })")
    panel.get_by_role("button", name=GENERATE_BUTTON).first.click()
    audio = panel.locator("audio:not([data-dn-seen])").first
    audio.wait_for(state="attached", timeout=GENERATE_TIMEOUT_MS)
    audio.scroll_into_view_if_needed()
    src = audio.evaluate(_AUDIO_SRC_JS)
    page.wait_for_function(_AUDIO_LOADED_JS, arg=audio.element_handle(), timeout=METADATA_TIMEOUT_MS)
    media_error = audio.evaluate("a => a.error && `MediaError ${a.error.code}: ${a.error.message}`")
    assert not media_error, f"the browser could not decode the take ({src[:40]}...): {media_error}"
    return PanelAudio(slider_duration_s, src, audio.evaluate("a => a.duration"))


def _row_numbers(panel: Locator) -> list[int]:
    """The take numbers ("#3") of the history rows, top to bottom."""
    texts = panel.locator(HISTORY_ROW).all_inner_texts()
    return [int(match.group(1)) for text in texts if (match := re.search(r"#(\d+)", text))]


@dataclass
class LabSession:
    """The quickstart notebook, run in JupyterLab in headless Chromium; `panel` is its GeneratorPanel."""

    page: Page
    server: LabServer
    console: list[str]
    work_dir: Path
    panel: Locator | None = None

    @contextlib.contextmanager
    def reporting(self, step: str) -> Iterator[None]:
        """Re-raise a failure in `step` with the notebook's error outputs, the panel's text, the console
        and the server log; a screenshot is saved in work_dir."""
        try:
            yield
        except Exception as exc:
            shot = self.work_dir / f"browser-failure-{re.sub(r'[^a-z0-9]+', '-', step.lower())}.png"
            report = _failure_report(self.page, QUICKSTART, self.server, self.console, shot)
            raise AssertionError(f"{step}: {exc}\n\n{report}") from exc


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    """One JupyterLab on a copy of notebooks/ (running cells must not touch the committed outputs), with
    the quickstart notebook run, shared by the tests below: starting a lab takes most of their time."""
    require_chromium()
    work_dir = tmp_path_factory.mktemp("browser")
    root = work_dir / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    with running_lab(root, work_dir) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            session = LabSession(page, server, [], work_dir)
            page.on("console", lambda msg: session.console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: session.console.append(f"pageerror: {exc}"))
            with session.reporting("run the quickstart notebook"):
                page.goto(server.lab_url(QUICKSTART), timeout=LAB_LOAD_TIMEOUT_MS)
                session.panel = _run_notebook(page, QUICKSTART)
            yield session
        finally:
            browser.close()


def test_quickstart_panel_generates_playable_audio(quickstart: LabSession) -> None:
    with quickstart.reporting("generate a take"):
        result = _generate(quickstart.page, quickstart.panel, SHORT_DURATION_S)
        src_head = result.src[:60]
        assert src_head.startswith(WAV_DATA_URI), f"take source is not a WAV data URI: {src_head!r}"
        drift_s = abs(result.audio_duration_s - result.slider_duration_s)
        assert drift_s <= DURATION_TOLERANCE_S, (
            f"decoded take lasts {result.audio_duration_s:.4f} s, the duration slider says {result.slider_duration_s} s"
        )


def test_each_take_adds_a_history_row_newest_first_with_a_download(quickstart: LabSession) -> None:
    page, panel = quickstart.page, quickstart.panel
    with quickstart.reporting("history rows"):
        before = _row_numbers(panel)
        _generate(page, panel, SHORT_DURATION_S)
        _generate(page, panel, SHORT_DURATION_S)
        expect(panel.locator(HISTORY_ROW)).to_have_count(len(before) + 2, timeout=PANEL_RENDER_TIMEOUT_MS)
        numbers = _row_numbers(panel)
        assert numbers == sorted(numbers, reverse=True) and numbers[2:] == before, numbers
        newest = panel.locator(HISTORY_ROW).first
        assert newest.locator("audio").count() == 1 and newest.locator("img").count() == 1
        with page.expect_download(timeout=METADATA_TIMEOUT_MS) as download_info:
            newest.get_by_role("link", name="Download").click()
        download = download_info.value
        assert re.fullmatch(r"take_seed\d+_[0-9a-f]{6}\.wav", download.suggested_filename), download.suggested_filename
        wav = Path(download.path()).read_bytes()
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE", wav[:16]
        # Save writes into the kernel's working directory, the served copy of notebooks/.
        newest.get_by_role("button", name=SAVE_BUTTON).click()
        expect(newest.get_by_text(re.compile(rf"Saved {re.escape(download.suggested_filename)}"))).to_be_visible(
            timeout=PANEL_RENDER_TIMEOUT_MS)
        assert (quickstart.work_dir / "notebooks" / download.suggested_filename).read_bytes() == wav


def test_stop_ends_a_long_take(quickstart: LabSession) -> None:
    page, panel = quickstart.page, quickstart.panel
    with quickstart.reporting("stop a long take"):
        rows = panel.locator(HISTORY_ROW).count()
        _set_duration(panel.locator(_duration_sliders(page)).first, LONG_DURATION_S)
        generate = panel.get_by_role("button", name=GENERATE_BUTTON).first
        generate.click()
        # The click waits until the worker thread has enabled Stop, i.e. the take is running.
        panel.get_by_role("button", name=STOP_BUTTON).first.click(timeout=PANEL_RENDER_TIMEOUT_MS)
        expect(panel.locator(".widget-label", has_text=STOPPED)).to_be_visible(timeout=STOP_TIMEOUT_MS)
        expect(generate).to_be_enabled(timeout=PANEL_RENDER_TIMEOUT_MS)
        assert panel.locator(HISTORY_ROW).count() == rows


def test_no_label_in_the_panel_is_cut(quickstart: LabSession) -> None:
    panel = quickstart.panel
    with quickstart.reporting("labels"):
        per_level = panel.get_by_text("Temperature per level")
        per_level.click()  # shows the per-level sliders, whose labels are the longest
        expect(panel.locator(".widget-slider", has_text="coarsest")).to_be_visible(timeout=PANEL_RENDER_TIMEOUT_MS)
        cut = panel.evaluate(_CUT_LABELS_JS)
        per_level.click()
        assert not cut, "labels cut short (scrollWidth > clientWidth):\n" + "\n".join(cut)


_RAW_WIDGET_REPR_JS = r"""
() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
  .map(e => e.innerText.trim()).filter(t => /^(VBox|HBox|GridBox|interactive|Output)\(/.test(t))
  .map(t => t.slice(0, 80))
"""


def test_committed_notebooks_opened_without_trust_play_their_audio_and_show_no_widget_reprs(
        quickstart: LabSession, tmp_path: Path) -> None:
    """A fresh clone's notebooks are untrusted: JupyterLab shows their stored outputs sanitized and draws no widget.
    Every player must still play (its WAV decodes) and every widget output must show its static fallback.
    A lab of its own on an untouched copy; the browser is the quickstart's (one Playwright per process)."""
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    notebooks = sorted(path.name for path in root.glob("0*.ipynb"))
    with running_lab(root, tmp_path) as server:
        page = quickstart.page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            for notebook in notebooks:
                page.goto(server.lab_url(notebook), timeout=LAB_LOAD_TIMEOUT_MS)
                page.locator(".jp-OutputArea-output").first.wait_for(timeout=LAB_LOAD_TIMEOUT_MS)
                players = page.locator(".jp-OutputArea-output audio")
                assert players.count() > 0, f"{notebook}: no audio player"
                for i in range(players.count()):
                    player = players.nth(i)
                    assert player.evaluate(_AUDIO_SRC_JS).startswith(WAV_DATA_URI), f"{notebook}: player {i} is dead"
                    page.wait_for_function(_AUDIO_LOADED_JS, arg=player.element_handle(), timeout=10_000)
                    assert player.evaluate("a => a.error === null && a.duration > 0"), f"{notebook}: player {i}"
                assert page.evaluate(_RAW_WIDGET_REPR_JS) == [], f"{notebook}: a widget shows as its repr"
        finally:
            page.close()
