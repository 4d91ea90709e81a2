"""scripts/bench lighthouse: Lighthouse's four scores for five pages of a generated app,
at phone and desktop sizes.

The cheesemaking vertical is generated from the template repository's HEAD, served by
gunicorn with its generated config, signed up to and given 30 records per entity. Then
Lighthouse (tests/browser-tools, the npm package, driving Debian's Chromium) audits:

  landing    the public home page, logged out
  dashboard  the home page of the logged-in user
  list       a list with filters applied (batches of one style made since a date)
  errors     the new-batch form submitted empty, showing its errors: the Lighthouse CLI
             can only GET a page, so tests/browser-tools/form-errors.mjs submits the form
             in Chromium and audits the page shown in snapshot mode, which has no speed
             metrics: its performance is that of the same form loaded by GET (marked *)
  detail     a batch's page

each with the default (mobile) settings and with --preset=desktop. Logged-in pages get
the session cookie through --extra-headers. The goals (issue 18): accessibility, best
practices and SEO 100 on public pages and at least 95 elsewhere; performance at least 95.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import harness

TOOLS = harness.REPO / "tests" / "browser-tools"
LIGHTHOUSE = TOOLS / "node_modules" / ".bin" / "lighthouse"
CHROME = os.environ.get("VGEN_CHROMIUM", "/usr/bin/chromium")
CHROME_FLAGS = ("--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-background-networking "
                "--disable-component-update --disable-sync --no-first-run")
CATEGORIES = ("performance", "accessibility", "best-practices", "seo")
FORM_FACTORS = ("mobile", "desktop")


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    public: bool = False
    submit: bool = False  # submit the form empty, then audit (form-errors.mjs)

    def goals(self) -> dict[str, int]:
        """The least score each category must reach."""
        other = 100 if self.public else 95
        return {"performance": 95, "accessibility": other, "best-practices": other, "seo": other}


def pages(records: str, record_id: int, filters: str) -> list[Page]:
    """The five audited pages of an entity's records (its URL part, e.g. "batches")."""
    return [
        Page("landing", "/", public=True),
        Page("dashboard", "/"),
        Page("list", f"/{records}/?{filters}"),
        Page("errors", f"/{records}/new", submit=True),
        Page("detail", f"/{records}/{record_id}"),
    ]


def audit(url: str, form_factor: str, cookie: str | None = None, submit: bool = False) -> dict:
    """Lighthouse's result (the LHR) for one page at one form factor; with `submit`, for
    the page shown once its form is submitted empty (snapshot mode)."""
    if not LIGHTHOUSE.exists():
        raise SystemExit(f"{LIGHTHOUSE} is missing: scripts/install installs it (npm ci in {TOOLS})")
    env = {**os.environ, "CHROME_PATH": CHROME, "CHROME_FLAGS": CHROME_FLAGS}
    if submit:
        args = ["node", str(TOOLS / "form-errors.mjs"), url, form_factor, *([cookie] if cookie else [])]
    else:
        args = [str(LIGHTHOUSE), url, "--quiet", "--output=json", "--output-path=stdout",
                f"--chrome-flags={CHROME_FLAGS}", "--only-categories=" + ",".join(CATEGORIES)]
        if form_factor == "desktop":
            args.append("--preset=desktop")
        if cookie:
            args.append("--extra-headers=" + json.dumps({"Cookie": cookie}))
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=TOOLS, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"lighthouse failed on {url} ({form_factor}):\n{result.stderr[-3000:]}")
    lhr = json.loads(result.stdout)
    if lhr.get("runtimeError"):
        raise RuntimeError(f"lighthouse on {url} ({form_factor}): {lhr['runtimeError']}")
    if lhr["finalDisplayedUrl"] != url:  # a session that did not work ends on the login page
        raise RuntimeError(f"lighthouse asked for {url} and audited {lhr['finalDisplayedUrl']}")
    return lhr


def logged_in(base: str, cookie: str) -> bool:
    """The session cookie opens the dashboard (the home page shows the log-out button)."""
    request = urllib.request.Request(base + "/", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=30) as response:
        return "Log out" in response.read().decode()


def scores(lhr: dict) -> dict[str, int | None]:
    """Each category's score out of 100 (None: not measured in this mode)."""
    return {c: None if lhr["categories"].get(c, {}).get("score") is None
            else round(lhr["categories"][c]["score"] * 100) for c in CATEGORIES}


def failures(lhr: dict, category: str) -> list[str]:
    """The audits that cost the category points: id, score and what Lighthouse says."""
    found = []
    for ref in lhr["categories"].get(category, {}).get("auditRefs", []):
        result = lhr["audits"][ref["id"]]
        if ref["weight"] > 0 and result["score"] is not None and result["score"] < 1:
            found.append(f"{ref['id']} ({result['score']:.2f}): {result['title']} {result.get('displayValue', '')}".strip())
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench lighthouse")
    parser.add_argument("--records", type=int, default=30, help="records per entity (default 30)")
    args = parser.parse_args(argv)
    slug, entity = "cheesemaking", "batches"
    version = subprocess.run([str(LIGHTHOUSE), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    chrome = subprocess.run([CHROME, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    harness.header(f"scripts/bench lighthouse: {slug}, {args.records} records per entity")
    print(f"  Lighthouse {version}, {chrome}")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-lighthouse-") as tmp:
        tmp = Path(tmp)
        app_dir, data = harness.generated_app(tmp, slug)
        bind = f"127.0.0.1:{harness.free_port()}"
        with harness.Gunicorn(app_dir, config=app_dir / "gunicorn.conf.py", data_dir=data, bind=bind,
                              log=tmp / "app.log") as server:
            server.wait_ready()
            browser = harness.sign_up(server.url(""), slug, data)
            cookie = f"{slug}_session={browser.cookie(f'{slug}_session')}"
            if not logged_in(server.url(""), cookie):
                raise SystemExit("the session cookie does not open the dashboard")
            db = data / f"{slug}.db"
            with sqlite3.connect(db) as conn:
                account_id = conn.execute('SELECT "account_id" FROM "user"').fetchone()[0]
            harness.fill(app_dir, db, account_id, args.records)
            with sqlite3.connect(db) as conn:
                record_id = conn.execute('SELECT min("id") FROM "batch"').fetchone()[0]
            rows, missed = [], []
            for page in pages(entity, record_id, "style=brie&made_on_from=2024-01-01"):
                for form_factor in FORM_FACTORS:
                    url = server.url(page.path)
                    login = None if page.public else cookie
                    got = scores(audit(url, form_factor, login, submit=page.submit))
                    marked = set()
                    if page.submit:  # speed: the same form, loaded by GET
                        got["performance"] = scores(audit(url, form_factor, login))["performance"]
                        marked.add("performance")
                    rows.append((page, form_factor, got, marked))
                    missed += [f"{page.name} {form_factor} {c} {got[c]} < {goal}"
                               for c, goal in page.goals().items() if got[c] is not None and got[c] < goal]
    print(f"  {'page':10} {'size':8} {'path':42} " + " ".join(f"{c:>14}" for c in CATEGORIES))
    for page, form_factor, got, marked in rows:
        cells = " ".join(f"{'-' if got[c] is None else str(got[c]) + ('*' if c in marked else ''):>14}"
                         for c in CATEGORIES)
        print(f"  {page.name:10} {form_factor:8} {page.path:42} {cells}")
    print("  * performance of the form loaded by GET (a snapshot after the POST measures no speed)")
    print(f"  goals (100 public, 95 otherwise; performance 95): {'met' if not missed else 'NOT met'}")
    for line in missed:
        print(f"    {line}")


if __name__ == "__main__":
    main()
