"""Open a report in headless Chromium (Debian's /usr/bin/chromium, driven by playwright).

Checks: the summary fits in two screens (the first folded section starts within 2 x 900 px at
1280 px width), no console errors, no request other than the report file itself, every plot
drawn with a non-empty SVG once unfolded, the checkpoint table sorts on a header click, an
injected checkpoint name shows as text, and a screenshot of the summary lands in the test's
temporary directory.

``check_report_in_browser(path, tmp_path)`` and ``report_for_results(results_dir, tmp_path)``
can be reused for any results folder (e.g. the demo sweep).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("PLASTISCOPE_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
INJECTION = "<script>alert(1)</script>"
EVIL_METRIC = "<img src=x onerror=alert(2)>"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")


@dataclass
class BrowserCheck:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    plots: int = 0
    rendered_svgs: int = 0
    empty_plots: list[str] = field(default_factory=list)
    lazily_rendered_at_load: int = 0
    sort_changed_order: bool = False
    first_column_before: list[str] = field(default_factory=list)
    first_column_after: list[str] = field(default_factory=list)
    body_text: str = ""
    plot_titles: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    first_fold_top: float = 0.0  # px from the top of the page to the first folded section, before unfolding
    summary_verdicts: int = 0  # verdict words in the summary's panels
    panel_error_bars: int = 0  # drawn error bars (checkpoints' intervals) in the summary's panels
    panel_dashed_lines: int = 0  # drawn dashed lines (baselines) in the summary's panels
    baseline_notes: list[str] = field(default_factory=list)  # the verdict lines' baseline sentences
    link_unfolds: bool = False  # following a link to a folded section opens it


WIDTH, HEIGHT = 1280, 900


def check_report_in_browser(path: Path, tmp_path: Path, timeout_ms: int = 90_000) -> BrowserCheck:
    """Open ``path`` from file://, measure and screenshot the summary, unfold and draw every plot, sort the checkpoints."""
    from playwright.sync_api import sync_playwright

    result = BrowserCheck()
    url = path.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.page_errors.append(str(e)))
            page.on("request", lambda r: result.requests.append(r.url))
            page.on("dialog", lambda d: (result.dialogs.append(d.message), d.dismiss()))
            page.goto(url, wait_until="load", timeout=timeout_ms)
            result.plots = page.evaluate("window.plastiscopeReport.plots")
            # the plots in view draw on their own (lazily, as they scroll into view)
            page.wait_for_function("window.plastiscopeReport.rendered() >= 1", timeout=timeout_ms)
            result.lazily_rendered_at_load = page.evaluate("window.plastiscopeReport.rendered()")
            result.first_fold_top = page.evaluate(
                "(() => { const d = document.querySelector('details'); return d ? d.getBoundingClientRect().top + window.scrollY : 1e9; })()")
            result.summary_verdicts = page.evaluate("document.querySelectorAll('#summary .ps-word').length")
            page.wait_for_timeout(300)
            result.screenshot = tmp_path / "report.png"
            page.screenshot(path=str(result.screenshot), full_page=False)
            fold_id = page.evaluate("(() => { const d = document.querySelector('details[id]'); return d ? d.id : ''; })()")
            if fold_id:
                page.evaluate(f"location.hash = '#{fold_id}'")
                page.wait_for_timeout(100)
                result.link_unfolds = page.evaluate(f"document.getElementById('{fold_id}').open")
            page.evaluate("window.plastiscopeReport.renderAll()")
            page.wait_for_function("window.plastiscopeReport.rendered() === window.plastiscopeReport.plots", timeout=timeout_ms)
            sizes = page.evaluate("""() => Array.from(document.querySelectorAll('.ps-plot')).map(div => {
                const svg = div.querySelector('.js-plotly-plot .main-svg, .main-svg');
                const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                return {id: div.id, w: box.width, h: box.height, marks: div.querySelectorAll('.main-svg path, .main-svg image').length};
            })""")
            result.rendered_svgs = sum(1 for s in sizes if s["w"] > 0 and s["h"] > 0 and s["marks"] > 0)
            result.empty_plots = [s["id"] for s in sizes if not (s["w"] > 0 and s["h"] > 0 and s["marks"] > 0)]
            first_column = "() => Array.from(document.querySelectorAll('#checkpoint-table tbody tr')).map(r => r.cells[0].textContent)"
            result.first_column_before = page.evaluate(first_column)
            page.click("#checkpoint-table thead th:nth-child(1)")
            after_first = page.evaluate(first_column)
            page.click("#checkpoint-table thead th:nth-child(1)")
            result.first_column_after = page.evaluate(first_column)
            result.sort_changed_order = after_first != result.first_column_before or result.first_column_after != after_first
            result.body_text = page.inner_text("body")
            result.panel_error_bars = page.evaluate("document.querySelectorAll('#summary .ps-plot .errorbar path').length")
            result.panel_dashed_lines = page.evaluate(
                "Array.from(document.querySelectorAll('#summary .ps-plot path')).filter("
                "p => (p.style.strokeDasharray || '').length > 0 && p.style.strokeDasharray !== 'none').length")
            result.baseline_notes = page.evaluate("Array.from(document.querySelectorAll('#summary .ps-baseline')).map(e => e.textContent)")
            result.plot_titles = page.evaluate("() => Array.from(document.querySelectorAll('.gtitle')).map(t => t.textContent)")
        finally:
            browser.close()
    return result


def report_for_results(results_dir: Path, tmp_path: Path) -> tuple[Path, int]:
    """Write the report of a results folder into ``tmp_path``; return it and its number of plots."""
    from plastiscope.reports import write_report

    path = write_report(results_dir, tmp_path / "report.html")
    return path, len(re.findall(r"class='ps-plot'", path.read_text()))


def assert_clean(check: BrowserCheck, path: Path, expected_plots: int) -> None:
    assert check.page_errors == [], check.page_errors
    assert check.console_errors == [], check.console_errors
    assert check.dialogs == [], f"a script ran from data: {check.dialogs}"
    assert set(check.requests) <= {path.resolve().as_uri()}, f"unexpected requests: {set(check.requests) - {path.resolve().as_uri()}}"
    assert check.plots == expected_plots
    assert check.rendered_svgs == expected_plots, f"plots without a drawn SVG: {check.empty_plots}"
    assert 1 <= check.lazily_rendered_at_load
    assert check.screenshot is not None and check.screenshot.stat().st_size > 10_000


def test_report_in_browser(tmp_path):
    from synthetic import synthetic_results

    from plastiscope.reports import write_report

    # demo-like: five weight decays x two seeds, every analysis's headline metric, a hostile checkpoint name
    names = [f"wd{i}-s{s}" for i in range(5) for s in range(2)]
    names[2] = INJECTION
    frame = synthetic_results(n_checkpoints=5, n_layers=3, n_heads=2, names=names, seeds=2)
    # keep the page small: a few metrics of each analysis
    keep = ["accuracy", "selectivity_control_task", "entropy_normalized", "qk_effective_rank", "val_loss", "loss_gap",
            "downstream_loss_after", "downstream_loss_before", "adaptive_max_eigenvalue", "basin_sigma_relative"]
    frame = frame[frame["metric"].isin(keep) & frame["task"].isin(["pos", "topics", None]).fillna(True)]
    frame.loc[frame["metric"] == "selectivity_control_task", "metric"] = EVIL_METRIC
    path = write_report(frame, tmp_path / "report.html", title=f"report {INJECTION}")
    expected = path.read_text().count("class='ps-plot'")
    assert expected >= 12
    check = check_report_in_browser(path, tmp_path)
    assert_clean(check, path, expected)
    assert check.first_fold_top <= 2 * HEIGHT, f"the summary is {check.first_fold_top:.0f} px tall: more than two screens"
    assert check.summary_verdicts >= 7  # outcome (3 lines), separability, attention, overfitting, sharpness, basin
    # every headline panel with intervals in the results draws them; the declared baselines are drawn dashed and stated
    assert check.panel_error_bars >= 10 * 3, check.panel_error_bars  # outcome, separability, overfitting: 10 checkpoints each
    assert check.panel_dashed_lines >= 1, check.panel_dashed_lines
    assert check.link_unfolds
    assert any("random-init model: 10 of 10 checkpoints" in note for note in check.baseline_notes), check.baseline_notes
    assert check.sort_changed_order, (check.first_column_before, check.first_column_after)
    assert sorted(check.first_column_after) == sorted(check.first_column_before)
    # the injected name is shown as text, in the table and the title
    assert INJECTION in check.first_column_before
    assert INJECTION in check.body_text
    assert any(EVIL_METRIC in title for title in check.plot_titles), check.plot_titles[:5]


@pytest.mark.skipif(not os.environ.get("PLASTISCOPE_REPORT_RESULTS"),
                    reason="set PLASTISCOPE_REPORT_RESULTS=<results dir> to check the report of any results folder")
def test_results_dir_report_in_browser(tmp_path):
    path, expected = report_for_results(Path(os.environ["PLASTISCOPE_REPORT_RESULTS"]), tmp_path)
    check = check_report_in_browser(path, tmp_path)
    assert_clean(check, path, expected)
    assert check.sort_changed_order or len(check.first_column_before) < 2


def test_report_of_every_analysis_on_replicated_checkpoints_in_browser(replicated_results, tmp_path):
    path, expected = report_for_results(replicated_results, tmp_path)
    check = check_report_in_browser(path, tmp_path)
    assert_clean(check, path, expected)
    assert check.first_fold_top <= 2 * HEIGHT, f"the summary is {check.first_fold_top:.0f} px tall: more than two screens"
    assert check.sort_changed_order
    assert "Best after fine-tuning" in check.body_text and "range of 2 seeds" in check.body_text


def test_agreement_page_in_browser(tmp_path):
    from test_agreement import TARGET_LOSS, _proxy, _target

    from plastiscope.reports import sweep_agreement, write_agreement

    path = write_agreement(sweep_agreement(_proxy(TARGET_LOSS), _target(), key="recipe", n_resamples=100), tmp_path / "a.html")
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_function("window.plastiscopeReport.rendered() === 1", timeout=60_000)
            rows = page.evaluate("document.querySelectorAll('#agreement-table tbody tr').length")
        finally:
            browser.close()
    assert errors == [] and set(requests) == {path.resolve().as_uri()} and rows == 4
