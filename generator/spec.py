"""Vertical specs: load ``verticals/<slug>.toml``, validate every rule, normalize.

A spec is read into frozen dataclasses with every derived value filled in (labels,
plurals, URLs, Python names, defaults), so the template never guesses and never repeats
a rule. :func:`Vertical.answers` is the data copier receives (docs/template-data.md).

Validation collects every problem of every spec before reporting; each message names the
file, the entity, the field and the rule broken.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import hashlib
import json
import keyword
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from wtforms import EmailField, Form, URLField
from wtforms.validators import URL, Email

from .errors import Problem, VgenError

SLUG_RE = re.compile(r"^[a-z][a-z0-9]{1,30}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)

TYPES = (
    "string", "text", "integer", "decimal", "boolean", "date", "datetime",
    "email", "url", "choice", "ref",
)
TEXT_LIKE = ("string", "text", "email", "url", "choice")
# A title is a short format over fields: "{site} · {surveyed_on}"; {{ and }} are braces.
TITLE_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
TITLE_LIMIT = 200
ON_DELETE = ("restrict", "cascade", "set_null")

COMMON_FIELD_KEYS = {"name", "type", "required", "unique", "default", "label", "help", "renamed_from"}
TYPE_KEYS = {
    "string": {"max_length"},
    "integer": {"min", "max", "unit"},
    "decimal": {"places", "min", "max", "unit"},
    "choice": {"choices"},
    "ref": {"to", "on_delete"},
}
SPEC_KEYS = {"slug", "name", "tagline", "domain", "verify_email", "landing", "entities"}
# The optional [landing] table: the public home page's words (template/app/templates/main/home.html).
LANDING_KEYS = {"headline", "description", "points", "price", "call_to_action"}
LANDING_POINTS = 6
ENTITY_KEYS = {"name", "label", "plural", "title", "title_field", "list", "search", "fields", "renamed_from"}

STRING_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
URL_MAX_LENGTH = 2000
MAX_PLACES = 6
# Decimals are stored as integers scaled by 10**places; keep them inside SQLite's int64.
DECIMAL_LIMIT = Decimal(10) ** 12

# The columns every entity table has besides its fields (template/app/schema.sql.jinja).
SYSTEM_COLUMNS = {"id", "account_id", "created_at", "updated_at"}
# SQLite's own names for the row id.
ROWID_ALIASES = {"rowid", "oid"}
# Names the generated forms already use.
RESERVED_FIELDS = SYSTEM_COLUMNS | ROWID_ALIASES | {"csrf_token"}
# The app's own tables, and the prefixes of its internal ones and SQLite's.
RESERVED_ENTITIES = ("account", "user", "login_attempt")
RESERVED_PREFIXES = ("app_", "sqlite_")
SYSTEM_TABLES_SHOWN = ", ".join([*RESERVED_ENTITIES, *(p + "*" for p in RESERVED_PREFIXES)])
# Names an entity module must not take: the app package's own modules and folders, and
# the names its modules import (an entity module called "session" would hide Flask's).
APP_MODULES = {
    "app", "auth", "backup", "custom", "db", "main", "migrate", "schema", "spec", "values", "forms",
    "mail", "tokens", "pages", "audit", "imports", "team", "settings",
    "security",  # tests/test_<module>.py must not replace the app's tests/test_security.py
    "templates", "static", "tests", "flask", "werkzeug", "wtforms", "flask_wtf", "click",
    "session", "request", "g", "flash", "redirect", "url_for", "abort", "render_template",
    "current_app", "jsonify", "blueprint", "response", "markup", "os", "sys", "io", "csv",
    "json", "re", "sqlite3", "datetime", "decimal", "time", "math", "secrets", "functools",
    "pathlib", "hashlib", "shutil", "tempfile", "logging",
}
# The app's own URLs, which no entity's URL may take.
APP_URLS = {"signup", "login", "logout", "account", "healthz", "static", "forgot", "reset", "verify", "team",
            "invite", "activity", "settings"}
# Attributes of a Flask-WTF form, which a field attribute of that name would replace, and
# the module names the generated form class body uses (values.strip, date.fromisoformat).
# Written out, as the generator does not depend on Flask-WTF; tests/test_spec.py compares
# it with dir(FlaskForm), so a new WTForms version's new attribute is caught there.
FORM_ATTRS = {
    "data", "errors", "form_errors", "meta", "validate", "populate_obj", "process",
    "post_process", "hidden_tag", "is_submitted", "validate_on_submit", "extra_validators",
    "on_submit", "submit", "Meta", "values", "date", "datetime",
}
PY_NAMES = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    label: str
    attr: str = ""
    help: str = ""
    required: bool = False
    unique: bool = False
    default: object = None
    max_length: int | None = None
    places: int | None = None
    min: object = None
    max: object = None
    choices: tuple[str, ...] = ()
    # What the pages show for each choice, in the order of choices: the spec's own
    # labels (choices = { north = "North shore" }), else choice_label(value).
    choice_labels: tuple[str, ...] = ()
    unit: str = ""  # an integer's or decimal's unit, shown after its values ("kg")
    to: str | None = None
    on_delete: str | None = None
    renamed_from: str | None = None


@dataclass(frozen=True)
class Entity:
    name: str
    label: str
    plural: str
    plural_label: str
    url: str
    module: str
    class_name: str
    # How a record is named: ("text", "...") and ("field", "<name>") parts in order;
    # () when no field can name it: then "Aging room #3".
    title: tuple[tuple[str, str], ...]
    list: tuple[str, ...]
    search: tuple[str, ...]
    fields: tuple[Field, ...]
    renamed_from: str | None = None

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def title_field(self) -> str | None:
        """The first field the title names, or None."""
        return next((value for kind, value in self.title if kind == "field"), None)

    @property
    def capacity(self) -> int | None:
        """How many records one account can hold at most when every field is filled,
        or None when there is no small limit: a unique field with few possible values
        (a choice, a bounded integer or decimal) sets it. The app's tests skip what
        needs more records than that."""
        limits = []
        for f in self.fields:
            if not f.unique:
                continue
            if f.type == "choice":
                limits.append(len(f.choices))
            elif f.type == "integer" and f.min is not None and f.max is not None:
                limits.append(f.max - f.min + 1)
            elif f.type == "decimal" and f.min is not None and f.max is not None:
                limits.append(int((Decimal(f.max) - Decimal(f.min)).scaleb(f.places)) + 1)
        return min(limits) if limits else None

@dataclass(frozen=True)
class Vertical:
    slug: str
    name: str
    entities: tuple[Entity, ...]
    tagline: str = ""
    domain: str = ""
    verify_email: bool = True  # a sign-up opens a link mailed to its address first
    # The [landing] table, normalized: headline, description, price, call_to_action
    # ("" when absent) and points (a list).
    landing: dict = dataclasses.field(default_factory=dict)

    def entity(self, name: str) -> Entity:
        return next(e for e in self.entities if e.name == name)

    def capacity(self, entity: Entity, seen: frozenset[str] = frozenset()) -> int | None:
        """Entity.capacity, bounded by unique refs too: each record then points at a
        record of its own of the target, so there are no more records than targets."""
        limits = [] if entity.capacity is None else [entity.capacity]
        seen = seen | {entity.name}
        for f in entity.fields:
            if f.type == "ref" and f.unique and f.to not in seen:
                target = self.capacity(self.entity(f.to), seen)
                if target is not None:
                    limits.append(target)
        return min(limits) if limits else None

    def answers(self, port: int) -> dict:
        """The data copier renders this vertical from (docs/template-data.md)."""
        modules = {e.name: e.module for e in self.entities}
        entities = []
        filters = {e.name: filter_params(e) for e in self.entities}
        for e in self.entities:
            referenced_by = [
                {"entity": other.name, "module": other.module, "field": f.name, "on_delete": f.on_delete}
                for other in self.entities
                for f in other.fields
                if f.type == "ref" and f.to == e.name
            ]
            fields = [
                {
                    "name": f.name, "attr": f.attr, "type": f.type, "label": f.label,
                    "help": f.help, "required": f.required, "unique": f.unique,
                    "default": f.default, "max_length": f.max_length, "places": f.places,
                    "min": f.min, "max": f.max, "choices": list(f.choices),
                    "choice_labels": dict(zip(f.choices, f.choice_labels)), "unit": f.unit, "to": f.to,
                    "to_module": modules.get(f.to) if f.to else None,
                    "on_delete": f.on_delete, "renamed_from": f.renamed_from,
                    **field_facts(f), "filter_params": filters[e.name].get(f.name, []),
                }
                for f in e.fields
            ]
            entities.append({
                "name": e.name, "module": e.module, "class_name": e.class_name,
                "label": e.label, "plural": e.plural, "plural_label": e.plural_label,
                "url": e.url, "title": [{kind: value} for kind, value in e.title],
                "title_params": self.title_params(e), "list": list(e.list),
                "search": list(e.search), "renamed_from": e.renamed_from, "capacity": self.capacity(e),
                "referenced_by": referenced_by, "fields": fields,
            })
        hour, minute = backup_time(self.slug)
        return {
            "slug": self.slug, "name": self.name, "tagline": self.tagline,
            "domain": self.domain, "verify_email": self.verify_email, "landing": self.landing, "port": port,
            "backup_hour": hour, "backup_minute": minute, "entities": entities,
        }

    def title_params(self, entity: Entity) -> list[str]:
        """The texts the title's SQL takes as ? parameters, in the order of its
        placeholders (the template's title_sql macro): the label with " #" for a record
        whose title fields are all empty ("Aging room #3"), then each text part, for
        each choice the values and labels of its relabelled choices, and for each ref
        the params of the title of the record it points to."""
        params = [entity.label + " #"]
        for kind, value in entity.title:
            if kind == "text":
                params.append(value)
            elif entity.field(value).type == "choice":
                params += [text for pair in field_facts(entity.field(value))["relabelled"] for text in pair]
            elif entity.field(value).type == "ref":
                params += self.title_params(self.entity(entity.field(value).to))
        return params

    def fingerprint(self) -> str:
        """A short stable hash of the normalized spec: changes when the app would."""
        data = json.dumps(self.answers(0), sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()[:12]


def choice_label(value: str) -> str:
    """What the pages show for a choice the spec gives no label: a lower-case word or
    name reads as a label ("north" -> "North", "in_progress" -> "In progress"); any
    other text is shown as written ("Rocky Point", "A+")."""
    if re.fullmatch(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*", value):
        return value.replace("_", " ").capitalize()
    return value


def field_facts(f: Field) -> dict:
    """What the template needs to know of a field's type, worked out here once
    (docs/template-data.md) so that no template repeats a list of types."""
    return {
        "text_like": f.type in TEXT_LIKE,
        "free_text": f.type in ("string", "text"),  # typed freely, any characters
        # How SQLite stores it: decimals as scaled integers, booleans as 0/1, refs as ids.
        "sql_type": "INTEGER" if f.type in ("integer", "decimal", "boolean", "ref") else "TEXT",
        "numeric": f.type in ("integer", "decimal"),
        # The choices whose label is not their value: [[value, label]...], in order.
        "relabelled": [[v, label] for v, label in zip(f.choices, f.choice_labels) if v != label],
        # Decimals are stored as integers scaled by 10**places: "12.30" -> 1230.
        "scaled_min": _scaled(f.min, f.places) if f.type == "decimal" else None,
        "scaled_max": _scaled(f.max, f.places) if f.type == "decimal" else None,
        "scaled_default": _scaled(f.default, f.places) if f.type == "decimal" else None,
    }


# The list page's own GET parameters, which no filter may take.
LIST_PARAMS = {"q", "sort", "page"}


def filter_params(entity: Entity) -> dict[str, list[str]]:
    """{field name: the list page's GET parameters filtering by it}: a choice, ref or
    boolean by its name (?status=open, ?site=12, ?done=1), a date, datetime or number
    by a range (?made_on_from=...&made_on_to=...). A field whose parameter would be
    the list's own (q, sort, page) or another field's gets no filter."""
    wanted = {}
    for f in entity.fields:
        if f.type in ("choice", "ref", "boolean"):
            wanted[f.name] = [f.name]
        elif f.type in ("date", "datetime", "integer", "decimal"):
            wanted[f.name] = [f.name + "_from", f.name + "_to"]
    counts: dict[str, int] = {}
    for params in wanted.values():
        for p in params:
            counts[p] = counts.get(p, 0) + 1
    return {
        name: params for name, params in wanted.items()
        if all(p not in LIST_PARAMS and counts[p] == 1 for p in params)
    }


def _scaled(value, places: int) -> int | None:
    return None if value is None else int(Decimal(value).scaleb(places))


def backup_time(slug: str) -> tuple[int, int]:
    """The nightly backup's (hour, minute) for a slug: spread over 01:00-04:59, stable."""
    n = int.from_bytes(hashlib.sha256(b"backup:" + slug.encode()).digest()[:4], "big")
    slot = n % (4 * 60)
    return 1 + slot // 60, slot % 60


# --- loading --------------------------------------------------------------------------


def load_vertical(path: Path, display: str | None = None) -> Vertical:
    """Load and validate one spec; raise VgenError listing every problem in it."""
    problems: list[Problem] = []
    vertical = _load(Path(path), display or str(path), problems)
    if problems:
        raise VgenError(f"{display or path}: the spec is not valid", problems)
    return vertical


def load_verticals(directory: Path, root: Path | None = None) -> tuple[list[Vertical], list[Problem]]:
    """Load every ``*.toml`` in ``directory``; return the valid ones and all problems."""
    verticals, problems = [], []
    for path in sorted(Path(directory).glob("*.toml")):
        found: list[Problem] = []
        vertical = _load(path, _display(path, root), found)
        if found:
            problems.extend(found)
        elif vertical is not None:
            verticals.append(vertical)
    return verticals, problems


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(path)


def _load(path: Path, display: str, problems: list[Problem]) -> Vertical | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(display, "", f"cannot read the file ({exc})"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem(display, "", f"TOML syntax error: {exc}"))
        return None
    return _Validator(display, path.stem, problems).vertical(data)


# --- validation -----------------------------------------------------------------------


class _Validator:
    def __init__(self, display: str, stem: str, problems: list[Problem]):
        self.display = display
        self.stem = stem
        self.problems = problems

    def error(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.display, where, message))

    def unknown_keys(self, where: str, data: dict, allowed: set[str], what: str) -> None:
        for key in data:
            if key not in allowed:
                self.error(where, f'unknown key "{key}" (allowed for {what}: {", ".join(sorted(allowed))})')

    def text(self, where: str, data: dict, key: str, *, required=False, limit=200, empty_ok=False) -> str | None:
        if key not in data:
            if required:
                self.error(where, f'"{key}" is required')
            return None
        value = data[key]
        if isinstance(value, str) and empty_ok and not value.strip():
            return ""
        if not isinstance(value, str) or not value.strip():
            self.error(where, f'"{key}" must be a non-empty string')
            return None
        if len(value) > limit:
            self.error(where, f'"{key}" is longer than {limit} characters')
            return None
        problem = text_problem(value)
        if problem:
            self.error(where, f'"{key}" {problem}')
            return None
        return value.strip()

    # The vertical ---------------------------------------------------------------------

    def vertical(self, data: dict) -> Vertical | None:
        start = len(self.problems)
        self.unknown_keys("", data, SPEC_KEYS, "a vertical")
        slug = data.get("slug")
        if slug is None:
            self.error("", '"slug" is required')
        elif not isinstance(slug, str) or not SLUG_RE.match(slug):
            self.error("", f'slug {slug!r} must match ^[a-z][a-z0-9]{{1,30}}$ (a lower-case letter, then 1 to 30 lower-case letters or digits)')
        elif slug != self.stem:
            self.error("", f'slug "{slug}" does not match the file name: name the file {slug}.toml')
        name = self.text("", data, "name", required=True, limit=80)
        tagline = self.text("", data, "tagline", limit=200, empty_ok=True) or ""
        domain = ""
        if "domain" in data:
            domain = data["domain"]
            if not isinstance(domain, str) or not DOMAIN_RE.match(domain.lower()):
                self.error("", f"domain {domain!r} is not a valid host name")
                domain = ""
            domain = domain.lower()
        verify_email = data.get("verify_email", True)
        if not isinstance(verify_email, bool):
            self.error("", '"verify_email" must be true or false')
            verify_email = True
        landing = self.landing(data.get("landing", {}))

        raw_entities = data.get("entities")
        if raw_entities is None:
            self.error("", "at least one [[entities]] is required")
            raw_entities = []
        elif not isinstance(raw_entities, list) or not all(isinstance(e, dict) for e in raw_entities):
            self.error("", "entities must be an array of tables ([[entities]])")
            raw_entities = []
        elif not raw_entities:
            self.error("", "at least one [[entities]] is required")

        names = [e.get("name") for e in raw_entities if isinstance(e.get("name"), str)]
        entities = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_entities):
            entity = self.entity(raw, index, names, seen)
            if entity is not None:
                entities.append(entity)
        if len(self.problems) > start:
            return None
        entities = self.assign_modules(entities)
        self.check_urls(entities)
        self.check_renames(entities)
        self.check_required_ref_cycles(entities)
        self.check_title_cycles(entities)
        if len(self.problems) > start:
            return None
        return Vertical(slug=slug, name=name, entities=tuple(entities),
                        tagline=tagline, domain=domain, verify_email=verify_email, landing=landing)

    def landing(self, raw) -> dict:
        """The [landing] table: every key optional, each a line of text; points a list
        of up to LANDING_POINTS of them."""
        where = "[landing]"
        if not isinstance(raw, dict):
            self.error("", "landing must be a table ([landing])")
            return {}
        self.unknown_keys(where, raw, LANDING_KEYS, "[landing]")
        landing = {
            "headline": self.text(where, raw, "headline", limit=120) or "",
            "description": self.text(where, raw, "description", limit=300) or "",
            "price": self.text(where, raw, "price", limit=120) or "",
            "call_to_action": self.text(where, raw, "call_to_action", limit=40) or "",
            "points": [],
        }
        points = raw.get("points", [])
        if not isinstance(points, list) or len(points) > LANDING_POINTS:
            self.error(where, f'"points" must be a list of at most {LANDING_POINTS} lines of text')
            return landing
        for i, point in enumerate(points):
            text = self.text(f"{where} point {i + 1}", {"point": point}, "point", limit=200)
            if text:
                landing["points"].append(text)
        return landing

    # Entities -------------------------------------------------------------------------

    def entity(self, raw: dict, index: int, names: list[str], seen: set[str]) -> Entity | None:
        start = len(self.problems)
        name = raw.get("name")
        if name is None:
            where = f"entity #{index + 1}"
            self.error(where, '"name" is required')
            return None
        where = f'entity "{name}"'
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.error(f"entity #{index + 1}", f"name {name!r} must match ^[a-z][a-z0-9_]{{0,39}}$")
            return None
        if name in seen:
            self.error(where, "entity names must be unique in a vertical: it is defined twice")
            return None
        seen.add(name)
        if is_system_table(name):
            self.error(where, f'"{name}" is reserved for the app\'s own tables ({SYSTEM_TABLES_SHOWN}): choose another name, such as "{name}_record"')
        self.unknown_keys(where, raw, ENTITY_KEYS, "an entity")

        label = self.text(where, raw, "label", limit=60) or name.replace("_", " ").capitalize()
        plural = self.text(where, raw, "plural", limit=60) or pluralize(name.replace("_", " "))
        url = re.sub(r"[^a-z0-9]+", "-", plural.lower()).strip("-")
        if not url:
            self.error(where, f'plural "{plural}" gives no usable URL: use letters or digits')

        raw_fields = raw.get("fields")
        if raw_fields is None or raw_fields == []:
            self.error(where, "at least one field is required")
            raw_fields = []
        elif not isinstance(raw_fields, list) or not all(isinstance(f, dict) for f in raw_fields):
            self.error(where, "fields must be an array of tables ({ name = ..., type = ... })")
            raw_fields = []
        fields, field_names = [], set()
        for findex, rf in enumerate(raw_fields):
            f = self.field(name, rf, findex, names, field_names)
            if f is not None:
                fields.append(f)
        fields = assign_attrs(fields)
        by_name = {f.name: f for f in fields}
        # Every named field, valid or not, in spec order: a field with problems of its
        # own is not reported again where list, search or title_field name it.
        field_names = list(dict.fromkeys(rf["name"] for rf in raw_fields if isinstance(rf.get("name"), str)))

        title = self.title(where, raw, fields, field_names, label)
        list_fields = self.field_list(where, raw, "list", by_name, field_names, ())
        if list_fields is None:
            list_fields = default_list(fields, next((v for k, v in title if k == "field"), None))
        search = self.field_list(where, raw, "search", by_name, field_names, TEXT_LIKE)
        if search is None:
            search = tuple(f.name for f in fields if f.type in ("string", "email"))[:3]

        renamed_from = self.renamed_from(where, raw)
        if renamed_from and is_system_table(renamed_from):
            # migrate renames a live table of the old name: it would take the app's own.
            self.error(where, f'renamed_from "{renamed_from}" is one of the app\'s own tables ({SYSTEM_TABLES_SHOWN}), not an old entity name: migrate would rename that table')
        if len(self.problems) > start:
            return None
        return Entity(
            name=name, label=label, plural=plural, plural_label=plural[:1].upper() + plural[1:],
            url=url, module=name, class_name="".join(p.capitalize() for p in name.split("_") if p),
            title=title, list=tuple(list_fields), search=tuple(search),
            fields=tuple(fields), renamed_from=renamed_from,
        )

    def title(self, where, raw, fields, field_names, label) -> tuple[tuple[str, str], ...]:
        """The entity's title as parts: from "title", from "title_field" (the same as
        title = "{field}"), or the default (default_title)."""
        if "title" in raw and "title_field" in raw:
            self.error(where, 'give "title" or "title_field", not both ("title_field" = "x" is title = "{x}")')
            return ()
        if "title_field" in raw:
            value = raw["title_field"]
            if not isinstance(value, str) or value not in field_names:
                if field_names:
                    self.error(where, f'title_field "{value}" is not a field of this entity (fields: {", ".join(field_names)})')
                return ()
            return (("field", value),)
        if "title" not in raw:
            return default_title(fields, label)
        text = raw["title"]
        if not isinstance(text, str) or not text.strip():
            self.error(where, '"title" must be a format over fields, such as "{site} · {surveyed_on}"')
            return ()
        problem = text_problem(text)
        if problem or len(text) > TITLE_LIMIT:
            self.error(where, f'"title" {problem or f"is longer than {TITLE_LIMIT} characters"}')
            return ()
        parts: list[tuple[str, str]] = []
        position, ok = 0, True
        for token in TITLE_TOKEN_RE.finditer(text):
            if token.start() > position:
                parts.append(("text", text[position:token.start()]))
            position = token.end()
            if token.group() in ("{{", "}}"):
                parts.append(("text", token.group()[0]))
            elif token.group() in ("{", "}"):
                self.error(where, f'title "{text}" has an unbalanced "{token.group()}": write {{{{ or }}}} for a brace itself')
                ok = False
            elif token.group(1) not in field_names:
                if field_names:
                    self.error(where, f'title "{text}" names unknown field "{token.group(1)}" (fields: {", ".join(field_names)})')
                ok = False
            else:
                parts.append(("field", token.group(1)))
        if position < len(text):
            parts.append(("text", text[position:]))
        if ok and not any(kind == "field" for kind, _ in parts):
            self.error(where, f'title "{text}" names no field: put one in braces, such as "{{{field_names[0] if field_names else "name"}}}"')
            ok = False
        if not ok:
            return ()
        merged: list[tuple[str, str]] = []  # "{{" then "x" is one text part, "{x"
        for kind, value in parts:
            if kind == "text" and merged and merged[-1][0] == "text":
                merged[-1] = ("text", merged[-1][1] + value)
            else:
                merged.append((kind, value))
        return tuple(merged)

    def check_title_cycles(self, entities: list[Entity]) -> None:
        """A ref in a title shows the title of the record it points to: titles that
        name each other in a circle would never end."""
        by_name = {e.name: e for e in entities}
        graph = {
            e.name: [f for f in (e.field(v) for k, v in e.title if k == "field") if f.type == "ref" and f.to in by_name]
            for e in entities
        }
        for e, cycle in ref_cycles(entities, graph):
            self.error(
                f'entity "{e.name}"',
                f"its title shows refs whose titles lead back to it ({' -> '.join(cycle)} -> {e.name}): take one of those refs out of a title",
            )

    def field_list(self, where, raw, key, by_name, names, types) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(where, f'"{key}" must be a list of field names')
            return ()
        if key == "list" and not value:
            self.error(where, '"list" must name at least one field')
        if len(set(value)) != len(value):
            self.error(where, f'"{key}" names a field twice')
        for v in value:
            if v not in names:
                if names:
                    self.error(where, f'{key} names unknown field "{v}" (fields: {", ".join(names)})')
            elif v in by_name and types and by_name[v].type not in types:
                self.error(where, f'{key} field "{v}" is a {by_name[v].type} field; search looks only in {", ".join(types)} fields')
        return tuple(value)

    def renamed_from(self, where, raw) -> str | None:
        value = raw.get("renamed_from")
        if value is None:
            return None
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.error(where, f"renamed_from {value!r} must be an old name matching ^[a-z][a-z0-9_]{{0,39}}$")
            return None
        if value == raw.get("name"):
            self.error(where, f'renamed_from "{value}" is the current name')
            return None
        return value

    def assign_modules(self, entities: list[Entity]) -> list[Entity]:
        taken = set(APP_MODULES)
        result = []
        for e in entities:
            module = e.name
            while module in taken or module in PY_NAMES:
                module += "_"
            taken.add(module)
            result.append(dataclasses.replace(e, module=module))
        return result

    def check_urls(self, entities: list[Entity]) -> None:
        owner: dict[str, str] = {}
        for e in entities:
            where = f'entity "{e.name}"'
            if e.url in APP_URLS:
                self.error(where, f'its URL /{e.url}/ is one of the app\'s own ({", ".join(sorted(APP_URLS))}): set another "plural"')
            elif e.url in owner:
                self.error(where, f'its URL /{e.url}/ is also entity "{owner[e.url]}"\'s: give one of them another "plural"')
            else:
                owner[e.url] = e.name

    def check_renames(self, entities: list[Entity]) -> None:
        names = {e.name for e in entities}
        for e in entities:
            if e.renamed_from and e.renamed_from in names:
                self.error(f'entity "{e.name}"', f'renamed_from "{e.renamed_from}" is still an entity of this vertical')
            fnames = {f.name for f in e.fields}
            for f in e.fields:
                if f.renamed_from and f.renamed_from in fnames:
                    self.error(f'entity "{e.name}", field "{f.name}"', f'renamed_from "{f.renamed_from}" is still a field of this entity')

    def check_required_ref_cycles(self, entities: list[Entity]) -> None:
        """A cycle of required refs means no first record can ever be saved."""
        graph = {e.name: [f for f in e.fields if f.type == "ref" and f.required] for e in entities}
        for e, cycle in ref_cycles(entities, graph):
            self.error(
                f'entity "{e.name}"',
                f"required refs form a cycle ({' -> '.join(cycle)} -> {e.name}), so no first record could be saved: make one of them optional",
            )

    # Fields ---------------------------------------------------------------------------

    def field(self, entity: str, raw: dict, index: int, entity_names: list[str], seen: set[str]) -> Field | None:
        name = raw.get("name")
        if name is None:
            self.error(f'entity "{entity}", field #{index + 1}', '"name" is required')
            return None
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.error(f'entity "{entity}", field #{index + 1}', f"name {name!r} must match ^[a-z][a-z0-9_]{{0,39}}$")
            return None
        where = f'entity "{entity}", field "{name}"'
        if name in seen:
            self.error(where, "field names must be unique in an entity: it is defined twice")
            return None
        seen.add(name)
        start = len(self.problems)
        if name in SYSTEM_COLUMNS:
            self.error(where, f'"{name}" is a system column ({", ".join(sorted(SYSTEM_COLUMNS))}) that every record has already: choose another name')
        elif name in RESERVED_FIELDS:
            self.error(where, f'"{name}" is reserved ({", ".join(sorted(RESERVED_FIELDS - SYSTEM_COLUMNS))}): choose another name')

        ftype = raw.get("type")
        if ftype is None:
            self.error(where, '"type" is required (one of: ' + ", ".join(TYPES) + ")")
            return None
        if ftype not in TYPES:
            self.error(where, f'unknown type "{ftype}" (known: {", ".join(TYPES)})')
            return None
        allowed = COMMON_FIELD_KEYS | TYPE_KEYS.get(ftype, set())
        for key in raw:
            if key not in allowed:
                owners = [t for t, keys in TYPE_KEYS.items() if key in keys]
                if owners:
                    self.error(where, f'"{key}" does not apply to a {ftype} field (only to {", ".join(owners)})')
                else:
                    self.error(where, f'unknown key "{key}" (allowed for a {ftype} field: {", ".join(sorted(allowed))})')

        flags = {}
        for key in ("required", "unique"):
            value = raw.get(key, False)
            if not isinstance(value, bool):
                self.error(where, f'"{key}" must be true or false')
                value = False
            flags[key] = value
        if ftype == "boolean":
            for key in ("required", "unique"):
                if raw.get(key):
                    self.error(where, f'a boolean field cannot be {key}: it is always true or false (set "default" instead)')

        label = self.text(where, raw, "label", limit=80) or name.replace("_", " ").capitalize()
        help_text = self.text(where, raw, "help", limit=300, empty_ok=True) or ""
        renamed_from = self.renamed_from(where, raw)
        row_columns = SYSTEM_COLUMNS | ROWID_ALIASES
        if renamed_from in row_columns:
            # migrate renames a live column of the old name: renaming "id" renumbers records.
            self.error(where, f'renamed_from "{renamed_from}" is a system column ({", ".join(sorted(row_columns))}), not an old field name: migrate would rename the column every record has')

        max_length = places = lo = hi = to = on_delete = None
        choices: tuple[str, ...] = ()
        choice_labels: tuple[str, ...] = ()
        unit = (self.text(where, raw, "unit", limit=20) if ftype in ("integer", "decimal") else "") or ""
        if ftype == "string":
            max_length = raw.get("max_length", STRING_MAX_LENGTH)
            if not _is_int(max_length) or not 1 <= max_length <= 100_000:
                self.error(where, f"max_length {max_length!r} must be a whole number from 1 to 100000")
                max_length = STRING_MAX_LENGTH
        elif ftype == "email":
            max_length = EMAIL_MAX_LENGTH
        elif ftype == "url":
            max_length = URL_MAX_LENGTH
        elif ftype == "decimal":
            places = raw.get("places", 2)
            if not _is_int(places) or not 0 <= places <= MAX_PLACES:
                self.error(where, f"places {places!r} must be a whole number from 0 to {MAX_PLACES}")
                places = 2
        elif ftype == "choice":
            choices, choice_labels = self.choices(where, raw.get("choices"))
        elif ftype == "ref":
            to = raw.get("to")
            known = ", ".join(n for n in entity_names)
            if to is None:
                self.error(where, f'a ref field needs "to", the entity it points at (known: {known})')
            elif to not in entity_names:
                self.error(where, f'ref to unknown entity "{to}" (known: {known})')
            on_delete = raw.get("on_delete", "restrict")
            if on_delete not in ON_DELETE:
                self.error(where, f'on_delete "{on_delete}" must be one of: {", ".join(ON_DELETE)}')
                on_delete = "restrict"
            elif on_delete == "set_null" and flags["required"]:
                self.error(where, "on_delete = \"set_null\" needs an optional field, but it is required: use restrict or cascade")

        if ftype in ("integer", "decimal"):
            lo = self.bound(where, raw, "min", ftype, places)
            hi = self.bound(where, raw, "max", ftype, places)
            if lo is not None and hi is not None and lo > hi:
                self.error(where, f"min ({raw['min']}) is greater than max ({raw['max']})")

        default = None
        if "default" in raw:
            if ftype == "ref":
                self.error(where, "a ref field cannot have a default")
            else:
                default = self.default(where, raw["default"], ftype, max_length, places, lo, hi, choices)
        if ftype == "boolean" and default is None:
            default = False
        if len(self.problems) > start:
            return None
        if ftype == "decimal":
            lo = None if lo is None else _fmt_decimal(lo, places)
            hi = None if hi is None else _fmt_decimal(hi, places)
        return Field(
            name=name, type=ftype, label=label, help=help_text, required=flags["required"],
            unique=flags["unique"], default=default, max_length=max_length, places=places,
            min=lo, max=hi, choices=choices, choice_labels=choice_labels, unit=unit, to=to,
            on_delete=on_delete, renamed_from=renamed_from,
        )

    def choices(self, where, raw) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A choice field's values and labels, from a list of values (labels made by
        choice_label) or a table of value = label; ((), ()) after reporting a problem."""
        rule = '"choices" must be a non-empty list of strings, or a table of value = "label"'
        if raw is None:
            self.error(where, 'a choice field needs "choices", a non-empty list of strings or a table of value = "label"')
            return (), ()
        if isinstance(raw, dict):
            pairs = list(raw.items())
        elif isinstance(raw, list):
            pairs = [(c, choice_label(c) if isinstance(c, str) else c) for c in raw]
        else:
            pairs = []
        if not pairs or not all(isinstance(v, str) and isinstance(l, str) for v, l in pairs):
            self.error(where, rule)
            return (), ()
        for value, label in pairs:
            for kind, text in (("choice", value), ("label", label)):
                problem = (
                    "is empty" if not text.strip() else "is longer than 100 characters" if len(text) > 100
                    else text_problem(text)
                )
                if problem:
                    self.error(where, f"{kind} {text!r} {problem}")
                    return (), ()
        for kind, texts in (('"choices"', [v for v, _ in pairs]), ("choice labels", [l for _, l in pairs])):
            if len(set(texts)) != len(texts):
                dupes = sorted({t for t in texts if texts.count(t) > 1})
                self.error(where, f'{kind} must be unique: {", ".join(dupes)} appears more than once')
                return (), ()
        return tuple(v for v, _ in pairs), tuple(l for _, l in pairs)

    def bound(self, where, raw, key, ftype, places):
        if key not in raw:
            return None
        value = raw[key]
        if ftype == "integer":
            if not _is_int(value) or abs(value) >= 2**63:
                self.error(where, f"{key} {value!r} must be a whole number")
                return None
            return value
        number = _decimal(value)
        if number is None or abs(number) >= DECIMAL_LIMIT:
            self.error(where, f"{key} {value!r} must be a number below 10^12")
            return None
        if _places_of(number) > places:
            self.error(where, f"{key} {value!r} has more than {places} decimal places")
            return None
        return number

    def default(self, where, value, ftype, max_length, places, lo, hi, choices):
        """The default in its normalized form, or None after reporting why it is refused."""
        def refuse(rule: str):
            self.error(where, f"default {value!r} {rule}")
            return None

        if ftype in TEXT_LIKE:
            if not isinstance(value, str):
                return refuse(f"must be a string for a {ftype} field")
            if max_length is not None and len(value) > max_length:
                return refuse(f"is longer than max_length {max_length}")
            if not value.strip():
                return refuse("is blank: the form stores a blank value as empty")
            if ftype == "email" and not (EMAIL_RE.match(value) and _form_accepts("email", value)):
                return refuse("is not an email address the app's form accepts")
            if ftype == "url" and not (URL_RE.match(value) and _form_accepts("url", value)):
                return refuse("is not an http(s) URL with a domain name, as the app's form requires")
            if ftype == "choice" and choices and value not in choices:
                return refuse(f"is not one of the choices ({', '.join(choices)})")
            return value
        if ftype == "boolean":
            return value if isinstance(value, bool) else refuse("must be true or false")
        if ftype == "integer":
            if not _is_int(value):
                return refuse("must be a whole number")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                return refuse(f"is outside min/max ({_range(lo, hi)})")
            return value
        if ftype == "decimal":
            number = _decimal(value)
            if number is None:
                return refuse("must be a number")
            if _places_of(number) > places:
                return refuse(f"has more than {places} decimal places")
            if abs(number) >= DECIMAL_LIMIT:
                return refuse("must be below 10^12")
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                return refuse(f"is outside min/max ({_range(lo, hi)})")
            return _fmt_decimal(number, places)
        if ftype == "date":
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, str):
                try:
                    return dt.date.fromisoformat(value).isoformat() if len(value) == 10 else refuse("must be a date such as 2024-01-31")
                except ValueError:
                    pass
            return refuse("must be a date such as 2024-01-31")
        if ftype == "datetime":
            parsed = value
            if isinstance(value, str):
                try:
                    parsed = dt.datetime.fromisoformat(value)
                except ValueError:
                    return refuse("must be a date and time such as 2024-01-31T08:30:00")
            if not isinstance(parsed, dt.datetime):
                return refuse("must be a date and time such as 2024-01-31T08:30:00")
            if parsed.tzinfo is not None:
                return refuse("must be a local date and time, without a UTC offset")
            return parsed.replace(microsecond=0).isoformat()
        return refuse(f"is not accepted for a {ftype} field")


# --- derived names --------------------------------------------------------------------


def ref_cycles(entities, graph: dict[str, list]) -> list[tuple]:
    """[(entity, ["a.b", "b.a"])]: each cycle of refs in `graph` ({entity name: its refs
    that count}) once, as met from the first entity on it."""

    def path_back(start: str, node: str, trail: list[str], visited: set[str]) -> list[str] | None:
        for f in graph.get(node, []):
            step = trail + [f"{node}.{f.name}"]
            if f.to == start:
                return step
            if f.to not in visited:
                visited.add(f.to)
                found = path_back(start, f.to, step, visited)
                if found:
                    return found
        return None

    cycles = []
    reported: set[frozenset] = set()
    for e in entities:
        cycle = path_back(e.name, e.name, [], {e.name})
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            cycles.append((e, cycle))
    return cycles


def text_problem(value: str) -> str | None:
    """Why a display text is refused, or None.

    Display text reaches the app as data (app/spec.json) and is escaped where it is
    shown, so any characters work but control characters (a line break in a label).
    """
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        return "must be one line of text, without control characters"
    return None


def is_system_table(name: str) -> bool:
    """True for the app's own tables and SQLite's, which no entity may be or replace."""
    return name in RESERVED_ENTITIES or name.startswith(RESERVED_PREFIXES)


def pluralize(word: str) -> str:
    """English plural of the last word, good enough for a default (the spec can say)."""
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


# Field names that hold a record's own name (default_title's second rule).
OWN_NAMES = ("name", "title", "subject", "label")


def default_title(fields: list[Field], label: str) -> tuple[tuple[str, str], ...]:
    """The title of an entity whose spec names none, the first rule that applies:

    1. a required unique string names the record on its own: "{code}";
    2. a required string called name or title (or subject, label): the record's own
       name, "{title}";
    3. a required unique integer, after the label: "Invoice {number}";
    4. a date or datetime (a required one first), after the label: "Survey {surveyed_on}",
       so a record about an event is never named by a person's name it holds;
    5. a string (a required one first): "{surveyor}";
    6. none: the label and the id, "Order #3".
    """
    def first(types, unique=False):
        found = [f for f in fields if f.type in types and (f.required and f.unique if unique else True)]
        found.sort(key=lambda f: not f.required)  # stable: required ones first, in spec order
        return found[0] if found else None

    if (f := first(("string",), unique=True)) is not None:
        return (("field", f.name),)
    named = [f for f in fields if f.type == "string" and f.required and f.name in OWN_NAMES]
    if named:
        return (("field", named[0].name),)
    if (f := first(("integer",), unique=True)) is not None:
        return (("text", label + " "), ("field", f.name))
    if (f := first(("date", "datetime"))) is not None:
        return (("text", label + " "), ("field", f.name))
    if (f := first(("string",))) is not None:
        return (("field", f.name),)
    return ()


def default_list(fields: list[Field], title_field: str | None) -> tuple[str, ...]:
    """The list page's columns: the title's first field, then up to three more."""
    names = [title_field] if title_field else []
    for f in fields:
        if len(names) >= 4:
            break
        if f.name not in names and f.type != "text":
            names.append(f.name)
    if not names and fields:
        names = [fields[0].name]
    return tuple(names)


def assign_attrs(fields: list[Field]) -> list[Field]:
    """Python attribute names: the field name, with "_" added while it would clash."""
    taken: set[str] = set()
    result = []
    for f in fields:
        attr = f.name
        if attr.startswith("validate_"):  # WTForms would take form.validate_x as a validator
            attr = "field_" + attr
        while attr in taken or attr in FORM_ATTRS or keyword.iskeyword(attr):
            attr += "_"
        taken.add(attr)
        result.append(dataclasses.replace(f, attr=attr))
    return result


class _DefaultsForm(Form):
    """The generated app's own validators for these types: a default must pass them."""

    email = EmailField(validators=[Email()])
    url = URLField(validators=[URL()])


def _form_accepts(name: str, value: str) -> bool:
    form = _DefaultsForm(data={name: value})
    return form[name].validate(form)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decimal(value) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _places_of(number: Decimal) -> int:
    exponent = number.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _fmt_decimal(number: Decimal, places: int) -> str:
    return f"{number:.{places}f}"


def _range(lo, hi) -> str:
    return f"{'' if lo is None else lo}..{'' if hi is None else hi}"
