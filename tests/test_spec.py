"""Spec validation: every rule, with a bad input and its exact message."""

import json
from decimal import Decimal
from pathlib import Path

import pytest

from generator import spec
from generator.errors import VgenError

REPO = Path(__file__).resolve().parents[1]

GOOD = '''
slug = "shop"
name = "Shop"

[[entities]]
name = "item"
fields = [
  { name = "title", type = "string", required = true },
]
'''


def write(tmp_path, text, stem="shop"):
    folder = tmp_path / "verticals"
    folder.mkdir(exist_ok=True)
    path = folder / f"{stem}.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path, text, stem="shop"):
    write(tmp_path, text, stem)
    verticals, problems = spec.load_verticals(tmp_path / "verticals", tmp_path)
    return [str(p) for p in problems]


def entity_spec(fields, extra=""):
    return f'''
slug = "shop"
name = "Shop"

[[entities]]
name = "item"
{extra}
fields = [
{fields}
]

[[entities]]
name = "box"
plural = "boxes"
fields = [{{ name = "label", type = "string" }}]
'''


F = 'verticals/shop.toml: entity "item", field '
E = 'verticals/shop.toml: entity "item": '

FIELD_CASES = [
    # (fields, expected message)
    ('{ name = "room", type = "ref", to = "boks" }',
     F + '"room": ref to unknown entity "boks" (known: item, box)'),
    ('{ name = "title", type = "string", requried = true }',
     F + '"title": unknown key "requried" (allowed for a string field: default, help, label, max_length, name, renamed_from, required, type, unique)'),
    ('{ name = "n", type = "integer", max_length = 3 }',
     F + '"n": "max_length" does not apply to a integer field (only to string)'),
    ('{ name = "n", type = "number" }',
     F + '"n": unknown type "number" (known: string, text, integer, decimal, boolean, date, datetime, email, url, choice, ref)'),
    ('{ name = "n" }',
     F + '"n": "type" is required (one of: string, text, integer, decimal, boolean, date, datetime, email, url, choice, ref)'),
    ('{ name = "n", type = "integer", min = 5, max = 1 }',
     F + '"n": min (5) is greater than max (1)'),
    ('{ name = "n", type = "decimal", places = 1, min = 0.25 }',
     F + '"n": min 0.25 has more than 1 decimal places'),
    ('{ name = "n", type = "integer", default = "x" }',
     F + '"n": default \'x\' must be a whole number'),
    ('{ name = "n", type = "integer", min = 1, default = 0 }',
     F + '"n": default 0 is outside min/max (1..)'),
    ('{ name = "n", type = "string", max_length = 3, default = "long" }',
     F + '"n": default \'long\' is longer than max_length 3'),
    ('{ name = "c", type = "choice", choices = ["a", "b"], default = "z" }',
     F + '"c": default \'z\' is not one of the choices (a, b)'),
    ('{ name = "c", type = "choice", choices = [] }',
     F + '"c": "choices" must be a non-empty list of strings, or a table of value = "label"'),
    ('{ name = "c", type = "choice", choices = ["a", " "] }',
     F + '"c": choice \' \' is empty'),
    ('{ name = "c", type = "choice", choices = { a = "A", b = "A" } }',
     F + '"c": choice labels must be unique: A appears more than once'),
    ('{ name = "c", type = "choice", choices = { a = 1 } }',
     F + '"c": "choices" must be a non-empty list of strings, or a table of value = "label"'),
    ('{ name = "n", type = "integer", unit = "" }',
     F + '"n": "unit" must be a non-empty string'),
    ('{ name = "n", type = "string", unit = "kg" }',
     F + '"n": "unit" does not apply to a string field (only to integer, decimal)'),
    ('{ name = "c", type = "choice", choices = ["a", "a"] }',
     F + '"c": "choices" must be unique: a appears more than once'),
    ('{ name = "c", type = "choice" }',
     F + '"c": a choice field needs "choices", a non-empty list of strings or a table of value = "label"'),
    ('{ name = "e", type = "email", default = "nope" }',
     F + '"e": default \'nope\' is not an email address the app\'s form accepts'),
    ('{ name = "e", type = "email", default = "a@b..c" }',
     F + '"e": default \'a@b..c\' is not an email address the app\'s form accepts'),
    ('{ name = "u", type = "url", default = "ftp://x" }',
     F + '"u": default \'ftp://x\' is not an http(s) URL with a domain name, as the app\'s form requires'),
    ('{ name = "u", type = "url", default = "http://localhost:8000/" }',
     F + '"u": default \'http://localhost:8000/\' is not an http(s) URL with a domain name, as the app\'s form requires'),
    ('{ name = "s", type = "string", required = true, default = "   " }',
     F + '"s": default \'   \' is blank: the form stores a blank value as empty'),
    ('{ name = "d", type = "date", default = "31/01/2024" }',
     F + '"d": default \'31/01/2024\' must be a date such as 2024-01-31'),
    ('{ name = "t", type = "datetime", default = 2024-01-31T08:00:00Z }',
     F + '"t": default datetime.datetime(2024, 1, 31, 8, 0, tzinfo=datetime.timezone.utc) must be a local date and time, without a UTC offset'),
    ('{ name = "b", type = "boolean", required = true }',
     F + '"b": a boolean field cannot be required: it is always true or false (set "default" instead)'),
    ('{ name = "b", type = "boolean", default = "yes" }',
     F + '"b": default \'yes\' must be true or false'),
    ('{ name = "r", type = "ref", to = "box", default = 1 }',
     F + '"r": a ref field cannot have a default'),
    ('{ name = "r", type = "ref", to = "box", on_delete = "nothing" }',
     F + '"r": on_delete "nothing" must be one of: restrict, cascade, set_null'),
    ('{ name = "r", type = "ref", to = "box", required = true, on_delete = "set_null" }',
     F + '"r": on_delete = "set_null" needs an optional field, but it is required: use restrict or cascade'),
    ('{ name = "r", type = "ref" }',
     F + '"r": a ref field needs "to", the entity it points at (known: item, box)'),
    ('{ name = "id", type = "integer" }',
     F + '"id": "id" is a system column (account_id, created_at, id, updated_at) that every record has already: choose another name'),
    ('{ name = "created_at", type = "datetime" }',
     F + '"created_at": "created_at" is a system column (account_id, created_at, id, updated_at) that every record has already: choose another name'),
    ('{ name = "csrf_token", type = "string" }',
     F + '"csrf_token": "csrf_token" is reserved (csrf_token, oid, rowid): choose another name'),
    ('{ name = "Title", type = "string" }',
     'verticals/shop.toml: entity "item", field #1: name \'Title\' must match ^[a-z][a-z0-9_]{0,39}$'),
    ('{ name = "a", type = "string" },\n{ name = "a", type = "text" }',
     F + '"a": field names must be unique in an entity: it is defined twice'),
    ('{ name = "s", type = "string", max_length = 0 }',
     F + '"s": max_length 0 must be a whole number from 1 to 100000'),
    ('{ name = "n", type = "decimal", places = 9 }',
     F + '"n": places 9 must be a whole number from 0 to 6'),
    ('{ name = "s", type = "string", required = "yes" }',
     F + '"s": "required" must be true or false'),
    ('{ name = "s", type = "string", renamed_from = "s" }',
     F + '"s": renamed_from "s" is the current name'),
    ('{ name = "s", type = "string", renamed_from = "t" },\n{ name = "t", type = "string" }',
     F + '"s": renamed_from "t" is still a field of this entity'),
    ('{ name = "legacy", type = "integer", renamed_from = "id" }',
     F + '"legacy": renamed_from "id" is a system column (account_id, created_at, id, oid, rowid, updated_at), not an old field name: migrate would rename the column every record has'),
    ('{ name = "made", type = "datetime", renamed_from = "created_at" }',
     F + '"made": renamed_from "created_at" is a system column (account_id, created_at, id, oid, rowid, updated_at), not an old field name: migrate would rename the column every record has'),
    ('{ name = "n", type = "integer", renamed_from = "rowid" }',
     F + '"n": renamed_from "rowid" is a system column (account_id, created_at, id, oid, rowid, updated_at), not an old field name: migrate would rename the column every record has'),
]


@pytest.mark.parametrize("fields, message", FIELD_CASES)
def test_field_rules(tmp_path, fields, message):
    assert problems_of(tmp_path, entity_spec(fields)) == [message]


ENTITY_CASES = [
    ('list = ["nope"]', E + 'list names unknown field "nope" (fields: title, notes)'),
    ('search = ["title", "count"]', None),  # count does not exist: covered below
    ('search = ["notes", "n"]', E + 'search names unknown field "n" (fields: title, notes)'),
    ('title_field = "nope"', E + 'title_field "nope" is not a field of this entity (fields: title, notes)'),
    ('colour = "red"', E + 'unknown key "colour" (allowed for an entity: fields, label, list, name, plural, renamed_from, search, title, title_field)'),
    ('list = []', E + '"list" must name at least one field'),
    ('plural = "!!!"', E + 'plural "!!!" gives no usable URL: use letters or digits'),
    ('plural = "logins"', None),
]


@pytest.mark.parametrize("extra, message", [c for c in ENTITY_CASES if c[1]])
def test_entity_rules(tmp_path, extra, message):
    fields = '{ name = "title", type = "string" },\n{ name = "notes", type = "text" }'
    assert problems_of(tmp_path, entity_spec(fields, extra)) == [message]


def test_search_only_text_like_fields(tmp_path):
    fields = '{ name = "title", type = "string" },\n{ name = "count", type = "integer" }'
    assert problems_of(tmp_path, entity_spec(fields, 'search = ["count"]')) == [
        E + 'search field "count" is a integer field; search looks only in string, text, email, url, choice fields'
    ]


TITLE_CASES = [
    ('title = "{nope} · {title}"', E + 'title "{nope} · {title}" names unknown field "nope" (fields: title, notes)'),
    ('title = "{title"', E + 'title "{title" has an unbalanced "{": write {{ or }} for a brace itself'),
    ('title = "{title}}"', E + 'title "{title}}" has an unbalanced "}": write {{ or }} for a brace itself'),
    ('title = "{title:>9}"', E + 'title "{title:>9}" names unknown field "title:>9" (fields: title, notes)'),
    ('title = "Item"', E + 'title "Item" names no field: put one in braces, such as "{title}"'),
    ('title = "{{title}}"', E + 'title "{{title}}" names no field: put one in braces, such as "{title}"'),
    ('title = ""', E + '"title" must be a format over fields, such as "{site} · {surveyed_on}"'),
    ('title = 3', E + '"title" must be a format over fields, such as "{site} · {surveyed_on}"'),
    ('title = "{title}"\ntitle_field = "title"', E + 'give "title" or "title_field", not both ("title_field" = "x" is title = "{x}")'),
    ('title = "{title}\\u2028"', E + '"title" must be one line of text, without control characters'),
]


@pytest.mark.parametrize("extra, message", TITLE_CASES)
def test_title_rules(tmp_path, extra, message):
    fields = '{ name = "title", type = "string" },\n{ name = "notes", type = "text" }'
    assert problems_of(tmp_path, entity_spec(fields, extra)) == [message]


def titles(tmp_path, text):
    (v,), problems = spec.load_verticals(write(tmp_path, text).parent, tmp_path)
    assert problems == []
    return {e.name: (e.title, v.title_params(e)) for e in v.entities}


def test_title_format_becomes_parts_and_sql_parameters(tmp_path):
    fields = '{ name = "title", type = "string" },\n{ name = "on", type = "date" },\n{ name = "box", type = "ref", to = "box" }'
    found = titles(tmp_path, entity_spec(fields, 'title = "{{{box}}} {title} · {on}!"'))
    assert found["item"] == (
        (("text", "{"), ("field", "box"), ("text", "} "), ("field", "title"), ("text", " · "), ("field", "on"), ("text", "!")),
        # The label for an empty title, the texts in order, a ref's own title's in place.
        ["Item #", "{", "Box #", "} ", " · ", "!"],
    )


def test_title_field_is_a_title_of_one_field(tmp_path):
    fields = '{ name = "title", type = "string" },\n{ name = "notes", type = "text" }'
    (item, params) = titles(tmp_path, entity_spec(fields, 'title_field = "notes"'))["item"]
    assert item == (("field", "notes"),) and params == ["Item #"]


def test_titles_may_not_show_each_other_in_a_circle(tmp_path):
    text = entity_spec('{ name = "box", type = "ref", to = "box" }', 'title = "{box}"')
    text = text.replace('fields = [{ name = "label", type = "string" }]',
                        'title = "{item} {label}"\nfields = [{ name = "label", type = "string" }, { name = "item", type = "ref", to = "item" }]')
    assert problems_of(tmp_path, text) == [
        E + "its title shows refs whose titles lead back to it (item.box -> box.item -> item): take one of those refs out of a title"
    ]
    # A ref to itself is a circle too.
    assert problems_of(tmp_path, entity_spec('{ name = "up", type = "ref", to = "item" }', 'title_field = "up"')) == [
        E + "its title shows refs whose titles lead back to it (item.up -> item): take one of those refs out of a title"
    ]


DEFAULT_TITLES = [
    # A required unique string names the record.
    ('{ name = "who", type = "string" },\n{ name = "code", type = "string", required = true, unique = true },\n{ name = "on", type = "date" }',
     (("field", "code"),)),
    # Else a required string called name, title, subject or label: the record's own name,
    # before a number or a date.
    ('{ name = "who", type = "string" },\n{ name = "title", type = "string", required = true },\n{ name = "on", type = "date" }',
     (("field", "title"),)),
    ('{ name = "number", type = "integer", required = true, unique = true },\n{ name = "name", type = "string", required = true }',
     (("field", "name"),)),
    # ... but not an optional one.
    ('{ name = "title", type = "string" },\n{ name = "on", type = "date" }', (("text", "Item "), ("field", "on"))),
    # Else a required unique integer, after the label.
    ('{ name = "who", type = "string" },\n{ name = "number", type = "integer", required = true, unique = true },\n{ name = "on", type = "date" }',
     (("text", "Item "), ("field", "number"))),
    # Else a date or datetime, a required one first: never the person's name it holds.
    ('{ name = "who", type = "string", required = true },\n{ name = "at", type = "datetime" },\n{ name = "on", type = "date", required = true }',
     (("text", "Item "), ("field", "on"))),
    ('{ name = "who", type = "string" },\n{ name = "at", type = "datetime" }', (("text", "Item "), ("field", "at"))),
    # Else a string, a required one first.
    ('{ name = "note", type = "string" },\n{ name = "name", type = "string", required = true }', (("field", "name"),)),
    # Else nothing: "Item #3".
    ('{ name = "n", type = "integer" },\n{ name = "ok", type = "boolean" }', ()),
]


@pytest.mark.parametrize("fields, title", DEFAULT_TITLES)
def test_default_title(tmp_path, fields, title):
    assert titles(tmp_path, entity_spec(fields))["item"][0] == title


def test_filter_params(tmp_path):
    fields = ", ".join([
        '{ name = "status", type = "choice", choices = ["a"] }', '{ name = "box", type = "ref", to = "box" }',
        '{ name = "done", type = "boolean" }', '{ name = "on", type = "date" }', '{ name = "n", type = "decimal" }',
        '{ name = "notes", type = "text" }', '{ name = "page", type = "boolean" }',  # ?page= is the list's own
        '{ name = "at", type = "datetime" }', '{ name = "at_from", type = "choice", choices = ["a"] }',  # the same parameter
    ])
    (v,), problems = spec.load_verticals(write(tmp_path, entity_spec(fields)).parent, tmp_path)
    assert problems == []
    found = {f["name"]: f["filter_params"] for f in v.answers(9000)["entities"][0]["fields"]}
    assert found == {"status": ["status"], "box": ["box"], "done": ["done"], "on": ["on_from", "on_to"],
                     "n": ["n_from", "n_to"], "notes": [], "page": [], "at": [], "at_from": []}


VERTICAL_CASES = [
    ('slug = "shop"\nname = "Shop"\n', ["verticals/shop.toml: at least one [[entities]] is required"]),
    ('slug = "shop"\nname = "Shop"\nentities = []\n', ["verticals/shop.toml: at least one [[entities]] is required"]),
    ('name = "Shop"\n' + GOOD.split('name = "Shop"')[1], ['verticals/shop.toml: "slug" is required']),
    ('slug = "shop"\n' + GOOD.split('name = "Shop"')[1], ['verticals/shop.toml: "name" is required']),
    (GOOD.replace('slug = "shop"', 'slug = "store"'),
     ['verticals/shop.toml: slug "store" does not match the file name: name the file store.toml']),
    (GOOD + 'colour = "red"\n',
     # a key after [[entities]] belongs to the entity
     ['verticals/shop.toml: entity "item": unknown key "colour" (allowed for an entity: fields, label, list, name, plural, renamed_from, search, title, title_field)']),
    ('colour = "red"\n' + GOOD,
     ['verticals/shop.toml: unknown key "colour" (allowed for a vertical: domain, entities, landing, name, slug, tagline, verify_email)']),
    (GOOD.replace('name = "Shop"', 'name = "Shop"\nverify_email = "no"'),
     ['verticals/shop.toml: "verify_email" must be true or false']),
    (GOOD.replace('name = "Shop"', 'name = "Shop"\nverify_emails = false'),
     ['verticals/shop.toml: unknown key "verify_emails" (allowed for a vertical: domain, entities, landing, name, slug, tagline, verify_email)']),
    (GOOD + '\n[landing]\nheadline = "Hi"\nprize = "$5"\n',
     ['verticals/shop.toml: [landing]: unknown key "prize" (allowed for [landing]: call_to_action, description, headline, points, price)']),
    (GOOD + '\n[landing]\npoints = "one"\n',
     ['verticals/shop.toml: [landing]: "points" must be a list of at most 6 lines of text']),
    (GOOD + '\n[landing]\npoints = ["1", "2", "3", "4", "5", "6", "7"]\n',
     ['verticals/shop.toml: [landing]: "points" must be a list of at most 6 lines of text']),
    (GOOD + '\n[landing]\npoints = ["fine", 3]\n',
     ['verticals/shop.toml: [landing] point 2: "point" must be a non-empty string']),
    (GOOD + '\n[landing]\nheadline = "two\\nlines"\n',
     ['verticals/shop.toml: [landing]: "headline" must be one line of text, without control characters']),
    (GOOD.replace('name = "Shop"', 'name = "Shop"\nlanding = "yes"'),
     ['verticals/shop.toml: landing must be a table ([landing])']),
    (GOOD.replace('name = "Shop"', 'name = "Shop"\ndomain = "not a host"'),
     ["verticals/shop.toml: domain 'not a host' is not a valid host name"]),
    (GOOD + '\n[[entities]]\nname = "item"\nfields = [{ name = "x", type = "text" }]\n',
     ['verticals/shop.toml: entity "item": entity names must be unique in a vertical: it is defined twice']),
    (GOOD + '\n[[entities]]\nname = "user"\nfields = [{ name = "x", type = "text" }]\n',
     ['verticals/shop.toml: entity "user": "user" is reserved for the app\'s own tables (account, user, login_attempt, app_*, sqlite_*): choose another name, such as "user_record"']),
    (GOOD + '\n[[entities]]\nname = "empty"\n',
     ['verticals/shop.toml: entity "empty": at least one field is required']),
    (GOOD + '\n[[entities]]\nname = "login"\nplural = "login"\nfields = [{ name = "x", type = "text" }]\n',
     ['verticals/shop.toml: entity "login": its URL /login/ is one of the app\'s own (account, activity, forgot, healthz, invite, login, logout, reset, settings, signup, static, team, verify): set another "plural"']),
    (GOOD + '\n[[entities]]\nname = "items"\nplural = "items"\nfields = [{ name = "x", type = "text" }]\n',
     ['verticals/shop.toml: entity "items": its URL /items/ is also entity "item"\'s: give one of them another "plural"']),
    (GOOD + '\n[[entities]]\nname = "node"\nfields = [{ name = "parent", type = "ref", to = "node", required = true }]\n',
     ['verticals/shop.toml: entity "node": required refs form a cycle (node.parent -> node), so no first record could be saved: make one of them optional']),
    (GOOD + '\n[[entities]]\nname = "a"\nfields = [{ name = "b", type = "ref", to = "b", required = true }]\n'
     '\n[[entities]]\nname = "b"\nfields = [{ name = "a", type = "ref", to = "a", required = true }]\n',
     ['verticals/shop.toml: entity "a": required refs form a cycle (a.b -> b.a -> a), so no first record could be saved: make one of them optional']),
]


@pytest.mark.parametrize("old", ["account", "user", "login_attempt", "app_migration", "app_session", "sqlite_sequence"])
def test_an_entity_cannot_be_renamed_from_a_system_table(tmp_path, old):
    text = GOOD.replace('name = "item"', f'name = "item"\nrenamed_from = "{old}"')
    assert problems_of(tmp_path, text) == [
        f'verticals/shop.toml: entity "item": renamed_from "{old}" is one of the app\'s own tables (account, user, login_attempt, app_*, sqlite_*), not an old entity name: migrate would rename that table'
    ]


@pytest.mark.parametrize("text, expected", VERTICAL_CASES)
def test_vertical_rules(tmp_path, text, expected):
    assert problems_of(tmp_path, text) == expected


def test_bad_slug_is_named(tmp_path):
    assert problems_of(tmp_path, GOOD.replace('"shop"', '"Shop-1"'), stem="Shop-1") == [
        "verticals/Shop-1.toml: slug 'Shop-1' must match ^[a-z][a-z0-9]{1,30}$ (a lower-case letter, then 1 to 30 lower-case letters or digits)"
    ]


def test_a_problem_is_data_with_its_file_place_and_rule(tmp_path):
    write(tmp_path, entity_spec('{ name = "a", type = "strin" }'))
    _, (problem,) = spec.load_verticals(tmp_path / "verticals", tmp_path)
    assert (problem.path, problem.where) == ("verticals/shop.toml", 'entity "item", field "a"')
    assert problem.message.startswith('unknown type "strin" (known: string, ')
    assert str(problem) == f"verticals/shop.toml: {problem.where}: {problem.message}"
    assert problem.format(with_path=False) == f"{problem.where}: {problem.message}"


def test_toml_syntax_error_shows_the_line(tmp_path):
    problems = problems_of(tmp_path, GOOD.replace('name = "Shop"', 'name = "Shop'))
    assert len(problems) == 1
    assert problems[0].startswith("verticals/shop.toml: TOML syntax error:")
    assert "line 3" in problems[0]


def test_every_problem_of_every_spec_is_reported(tmp_path):
    write(tmp_path, entity_spec('{ name = "a", type = "strin" },\n{ name = "b", type = "integer", min = 2, max = 1 }'))
    write(tmp_path, GOOD.replace('"shop"', '"other"').replace('required = true', 'requried = true'), stem="other")
    _, found = spec.load_verticals(tmp_path / "verticals", tmp_path)
    problems = [str(p) for p in found]
    assert len(problems) == 3
    assert any("other.toml" in p and "requried" in p for p in problems)
    assert any("shop.toml" in p and '"strin"' in p for p in problems)
    assert any("shop.toml" in p and "min (2) is greater than max (1)" in p for p in problems)


def test_load_vertical_raises_with_every_problem(tmp_path):
    path = write(tmp_path, entity_spec('{ name = "a", type = "strin" },\n{ name = "id", type = "text" }'))
    with pytest.raises(VgenError) as info:
        spec.load_vertical(path, "verticals/shop.toml")
    assert len(info.value.problems) == 2


def test_examples_are_valid():
    verticals, problems = spec.load_verticals(REPO / "verticals", REPO)
    assert problems == []
    assert sorted(v.slug for v in verticals) == ["cheesemaking", "childmilestone", "coachboard", "honeybees", "shiftfill"]
    for v in verticals:
        assert 3 <= len(v.entities) <= 6
        assert any(f.type == "ref" for e in v.entities for f in e.fields)


def test_verify_email_is_on_unless_the_spec_turns_it_off(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace('slug = "shop"', 'slug = "open"\nverify_email = false'), "open")
    verticals, problems = spec.load_verticals(tmp_path / "verticals", tmp_path)
    assert problems == []
    assert {v.slug: v.answers(8100)["verify_email"] for v in verticals} == {"shop": True, "open": False}


def test_normalization(tmp_path):
    write(tmp_path, '''
slug = "shop"
name = "Shop"

[[entities]]
name = "aging_room"
fields = [
  { name = "from", type = "string", required = true, unique = true },
  { name = "data", type = "text" },
  { name = "temp", type = "decimal", places = 1, min = -5, max = 30, default = 12 },
  { name = "on", type = "date", default = 2024-01-31 },
  { name = "flag", type = "boolean" },
]

[[entities]]
name = "class"
plural = "classes"
fields = [{ name = "room", type = "ref", to = "aging_room" }]
''')
    (v,), problems = spec.load_verticals(tmp_path / "verticals", tmp_path)
    assert problems == []
    room, klass = v.entities
    assert (room.label, room.plural, room.url, room.module, room.class_name) == (
        "Aging room", "aging rooms", "aging-rooms", "aging_room", "AgingRoom")
    assert room.title_field == "from"
    assert [f.attr for f in room.fields] == ["from_", "data_", "temp", "on", "flag"]
    temp = room.field("temp")
    assert (temp.min, temp.max, temp.default, temp.places) == ("-5.0", "30.0", "12.0", 1)
    assert room.field("on").default == "2024-01-31"
    assert room.field("flag").default is False
    assert room.field("from").max_length == 200
    assert klass.module == "class_" and klass.url == "classes"
    room_ref = klass.field("room")
    assert room_ref.on_delete == "restrict"
    answers = v.answers(8123)
    assert answers["port"] == 8123
    assert answers["entities"][0]["referenced_by"] == [
        {"entity": "class", "module": "class_", "field": "room", "on_delete": "restrict"}]
    assert answers["entities"][1]["fields"][0]["to_module"] == "aging_room"
    assert 1 <= answers["backup_hour"] <= 4 and 0 <= answers["backup_minute"] <= 59


@pytest.mark.parametrize("name, module", [
    ("session", "session_"), ("db", "db_"), ("security", "security_"), ("type", "type_"), ("order", "order"), ("import", "import_"),
])
def test_entity_modules_avoid_clashes(tmp_path, name, module):
    text = f'slug = "shop"\nname = "Shop"\n[[entities]]\nname = "{name}"\nplural = "{name} records"\nfields = [{{ name = "x", type = "string" }}]\n'
    (v,), problems = spec.load_verticals(write(tmp_path, text).parent, tmp_path)
    assert v.entities[0].module == module


def test_field_attributes_avoid_wtforms_validator_names(tmp_path):
    """A form attribute validate_x would be taken for field x's validator."""
    path = write(tmp_path, entity_spec('{ name = "validate_on", type = "string" },\n{ name = "field_validate_on", type = "string" }'))
    item = spec.load_vertical(path).entity("item")
    assert [f.attr for f in item.fields] == ["field_validate_on", "field_validate_on_"]


def test_field_attributes_avoid_every_form_attribute(tmp_path):
    """post_process is a Form method: a field attribute of that name broke every form."""
    path = write(tmp_path, entity_spec('{ name = "post_process", type = "string" },\n{ name = "hidden_tag", type = "string" }'))
    item = spec.load_vertical(path).entity("item")
    assert [f.attr for f in item.fields] == ["post_process_", "hidden_tag_"]


def test_form_attrs_cover_every_public_name_of_a_flask_form():
    """FORM_ATTRS is written out (the generator does not depend on Flask-WTF): a new
    WTForms or Flask-WTF version with a new public form attribute fails here."""
    import flask
    import flask_wtf

    app = flask.Flask("check")
    app.config["SECRET_KEY"] = "test"
    with app.test_request_context("/"):
        form = flask_wtf.FlaskForm()
    public = {n for n in dir(type(form)) + dir(form) if not n.startswith("_")}
    assert public - spec.FORM_ATTRS - spec.RESERVED_FIELDS == set()


def test_fingerprint_follows_the_spec(tmp_path):
    path = write(tmp_path, GOOD)
    first = spec.load_vertical(path).fingerprint()
    assert spec.load_vertical(path).fingerprint() == first
    path.write_text(GOOD.replace("required = true", "required = false"))
    assert spec.load_vertical(path).fingerprint() != first


def test_decimal_defaults_are_exact(tmp_path):
    path = write(tmp_path, entity_spec('{ name = "p", type = "decimal", places = 2, default = 12.3 }'))
    field = spec.load_vertical(path).entity("item").field("p")
    assert field.default == "12.30" and Decimal(field.default) == Decimal("12.3")


def test_backup_times_differ_and_are_stable():
    times = {slug: spec.backup_time(slug) for slug in ("cheesemaking", "honeybees", "shiftfill")}
    assert times == {slug: spec.backup_time(slug) for slug in times}
    assert len(set(times.values())) == 3


# Any TOML document at all gets problems, never a traceback.
from hypothesis import given, settings, strategies as st  # noqa: E402

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(spec.TYPES + ("item", "box", "restrict", "set_null")),
)
keys = st.sampled_from(sorted(spec.SPEC_KEYS | spec.ENTITY_KEYS | spec.COMMON_FIELD_KEYS
                              | {"max_length", "places", "min", "max", "choices", "to", "on_delete", "x"}))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6), max_leaves=30)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_any_document_gives_problems_not_a_traceback(data):
    problems = []
    spec._Validator("verticals/shop.toml", "shop", problems).vertical(data)
    assert all(str(p).startswith("verticals/shop.toml: ") for p in problems)


# Every display text of the hostile spec (tests/test_hostile_text.py): template markup of
# both Jinja flavours, a backslash, quotes, three double quotes, HTML.
HOSTILE = '{{ 7*7 }} {% raw %} \\n """ \' [[ x ]] <script>'


WINDOWS = "C:\\ paths"


def toml(text):
    """A TOML basic string holding text (a JSON string is one, for these characters)."""
    return json.dumps(text)


@pytest.mark.parametrize("text", [
    GOOD.replace('name = "Shop"', f"name = {toml(HOSTILE)}\ntagline = {toml(HOSTILE)}"),
    GOOD.replace('required = true', f"label = {toml(HOSTILE)}, help = {toml(HOSTILE)}"),
    GOOD.replace('type = "string", required = true',
                 f'type = "choice", choices = [{toml(HOSTILE)}, "R&D {{lab}}", {toml(WINDOWS)}, "50% off"]'),
    GOOD.replace('name = "item"', f'name = "item"\nlabel = "Box {{"\nplural = {toml(HOSTILE)}'),
])
def test_display_text_may_hold_any_characters(tmp_path, text):
    assert problems_of(tmp_path, text) == []


@pytest.mark.parametrize("text, message", [
    (GOOD.replace('name = "Shop"', 'name = "Shop"\ntagline = "a\\nb"'), 'verticals/shop.toml: "tagline" must be one line of text, without control characters'),
    (GOOD.replace('required = true', 'label = "T\\u2028x"'), 'verticals/shop.toml: entity "item", field "title": "label" must be one line of text, without control characters'),
    (GOOD.replace('type = "string", required = true', 'type = "choice", choices = ["a", "b\\u0085"]'), 'verticals/shop.toml: entity "item", field "title": choice \'b\\x85\' must be one line of text, without control characters'),
])
def test_display_text_is_one_line_without_control_characters(tmp_path, text, message):
    assert problems_of(tmp_path, text) == [message]


def test_a_broken_field_is_reported_once(tmp_path):
    fields = '{ name = "code", type = "string", requried = true },\n{ name = "notes", type = "text" }'
    problems = problems_of(tmp_path, entity_spec(fields, 'list = ["code"]\nsearch = ["code"]\ntitle_field = "code"'))
    assert problems == [F + '"code": unknown key "requried" (allowed for a string field: default, help, label, max_length, name, renamed_from, required, type, unique)']


def test_capacity_is_the_smallest_unique_domain(tmp_path):
    path = write(tmp_path, entity_spec(
        '{ name = "c", type = "choice", choices = ["a", "b", "c"], unique = true },\n'
        '{ name = "n", type = "integer", min = 1, max = 2, unique = true },\n'
        '{ name = "d", type = "decimal", places = 1, min = 0, max = 0.4, unique = true }'))
    vertical = spec.load_vertical(path)
    assert vertical.entity("item").capacity == 2
    assert vertical.entity("box").capacity is None
    assert vertical.answers(8100)["entities"][0]["capacity"] == 2


def test_capacity_follows_unique_refs(tmp_path):
    """One badge per holder: no more badges than holders, through chains and cycles."""
    path = write(tmp_path, """slug = "shop"
name = "Shop"

[[entities]]
name = "holder"
fields = [{ name = "slot", type = "integer", min = 1, max = 3, unique = true }]

[[entities]]
name = "badge"
fields = [
  { name = "holder", type = "ref", to = "holder", required = true, unique = true },
  { name = "next", type = "ref", to = "badge", unique = true },
]

[[entities]]
name = "pin"
fields = [{ name = "badge", type = "ref", to = "badge", unique = true }, { name = "any", type = "ref", to = "holder" }]

[[entities]]
name = "free"
fields = [{ name = "holder", type = "ref", to = "holder" }]
""")
    vertical = spec.load_vertical(path)
    capacities = {e["name"]: e["capacity"] for e in vertical.answers(8100)["entities"]}
    assert capacities == {"holder": 3, "badge": 3, "pin": 3, "free": None}
