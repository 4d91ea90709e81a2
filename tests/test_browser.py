"""A generated app driven by a real browser: Debian's headless Chromium through Playwright.

One app (the cheesemaking example: a ref, live search, decimals, choices), served by
gunicorn with its generated config on its registered port, and one browser, through the
flow a customer follows on day one: sign up, add an aging room and a batch in that room,
find a batch by live search (no page load), edit it, get a validation error, delete one
after the confirmation page, download the CSV. All along, the browser must log no console
error, no CSP violation, and fetch nothing from another origin.

Screenshots go to test-artifacts/ at the repository root (git-ignored): the list page, the
list at phone width, and the form page (filled in, and with its validation errors).

The browser is Debian's `chromium` (apt-get install chromium), never one Playwright
downloads: VGEN_CHROMIUM overrides the path. A missing browser fails the test, it does
not skip it: CI installs it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import ROOT, mailed_link, served_example

pytestmark = pytest.mark.slow  # gunicorn and Chromium

CHROMIUM = os.environ.get("VGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--no-default-browser-check",
]
ARTIFACTS = ROOT / "test-artifacts"
SLUG = "cheesemaking"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

# Report every CSP violation to the test, on every page (init scripts are not subject to
# the page's CSP; the listener catches what the policy blocks in the page itself).
REPORT_CSP = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.vgenCspViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.documentURI}`);
});
"""


def sync_playwright():
    """Playwright's sync API, or a failure that says what to install."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail("the browser test needs Playwright: pip install '.[test]' (scripts/install does)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser test needs Chromium at {CHROMIUM}: apt-get install chromium "
            "(or set VGEN_CHROMIUM to a Chromium binary; never `playwright install`)"
        )
    return start()


@pytest.fixture
def served_app(project):
    """The cheesemaking app, generated and served by gunicorn; yields its base URL and
    its DATA_DIR (where its outbox is)."""
    with served_example(project, SLUG) as served:
        yield served


def expected_error(page, message) -> bool:
    """Chromium logs "Failed to load resource" for any 4xx page, even one the test asked
    for (a form with invalid values is answered 400); those are not problems."""
    match = re.match(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
    return bool(match) and page.expected_status.get(message.location["url"]) == int(match.group(1))


@pytest.fixture
def browser():
    """Debian's Chromium, headless, through Playwright (checked before any app is made)."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(browser, served_app):
    """One page on the app, recording console errors, page errors, CSP violations and
    requests to any other origin."""
    served_app, data_dir = served_app
    problems: list[str] = []
    loads: list[str] = []
    context = browser.new_context(base_url=served_app, viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(10_000)
    context.expose_function("vgenCspViolation", lambda text: problems.append(f"CSP: {text}"))
    context.add_init_script(REPORT_CSP)
    context.on("request", lambda r: r.url.startswith((served_app, "data:"))
               or problems.append(f"request to another origin: {r.url}"))
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and not expected_error(page, m)
            and problems.append(f"console: {m.text} (at {m.location['url']})"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("load", lambda p: loads.append(p.url))
    page.problems = problems
    page.loads = loads
    page.expected_status = {}  # url -> an HTTP error status the test asks for
    page.data_dir = data_dir
    yield page
    context.close()


@pytest.mark.xdist_group("example-ports")
def test_customer_flow_in_a_real_browser(browser_page):
    from playwright.sync_api import expect

    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    nav = page.get_by_role("navigation", name="Main")

    def flash(text):
        expect(page.locator("p.flash")).to_contain_text(text)

    def field(input_id):
        """The .field block holding the input: its label, the input, its error."""
        return page.locator("div.field").filter(has=page.locator(f"#{input_id}"))

    # Sign up: a new account and its first user, made by the link mailed to the address.
    response = page.goto("/")
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
    nav.get_by_role("link", name="Sign up").click()
    page.get_by_label("Account name").fill("Fromagerie Test")
    page.get_by_label("Email").fill("owner@fromagerie.example")
    page.get_by_label("Password", exact=True).fill("correct horse battery staple")
    page.get_by_label("Confirm password").fill("correct horse battery staple")
    page.get_by_role("button", name="Create my account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your mail to finish signing up")
    page.goto(mailed_link(page.data_dir, "owner@fromagerie.example"))
    page.get_by_role("button", name="Create my account").click()
    expect(page.locator("header.site")).to_contain_text("owner@fromagerie.example")

    # An aging room, then a batch that refers to it through the Room select.
    nav.get_by_role("link", name="Aging rooms").click()
    page.get_by_role("link", name="New aging room").click()
    page.get_by_label("Name").fill("Cave A")
    page.get_by_label("Temperature (°C)").fill("11.5")
    page.get_by_label("Humidity (%)").fill("92")
    page.get_by_role("button", name="Save").click()
    flash("Aging room added.")
    expect(page.get_by_role("heading", level=1)).to_have_text("Cave A")
    expect(page.locator("dl.record")).to_contain_text("11.5")

    nav.get_by_role("link", name="Batches").click()
    page.get_by_role("link", name="New batch").click()
    page.get_by_label("Code").fill("B-001")
    page.get_by_label("Made on").fill("2024-05-01")
    page.get_by_label("Milk liters").fill("120.50")
    page.get_by_label("Style").select_option("brie")
    room = page.get_by_label("Room")
    expect(room.locator("option")).to_have_text(["—", "Cave A"])
    room.select_option(label="Cave A")
    page.get_by_label("Notes").fill("Washed rind, turned daily")
    page.get_by_label("Ready").check()
    page.get_by_label("Contact").fill("cellar@fromagerie.example")
    page.get_by_label("Recipe url").fill("https://recipes.example/brie")
    page.get_by_label("Wheels").fill("12")
    page.get_by_label("Checked at").fill("2024-05-02T09:30")
    page.screenshot(path=ARTIFACTS / "batch-form.png", full_page=True)
    page.get_by_role("button", name="Save").click()
    flash("Batch added.")
    details = page.locator("dl.record")
    expect(details).to_contain_text("120.50")
    expect(details.get_by_role("link", name="Cave A")).to_be_visible()

    page.get_by_role("link", name="Batches").first.click()
    page.get_by_role("link", name="New batch").click()
    page.get_by_label("Code").fill("C-200")
    page.get_by_label("Made on").fill("2024-06-10")
    page.get_by_label("Style").select_option("blue")
    page.get_by_label("Notes").fill("Pierced at four weeks")
    page.get_by_role("button", name="Save").click()
    flash("Batch added.")

    # The list, on a desktop and on a phone (no sideways scrolling of the page).
    nav.get_by_role("link", name="Batches").click()
    rows = page.locator("#batch-records tbody tr")
    expect(rows).to_have_count(2)
    page.screenshot(path=ARTIFACTS / "batch-list.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=ARTIFACTS / "batch-list-phone.png", full_page=True)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the list page is {overflow}px wider than a phone screen"
    # Each record is a card, its values under their labels; no table scrolls sideways.
    assert page.evaluate("getComputedStyle(document.querySelector('#batch-records tbody tr')).display") == "block"
    wrap = page.evaluate("(() => { const w = document.querySelector('.table-wrap'); return w.scrollWidth - w.clientWidth; })()")
    assert wrap <= 0, f"the list's table scrolls {wrap}px sideways on a phone"
    # The sections fold into a menu that opens without JavaScript.
    expect(nav.get_by_role("link", name="Aging rooms")).to_be_hidden()
    page.locator("label.menu-button").click()
    expect(nav.get_by_role("link", name="Aging rooms")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "menu-phone.png", full_page=True)
    page.locator("label.menu-button").click()
    page.set_viewport_size(DESKTOP)

    # Live search: htmx swaps the table in place; the page is never reloaded.
    page.evaluate("window.vgenMarker = 'still here'")
    loads_before = len(page.loads)
    search = page.get_by_role("searchbox", name="Search")

    def live_search(text):
        with page.expect_response(
            lambda r: "/batches/" in r.url and r.request.headers.get("hx-request") == "true"
            and parse_qs(urlsplit(r.url).query).get("q") == [text]
        ) as response:
            search.fill("")
            search.press_sequentially(text, delay=30)
        assert response.value.status == 200

    live_search("washed")  # matches the notes of B-001 only
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("B-001")
    expect(page.locator("#batch-records")).to_contain_text("1 batch matching “washed”")
    live_search("C-2")  # matches the code of C-200 only
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("C-200")
    assert page.evaluate("window.vgenMarker") == "still here", "the live search reloaded the page"
    assert len(page.loads) == loads_before, f"page loads during the live search: {page.loads[loads_before:]}"
    assert re.search(r"/batches/\?q=C-2$", page.url), page.url  # hx-push-url: the address is shareable

    # Edit B-001.
    page.goto("/batches/")
    page.get_by_role("link", name="B-001").click()
    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Room")).to_have_value(re.compile(r"^\d+$"))  # the stored ref is selected
    page.get_by_label("Wheels").fill("14")
    page.get_by_role("button", name="Save").click()
    flash("Batch saved.")
    expect(page.locator("dl.record")).to_contain_text("14")
    detail_url = page.url

    # Invalid values: errors next to their fields, every input kept, nothing saved.
    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Wheels").fill("-3")
    page.get_by_label("Contact").fill("not-an-email")
    page.get_by_label("Notes").fill("Kept after the error")
    page.expected_status[page.url] = 400
    with page.expect_response(lambda r: r.request.method == "POST") as response:
        page.get_by_role("button", name="Save").click()
    assert response.value.status == 400
    wheels, contact = field("wheels"), field("contact")
    expect(wheels.locator("p.error")).to_be_visible()
    expect(wheels.locator("p.error")).to_contain_text("0")  # "Number must be at least 0."
    expect(contact.locator("p.error")).to_be_visible()
    expect(page.get_by_label("Wheels")).to_have_value("-3")
    expect(page.get_by_label("Wheels")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Contact")).to_be_focused()  # the first invalid field
    # A required field's label ends with an asterisk; an optional one's does not.
    after = "(f) => getComputedStyle(document.querySelector(`label[for=${f}]`), '::after').content"
    assert page.evaluate(after, "code") == '" *"'
    assert page.evaluate(after, "wheels") == "none"
    # The invalid fields are outlined in the danger colour (#b42318), the valid ones not.
    expect(page.get_by_label("Wheels")).to_have_css("border-top-color", "rgb(180, 35, 24)")
    expect(page.get_by_label("Contact")).to_have_css("border-top-color", "rgb(180, 35, 24)")
    expect(page.get_by_label("Code")).not_to_have_css("border-top-color", "rgb(180, 35, 24)")
    expect(page.get_by_label("Contact")).to_have_value("not-an-email")
    expect(page.get_by_label("Notes")).to_have_value("Kept after the error")
    expect(page.get_by_label("Code")).to_have_value("B-001")
    expect(page.locator("p.error")).to_have_count(2)
    page.screenshot(path=ARTIFACTS / "batch-form-errors.png", full_page=True)
    page.goto(detail_url)
    expect(page.locator("dl.record")).to_contain_text("Washed rind, turned daily")

    # A restricted delete: the room is still used by B-001, and says so.
    page.locator("dl.record").get_by_role("link", name="Cave A").click()
    page.get_by_role("link", name="Delete").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("p.flash.error")).to_contain_text("not deleted")
    expect(page.get_by_role("heading", level=1)).to_have_text("Cave A")

    # Delete C-200: the link leads to a confirmation page, whose button POSTs.
    page.goto("/batches/")
    page.get_by_role("link", name="C-200").click()
    page.get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete “C-200”?")
    with page.expect_request(lambda r: r.url.endswith("/delete") and r.method == "POST"):
        page.get_by_role("button", name="Delete").click()
    flash("Batch deleted.")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("B-001")

    # The CSV export, downloaded as a file.
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    download = info.value
    assert download.failure() is None
    assert download.suggested_filename == "batches.csv"
    records = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert len(records) == 1, records
    batch = records[0]  # the header shows the fields' labels, as the pages do
    assert (batch["Code"], batch["Made on"], batch["Milk liters"], batch["Style"]) == ("B-001", "2024-05-01", "120.50", "brie")
    assert (batch["Room title"], batch["Ready"], batch["Wheels"]) == ("Cave A", "true", "14")
    assert batch["Notes"] == "Washed rind, turned daily"
    assert batch["Checked at"].startswith("2024-05-02T09:30")

    # The session ends while the list is open: the live search then loads the whole
    # login page (htmx follows HX-Redirect) instead of swapping it into the table.
    page.goto("/batches/")
    page.context.clear_cookies()
    page.expected_status[page.url + "?q=B"] = 401
    search.fill("B")
    page.wait_for_url(re.compile(r"/login\?next=/batches/"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Log in")

    assert page.problems == [], "\n".join(page.problems)


@pytest.mark.xdist_group("example-ports")
def test_team_history_reset_and_import_in_a_real_browser(browser, browser_page):
    """An owner invites an editor, who joins in a second browser and adds a batch; the
    owner sees it in the batch's history. The editor then resets their password through
    the mailed link, and the owner imports batches from a CSV file after its preview."""
    from playwright.sync_api import expect

    page = browser_page
    nav = page.get_by_role("navigation", name="Main")

    def sign_up(page, email):
        page.goto("/signup")
        page.get_by_label("Account name").fill("Fromagerie Test")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password", exact=True).fill("correct horse battery staple")
        page.get_by_label("Confirm password").fill("correct horse battery staple")
        page.get_by_role("button", name="Create my account").click()
        page.goto(mailed_link(page.data_dir, email))
        page.get_by_role("button", name="Create my account").click()
        expect(page.locator("header.site")).to_contain_text(email)

    sign_up(page, "owner@fromagerie.example")
    nav.get_by_role("link", name="Aging rooms").click()
    page.get_by_role("link", name="New aging room").click()
    page.get_by_label("Name").fill("Cave A")
    page.get_by_role("button", name="Save").click()

    # The owner invites an editor.
    nav.get_by_role("link", name="Team").click()
    page.get_by_label("Email").fill("editor@fromagerie.example")
    page.get_by_label("Role", exact=True).select_option("editor")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.locator("p.flash")).to_contain_text("Invitation sent to editor@fromagerie.example")
    page.screenshot(path=ARTIFACTS / "team.png", full_page=True)

    # The editor accepts in a browser of their own, and adds a batch.
    context = browser.new_context(base_url=page.url.split("/team")[0], viewport=DESKTOP)
    context.set_default_timeout(10_000)
    editor = context.new_page()
    problems = []
    editor.on("console", lambda m: m.type == "error" and problems.append(f"editor console: {m.text}"))
    editor.on("pageerror", lambda e: problems.append(f"editor page error: {e}"))
    editor.goto(mailed_link(page.data_dir, "editor@fromagerie.example"))
    expect(editor.get_by_role("heading", level=1)).to_have_text("Join Fromagerie Test")
    editor.get_by_label("Password", exact=True).fill("another long passphrase here")
    editor.get_by_label("Confirm password").fill("another long passphrase here")
    editor.get_by_role("button", name="Join Fromagerie Test").click()
    expect(editor.locator("p.flash")).to_contain_text("Welcome to Fromagerie Test")
    editor.goto("/batches/new")
    editor.get_by_label("Code").fill("E-100")
    editor.get_by_label("Made on").fill("2024-07-01")
    editor.get_by_label("Style").select_option("brie")
    editor.get_by_label("Room").select_option(label="Cave A")
    editor.get_by_role("button", name="Save").click()
    expect(editor.locator("p.flash")).to_contain_text("Batch added.")

    # The owner sees who added it, in the batch's history and the account's activity.
    nav.get_by_role("link", name="Batches").click()
    page.get_by_role("link", name="E-100").click()
    history = page.get_by_role("region", name="History")
    expect(history).to_contain_text("editor@fromagerie.example added")
    expect(history).to_contain_text("Code: E-100")
    page.goto("/activity")
    expect(page.locator("ol.history")).to_contain_text("editor@fromagerie.example joined")

    # The editor forgets their password and resets it through the mail (a minute after
    # the invitation: the app mails an address at most once a minute).
    with sqlite3.connect(page.data_dir / f"{SLUG}.db") as db:
        db.execute('DELETE FROM "app_mail_request"')
    editor.context.clear_cookies()
    editor.goto("/forgot")
    editor.get_by_label("Email").fill("editor@fromagerie.example")
    editor.get_by_role("button", name="Mail me a link").click()
    expect(editor.get_by_role("heading", level=1)).to_have_text("Check your mail")
    editor.goto(mailed_link(page.data_dir, "editor@fromagerie.example"))
    editor.get_by_label("New password", exact=True).fill("a brand new passphrase")
    editor.get_by_label("Confirm new password").fill("a brand new passphrase")
    editor.get_by_role("button", name="Set my password").click()
    expect(editor.locator("p.flash")).to_contain_text("Your password has been changed")
    context.close()

    # The owner imports two batches: a preview first, then the import.
    csv_file = ARTIFACTS / "batches-import.csv"
    ARTIFACTS.mkdir(exist_ok=True)
    csv_file.write_text("Code,Made on,Style,Room title\nI-1,2024-08-01,blue,Cave A\nI-2,2024-08-02,=tomme,\n")
    page.goto("/batches/")
    page.get_by_role("link", name="Import CSV").click()
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    page.expected_status[page.url] = 400
    page.get_by_role("button", name="Check the file").click()
    expect(page.get_by_role("alert")).to_contain_text("1 of 2 rows cannot be imported")
    expect(page.get_by_role("alert")).to_contain_text("Line 3: Style")
    csv_file.write_text("Code,Made on,Style,Room title\nI-1,2024-08-01,blue,Cave A\nI-2,2024-08-02,Feta,\n")
    page.get_by_role("link", name="Choose another file").first.click()
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    page.get_by_role("button", name="Check the file").click()
    expect(page.locator("main")).to_contain_text("All 2 rows can be imported")
    page.screenshot(path=ARTIFACTS / "import-preview.png", full_page=True)
    page.get_by_role("button", name="Import 2 batches").click()
    expect(page.locator("p.flash")).to_contain_text("2 batches imported.")
    expect(page.locator("#batch-records tbody tr")).to_have_count(3)

    assert page.problems + problems == [], "\n".join(page.problems + problems)
