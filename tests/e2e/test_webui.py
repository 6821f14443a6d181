"""`softprompt webui` in a real headless Chromium: train a tiny prompt from the form, watch the loss plot and the
run finish, chat with the result, switch to Chinese, and get the CLI's one-line message for a bad value.

Chromium is Debian's (/usr/bin/chromium; `make setup` installs it where it can), driven by Playwright with
``executable_path``; the test skips where it is absent. ``SOFTPROMPT_WEBUI_SCREENSHOTS=DIR`` also saves a
screenshot of each tab, after the run, into DIR (docs/ holds the README's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port, write_alpaca_dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from webui_browser import CHROMIUM, TABS, open_browser, open_tab  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"needs Chromium at {CHROMIUM} "
                                "(Debian's chromium package; make setup installs it when it can)")
pytest.importorskip("gradio", reason="needs the webui extra (gradio)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")

STARTUP_S = 180
RUN_S = 180


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """`softprompt webui` on a free port, its dataset_dir a tiny alpaca dataset; yields (url, data_dir)."""
    data_dir = write_alpaca_dataset(tmp_path_factory.mktemp("webui") / "data")
    port = free_port()
    log = open(data_dir.parent / "webui.out", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "softprompt", "webui", "--port", str(port), "--dataset_dir",
                             str(data_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=data_dir.parent)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + STARTUP_S
    while True:
        assert proc.poll() is None, (data_dir.parent / "webui.out").read_text()
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert time.time() < deadline, "softprompt webui did not answer"
            time.sleep(0.5)
    yield url, data_dir
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture(scope="module")
def page(webui):
    with sync_api.sync_playwright() as p:
        context, page = open_browser(p)
        page.set_default_timeout(60_000)
        page.goto(webui[0], wait_until="load")
        page.wait_for_selector("button[role=tab]")
        yield page
        context.close()


def _fill(page, name: str, value: str) -> None:
    box = page.locator(f"#field-{name} input, #field-{name} textarea").first
    box.fill(value)
    box.blur()


def test_train_plot_finish_then_chat(page, webui, tiny_dir, tmp_path):
    out = tmp_path / "run"
    _fill(page, "model_name_or_path", str(tiny_dir))
    dataset = page.locator("#field-dataset input").first
    dataset.fill("toy")
    dataset.press("Enter")
    for name, value in {"num_virtual_tokens": "4", "output_dir": str(out), "max_steps": "6",
                        "logging_steps": "1", "save_steps": "0", "per_device_train_batch_size": "2"}.items():
        _fill(page, name, value)
    page.locator("#train-start").click()
    page.wait_for_selector("#train-loss canvas, #train-loss svg", timeout=RUN_S * 1000)  # the loss curve is drawn
    page.wait_for_selector("#train-message .sp-ok", timeout=RUN_S * 1000)
    assert "saved" in page.locator("#train-message").inner_text()
    assert "6 / 6" in page.locator("#train-progress").inner_text()
    assert (out / "adapter_model.safetensors").is_file()
    assert "saved" in (out / "webui.log").read_text()  # the run's output, kept beside its results

    page.reload(wait_until="load")  # a new page load finds the run and its form again
    page.wait_for_selector("#train-message .sp-ok", timeout=30_000)
    assert page.locator("#field-output_dir input").first.input_value() == str(out)

    open_tab(page, "chat")
    page.locator("#chat-model input, #chat-model textarea").first.fill(str(tiny_dir))
    page.locator("#chat-adapters input, #chat-adapters textarea").first.fill(str(out))
    page.locator("#chat-query textarea").first.fill("What is the capital of France?")
    page.locator("#chat-send").click()
    for column in ("#chat-answer-0", "#chat-answer-1"):
        page.wait_for_function(f"() => document.querySelector('{column} textarea')?.value.length > 0",
                               timeout=RUN_S * 1000)
    assert str(out) in page.locator("#chat-answer-1").inner_text()  # the column says which adapter answered
    shots = os.environ.get("SOFTPROMPT_WEBUI_SCREENSHOTS")
    if shots:
        _screenshots(page, Path(shots), out)


def _screenshots(page, folder: Path, adapter: Path) -> None:
    """One PNG per tab after the run: the train tab at its progress and loss curve, inspect on the adapter."""
    open_tab(page, "inspect")
    page.locator("#inspect-adapter textarea, #inspect-adapter input").first.fill(str(adapter))
    page.get_by_role("button", name="Inspect", exact=True).click()
    page.wait_for_selector("#inspect-norms canvas, #inspect-norms svg")
    for name in TABS:
        open_tab(page, name)
        if name == "train":
            page.locator("#train-progress").scroll_into_view_if_needed()
            page.mouse.wheel(0, 300)
            page.wait_for_timeout(500)
        page.screenshot(path=str(folder / f"webui-{name}.png"), full_page=name != "train")


def test_bad_value_gets_the_cli_line(page):
    open_tab(page, "train")
    _fill(page, "learning_rate", "fast")
    page.get_by_role("button", name="Preview command").click()
    message = page.locator("#train-message .sp-error")
    message.wait_for()
    assert message.inner_text().strip() == "error: --learning_rate expects float, got 'fast'"
    assert "Traceback" not in page.content()
    _fill(page, "learning_rate", "0.005")


def test_switch_to_chinese(page):
    page.locator("#language label").filter(has_text="中文").click()
    page.get_by_role("tab", name="训练").wait_for()
    assert page.get_by_role("button", name="开始训练").is_visible()
    page.locator("#language label").filter(has_text="English").click()
    page.get_by_role("tab", name="Train").wait_for()
