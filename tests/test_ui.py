"""The web UI (`conveyor ui`) in a real headless browser (Debian's chromium,
driven by Playwright; see tests/browser.py), on a store TFX 1.16 wrote and
on a Conveyor store; and its refusal of paths that lead out of a root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conveyor import LocalRunner, Pipeline, lineage
from conveyor.ui.server import make_server
from tests.browser import Browser
from tests.examples import REPO

TFX_STORE = os.path.join(os.path.dirname(REPO), "shared", "data", "tfx_taxi_store")
TFX_NODES = {
    "CsvExampleGen", "latest_blessed_model_resolver", "StatisticsGen", "SchemaGen", "ExampleValidator",
    "Transform", "Trainer", "Evaluator", "Pusher",
}
TAXI_NODES = {
    "csv_example_gen", "analyzer_cache", "statistics_gen", "schema_gen", "example_validator", "transform",
    "trainer", "latest_blessed_model_resolver", "evaluator", "pusher",
}


class Site:
    """`make_server` on a free port, serving from a thread."""

    def __init__(self, store: str) -> None:
        self.server = make_server(store, 0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def tfx_site(tmp_path_factory):
    # A copy, as a user would open one: the store and its root/ side by side.
    copy = tmp_path_factory.mktemp("tfx_store") / "tfx_taxi_store"
    shutil.copytree(TFX_STORE, copy)
    for d, _, names in os.walk(copy):
        os.chmod(d, 0o755)
        for n in names:
            os.chmod(os.path.join(d, n), 0o644)
    site = Site(str(copy / "metadata.sqlite"))
    yield site, str(copy)
    site.close()


@pytest.fixture(scope="module")
def conveyor_site(taxi_runs):
    site = Site(taxi_runs["store"])
    yield site, taxi_runs
    site.close()


def _dag_nodes(page) -> dict[str, str]:
    return {el.get_attribute("data-node"): el.get_attribute("data-state")
            for el in page.query_selector_all("#dag [data-node]")}


def _lineage_nodes(page) -> list[str]:
    return [el.text_content() for el in page.query_selector_all("#lineage [data-node] text.label")]


# ---------------------------------------------------------------------------
# A store written by TFX
# ---------------------------------------------------------------------------


def test_tfx_runs_page_and_dag(tfx_site, browser):
    site, _ = tfx_site
    page = browser.new_page()
    page.goto(site.url + "/")
    rows = page.query_selector_all("#runs tr.run")
    assert [r.query_selector("td.state").inner_text() for r in rows] == ["COMPLETE", "COMPLETE"]
    rows[0].query_selector("a").click()  # the newest run
    page.wait_for_selector("#dag svg")
    states = _dag_nodes(page)
    assert set(states) == TFX_NODES
    assert {n for n, s in states.items() if s == "CACHED"} == {
        "CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer"}
    assert states["Evaluator"] == states["Pusher"] == "COMPLETE"


def test_tfx_statistics_page_and_served_model_lineage(tfx_site, browser):
    site, copy = tfx_site
    store = lineage.open_store(copy + "/metadata.sqlite")
    stats = next(a for a in lineage.artifacts(store, range(1, 40)) if a.type == "ExampleStatistics")
    page = browser.new_page()
    page.goto(f"{site.url}/artifact/{stats.id}")
    content = page.inner_text("section.content")
    for feature in ("trip_miles", "fare", "payment_type", "trip_start_hour"):
        assert feature in content
    assert "train" in content and "eval" in content

    served = lineage.served_model(store)
    page.goto(f"{site.url}/artifact/{served.id}")
    assert "gone" in page.inner_text("table.facts")  # its files were not kept, its metadata is shown
    page.click("text=Lineage upstream")
    page.wait_for_selector("#lineage svg")
    labels = _lineage_nodes(page)
    assert "CsvExampleGen" in labels and "Trainer" in labels
    assert "/pipelines/tfx_taxi/data" in page.inner_text("main")  # the CSV ExampleGen read
    # Clicking through a neighbour: the Trainer's model leads on to its own lineage.
    page.click("#lineage a.artifact:has-text('Model ')")
    assert "/lineage/" in page.url
    assert "Trainer" in _lineage_nodes(page)


def test_files_are_served_only_from_inside_an_artifact(tfx_site):
    site, copy = tfx_site
    store = lineage.open_store(copy + "/metadata.sqlite")
    schema = next(a for a in lineage.artifacts(store, range(1, 40)) if a.type == "Schema")
    status, body = site.get(f"/files/{schema.id}/schema.pbtxt")
    assert status == 200 and b"feature {" in body
    # A symlink inside the artifact's directory that leads out of the root.
    secret = os.path.join(os.path.dirname(copy), "outside.txt")
    with open(secret, "w") as f:
        f.write("not for the browser")
    os.symlink(secret, os.path.join(schema.local_path, "escape.txt"))
    for path in (
        f"/files/{schema.id}/../../../../outside.txt",
        f"/files/{schema.id}/..%2F..%2F..%2F..%2Foutside.txt",
        f"/files/{schema.id}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside.txt",
        f"/files/{schema.id}/..%5C..%5Coutside.txt",
        f"/files/{schema.id}/escape.txt",
    ):
        status, body = site.get(path)
        assert status in (403, 404), path
        assert b"not for the browser" not in body, path
    assert site.get(f"/files/{schema.id}/escape.txt")[0] == 403


# ---------------------------------------------------------------------------
# A Conveyor store
# ---------------------------------------------------------------------------


def test_conveyor_pages(conveyor_site, browser):
    site, runs = conveyor_site
    page = browser.new_page()
    page.goto(site.url + "/")
    assert [r.inner_text() for r in page.query_selector_all("#runs tr.run td:first-child")] == ["r2", "r1"]
    page.goto(site.url + "/run/r1")
    assert _dag_nodes(page).keys() == TAXI_NODES
    assert {s for n, s in _dag_nodes(page).items() if n != "analyzer_cache"} <= {"COMPLETE"}

    stats = runs["r1"].outputs("statistics_gen", "statistics")[0]
    page.goto(f"{site.url}/artifact/{stats.id}")
    content = page.inner_text("section.content")
    assert "trip_miles" in content and "company" in content

    pushed = runs["r2"].outputs("pusher", "pushed_model")[0]
    page.goto(f"{site.url}/lineage/{pushed.id}?direction=up")
    labels = _lineage_nodes(page)
    assert {"csv_example_gen", "transform", "trainer", "evaluator", "pusher"} <= set(labels)
    assert os.path.join(REPO, "examples", "taxi", "data") in page.inner_text("main")

    page.goto(f"{site.url}/diff?a=r1&b=r2")
    reran = {r.query_selector("td").inner_text() for r in page.query_selector_all("#diff tr.reran")}
    assert {"trainer", "evaluator", "pusher"} <= reran and "transform" not in reran


def test_run_page_follows_a_run_in_progress(tmp_path, browser):
    from tests.lightweight import count_rows, wait_for_release

    gate = str(tmp_path / "gate")
    slow = wait_for_release(gate=gate)
    pipeline = Pipeline("live", str(tmp_path / "root"), [slow, count_rows(examples=slow.outputs["rows"])])
    done = threading.Thread(target=lambda: LocalRunner().run(pipeline, run_id="live-run"))
    done.start()
    store = str(tmp_path / "root" / "metadata.sqlite")
    site = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if lineage.run(store, "live-run").nodes:
                    break
            except Exception:  # noqa: BLE001 - the store or the run is not there yet
                pass
            time.sleep(0.2)
        site = Site(store)
        page = browser.new_page()
        page.goto(site.url + "/run/live-run")
        assert _dag_nodes(page) == {"wait_for_release": "RUNNING"}
        assert page.inner_text("#run-state") == "RUNNING"
        open(gate, "w").close()
        page.wait_for_selector("#dag [data-node=count_rows][data-state=COMPLETE]", timeout=60_000)
        assert _dag_nodes(page) == {"wait_for_release": "COMPLETE", "count_rows": "COMPLETE"}
    finally:
        open(gate, "w").close()
        done.join()
        if site:
            site.close()


def test_ui_command_serves_on_loopback(tfx_site):
    _, copy = tfx_site
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "ui", "--store", copy + "/metadata.sqlite",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("http://", 1)[1].split("/", 1)[0]
        with urllib.request.urlopen(f"http://{url}/", timeout=60) as r:
            assert r.status == 200 and b"Runs" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _self_contained(text: str) -> None:
    """No reference to anything outside the file: it opens offline."""
    import re

    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) + re.findall(r"url\(([^)#]*)\)", text)
    assert [r for r in refs if not r.startswith("#")] == []


def test_report_of_a_tfx_run_opens_offline(tfx_site, tmp_path, browser):
    _, copy = tfx_site
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "conveyor.cli", "report", "--store", copy, "latest", "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    _self_contained(text)
    page = browser.new_page()
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:") else route.continue_())
    page.goto(out.as_uri())
    timings = {r.query_selector("td").inner_text(): r.query_selector_all("td")[1].inner_text()
               for r in page.query_selector_all("#timings tr") if r.query_selector("td")}
    assert set(timings) == TFX_NODES and timings["Evaluator"] == "COMPLETE"
    body = page.inner_text("main")
    for expected in ("trip_miles", "BLESSED", "Lineage of PushedModel", "/pipelines/tfx_taxi/data"):
        assert expected in body


def test_report_of_a_conveyor_run(conveyor_site, tmp_path):
    _, runs = conveyor_site
    out = tmp_path / "r2.html"
    done = subprocess.run([sys.executable, "-m", "conveyor.cli", "report", "--store", runs["store"], "r2",
                           "-o", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    _self_contained(text)
    stats = runs["r1"].outputs("statistics_gen", "statistics")[0]
    evaluation = runs["r2"].outputs("evaluator", "evaluation")[0]
    assert f'id="artifact-{stats.id}"' in text and f'id="artifact-{evaluation.id}"' in text
    assert "trip_miles" in text and "example_count" in text.lower()
    missing = subprocess.run([sys.executable, "-m", "conveyor.cli", "report", "--store", runs["store"], "r9",
                              "-o", str(tmp_path / "none.html")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 1 and "no run 'r9'" in missing.stderr
