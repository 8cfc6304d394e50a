"""The web console in a real headless browser (Debian's chromium through Playwright),
against a real server: sign in; find a feature group, open two versions and their diff;
run a time-travel query and download it; watch a training job succeed with its progress
chart; follow a model's lineage to the feature-group version; check an audit record's
inclusion proof in the page and see a changed proof fail; a reader is not offered the
admin pages; phone width and long names do not break the layout. Screenshots of each page
go to LAKELEDGER_CONSOLE_SHOTS (default target/console-screenshots)."""

import csv
import os
import re
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))

from lakeledger import Client  # noqa: E402
from servers import start_server, stop_server  # noqa: E402

SHOTS = Path(os.environ.get("LAKELEDGER_CONSOLE_SHOTS", ROOT / "target" / "console-screenshots"))
WINE = ROOT / "trainer" / "tests" / "data" / "wine.csv"
LONG = "a_feature_group_with_a_very_long_name_that_must_wrap_rather_than_break_the_page_layout"


def chromium_path():
    for p in (os.environ.get("LAKELEDGER_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium")):
        if p and Path(p).exists():
            return p
    return None


def need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package (pip install playwright)"
    else:
        missing = None if chromium_path() else "a chromium browser (apt-get install chromium)"
    if missing:
        if os.environ.get("LAKELEDGER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the console tests need {missing}")
        pytest.skip(f"the console tests need {missing}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server with two versions of `rides`, a trained `wine` model and keys per role."""
    need_browser()
    proc, s = start_server(tmp_path_factory.mktemp("console-data"))
    try:
        ll = Client(s.url, s.key)
        ll.create_feature_group(
            "rides",
            entity_keys=[{"name": "driver_id", "type": "int64"}],
            event_time="ts",
            features=[{"name": "trips", "type": "int64"}, {"name": "city", "type": "string"}],
            tags={"team": "mobility"},
        )
        ll.ingest("rides", [{"driver_id": i, "ts": "2026-01-01T00:00:00Z", "trips": 10 * i, "city": "Oslo"} for i in (1, 2, 3)])
        ll.ingest("rides", [{"driver_id": 2, "ts": "2026-01-01T00:00:00Z", "trips": 99, "city": "Oslo"}, {"driver_id": 4, "ts": "2026-01-02T00:00:00Z", "trips": 40, "city": "Bergen"}], mode="upsert")
        ll.create_feature_group(LONG, entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", description="x" * 300, tags={"a_rather_long_tag_key": "and_an_even_longer_tag_value_that_goes_on"})

        rows = list(csv.DictReader(WINE.open()))
        features = [c for c in rows[0] if c not in ("id", "cultivar")]
        ll.create_feature_group("wine", entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", features=[{"name": f, "type": "float64"} for f in features])
        ll.create_feature_group("wine_labels", entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", features=[{"name": "cultivar", "type": "int64"}])
        ids = pa.array([int(r["id"]) for r in rows], pa.int64())
        t0 = pa.array([1767225600_000_000] * len(rows), pa.timestamp("us", tz="UTC"))
        ll.ingest("wine", pa.table({"id": ids, "ts": t0, **{f: pa.array([float(r[f]) for r in rows]) for f in features}}))
        t1 = pa.array([1767312000_000_000] * len(rows), pa.timestamp("us", tz="UTC"))
        ll.ingest("wine_labels", pa.table({"id": ids, "ts": t1, "cultivar": pa.array([int(r["cultivar"]) for r in rows], pa.int64())}))
        ts = ll.create_training_set("wine-v1", features=[f"wine:{f}" for f in features], spine_sql="SELECT id, ts, cultivar FROM wine_labels", spine_time="ts")
        keys = {role: ll.create_key(f"console-{role}", role)["secret"] for role in ("reader", "auditor")}
        yield {"server": s, "client": ll, "training_set": ts, "keys": keys}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def open_console(browser, world, key, viewport=(1280, 800)):
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{world['server'].url}/ui")
    page.fill("#api-key", key)
    page.keyboard.press("Enter")  # the form submits from the keyboard
    page.wait_for_selector("#who >> text=Sign out")
    page.errors = errors
    return page


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_groups_versions_diff_and_sql_with_download(browser, world):
    page = open_console(browser, world, world["server"].key)
    page.wait_for_selector("#group-search")
    page.fill("#group-search", "mobility")
    assert page.locator("table a.name").all_inner_texts() == ["rides"]
    shot(page, "01-feature-groups")

    page.click("text=rides")
    page.wait_for_selector("#timeline li")
    assert page.locator("#timeline li").count() == 3
    page.select_option("#preview-version", "1")
    page.click("#preview-form button")
    page.wait_for_selector("#preview >> text=at version 1")
    assert page.locator("#preview tbody tr").count() == 3
    page.select_option("#preview-version", "2")
    page.click("#preview-form button")
    page.wait_for_selector("#preview >> text=at version 2")
    assert page.locator("#preview tbody tr").count() == 4
    page.select_option("#diff-a", "1")
    page.select_option("#diff-b", "2")
    page.click("#diff-form button")
    summary = page.wait_for_selector("#diff-summary").inner_text()
    assert "1 added, 0 removed, 1 changed" in summary, summary
    assert "trips: 20 → 99" in page.inner_text("#diff")
    shot(page, "02-feature-group-versions-and-diff")

    page.goto(f"{world['server'].url}/ui#/sql")
    page.wait_for_selector("#sql-editor")
    page.fill("#sql-editor", "SELECT driver_id, trips FROM rides VERSION AS OF 1 ORDER BY driver_id")
    page.click("#sql-run")
    page.wait_for_selector("#versions-read code")
    assert page.inner_text("#versions-read code") == "rides@1"
    assert page.locator("#sql-result tbody tr").count() == 3
    with page.expect_download() as d:
        page.click("text=Download CSV")
    path = SHOTS / "query.csv"
    d.value.save_as(str(path))
    assert path.read_text().splitlines()[0] == "driver_id,trips"
    assert len(path.read_text().splitlines()) == 4
    shot(page, "03-sql")
    assert not page.errors, page.errors


def test_a_training_job_is_watched_to_success_and_lineage_is_followed(browser, world):
    ll, ts = world["client"], world["training_set"]
    job = ll.start_training_job("wine-classifier", training_set_id=ts.id, label="cultivar", config={"task": "classification", "hidden_layers": [16], "max_epochs": 150, "seed": 7})
    page = open_console(browser, world, world["server"].key)
    page.goto(f"{world['server'].url}/ui#/jobs/{job['id']}")
    try:
        page.wait_for_selector("#job-state >> text=succeeded", timeout=300_000)
    except Exception:
        shot(page, "04-training-job-not-done")
        raise AssertionError(f"job {job['id']}: {ll.job(job['id'])['state']}; page says {page.inner_text('main')}") from None
    # The chart holds a point per epoch the page saw while the job ran.
    page.wait_for_selector("#job-chart polyline", state="attached")
    assert page.evaluate("document.querySelector('#job-chart polyline').getAttribute('points').split(' ').length") >= 2
    assert "epoch" in page.inner_text("#job-progress")
    shot(page, "04-training-job")

    page.click("text=wine-classifier v1")  # the registered version's lineage
    page.wait_for_selector("#lineage-graph")
    shot(page, "05-model-lineage")
    page.click("#lineage-graph a[data-label='wine v1']")  # the feature-group version it pinned
    page.wait_for_url(re.compile(r"#/lineage/group/wine/1$"))
    page.wait_for_selector("#lineage-graph a[data-label='wine-v1']")
    page.click("#lineage-graph a[data-label='wine v1']")
    page.wait_for_url(re.compile(r"#/groups/wine\?v=1$"))
    page.wait_for_selector("#preview >> text=at version 1")
    shot(page, "06-feature-group-from-lineage")

    page.goto(f"{world['server'].url}/ui#/models/wine-classifier")
    page.wait_for_selector("[data-signature]")
    assert page.locator("[data-signature='verified']").count() == 1
    shot(page, "07-model")
    assert not page.errors, page.errors


def test_an_auditor_checks_an_inclusion_proof_in_the_page_and_a_changed_proof_fails(browser, world):
    page = open_console(browser, world, world["keys"]["auditor"])
    page.wait_for_url(re.compile(r"#/audit"))
    page.fill("#audit-filters input[name=action]", "data.write")
    page.click("#audit-filters button")
    page.wait_for_url(re.compile(r"action=data.write"))
    first = page.wait_for_selector("button[data-seq]")
    first.click()
    page.click("#verify-inclusion")
    page.wait_for_selector("[data-verdict]")
    assert page.get_attribute("[data-verdict]", "data-verdict") == "verified", page.inner_text("#verify-steps")
    assert page.locator("#verify-steps li.ok").count() == 3
    shot(page, "08-audit-verified")

    proof = page.input_value("#proof-json")
    hashes = re.findall(r'"([0-9a-f]{64})"', proof)
    assert hashes, "the proof has hashes"
    changed = proof.replace(hashes[-1], ("0" if hashes[-1][0] != "0" else "1") + hashes[-1][1:])
    page.fill("#proof-json", changed)
    page.click("#verify-again")
    page.wait_for_selector("[data-verdict='failed']")
    assert "signed checkpoint says" in page.inner_text("#verify-result")
    shot(page, "09-audit-tampered")
    assert "Admin" not in page.inner_text("#nav")
    assert not page.errors, page.errors


def test_a_reader_is_not_offered_admin_and_small_screens_hold_up(browser, world):
    page = open_console(browser, world, world["keys"]["reader"])
    nav = page.inner_text("#nav")
    assert "Feature groups" in nav and "Admin" not in nav and "Audit" not in nav
    page.goto(f"{world['server'].url}/ui#/admin")
    page.wait_for_selector("text=does not give access")
    shot(page, "10-reader-no-admin")

    admin = open_console(browser, world, world["server"].key)
    admin.goto(f"{world['server'].url}/ui#/admin")
    admin.wait_for_selector("#key-form")
    assert "console-reader" in admin.inner_text("main")
    shot(admin, "11-admin")

    phone = open_console(browser, world, world["server"].key, viewport=(390, 844))
    for route in (f"#/groups/{LONG}", "#/groups", "#/sql"):
        phone.goto(f"{world['server'].url}/ui{route}")
        phone.wait_for_selector("main h1")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 391, f"{route} is {width}px wide on a 390px screen"
    phone.goto(f"{world['server'].url}/ui#/groups/{LONG}")
    phone.wait_for_selector("main h1")
    shot(phone, "12-phone-long-name")
    # Keyboard: Tab walks the navigation's links in order, and Enter follows one.
    phone.focus("a.brand")
    phone.keyboard.press("Tab")
    assert phone.evaluate("document.activeElement.textContent") == "Feature groups"
    phone.keyboard.press("Tab")
    assert phone.evaluate("document.activeElement.textContent") == "SQL"
    phone.keyboard.press("Enter")
    phone.wait_for_selector("#sql-editor")
    assert not page.errors and not admin.errors and not phone.errors
