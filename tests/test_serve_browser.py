"""``convcalc serve``'s playground page in a real browser (headless Chromium, Selenium):
typing an edit updates the table to the calculator's numbers, an error is shown at its
line with the last good result dimmed, examples, JSON download, the share link, saving
and reloading from disk, and screenshots of the page (under the tests' temporary folder;
``mkdir .screenshots`` to keep copies).

One server (uvicorn in a thread, serving a copy of specs/mnist_cnn.yaml) and one browser
for the whole module; each test starts from a freshly loaded page and the original file."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli
from convcalc.draw import svg_picture
from convcalc.export import export_pytorch
from convcalc.loader import load_spec

from .conftest import ROOT, SPECS_DIR, headless_chromium

MNIST_TEXT = (SPECS_DIR / "mnist_cnn.yaml").read_text(encoding="utf-8")
CONV1 = "name: conv1, out_channels: 32, kernel_size: 3,"
TIMEOUT = 10  # seconds any one wait may take
PNG = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("selenium")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, path of the served spec file): uvicorn in a thread on a free port."""
    import uvicorn

    from convcalc.serve import LOOPBACK_NAMES, create_app, listen

    spec = tmp_path_factory.mktemp("served") / "mnist_cnn.yaml"
    spec.write_text(MNIST_TEXT, encoding="utf-8")
    app = create_app(spec, allowed_hosts=list(LOOPBACK_NAMES))
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", spec
    server.should_exit = True
    thread.join(TIMEOUT)
    sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"), accept_prompts=True)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, served):
    """The page freshly loaded over the original file, its first analysis shown."""
    base, spec = served
    # drop unsaved edits so that leaving the page asks nothing
    browser.execute_script(
        "const p = window.convcalcPage;"
        "if (p && p.state.file && p.state.savedText !== null) p.editor.setDoc(p.state.savedText);"
    )
    spec.write_text(MNIST_TEXT, encoding="utf-8")
    browser.get("about:blank")
    browser.get(base)
    wait_for(browser, lambda d: doc(d) == MNIST_TEXT, "the page did not load the served file")
    wait_settled(browser, 0)
    assert results_state(browser) == "ok"
    browser.get_log("browser")  # forget earlier messages
    yield browser
    # script errors, not the 422s a wrong spec is answered with
    severe = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]
    assert severe == []


# -- helpers -------------------------------------------------------------------------------


def wait_for(driver, condition, message: str, timeout: float = TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message)


def doc(driver) -> str:
    return driver.execute_script("return window.convcalcPage.editor.getDoc()")


def set_doc(driver, text: str) -> None:
    driver.execute_script("window.convcalcPage.editor.setDoc(arguments[0])", text)


def generation(driver) -> int:
    return int(driver.find_element("id", "results").get_attribute("data-generation"))


def results_state(driver) -> str:
    return driver.find_element("id", "results").get_attribute("data-state")


def wait_settled(driver, before: int) -> str:
    """Wait until an analysis newer than ``before`` has been shown, and it is the latest
    one started (no debounced edit pending); return #results' state, ok or error."""

    def settled(d):
        return d.execute_script(
            "const r = document.getElementById('results');"
            "const g = Number(r.dataset.generation);"
            "return g > arguments[0] && g === window.convcalcPage.state.generation"
            "  && r.dataset.state !== 'busy';",
            before,
        )

    wait_for(driver, settled, "the page did not show the analysis of the edit")
    return results_state(driver)


def type_over(driver, needle: str, replacement: str) -> None:
    """Turn the first ``needle`` in the editor into ``replacement`` with real key presses
    into .cm-content: select the characters that differ, then type the new ones (a key or
    two, so that no analysis of a half-typed edit starts in between)."""
    from selenium.webdriver.common.action_chains import ActionChains

    prefix = 0
    while prefix < min(len(needle), len(replacement)) and needle[prefix] == replacement[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < min(len(needle), len(replacement)) - prefix
        and needle[-1 - suffix] == replacement[-1 - suffix]
    ):
        suffix += 1
    start = doc(driver).index(needle) + prefix
    driver.find_element("css selector", ".cm-content").click()
    driver.execute_script(
        "const view = window.convcalcPage.editor.view;"
        "view.dispatch({selection: {anchor: arguments[0], head: arguments[1]}});"
        "view.focus();",
        start,
        start + len(needle) - prefix - suffix,
    )
    ActionChains(driver).send_keys(replacement[prefix : len(replacement) - suffix]).perform()


def row_cells(driver, path: str) -> dict[str, str]:
    row = driver.find_element("css selector", f'tr[data-test=layer-row][data-path="{path}"]')
    return {
        cell.get_attribute("data-col"): cell.text
        for cell in row.find_elements("css selector", "td")
    }


def expected_cells(text: str, path: str) -> dict[str, str]:
    layer = next(
        layer for layer in convcalc.analyze(text).to_dict()["layers"] if layer["path"] == path
    )
    return {
        "output_shape": "[" + ", ".join(map(str, layer["output_shape"])) + "]",
        "params": f"{layer['params']:,}" if layer["params"] else "--",
    }


def screenshot(driver, path: Path) -> Path:
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG
    keep = ROOT / ".screenshots"
    if keep.is_dir():  # mkdir .screenshots to look at them
        shutil.copy(path, keep / path.name)
    return path


def count_puts(driver) -> None:
    """Count the page's PUT requests in ``window.puts`` from now on."""
    driver.execute_script(
        "window.puts = 0; const original = window.fetch;"
        "window.fetch = (url, init) => {"
        "  if (init && init.method === 'PUT') window.puts++;"
        "  return original(url, init); };"
    )


def editor_line_of(driver, css: str) -> list[int]:
    """The 1-based editor lines holding an element matching ``css``."""
    return driver.execute_script(
        "const lines = [...document.querySelectorAll('#editor .cm-content > .cm-line')];"
        "return [...document.querySelectorAll(arguments[0])]"
        "  .map((node) => lines.indexOf(node.closest('.cm-line')) + 1);",
        f"#editor {css}",
    )


# -- the tests -----------------------------------------------------------------------------


def test_page_loads_the_served_file_and_typing_updates_the_table(page, tmp_path):
    rows = page.find_elements("css selector", "tr[data-test=layer-row]")
    assert len(rows) == len(convcalc.analyze(MNIST_TEXT).rows)
    assert {k: row_cells(page, "layers.0")[k] for k in ("output_shape", "params")} == (
        expected_cells(MNIST_TEXT, "layers.0")
    )
    assert page.find_element("id", "file-path").text.endswith("mnist_cnn.yaml")
    screenshot(page, tmp_path / "serve_loaded.png")

    before = generation(page)
    type_over(page, CONV1, CONV1.replace("3,", "5,"))  # real keys: kernel_size 3 -> 5
    edited = MNIST_TEXT.replace(CONV1, CONV1.replace("3,", "5,"), 1)
    wait_for(page, lambda d: doc(d) == edited, "the typed keys did not reach the editor")
    assert wait_settled(page, before) == "ok"
    cells = row_cells(page, "layers.0")
    expected = expected_cells(edited, "layers.0")
    assert {k: cells[k] for k in expected} == expected
    assert expected != expected_cells(MNIST_TEXT, "layers.0")  # the edit changed a number
    assert "k=5" in cells["arguments"]
    # unsaved: the file label says so
    assert page.find_element("id", "file-path").get_attribute("data-dirty") == "true"


def test_an_edit_through_the_editor_handle_updates_every_row(page):
    text = MNIST_TEXT.replace("out_channels: 64", "out_channels: 48")
    before = generation(page)
    set_doc(page, text)
    assert wait_settled(page, before) == "ok"
    report = convcalc.analyze(text).to_dict()
    for layer in report["layers"]:
        expected = expected_cells(text, layer["path"])
        cells = row_cells(page, layer["path"])
        assert {k: cells[k] for k in expected} == expected, layer["path"]
    params = page.find_element("css selector", '[data-total="params"] dd').text
    assert params == f"{report['totals']['params']:,}"


def test_an_error_is_shown_at_its_line_and_the_last_result_dimmed(page, tmp_path):
    good_rows = len(page.find_elements("css selector", "tr[data-test=layer-row]"))
    before = generation(page)
    type_over(page, "kernel_size: 3", "kernel_size: 0")  # conv1, on line 6
    assert wait_settled(page, before) == "error"
    banner = page.find_element("id", "error-banner")
    assert banner.is_displayed()
    message = banner.text
    assert "kernel_size" in message and "positive integer" in message
    assert ":6:" in message or "line 6" in message  # names the line
    inline = page.find_elements("css selector", "#editor [data-test=inline-error]")
    assert len(inline) == 1 and "kernel_size" in inline[0].text
    assert editor_line_of(page, "[data-test=inline-error]") == [6]
    assert editor_line_of(page, ".cm-lintRange-error") == [6]
    result = page.find_element("id", "result")
    assert "stale" in result.get_attribute("class").split()
    # the last good table is still there
    assert len(page.find_elements("css selector", "tr[data-test=layer-row]")) == good_rows
    assert page.find_element("id", "status").get_attribute("data-state") == "error"
    screenshot(page, tmp_path / "serve_error.png")

    # an unknown field names its own line (the linear layer, line 13)
    before = generation(page)
    set_doc(page, MNIST_TEXT.replace("out_features: 10}", "out_features: 10, colour: red}"))
    assert wait_settled(page, before) == "error"
    assert "colour" in page.find_element("id", "error-banner").text
    assert editor_line_of(page, ".cm-lintRange-error") == [13]

    # fixing it clears the error and the dimming
    before = generation(page)
    set_doc(page, MNIST_TEXT)
    assert wait_settled(page, before) == "ok"
    assert not page.find_element("id", "error-banner").is_displayed()
    assert "stale" not in result.get_attribute("class").split()
    assert page.find_elements("css selector", "#editor .cm-lintRange-error") == []


def test_an_example_from_the_menu_replaces_the_spec(page):
    from selenium.webdriver.support.ui import Select

    names = [
        option.get_attribute("value")
        for option in Select(page.find_element("id", "examples")).options
    ]
    assert {"mnist_cnn", "resnet18", "lenet5"} <= set(names)
    before = generation(page)
    Select(page.find_element("id", "examples")).select_by_value("lenet5")
    lenet = (SPECS_DIR / "lenet5.yaml").read_text(encoding="utf-8")
    wait_for(page, lambda d: doc(d) == lenet, "the example did not open")
    assert wait_settled(page, before) == "ok"
    rows = page.find_elements("css selector", "tr[data-test=layer-row]")
    report = convcalc.analyze(lenet)
    assert len(rows) == len(report.rows)
    assert [row.get_attribute("data-path") for row in rows] == [row.path for row in report.rows]
    assert page.find_element("id", "summary").text.startswith(f"{report.name}:")


def download_as(page, format: str, folder: Path, name: str) -> str:
    """Choose ``format`` in the Download menu; the text of the file the browser saves."""
    from selenium.webdriver.support.ui import Select

    folder.mkdir(exist_ok=True)
    page.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)}
    )
    Select(page.find_element("id", "download")).select_by_value(format)
    target = folder / name
    wait_for(page, lambda d: target.is_file() and target.stat().st_size > 0, "no download")
    wait_for(page, lambda d: not list(folder.glob("*.crdownload")), "download did not finish")
    assert page.find_element("id", "download").get_attribute("value") == ""
    assert [path.name for path in folder.iterdir()] == [name]
    return target.read_text(encoding="utf-8")


def cli_output(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_download_json_is_shape_format_json(page, served, tmp_path):
    _, spec = served
    downloaded = download_as(page, "json", tmp_path / "json", "mnist_cnn.json")
    expected = cli_output("shape", "--format", "json", str(spec))
    assert json.loads(downloaded) == json.loads(expected)
    assert downloaded.strip() == expected.strip()


@pytest.mark.parametrize("format, suffix", [("csv", "csv"), ("markdown", "md")])
def test_download_tables_are_shape_formats(page, served, tmp_path, format, suffix):
    _, spec = served
    downloaded = download_as(page, format, tmp_path / format, f"mnist_cnn.{suffix}")
    assert downloaded == cli_output("shape", "--format", format, str(spec))


def test_download_spec_pytorch_and_svg(page, tmp_path):
    edited = MNIST_TEXT.replace("out_channels: 64", "out_channels: 48")
    before = generation(page)
    set_doc(page, edited)  # unsaved: every download is of the editor's text
    assert wait_settled(page, before) == "ok"
    assert download_as(page, "spec", tmp_path / "spec", "mnist_cnn.yaml") == edited
    code = download_as(page, "pytorch", tmp_path / "py", "mnist_cnn.py")
    assert code == export_pytorch(load_spec(edited, source=""))
    namespace: dict = {}
    exec(compile(code, "mnist_cnn.py", "exec"), namespace)  # the file runs as it is
    if shutil.which("dot"):
        svg = download_as(page, "svg", tmp_path / "svg", "mnist_cnn.svg")
        assert svg == svg_picture(load_spec(edited), convcalc.analyze(edited))
        assert "48" in svg


def click_row(page, path: str) -> None:
    page.find_element("css selector", f'tr[data-test=layer-row][data-path="{path}"]').click()


def test_clicking_a_row_shows_its_formulas(page, tmp_path):
    report = convcalc.analyze(MNIST_TEXT, explain=True)
    lines = page.find_element("id", "explanation-lines")
    for row in report.rows[:4]:
        page.find_element(
            "css selector", f'tr[data-test=layer-row][data-path="{row.path}"]'
        ).click()
        wait_for(page, lambda d, path=row.path: lines.get_attribute("data-path") == path, "")
        if row.explanation:
            assert lines.text.splitlines() == list(row.explanation)
        else:
            assert lines.text.startswith("No formulas for this layer")
    conv = next(row for row in report.rows if row.type == "conv2d")
    click_row(page, conv.path)
    wait_for(page, lambda d: lines.get_attribute("data-path") == conv.path, "no formulas shown")
    assert "⌊" in lines.text and "params" in lines.text.lower()
    screenshot(page, tmp_path / "serve_formulas.png")
    # the selection survives an edit, and the formulas follow it
    edited = MNIST_TEXT.replace(CONV1, CONV1.replace("3,", "5,"), 1)
    before = generation(page)
    set_doc(page, edited)
    assert wait_settled(page, before) == "ok"
    changed = next(
        row for row in convcalc.analyze(edited, explain=True).rows if row.path == conv.path
    )
    assert lines.get_attribute("data-path") == conv.path
    assert lines.text.splitlines() == list(changed.explanation) != list(conv.explanation)


def test_open_a_file_with_the_picker(page, tmp_path):
    lenet = (SPECS_DIR / "lenet5.yaml").read_text(encoding="utf-8")
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text(lenet, encoding="utf-8")
    before = generation(page)
    page.find_element("id", "open-file").send_keys(str(chosen))  # the input the button opens
    wait_for(page, lambda d: doc(d) == lenet, "the chosen file did not open")
    assert wait_settled(page, before) == "ok"
    rows = page.find_elements("css selector", "tr[data-test=layer-row]")
    assert len(rows) == len(convcalc.analyze(lenet).rows)


def test_drop_a_file_on_the_editor(page):
    lenet = (SPECS_DIR / "lenet5.yaml").read_text(encoding="utf-8")
    before = generation(page)
    page.execute_script(  # what the browser sends when a file is dropped on the pane
        "const data = new DataTransfer();"
        "data.items.add(new File([arguments[0]], 'dropped.yaml', {type: 'text/yaml'}));"
        "const pane = document.getElementById('editor-pane');"
        "pane.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true,"
        "  cancelable: true}));"
        "pane.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true,"
        "  cancelable: true}));",
        lenet,
    )
    wait_for(page, lambda d: doc(d) == lenet, "the dropped file did not open")
    assert wait_settled(page, before) == "ok"


def test_the_share_link_restores_the_spec_exactly(page, served):
    base, _ = served
    text = (
        MNIST_TEXT.replace("kernel_size: 3", "kernel_size: 5", 1)
        + "# ünïcödé — ✓ 漢字, a 'quote', \"double\", <tag> & +/=?#\n"
        + "   \n# a\ttab, trailing spaces   \n"
    )
    set_doc(page, text)
    page.find_element("id", "share").click()
    box = page.find_element("id", "share-box")
    wait_for(page, lambda d: box.is_displayed(), "the share box did not open")
    url = page.find_element("id", "share-url").get_attribute("value")
    assert url.startswith(base + "#spec=")
    assert len(url) < 8000

    # a fresh page in another tab
    first = page.current_window_handle
    page.switch_to.new_window("tab")
    try:
        page.get(url)
        wait_for(page, lambda d: d.execute_script("return !!window.convcalcPage"), "no page")
        wait_for(page, lambda d: doc(d) == text, "the share link did not restore the spec")
        assert wait_settled(page, 0) == "ok"
        cells = row_cells(page, "layers.0")
        assert cells["params"] == expected_cells(text, "layers.0")["params"]
        set_doc(page, page.execute_script("return window.convcalcPage.state.savedText"))
    finally:
        page.close()
        page.switch_to.window(first)

    # the same tab, by following the link (only the fragment changes)
    set_doc(page, MNIST_TEXT)
    page.get(url)
    wait_for(page, lambda d: doc(d) == text, "following the share link did not restore it")


def test_ctrl_s_saves_and_an_edit_on_disk_reloads(page, served):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _, spec = served
    before = generation(page)
    type_over(page, "out_features: 10", "out_features: 12")
    edited = MNIST_TEXT.replace("out_features: 10", "out_features: 12")
    wait_for(page, lambda d: doc(d) == edited, "the typed keys did not reach the editor")
    assert wait_settled(page, before) == "ok"
    label = page.find_element("id", "file-path")
    assert label.get_attribute("data-dirty") == "true"
    count_puts(page)
    ActionChains(page).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    wait_for(page, lambda d: spec.read_text(encoding="utf-8") == edited, "Ctrl+S did not save")
    wait_for(page, lambda d: label.get_attribute("data-dirty") == "false", "still dirty")
    assert not list(spec.parent.glob(".*.tmp"))  # the temporary file was renamed
    time.sleep(0.3)
    assert page.execute_script("return window.puts") == 1  # saved once, not twice

    # an edit on disk, made by another editor, reloads the page's editor
    time.sleep(0.05)  # a later mtime, even on coarse clocks
    on_disk = edited.replace("out_channels: 32", "out_channels: 24")
    spec.write_text(on_disk, encoding="utf-8")
    before = generation(page)
    wait_for(page, lambda d: doc(d) == on_disk, "the edit on disk did not reload", timeout=5)
    assert wait_settled(page, before) == "ok"
    assert row_cells(page, "layers.0")["output_shape"] == "[1, 24, 28, 28]"
    assert not page.find_element("id", "file-notice").is_displayed()


def test_the_save_button_writes_the_file(page, served):
    _, spec = served
    text = MNIST_TEXT.replace("name: mnist_cnn", "name: mnist_saved")
    set_doc(page, text)
    button = page.find_element("id", "save")
    wait_for(page, lambda d: button.is_enabled(), "the save button stayed disabled")
    button.click()
    wait_for(page, lambda d: spec.read_text(encoding="utf-8") == text, "Save did not save")
    wait_for(page, lambda d: not button.is_enabled(), "the save button stayed enabled")

    # Ctrl+S outside the editor saves too, once
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    text = MNIST_TEXT.replace("name: mnist_cnn", "name: mnist_saved_again")
    set_doc(page, text)
    page.find_element("id", "summary").click()
    assert not page.execute_script("return document.activeElement.closest('.cm-editor')")
    count_puts(page)
    ActionChains(page).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    wait_for(page, lambda d: spec.read_text(encoding="utf-8") == text, "Ctrl+S did not save")
    time.sleep(0.3)
    assert page.execute_script("return window.puts") == 1


def test_an_edit_on_disk_keeps_unsaved_edits_and_offers_a_reload(page, served):
    _, spec = served
    mine = MNIST_TEXT.replace("out_features: 10", "out_features: 11")
    set_doc(page, mine)
    time.sleep(0.05)
    theirs = MNIST_TEXT.replace("out_features: 10", "out_features: 13")
    spec.write_text(theirs, encoding="utf-8")
    notice = page.find_element("id", "file-notice")
    wait_for(page, lambda d: notice.is_displayed(), "no notice of the change on disk", timeout=5)
    assert doc(page) == mine  # the unsaved edits are kept
    page.find_element("id", "reload-file").click()
    wait_for(page, lambda d: doc(d) == theirs, "Reload from disk did not reload")
    assert not notice.is_displayed()


def test_compare_mode_shows_the_deltas(page, tmp_path):
    from selenium.webdriver.support.ui import Select

    page.find_element("id", "compare-toggle").click()
    wait_for(page, lambda d: d.find_element("id", "compare-pane").is_displayed(), "no compare")
    assert not page.find_element("id", "results").is_displayed()
    assert page.find_elements("css selector", "#editor-b .cm-content")
    Select(page.find_element("id", "examples-b")).select_by_value("lenet5")
    table = page.find_element("id", "compare-table")
    wait_for(page, lambda d: "lenet5" in table.text, "the comparison did not show")
    assert "stale" not in table.get_attribute("class").split()
    screenshot(page, tmp_path / "serve_compare.png")
    page.find_element("id", "compare-toggle").click()
    wait_for(page, lambda d: d.find_element("id", "results").is_displayed(), "no results")
