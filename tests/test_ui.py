"""The dashboard as a user sees it: `python -m pipeline.ui` after a small sweep, driven in headless Chromium.

Screenshots of each view land in test-outputs/dashboard/ (kept for a person to look at; not compared)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from conftest import ROOT, all_runs, running_commands

SHOTS = ROOT / "test-outputs" / "dashboard"
LINK = re.compile(r"(http://127\.0\.0\.1:(\d+)/#/experiments/\d+/runs\?viewStateShareKey=\w+)")
WAIT_MS = 60_000  # the first page load compiles MLflow's bundle in the browser: seconds on two busy cores


def ui_command(tracking_uri: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.ui", *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}, **popen)


def printed_link(ui: subprocess.Popen, timeout: float = 180.0) -> re.Match:
    """The runs link the UI prints once its server answers (the process is killed if it never comes)."""
    watchdog = threading.Timer(timeout, ui.kill)
    watchdog.start()
    try:
        for line in ui.stdout:
            if found := LINK.search(line):
                return found
    finally:
        watchdog.cancel()
    raise AssertionError(f"no link printed; exit {ui.wait()}: {ui.stderr.read()[-3000:]}")


def answers(port: str) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except OSError:
        return False


def browser(playwright):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("no chromium on PATH: the dashboard test drives Debian's package (apt-get install chromium, as "
                    ".ci/run does)")
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])


def close_assistant(page) -> None:
    """MLflow's chat panel opens by itself on a browser's first visit and hides the table's right-hand columns."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.click()


def test_the_dashboard_opens_on_the_sweeps_runs_with_its_metrics_and_plots(run_py, tracking_uri, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    result = run_py("-m", "optimizer.lr=0.001,0.01", "trainer.max_epochs=1", "threads=1")
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.info.run_name: run for run in runs if run is not parent}
    assert set(children) == {"optimizer.lr=0.001", "optimizer.lr=0.01"}

    ui = ui_command(tracking_uri, "--port", "0", cwd=tmp_path)
    try:
        link, port = printed_link(ui).groups()
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            chromium = browser(playwright)
            page = chromium.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            page.goto(link)

            # The training runs, not the GenAI overview: the sweep's row, its children folded under it.
            expect(page.get_by_text("3 matching runs")).to_be_visible()
            close_assistant(page)
            names = page.locator(".ag-row [col-id='attributes.`Run Name`'] a")
            expect(names).to_have_text([parent.info.run_name])
            headers = [text.strip() for text in page.locator(".ag-header-cell").all_inner_texts()]
            for wanted in ("best/val/acc_best", "val/acc_best", "test/acc", "test/loss", "optimizer.lr"):
                assert wanted in headers, f"column {wanted} not shown: {headers}"
            page.screenshot(path=SHOTS / "1-sweep-folded.png")

            unfold = page.locator(".ag-row [col-id='attributes.`Run Name`'] button").first
            unfold.click()
            expect(names).to_have_count(3)
            for name, child in children.items():  # each child's row shows the values in the store
                named = page.locator(".ag-row", has=page.get_by_role("link", name=name, exact=True))
                row = named.get_attribute("row-index")  # the name is in the pinned part of the row, metrics not
                shown = page.locator(f".ag-row[row-index='{row}'] [col-id='metrics.`test/acc`']").inner_text()
                assert shown[:6] == str(child.data.metrics["test/acc"])[:6], (name, shown)
            page.screenshot(path=SHOTS / "2-sweep-unfolded.png")

            checkboxes = page.locator(".ag-row .ag-checkbox-input")  # tick both children, then Compare
            checkboxes.nth(1).check()
            checkboxes.nth(2).check()
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
            expect(page.get_by_text("Parallel Coordinates Plot")).to_be_visible()
            page.screenshot(path=SHOTS / "3-children-compared.png")
            page.go_back()  # the table again, the sweep folded again
            unfold.click()
            expect(names).to_have_count(3)

            page.get_by_role("link", name="optimizer.lr=0.01", exact=True).click()  # a child's own page
            page.get_by_role("tab", name="Model metrics").click()
            charts = page.get_by_test_id("experiment-view-compare-runs-card")
            expect(charts.first).to_be_visible()
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            expect(page.get_by_text("optimizer.lr=0.01 (test/acc)", exact=True)).to_be_visible()  # its legend
            page.screenshot(path=SHOTS / "4-child-metrics.png")

            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("plots", exact=True).click()
            page.get_by_text("confusion_matrix.png", exact=True).click()
            expect(page.get_by_text("plots/confusion_matrix.png", exact=True)).to_be_visible()
            picture = page.locator("img[src^='data:image/png'], img[src^='blob:']").first
            expect(picture).to_be_visible()
            assert picture.evaluate("image => image.naturalWidth") > 100  # the image itself arrived
            page.screenshot(path=SHOTS / "5-child-confusion-matrix.png")
            chromium.close()
    finally:
        ui.send_signal(signal.SIGINT)  # Ctrl-C
        code = ui.wait(timeout=60)
    assert code == 0, ui.stderr.read()[-3000:]
    assert not answers(port), "the dashboard's server still answers after Ctrl-C"
    assert not running_commands(tracking_uri), "the dashboard left processes behind"


def test_an_empty_store_is_refused_with_what_to_do(tracking_uri, tmp_path):
    ui = ui_command(tracking_uri, "--port", "0", cwd=tmp_path)
    out, err = ui.communicate(timeout=120)
    assert ui.returncode == 2, out + err
    assert err.strip().splitlines()[-1] == (f"error: no runs in {tracking_uri} yet: train one first (python run.py), "
                                            "or give the tracking URI of the store to show (--tracking-uri)")
