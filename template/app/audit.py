"""The audit trail: who changed which record when, from what to what, and the events of
an account (logins, failed logins, password resets, invitations, role changes...).

Each change is one row of "app_audit", written in the same transaction as the change
itself: a change that is rolled back leaves no row, and a committed one always has its
row. The table is append-only: triggers in schema_auth.sql refuse UPDATE, and DELETE
while the account exists. The "History" section of a record's page and the account's
/activity page (owners only, in team.py) read it.
"""

import json

from flask import g

from . import spec, values

# What each action is called on the pages.
ACTIONS = {
    "create": "added",
    "update": "changed",
    "delete": "deleted",
    "import": "imported",
    "signup": "opened the account",
    "login": "logged in",
    "login_failed": "failed to log in",
    "password_changed": "changed their password",
    "reset": "reset their password",
    "invite": "invited",
    "withdraw": "withdrew the invitation of",
    "join": "joined",
    "role": "changed the role of",
    "remove": "removed",
    "leave": "left the team",
    "email_changed": "changed their email",
}


def record(db, action, entity=None, record_id=None, changes=None, account_id=None, actor=None):
    """Add a row to the trail, within the caller's transaction on `db`. The account and
    the actor default to the logged-in user's."""
    db.execute(
        'INSERT INTO "app_audit" ("account_id", "actor", "action", "entity", "record_id", "changes", "created_at")'
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            g.user["account_id"] if account_id is None else account_id,
            g.user["email"] if actor is None else actor,
            action,
            entity,
            record_id,
            json.dumps(changes, ensure_ascii=False) if changes else None,
            values.now(),
        ),
    )


def changes(names, before, after):
    """{name: [before, after]} of the columns `names` whose stored values differ;
    `before` or `after` is None for a record added or deleted."""
    found = {}
    for i, name in enumerate(names):
        old = None if before is None else before[name]
        new = None if after is None else after[i]
        if old != new:
            found[name] = [old, new]
    return found


def rows(db, account_id, entity=None, record_id=None, limit=50, offset=0):
    """The trail of an account, newest first; of one record when entity and id are given."""
    where = '"account_id" = ?'
    params = [account_id]
    if entity is not None:
        where += ' AND "entity" = ? AND "record_id" = ?'
        params += [entity, record_id]
    found = db.execute(
        f'SELECT * FROM "app_audit" WHERE {where} ORDER BY "id" DESC LIMIT ? OFFSET ?',
        (*params, limit, offset),
    ).fetchall()
    return [entry(row) for row in found]


def entry(row):
    """A row of the trail as the pages show it: the action in words, what it was done
    to, and the changed fields with their labels and readable values."""
    changed = json.loads(row["changes"]) if row["changes"] else {}
    entity = spec.ENTITIES.get(row["entity"]) if row["entity"] else None
    fields = []
    for name, (old, new) in changed.items():
        field = entity["fields"].get(name) if entity else None
        label = field["label"] if field else name.replace("_", " ").capitalize()
        fields.append((label, shown(field, old), shown(field, new)))
    return {
        "id": row["id"],
        "at": row["created_at"],
        "shown_at": values.show_datetime(row["created_at"]),
        "actor": row["actor"],
        "action": ACTIONS.get(row["action"], row["action"]),
        "entity": entity,
        "entity_name": row["entity"],
        "record_id": row["record_id"],
        "fields": fields,
    }


def shown(field, value):
    """A stored value as a person reads it (values.readable; a ref as "Label #id")."""
    if value is None:
        return ""
    if field is None:
        return str(value)
    if field["type"] == "ref":
        return f"{spec.ENTITIES[field['to']]['label']} #{value}"
    return values.readable(field, value)
