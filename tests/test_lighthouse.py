"""Lighthouse (tests/browser-tools, the npm package, driving Debian's Chromium) on five
pages of one example, at phone and desktop sizes: accessibility, best practices and SEO
reach 100 on the public landing page and at least 95 on the pages behind the login.

The pages (benchmarks/lighthouse.py, which scripts/bench lighthouse runs too): the
landing page, the dashboard, a list with a filter applied, the new-record form submitted
empty (its errors shown: Lighthouse's snapshot mode after the POST, form-errors.mjs) and
a record's page. The logged-in pages get the session cookie through --extra-headers.

Speed is not asserted here (a shared machine makes it noise): scripts/bench lighthouse
measures it, with the other scores, and docs/lighthouse.md records the figures.
"""

from __future__ import annotations

import pytest

from benchmarks import lighthouse
from conftest import ROOT, served_example
from generator import spec
from test_browser import browser  # noqa: F401 (a fixture)
from test_pages import add_record, filtered, sign_up

pytestmark = pytest.mark.slow  # gunicorn, Chromium, Lighthouse

SLUG = "cheesemaking"
ENTITY = "batch"


@pytest.mark.xdist_group("example-ports")
def test_lighthouse_accessibility_best_practices_and_seo(browser, project):  # noqa: F811
    vertical = spec.load_vertical(ROOT / "verticals" / f"{SLUG}.toml")
    with served_example(project, SLUG) as (base, data_dir):
        context = browser.new_context(base_url=base)
        context.set_default_timeout(15_000)
        page = context.new_page()
        sign_up(page, data_dir)
        made = {}
        for entity in vertical.entities:
            made[entity.name] = add_record(page, entity, made)
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())
        context.close()
        assert lighthouse.logged_in(base, cookie), "the session cookie does not open the dashboard"

        entity = next(e for e in vertical.entities if e.name == ENTITY)
        list_path = filtered(entity, made[ENTITY])
        problems, measured = [], []
        for audited in lighthouse.pages(entity.url, made[ENTITY].id, list_path.split("?", 1)[1]):
            for form_factor in lighthouse.FORM_FACTORS:
                lhr = lighthouse.audit(base + audited.path, form_factor, None if audited.public else cookie,
                                       submit=audited.submit)
                scores = lighthouse.scores(lhr)
                measured.append(f"{audited.name} {form_factor}: {scores}")
                for category, goal in audited.goals().items():
                    if category == "performance":
                        continue
                    if scores[category] is None or scores[category] < goal:
                        problems.append(f"{audited.name} ({audited.path}) {form_factor}: {category} "
                                        f"{scores[category]} < {goal}: {lighthouse.failures(lhr, category)}")
    print("\n".join(measured))
    assert problems == [], "\n".join(problems)
