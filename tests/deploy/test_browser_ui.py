"""The Prefect UI in a real browser (Debian's headless Chromium, loopback only): the typed curate-lvd
form (null choices labelled with their meaning, no storage default to fill in), a run started from it
that lands under the worker's LVD_ROOT, and the run's artifacts (stage-count table, inline pictures)."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from flows.config import CurateConfig
from flows.deployments import parameters_for, DEPLOYMENTS
from flows.form import null_choice_label
from flows.runner import RunnerConfig
from storage.commit import read_commit, stage_uri
from tasks.dedup.config import DedupConfig
from tests.deploy.conftest import CPU_TINY
from tests.support.prefect_stack import REPO

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "benchmarks" / "screenshots"
# Every name resolves nowhere except 127.0.0.1: the UI's analytics host can't be reached.
BROWSER_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


@pytest.fixture(scope="module")
def page():
    if not shutil.which(CHROMIUM):
        pytest.fail("Debian chromium missing: run deploy/apt-packages.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        page.set_default_timeout(90_000)
        blocked: list[str] = []

        def loopback_only(route):
            url = route.request.url
            if url.startswith(("http://127.0.0.1", "data:")):
                return route.continue_()
            blocked.append(url)
            return route.abort()

        page.route("**/*", loopback_only)
        page.blocked = blocked
        try:
            yield page
        finally:
            browser.close()


def shot(page, name: str, full: bool = False) -> None:
    """A screenshot at half size (small enough to commit)."""
    import io

    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(page.screenshot(full_page=full))).convert("RGB")
    img.thumbnail((img.width // 2, img.height // 2))
    img.quantize(colors=128).save(SHOTS / name, optimize=True)


def field_box(page, label: str):
    """The innermost form group whose own label is `label` (the UI appends ' (Optional)')."""
    text = re.compile(rf"^{re.escape(label)}( \(Optional\))?$")
    return page.locator("div.group").filter(has=page.locator("label", has_text=text)).last


def section_titles() -> list[str]:
    """Headings the form shows for CurateConfig's nested models (the referenced model's title)."""
    schema = CurateConfig.model_json_schema()
    titles = []
    for prop in schema["properties"].values():
        ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("anyOf", []) if "$ref" in a), None)
        if ref:
            titles.append(schema["$defs"][ref.rsplit("/", 1)[-1]]["title"])
    return titles


@pytest.fixture
def demo_deployment(stack, demo):
    """cpu-tiny's default parameters pointed at the demo web (as a team sets its deployment's defaults),
    with no storage: the worker's LVD_ROOT (the stack's bucket) decides. Restored afterwards."""
    dep = stack.deployment(CPU_TINY)
    params = demo.params(version="v1")
    del params["cfg"]["storage"]
    stack.request("PATCH", f"/deployments/{dep['id']}", {"parameters": params})
    try:
        yield dep
    finally:
        original = parameters_for(next(d for d in DEPLOYMENTS if f"{d.flow}/{d.name}" == CPU_TINY))
        stack.request("PATCH", f"/deployments/{dep['id']}", {"parameters": original})


def test_custom_run_form_to_artifacts(stack, demo, demo_deployment, page, s3_env):
    ui = stack.ui_url
    page.goto(f"{ui}/v2/deployments/deployment/{demo_deployment['id']}")
    page.get_by_text("flows/curate_lvd.py:curate_lvd").first.wait_for()
    shot(page, "deployment-cpu-tiny.png")

    page.goto(f"{ui}/v2/deployments/deployment/{demo_deployment['id']}/run")
    field_box(page, "Pages Per Part").wait_for()
    for title in section_titles():
        assert page.get_by_text(re.compile(rf"^{title}( \(Optional\))?$")).count() >= 1, title
    # the form reads as a user thinks, whatever order PostgreSQL keeps the schema's keys in:
    # where (storage), what (dataset, version), inputs, then the stages in pipeline order
    tops = [field_box(page, label).bounding_box()["y"]
            for label in ("Root", "Dataset", "Version", "Inputs", "Pages Per Part", "Hash Method")]
    assert tops == sorted(tops), tops
    # values: the deployment's parameters and the schema's own defaults
    assert field_box(page, "Dataset").locator("textarea, input").first.input_value() == demo.cfg.dataset
    assert field_box(page, "Pages Per Part").locator("input").first.input_value() == str(demo.cfg.crawl.pages_per_part)
    assert field_box(page, "Max Redirects").locator("input").first.input_value() == str(demo.cfg.crawl.max_redirects)
    # an enum is a choice among exactly its values
    field_box(page, "Hash Method").locator("fieldset button").first.click()
    options = page.get_by_role("option").all_inner_texts()
    assert options == DedupConfig.model_json_schema()["properties"]["hash_method"]["enum"], options
    page.keyboard.press("Escape")
    # a field whose None means something offers that meaning, not a bare 'Property is type "None"'
    max_workers = field_box(page, "Max Workers")
    max_workers.get_by_role("tab", name=null_choice_label(
        RunnerConfig.model_fields["max_workers"].description)).wait_for()
    assert "Prefect's default" in max_workers.inner_text()
    # storage fields show no default to fill in: an empty root is the worker's LVD_ROOT
    assert field_box(page, "Root").locator("textarea, input").first.input_value() == ""
    shot(page, "custom-run-form.png")

    version = field_box(page, "Version").locator("textarea, input").first
    version.fill("ui-form")
    page.get_by_role("button", name="Submit").click()
    page.get_by_role("button", name="View run").click()
    page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    run_id = re.search(r"/flow-run/([0-9a-f-]{36})", page.url).group(1)
    run = stack.flow_run(run_id)
    assert run["parameters"]["cfg"]["version"] == "ui-form"
    assert run["parameters"]["cfg"]["crawl"]["pages_per_part"] == demo.cfg.crawl.pages_per_part
    # the form names no storage setting of its own, so none hides the worker's environment
    assert not run["parameters"]["cfg"].get("storage"), run["parameters"]["cfg"].get("storage")

    t = time.monotonic()
    run = stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=300)
    assert run["state"]["type"] == "COMPLETED", stack.log_tail("worker-lvd-cpu.log")
    print(f"run started from the form finished in {time.monotonic() - t:.0f} s")
    root = stack.worker_env["LVD_ROOT"]
    assert read_commit(stage_uri(root, demo.cfg.dataset, "ui-form", "shards"))["counts"]["samples"] > 0
    assert not (REPO / "lvd-data" / demo.cfg.dataset / "ui-form").exists()

    artifacts = stack.artifacts(run_id)
    table = next(a for a in artifacts if a["type"] == "table" and "counts" in a["key"])
    pictures = [a for a in artifacts if a["type"] == "markdown" and "data:image/png;base64," in (a["data"] or "")]
    assert pictures, [a["key"] for a in artifacts]

    page.goto(f"{ui}/v2/runs/flow-run/{run_id}?tab=Artifacts")
    page.get_by_text(table["key"], exact=True).wait_for()
    page.get_by_text(pictures[0]["key"], exact=True).wait_for()
    shot(page, "run-artifacts.png")

    page.goto(f"{ui}/v2/artifacts/artifact/{table['id']}")
    page.get_by_role("cell", name="samples", exact=True).first.wait_for()
    cells = page.get_by_role("cell").all_inner_texts()
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    for row in rows[:5]:  # the first page of the table, as the flow wrote it
        values = [str(v) for v in row.values()]
        assert values in [cells[i:i + len(values)] for i in range(len(cells))], (values, cells[:30])
    shot(page, "artifact-stage-counts.png")

    page.goto(f"{ui}/v2/artifacts/artifact/{pictures[0]['id']}")
    picture = page.locator("img[src^='data:image/png;base64,']").first
    picture.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
    shot(page, "artifact-picture.png")
    assert not [u for u in page.blocked if "127.0.0.1" in u]


def test_weekly_refresh_schedule_is_shown(stack, page):
    dep = stack.deployment("curate-lvd/lvd-142m")
    page.goto(f"{stack.ui_url}/v2/deployments/deployment/{dep['id']}")
    page.get_by_text("flows/curate_lvd.py:curate_lvd").first.wait_for()
    schedule = page.get_by_text(re.compile(r"03:00.*Sunday", re.I)).first
    schedule.wait_for()
    shot(page, "deployment-lvd-142m-schedule.png")
