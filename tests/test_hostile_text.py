"""Spec text is data: a vertical whose every display text is template markup, quotes,
backslashes and HTML generates an app that shows those characters literally.

The texts reach the app as app/spec.json and are escaped where a page shows them, so
nothing in them is ever read as Jinja (copier's or Flask's), Python or SQL.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess

import pytest

from conftest import generate, gunicorn, mailed_link, port_of, run_app_tests, wait_for, wait_port_free, write_spec

pytestmark = pytest.mark.slow

# Jinja of both flavours, a backslash, both quotes, three double quotes, HTML.
HOSTILE = '{{ 7*7 }} {% raw %} \\n """ \' [[ x ]] <script>'
CHOICES = [HOSTILE, "R&D {lab}", "C:\\ paths", "50% off", "}} [% endif %]"]


def toml(value) -> str:
    """A TOML value for a string or a list of strings (JSON's syntax is TOML's here)."""
    return json.dumps(value)


def hostile_spec() -> str:
    text = f"label = {toml(HOSTILE)}, help = {toml(HOSTILE)}"
    return f"""\
slug = "hostile"
name = {toml(HOSTILE)}
tagline = {toml(HOSTILE)}

[[entities]]
name = "thing"
label = {toml(HOSTILE)}
plural = {toml(HOSTILE)}
search = ["title", "notes"]
fields = [
  {{ name = "title", type = "string", required = true, {text} }},
  {{ name = "kind", type = "choice", choices = {toml(CHOICES)}, default = {toml(HOSTILE)}, {text} }},
  {{ name = "code", type = "string", default = {toml(HOSTILE)}, {text} }},
  {{ name = "parent", type = "ref", to = "thing", on_delete = "set_null", {text} }},
  {{ name = "notes", type = "text", {text} }},
  {{ name = "amount", type = "decimal", places = 2, {text} }},
  {{ name = "done", type = "boolean", {text} }},
]
"""


@pytest.fixture
def hostile_app(project):
    write_spec(project, "hostile", hostile_spec())
    outcome = generate(project, ["hostile"])["hostile"]
    assert outcome.status == "created", outcome.message
    return project.app_dir("hostile")


def test_the_app_passes_its_own_tests(hostile_app):
    done = run_app_tests(hostile_app)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_texts_are_data_not_code(hostile_app):
    texts = json.loads((hostile_app / "app" / "spec.json").read_text(encoding="utf-8"))
    assert texts["name"] == HOSTILE
    assert texts["entities"][0]["fields"][1]["choices"] == CHOICES
    # No display text is written into the app's Flask templates or its code; a default
    # is a value, written as a Python literal.
    for path in (hostile_app / "app" / "templates").rglob("*.html"):
        assert "7*7" not in path.read_text(encoding="utf-8"), path
    for path in (hostile_app / "app").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert "7*7" not in line or ", default=" in line, (path, line)
    assert HOSTILE in (hostile_app / "README.md").read_text(encoding="utf-8")
    # A % in a unit's Description= is a systemd specifier unless doubled.
    unit = (hostile_app / "deploy" / "hostile.service").read_text(encoding="utf-8")
    assert "Description=" + HOSTILE.replace("%", "%%") + " (gunicorn" in unit


@pytest.mark.xdist_group("browser")
def test_a_browser_shows_the_texts_literally(hostile_app, project, tmp_path):
    from test_browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright

    port = port_of(project, "hostile")
    wait_port_free(port)
    with gunicorn(hostile_app), sync_playwright() as pw:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(f"{base}/healthz")[0] == 200
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(base_url=base)
            page.set_default_timeout(10_000)
            page.goto("/")
            assert page.locator("h1").inner_text() == HOSTILE  # the tagline, as the headline
            assert page.locator(".hero .brand-name").inner_text() == HOSTILE  # the name
            assert page.title() == HOSTILE + " · " + HOSTILE

            page.goto("/signup")
            page.fill("#account", "Hostile texts")
            page.fill("#email", "owner@example.com")
            page.fill("#password", "a long enough password")
            page.fill("#confirm", "a long enough password")
            page.click("button[type=submit]")
            page.goto(mailed_link(hostile_app / "instance", "owner@example.com"))
            page.click("main button[type=submit]")
            page.wait_for_url(base + "/")
            nav = page.locator("nav.top .sections a").all_inner_texts()
            assert nav == [HOSTILE]

            records = page.locator("nav.top .sections a").get_attribute("href")
            page.goto(records + "new")
            assert page.title() == "New " + HOSTILE.lower() + " · " + HOSTILE
            for name in ("title", "kind", "code", "parent", "notes", "amount"):
                assert page.locator(f"label[for={name}]").inner_text() == HOSTILE
                assert page.locator(f"#{name}-help").inner_text() == HOSTILE
            assert page.locator("label[for=done]").inner_text().strip() == HOSTILE
            assert page.locator("#kind option").all_inner_texts()[-len(CHOICES):] == CHOICES
            assert page.locator("#kind").input_value() == HOSTILE  # the default
            assert page.locator("#code").input_value() == HOSTILE
            page.fill("#title", "First")
            page.fill("#notes", HOSTILE)
            page.click("main button[type=submit]")
            page.wait_for_url(base + records + "1")

            assert page.locator("h1").inner_text() == "First"
            assert page.locator("dl.record dt").all_inner_texts() == [HOSTILE] * 7
            shown = page.locator("dl.record dd").all_inner_texts()
            assert shown[1] == HOSTILE and shown[2] == HOSTILE and shown[4] == HOSTILE
            assert page.title() == "First · " + HOSTILE + " · " + HOSTILE

            page.goto(records)
            assert page.locator("h1").inner_text() == HOSTILE
            headers = page.locator("table.records th").all_inner_texts()
            assert headers and all(h.rstrip(" ▲▼") == HOSTILE for h in headers)
            assert page.locator(".count").inner_text() == "1 " + HOSTILE.lower()

            page.goto(records + "1/delete")
            assert HOSTILE in page.locator("main").inner_text()  # what happens to refs

            export = page.request.get(records + "export.csv")
            assert export.status == 200
            header = next(csv.reader(io.StringIO(export.text())))
            assert header == ["id", *[HOSTILE] * 4, HOSTILE + " title", *[HOSTILE] * 3, "created_at", "updated_at"]
        finally:
            browser.close()


def test_the_units_verify_with_hostile_text(hostile_app, wheels, tmp_path):
    """The units name the vertical in comments and Description= (where systemd reads a
    % as a specifier, so the template doubles it: test_texts_are_data_not_code)."""
    from generator.install import install
    from test_deploy import SYSTEMD_ANALYZE, prepare_for_verify

    root = tmp_path / "root"
    install(["hostile"], root, hostile_app.parent, wheels)
    prepare_for_verify(root)
    units = sorted((root / "etc/systemd/system").glob("hostile*"))
    assert len(units) == 4
    for unit in units:
        done = subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", f"/etc/systemd/system/{unit.name}"],
                              capture_output=True, text=True)
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
