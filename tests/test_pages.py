"""Every page of every example vertical in a real browser: axe-core finds no violation
in light or dark mode, no page scrolls sideways on a phone, and each page is screenshot.

For each example (verticals/*.toml): the app is generated and served by gunicorn on its
registered port; one Chromium (test_browser.py's) holds one context per size and colour
scheme. The public pages are visited logged out; then the test signs up (the mailed
link), adds one record of each entity through its form (refs pointing at the records
made before), and visits each page a customer sees: the dashboard, each entity's list
(plain and with a filter applied), new form, form with its validation errors, record
page, edit form, delete confirmation, import page and the preview of an imported file,
the team, activity, settings and password pages, and a 404 page. The same visit is made
to tests/fixtures/wordy.toml, whose texts and values are long single words, and to a
random valid spec (test_random_specs.py).

On each page, in each context: axe-core (tests/browser-tools, evaluated in the page so
its CSP does not apply) reports no violation (on desktop, light and dark); at 390 px
the document is no wider than the viewport (light and dark); and a full-page
screenshot goes to test-artifacts/pages/<slug>/<page>-<size>-<scheme>.png.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from conftest import EXAMPLES, ROOT, mailed_link, served_example, write_spec
from test_browser import ARTIFACTS, DESKTOP, PHONE, browser  # noqa: F401 (a fixture)
from test_random_specs import FIRST as RANDOM_FIRST
from test_random_specs import random_spec

from generator import spec

pytestmark = pytest.mark.slow  # gunicorn and Chromium

TOOLS = ROOT / "tests" / "browser-tools"
AXE = TOOLS / "node_modules" / "axe-core" / "axe.min.js"
WORDY = ROOT / "tests" / "fixtures" / "wordy.toml"
SIZES = {"phone": PHONE, "desktop": DESKTOP}
SCHEMES = ("light", "dark")
EMAIL = "owner@example.com"
PASSWORD = "correct horse battery staple"

# axe.run() in the page; each violation as the rule, the element and what is wrong.
RUN_AXE = """async () => {
  const results = await axe.run(document, {resultTypes: ["violations"]});
  return results.violations.flatMap((v) => v.nodes.map((n) =>
    `${v.id} (${v.impact}) at ${n.target.join(" ")}: ${n.failureSummary.replace(/\\s+/g, " ")}`));
}"""
OVERFLOW = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: scripts/install installs it (npm ci in {TOOLS})")
    return AXE.read_text()


def sample_value(f: spec.Field):
    """A valid form value for a field, from its type and limits (None: a ref or a box)."""
    if f.type in ("integer", "decimal"):
        number = Decimal(3)  # within the limits (the spec holds them as text)
        if f.min is not None:
            number = max(number, Decimal(f.min))
        if f.max is not None:
            number = min(number, Decimal(f.max))
        return f"{number:.{f.places or 0}f}" if f.type == "decimal" else str(int(number))
    return {
        "string": (f.label + " one")[: f.max_length or 200],
        "text": "Noted on the first visit.",
        "date": "2025-03-14",
        "datetime": "2025-03-14T09:30",
        "email": "someone@example.com",
        "url": "https://example.com/",
        "choice": f.choices[0] if f.choices else None,
    }.get(f.type)


@dataclass
class Record:
    """One record the test made: its id and the values of its form."""

    id: int
    values: dict = field(default_factory=dict)


def add_record(page, entity: spec.Entity, made: dict[str, Record], value=sample_value) -> Record:
    """Fill in the entity's form with a valid value(field) for each field, and save it."""
    from playwright.sync_api import expect

    page.goto(f"/{entity.url}/new")
    values = {}
    for f in entity.fields:
        control = page.locator(f"form [name='{f.name}']")
        if f.type == "boolean":
            control.check()
            values[f.name] = "1"
        elif f.type == "ref":
            if f.to in made:
                control.select_option(str(made[f.to].id))
                values[f.name] = str(made[f.to].id)
        elif f.type == "choice":
            control.select_option(value(f))
            values[f.name] = value(f)
        else:
            control.fill(value(f))
            values[f.name] = value(f)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("p.flash")).to_contain_text(f"{entity.label} added.")
    return Record(int(re.search(r"/(\d+)$", page.url).group(1)), values)


def filtered(entity: spec.Entity, record: Record) -> str:
    """The entity's list with one filter applied that keeps the record in it: a choice,
    ref or boolean equal to its value, else a range from its date or number; else a search."""
    fields = [f for f in entity.fields if f.name in record.values]
    for f in sorted(fields, key=lambda f: f.type not in ("choice", "ref", "boolean")):
        if f.type in ("choice", "ref", "boolean"):
            return f"/{entity.url}/?{f.name}={record.values[f.name]}"
        if f.type in ("date", "datetime"):
            return f"/{entity.url}/?{f.name}_from=2025-03-01&{f.name}_to=2025-03-31"
        if f.type in ("integer", "decimal"):
            return f"/{entity.url}/?{f.name}_from={record.values[f.name]}"
    return f"/{entity.url}/?q={record.values[entity.search[0]][:3]}" if entity.search else f"/{entity.url}/"


class Visitor:
    """One page per (size, scheme) context, all on the same address; visits a page in each
    and collects the problems found, with the page's name."""

    def __init__(self, chromium, base: str, slug: str):
        self.contexts = {}
        self.pages = {}
        for size, viewport in SIZES.items():
            for scheme in SCHEMES:
                context = chromium.new_context(base_url=base, viewport=viewport, color_scheme=scheme)
                context.set_default_timeout(15_000)
                self.contexts[size, scheme] = context
                self.pages[size, scheme] = context.new_page()
        self.axe = axe_source()
        self.shots = ARTIFACTS / "pages" / slug
        self.shots.mkdir(parents=True, exist_ok=True)
        self.problems: list[str] = []
        self.visited: list[str] = []

    @property
    def main(self):
        return self.pages["desktop", "light"]

    def share_login(self):
        """The desktop light page logged in: the other contexts get its cookies."""
        cookies = self.contexts["desktop", "light"].cookies()
        for key, context in self.contexts.items():
            if key != ("desktop", "light"):
                context.add_cookies(cookies)

    def axe_can_fail(self):
        """axe, as the test runs it, finds an input without a label (so its silence
        elsewhere means something)."""
        page = self.main
        page.evaluate(self.axe)
        page.evaluate("document.querySelector('main').append(document.createElement('input'))")
        assert any(v.startswith("label ") for v in page.evaluate(RUN_AXE)), "axe did not see an unlabelled input"

    def visit(self, name: str, path: str, status: int | tuple[int, ...] = 200, then=None):
        """Open `path` (then, if given, do `then(page)`, which returns the final
        response) in every context, and check the page there (and that it answered
        `status`, or one of them)."""
        self.visited.append(name)
        for (size, scheme), page in self.pages.items():
            response = page.goto(path)
            if then is not None:
                response = then(page)
            if response.status not in (status if isinstance(status, tuple) else (status,)):
                self.problems.append(f"{name} ({path}): HTTP {response.status}, expected {status}")
            if size == "phone":
                overflow = page.evaluate(OVERFLOW)
                if overflow > 0:
                    self.problems.append(f"{name} ({path}), {scheme}: {overflow}px wider than a 390px phone")
            else:
                page.evaluate(self.axe)
                for violation in page.evaluate(RUN_AXE):
                    self.problems.append(f"{name} ({path}), {scheme}: axe: {violation}")
            page.screenshot(path=self.shots / f"{name}-{size}-{scheme}.png", full_page=True)

    def close(self):
        for context in self.contexts.values():
            context.close()


def submit_empty(page):
    """Save the form as it is (empty): the answer shows each field's error."""
    with page.expect_response(lambda r: r.request.method == "POST") as response:
        page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    return response.value


def upload_export(entity: spec.Entity):
    """What `then` does for the import preview: post the entity's own CSV export (its one
    record) to the import page, which answers with the preview of its columns and rows."""
    def then(page):
        export = page.request.get(f"/{entity.url}/export.csv")
        assert export.status == 200, export.text()
        page.get_by_label("CSV file").set_input_files(
            files=[{"name": "records.csv", "mimeType": "text/csv", "buffer": export.body()}])
        with page.expect_response(lambda r: r.request.method == "POST") as response:
            page.get_by_role("button", name="Check the file").click()
        page.wait_for_load_state()
        return response.value
    return then


def sign_up(page, data_dir):
    from playwright.sync_api import expect

    page.goto("/signup")
    page.get_by_label("Account name").fill("Test Account")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create my account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your mail to finish signing up")
    page.goto(mailed_link(data_dir, EMAIL))
    page.get_by_role("button", name="Create my account").click()
    expect(page.locator("header.site")).to_contain_text(EMAIL)


@pytest.mark.xdist_group("example-ports")
@pytest.mark.parametrize("slug", EXAMPLES)
def test_every_page_passes_axe_and_fits_a_phone(browser, project, slug):  # noqa: F811
    crawl(browser, project, slug, sample_value)


def long_value(f: spec.Field):
    """A valid form value as long as the field takes, in words no line can hold."""
    return {
        "string": ("W" * 400)[: f.max_length or 200],
        "text": "T" * 300 + " " + "t" * 300,
        "email": "x" * 60 + "@" + "e" * 60 + ".example.com",
        "url": "https://example.com/" + "u" * 200,
    }.get(f.type, sample_value(f))


@pytest.mark.xdist_group("example-ports")
def test_long_words_never_widen_a_page_past_a_phone(browser, project):  # noqa: F811
    """A spec whose names, labels, units, choices and landing words are single long words,
    filled with values as long as each field takes: every page still passes axe and fits
    a 390 px phone."""
    shutil.copy(WORDY, project.root / "verticals" / WORDY.name)
    crawl(browser, project, WORDY.stem, long_value)


@pytest.mark.xdist_group("example-ports")
def test_a_random_specs_pages_pass_axe_and_fit_a_phone(browser, project):  # noqa: F811
    """The same visit to a random valid spec (test_random_specs.py's first seed): quotes,
    markup, emoji and keywords in its names and labels, entities whose empty form saves."""
    slug = f"rand{RANDOM_FIRST}"
    write_spec(project, slug, random_spec(RANDOM_FIRST))
    crawl(browser, project, slug, sample_value)


def crawl(browser, project, slug: str, value):  # noqa: F811
    """Visit every page of vertical `slug` (verticals/SLUG.toml of `project`), its records
    filled in with value(field); assert that no page has a problem."""
    vertical = spec.load_vertical(project.root / "verticals" / f"{slug}.toml")
    with served_example(project, slug) as (base, data_dir):
        visitor = Visitor(browser, base, slug)
        try:
            visitor.visit("landing", "/")
            visitor.visit("login", "/login")
            visitor.visit("signup", "/signup")
            visitor.visit("forgot", "/forgot")
            visitor.axe_can_fail()

            sign_up(visitor.main, data_dir)
            made: dict[str, Record] = {}
            for entity in vertical.entities:
                made[entity.name] = add_record(visitor.main, entity, made, value)
            visitor.share_login()

            visitor.visit("dashboard", "/")
            for entity in vertical.entities:
                record = made[entity.name]
                name = entity.url
                visitor.visit(f"{name}-list", f"/{entity.url}/")
                visitor.visit(f"{name}-list-filtered", filtered(entity, record))
                visitor.visit(f"{name}-new", f"/{entity.url}/new")
                # An entity whose every field may be left as the form starts saves it (302).
                starts_valid = not any(f.required and f.default is None for f in entity.fields)
                visitor.visit(f"{name}-new-errors", f"/{entity.url}/new", status=302 if starts_valid else 400,
                              then=submit_empty)
                visitor.visit(f"{name}-detail", f"/{entity.url}/{record.id}")
                visitor.visit(f"{name}-edit", f"/{entity.url}/{record.id}/edit")
                visitor.visit(f"{name}-delete", f"/{entity.url}/{record.id}/delete")
                visitor.visit(f"{name}-import", f"/{entity.url}/import")
                # 400 when a row cannot be imported (its unique values are taken): the
                # preview then lists the problems under the same tables.
                visitor.visit(f"{name}-import-preview", f"/{entity.url}/import", status=(200, 400),
                              then=upload_export(entity))
            visitor.visit("team", "/team")
            visitor.visit("activity", "/activity")
            visitor.visit("settings", "/settings")
            visitor.visit("password", "/account/password")
            visitor.visit("not-found", "/no-such-page", status=404)
        finally:
            visitor.close()
    assert len(visitor.visited) == 10 + 9 * len(vertical.entities)
    assert visitor.problems == [], f"{slug}:\n" + "\n".join(visitor.problems)


# Fifteen entities: more sections than one line of the header holds.
MANY = ["customer", "supplier", "invoice", "payment", "product", "warehouse", "shipment", "employee",
        "contract", "meeting", "complaint", "appointment", "vehicle", "equipment", "certificate"]

# Where each section link of the header lies, against the window and the list it is in:
# a link hidden past the edge of the window, or clipped by the list, is listed.
HIDDEN_SECTIONS = """() => {
  const list = document.querySelector("nav.top ul.sections").getBoundingClientRect();
  return [...document.querySelectorAll("nav.top ul.sections a")].filter((a) => {
    const box = a.getBoundingClientRect();
    return box.width === 0 || box.left < 0 || box.right > window.innerWidth
      || box.left < list.left - 1 || box.right > list.right + 1 || box.bottom > list.bottom + 1;
  }).map((a) => a.textContent.trim());
}"""


@pytest.mark.xdist_group("example-ports")
def test_every_section_shows_in_the_header_however_many(browser, project):  # noqa: F811
    """With fifteen entities, every section link lies inside the window on a desktop (the
    sections wrap onto a second line) and inside the open menu on a phone."""
    write_spec(project, "many", "\n".join(
        ['slug = "many"', 'name = "Many"']
        + [f'[[entities]]\nname = "{name}"\nfields = [{{ name = "name", type = "string", required = true }}]'
           for name in MANY]))
    with served_example(project, "many") as (base, data_dir):
        for size in ("desktop", "phone"):  # signed up on the desktop, its cookies on the phone
            context = browser.new_context(base_url=base, viewport=SIZES[size])
            try:
                page = context.new_page()
                if size == "desktop":
                    sign_up(page, data_dir)
                    cookies = context.cookies()
                else:
                    context.add_cookies(cookies)
                    page.goto("/")
                    page.get_by_text("Menu", exact=True).click()
                assert page.locator("nav.top ul.sections a").count() == len(MANY)
                assert page.evaluate(HIDDEN_SECTIONS) == [], size
            finally:
                context.close()
