"""This vertical's spec as vgen normalized it, read from spec.json beside this file.

Generated: vgen writes spec.json and this module again on every regeneration. Change
the vertical's spec (verticals/<slug>.toml), not these files.

Display text lives here as data, never in code: the vertical's name and tagline, each
entity's label and plural, each field's label, help and choices. Views, forms and
templates read them from here, and Jinja escapes them where a page shows them, so any
text works, braces, quotes and backslashes included. migrate reads each field's type.
"""

import json
from pathlib import Path

_SPEC = json.loads(Path(__file__).with_name("spec.json").read_text(encoding="utf-8"))

SLUG = _SPEC["slug"]
NAME = _SPEC["name"]
TAGLINE = _SPEC["tagline"]
# Whether a sign-up must open a link mailed to its address (the spec's verify_email).
VERIFY_EMAIL = _SPEC["verify_email"]
# The public home page's words (the spec's [landing]): headline, description, price,
# call_to_action ("" when not given: the page has defaults) and points (a list).
LANDING = _SPEC["landing"]

# The entities by name, in the spec's order; each with its fields by name, in order:
# ENTITIES["batch"]["label"], ENTITIES["batch"]["fields"]["made_on"]["label"].
ENTITIES = {
    entity["name"]: {**entity, "fields": {field["name"]: field for field in entity["fields"]}}
    for entity in _SPEC["entities"]
}

# The ? parameters of each entity's title in SQL, in order (the title_sql macro of the
# template): the texts of its title format, never written into the SQL itself.
TITLES = {entity["name"]: tuple(entity["title_params"]) for entity in _SPEC["entities"]}
