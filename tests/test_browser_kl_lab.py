"""End to end: chapter 06's KL lab in a real JupyterLab in headless Chromium (Selenium).

Starts JupyterLab from this Python environment on 127.0.0.1 (a free port, a fresh token, temporary
config/runtime/settings/workspace dirs), opens a copy of the chapter's lab cells, runs them, moves
the controls (N, shift, the view menu, the token/sequence toggle) the way a reader does, and checks
that every number in the rendered table becomes what `widgets.kl_lab_state` gives for the new
settings, and that the figure is redrawn. Screenshots: kl_lab.png on success, kl_lab_failure.png on
failure, in $RLBOOK_BROWSER_ARTIFACTS (default: the test's tmp dir).

Needs Debian's chromium and chromium-driver and selenium (the dev extra). Without them the test
skips, unless RLBOOK_REQUIRE_BROWSER=1 (set by .ci/run), where it fails.

    python -m pytest -m browser tests/test_browser_kl_lab.py
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlbook.widgets import CONFIGS, TABLE_COLUMNS, kl_lab_state

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "06_kl_estimators.ipynb"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
LAB_CALL = "widgets.kl_lab(shift=1.0, n=64)"  # the chapter's lab cell; the initial settings below follow it
INITIAL = dict(shift=1.0, n=64)
TIMEOUT = 60


def _require_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = "browser test needs " + ", ".join(missing) + " (apt-get install chromium chromium-driver)"
        if os.environ.get("RLBOOK_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; RLBOOK_REQUIRE_BROWSER=1 makes this a failure")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_notebook(path: Path) -> None:
    """The chapter's lab cell (found by its call), after the one import it needs, with the chapter's metadata."""
    chapter = json.loads(CHAPTER.read_text())
    lab = [c for c in chapter["cells"] if c["cell_type"] == "code" and LAB_CALL in "".join(c["source"])]
    assert len(lab) == 1, f"chapter 06 should have exactly one cell calling {LAB_CALL}"
    cells = [dict(cell_type="code", source="from rlbook import widgets", metadata={}, outputs=[], execution_count=None),
             dict(lab[0], outputs=[], execution_count=None)]
    metadata = {k: v for k, v in chapter["metadata"].items() if k != "widgets"}
    path.write_text(json.dumps(dict(cells=cells, metadata=metadata, nbformat=4, nbformat_minor=5)))


@pytest.fixture
def jupyter_lab(tmp_path):
    """(url of the lab notebook, artifacts dir); the server's whole process group is killed afterwards."""
    _require_browser()
    root, token, port = tmp_path / "root", secrets.token_hex(16), _free_port()
    root.mkdir()
    _lab_notebook(root / "kl_lab.ipynb")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # CI sets Agg; the lab's figure needs the inline backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("IPYTHONDIR", "ipython")]:
        env[var] = str(tmp_path / sub)
        (tmp_path / sub).mkdir()
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"] + (["--allow-root"] if os.geteuid() == 0 else []),
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.3)
        artifacts = Path(os.environ.get("RLBOOK_BROWSER_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        yield f"{base}/lab/tree/kl_lab.ipynb?token={token}", artifacts
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it shuts down its kernels), then SIGKILL to whatever
    is left of it and of its descendants (kernels run in sessions of their own)."""
    import psutil

    try:
        family = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1250,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def _expected_cells(**settings) -> dict[str, dict[str, str]]:
    state = kl_lab_state(**settings)
    return {name: {key: "zero" if math.isnan(c[key]) else format(c[key], fmt) for key, _, fmt in TABLE_COLUMNS}
            for name, c in state["configs"].items()}


def _shown_cells(driver) -> dict[str, dict[str, str]]:
    """The table as rendered, in one round trip (the kernel may redraw it between element lookups)."""
    return driver.execute_script("""
        const out = {};
        for (const row of document.querySelectorAll('table.rlbook-kl-lab tr[data-config]')) {
            const cells = {};
            for (const td of row.querySelectorAll('td[class]')) cells[td.className] = td.textContent;
            out[row.dataset.config] = cells;
        }
        return out;""")


def _idle(driver) -> bool:
    """The kernel is idle (status bar) and the figure, if any, has finished loading."""
    return driver.execute_script("""
        const bar = document.querySelector('#jp-main-statusbar');
        const img = document.querySelector('.jp-OutputArea-output img');
        return Boolean(bar && bar.innerText.includes('Idle') && (!img || (img.complete && img.naturalWidth > 0)));""")


def _figure_src(driver) -> str:
    return driver.execute_script(
        "const img = document.querySelector('.jp-OutputArea-output img'); return img ? img.src : '';")


def _wait_for_table(driver, wait, expected, what):
    try:
        wait.until(lambda d: _shown_cells(d) == expected)
    except Exception:
        shown = _shown_cells(driver)
        diff = {n: (shown.get(n), expected[n]) for n in expected if shown.get(n) != expected[n]}
        raise AssertionError(f"after {what}, the lab's table does not show kl_lab_state's numbers; "
                             f"(shown, expected) per configuration: {diff}") from None


def _set_readout(driver, slider_class, value):
    """Type a value into a slider's editable readout and press Enter, as a reader can."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    readout = driver.find_element(By.CSS_SELECTOR, f".{slider_class} .widget-readout")
    readout.click()
    readout.send_keys(Keys.CONTROL, "a")
    readout.send_keys(str(value), Keys.ENTER)


def test_kl_lab_in_jupyterlab(jupyter_lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, artifacts = jupyter_lab
    driver, wait = browser, WebDriverWait(browser, TIMEOUT, poll_frequency=0.2)
    start = time.monotonic()
    try:
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
        wait.until(lambda d: _idle(d))
        # Run > Run All Cells, through the menu
        menu = next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == "Run")
        menu.click()
        wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"])
        next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells").click()

        _wait_for_table(driver, wait, _expected_cells(**INITIAL), "running the cells")
        wait.until(lambda d: _figure_src(d).startswith("data:image/png"))
        figure = _figure_src(driver)

        _set_readout(driver, "rlbook-kl-lab-N-samples", 512)
        _wait_for_table(driver, wait, _expected_cells(**{**INITIAL, "n": 512}), "setting N to 512")

        handle = driver.find_element(By.CSS_SELECTOR, ".rlbook-kl-lab-shift .noUi-handle")
        handle.click()
        for _ in range(3):  # three steps of 0.1 to the left: shift 1.0 -> 0.7
            handle.send_keys(Keys.ARROW_LEFT)
        _wait_for_table(driver, wait, _expected_cells(shift=0.7, n=512), "moving shift to 0.7")
        wait.until(lambda d: _figure_src(d) not in ("", figure))

        wait.until(lambda d: _idle(d))
        figure = _figure_src(driver)
        next(b for b in driver.find_elements(By.CSS_SELECTOR, ".rlbook-kl-lab-policy button")
             if b.text.strip() == "sequence").click()
        _wait_for_table(driver, wait, _expected_cells(shift=0.7, n=512, level="sequence"), "switching to sequences")
        assert set(_shown_cells(driver)) == set(CONFIGS)
        wait.until(lambda d: _figure_src(d) not in ("", figure) and _idle(d))  # the sequence-level figure is drawn
        driver.save_screenshot(str(artifacts / "kl_lab.png"))  # the comparison view

        figure = _figure_src(driver)
        Select(driver.find_element(By.CSS_SELECTOR, ".rlbook-kl-lab-view select")).select_by_visible_text("k3/reward")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-config='k3/reward'][data-viewed='true']"))
        _wait_for_table(driver, wait, _expected_cells(shift=0.7, n=512, level="sequence"), "choosing the k3/reward view")
        wait.until(lambda d: _figure_src(d) not in ("", figure) and _idle(d))  # one configuration, drawn large
        print(f"browser test: {time.monotonic() - start:.1f} s in the browser; screenshot {artifacts / 'kl_lab.png'}")
    except BaseException:
        driver.save_screenshot(str(artifacts / "kl_lab_failure.png"))
        print(f"failure screenshot: {artifacts / 'kl_lab_failure.png'}")
        raise
