"""Teams: invitations, roles enforced on every route, removals, the account's last owner."""

import re
import sqlite3

import pytest

import factories
from app.db import get_db
from conftest import PASSWORD, AuthActions, forget_mail_requests, invite, link_in, mails, member

# Routes anyone may use, logged in or not.
PUBLIC = {
    "static", "main.index", "main.healthz", "main.robots", "main.sitemap", "auth.signup", "auth.login", "auth.logout",
    "tokens.verify", "tokens.forgot", "tokens.reset", "team.join",
}
# Who may use each logged-in route (endpoint, method): "member" (any role), "editor"
# (owners and editors) or "owner". An entity's routes are matched by their view name.
ENTITY_ROUTES = {
    ("index", "GET"): "member", ("detail", "GET"): "member", ("export", "GET"): "member",
    ("new", "GET"): "editor", ("new", "POST"): "editor",
    ("edit", "GET"): "editor", ("edit", "POST"): "editor",
    ("delete", "GET"): "editor", ("delete", "POST"): "editor",
    ("import_records", "GET"): "editor", ("import_records", "POST"): "editor",
}
APP_ROUTES = {
    ("auth.change_password", "GET"): "member", ("auth.change_password", "POST"): "member",
    ("tokens.resend", "POST"): "member",
    ("team.team", "GET"): "member", ("team.team", "POST"): "owner",
    ("team.withdraw", "POST"): "owner", ("team.change_role", "POST"): "owner",
    ("team.remove", "POST"): "owner", ("team.activity", "GET"): "owner",
    ("settings.settings", "GET"): "member", ("settings.change_email", "POST"): "member",
    ("settings.delete_account", "POST"): "owner",
    # Last: a member who leaves is gone for the routes after it.
    ("team.leave", "POST"): "member",
}
MAY = {"owner": {"owner"}, "editor": {"owner", "editor"}, "member": {"owner", "editor", "viewer"}}


def who_may(endpoint, method):
    blueprint, _, view = endpoint.partition(".")
    if (endpoint, method) in APP_ROUTES:
        return APP_ROUTES[endpoint, method]
    if blueprint in {route[0] for route in factories.ROUTES.values()}:
        return ENTITY_ROUTES[view, method]
    raise AssertionError(f"{method} {endpoint}: not in the roles matrix")


def routes(app):
    """Every (endpoint, method, rule) of the app's URL map but the public ones, with
    team.leave last."""
    found = [
        (rule.endpoint, method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in PUBLIC
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    ]
    return sorted(found, key=lambda r: r[0] == "team.leave")


def test_every_route_is_in_the_matrix(app):
    for endpoint, method, _ in routes(app):
        assert who_may(endpoint, method) in MAY
    public = {rule.endpoint for rule in app.url_map.iter_rules()} & PUBLIC
    assert public == PUBLIC  # the public list names real routes


def test_roles_matrix(app, client, auth, other_client):
    """Each route, for each kind of user: allowed, 403, 404 or sent to log in, exactly
    as designed; every write is refused on the server, whatever the form sent."""
    auth.signup()
    owner = client
    users = {
        "editor": member(app, owner, "editor@example.com", "editor"),
        "viewer": member(app, owner, "viewer@example.com", "viewer"),
        "other account": other_client,
    }
    removed = member(app, owner, "removed@example.com", "editor")
    with app.app_context():
        removed_id = get_db().execute("""SELECT "id" FROM "user" WHERE "email" = 'removed@example.com'""").fetchone()[0]
    assert owner.post(f"/team/{removed_id}/remove").status_code == 302
    users["removed"] = removed
    users["owner"] = owner  # last: its writes (a delete, a withdrawal) happen after the others tried
    for endpoint, method, rule in routes(app):
        for name, user in users.items():
            url = target(app, owner, endpoint, rule)
            response = user.open(url, method=method, data={})
            response.get_data()
            status = response.status_code
            where = f"{name}: {method} {url} ({endpoint}) gave {status}"
            if name == "removed":
                assert status == 302 and "/login" in response.location, where
            elif name == "other account":
                if "<" in rule:  # a record, invitation or member of the owner's account
                    assert status == 404, where
                else:  # their own account's page
                    role = who_may(endpoint, method)
                    assert status not in (401, 403, 404) and not is_login(response), where
                    assert role == "member" or "owner" in MAY[role], where
            elif name in MAY[who_may(endpoint, method)]:
                assert status not in (401, 403, 404) and not is_login(response), where
            else:
                assert status == 403, where


def is_login(response):
    return response.status_code == 302 and "/login" in response.location


def target(app, owner, endpoint, rule):
    """The rule's URL, with a record, member or invitation of the owner's account
    wherever it takes one: a new one when a user before deleted it."""
    url = rule
    forget_deleted(app, owner)
    if "<int:id>" in url:
        blueprint = endpoint.split(".")[0]
        name = next(name for name, route in factories.ROUTES.items() if route[0] == blueprint)
        id = _records.get(name) or factories.one_of_each(owner)[blueprint]
        with app.app_context():
            gone = get_db().execute(f'SELECT 1 FROM "{name}" WHERE "id" = ?', (id,)).fetchone() is None
        if gone:  # deleted by a user before (or with a record it referred to): a new one
            id = getattr(factories, f"create_{name}")(owner)
        _records[name] = id
        url = url.replace("<int:id>", str(id))
    if "<int:user_id>" in url:
        fresh = f"member{next(_numbers)}@example.com"
        member(app, owner, fresh, "viewer")
        with app.app_context():
            user_id = get_db().execute('SELECT "id" FROM "user" WHERE "email" = ?', (fresh,)).fetchone()[0]
        url = url.replace("<int:user_id>", str(user_id))
    if "<key>" in url:
        invited = f"invited{next(_numbers)}@example.com"
        invite(owner, invited, "viewer")
        with app.app_context():
            key = get_db().execute('SELECT "hash" FROM "app_invitation" WHERE "email" = ?', (invited,)).fetchone()[0]
        url = url.replace("<key>", key)
    return url


def forget_deleted(app, owner):
    """Make factories forget the owner's records a user deleted (or that went with a
    record they referred to): refs must point at records that exist."""
    made = factories._existing.get(owner, {})
    with app.app_context():
        db = get_db()
        for (name, n), id in list(made.items()):
            if db.execute(f'SELECT 1 FROM "{name}" WHERE "id" = ?', (id,)).fetchone() is None:
                del made[name, n]


_numbers = iter(range(1, 10**6))
_records = {}  # entity: the id of the owner's record the matrix uses


@pytest.fixture(autouse=True)
def fresh_records():
    _records.clear()


@pytest.fixture(autouse=True)
def no_mail_limits(app):
    # The matrix sends many invitations from one address.
    app.config["MAIL_MAX_PER_ADDRESS"] = 10_000


def test_an_invitation_works_once_and_the_member_gets_the_role(app, logged_in):
    path = invite(logged_in, "Ann@Example.com", "viewer")
    message = mails(app, "ann@example.com")[-1]
    assert "Acme" in message["Subject"] and "viewer" in message.get_content()
    page = app.test_client().get(path)
    assert page.status_code == 200 and b"owner@example.com invited" in page.data
    ann = app.test_client()
    assert ann.post(path, data={"password": PASSWORD, "confirm": PASSWORD}).status_code == 302
    assert ann.get("/team").status_code == 200
    assert b"ann@example.com (you)" in ann.get("/team").data
    again = app.test_client().post(path, data={"password": PASSWORD, "confirm": PASSWORD})
    assert again.status_code == 410 and b"already been used" in again.data
    assert app.test_client().get("/invite/not-a-token").status_code == 404
    # The viewer reads but never writes.
    list_url = next(iter(factories.ROUTES.values()))[1]
    listed = ann.get(list_url)
    assert listed.status_code == 200 and b"Import CSV" not in listed.data
    assert ann.post(list_url + "new", data={}).status_code == 403


def test_an_expired_or_withdrawn_invitation_gets_a_clear_page(app, logged_in):
    path = invite(logged_in, "late@example.com")
    with app.app_context():
        db = get_db()
        with db:
            db.execute("""UPDATE "app_invitation" SET "expires_at" = '2000-01-01T00:00:00Z'""")
    response = app.test_client().get(path)
    assert response.status_code == 410 and b"expired" in response.data
    path = invite(logged_in, "withdrawn@example.com")
    with app.app_context():
        key = get_db().execute("""SELECT "hash" FROM "app_invitation" WHERE "email" = 'withdrawn@example.com'""").fetchone()[0]
    assert logged_in.post(f"/team/invitations/{key}/withdraw").status_code == 302
    assert app.test_client().get(path).status_code == 404


def test_an_address_with_an_account_cannot_join_another(app, logged_in, other_client):
    forget_mail_requests(app)  # other@example.com was mailed a moment ago
    path = invite(logged_in, "other@example.com")
    page = app.test_client().get(path)
    assert page.status_code == 200 and b"already has its own account" in page.data
    assert app.test_client().post(path, data={"password": PASSWORD, "confirm": PASSWORD}).status_code == 409


def test_removing_a_member_ends_their_sessions_at_once(app, logged_in):
    editor = member(app, logged_in, "ed@example.com", "editor")
    assert editor.get("/team").status_code == 200
    with app.app_context():
        ed = get_db().execute("""SELECT "id" FROM "user" WHERE "email" = 'ed@example.com'""").fetchone()[0]
    assert logged_in.post(f"/team/{ed}/remove").status_code == 302
    assert is_login(editor.get("/team"))
    assert AuthActions(app.test_client()).login("ed@example.com").status_code == 200  # no such user now


def test_the_last_owner_cannot_leave_be_removed_or_demoted(app, logged_in):
    with app.app_context():
        me = get_db().execute("""SELECT "id" FROM "user" WHERE "email" = 'owner@example.com'""").fetchone()[0]
    for response in (
        logged_in.post("/team/leave", follow_redirects=True),
        logged_in.post(f"/team/{me}/remove", follow_redirects=True),
        logged_in.post(f"/team/{me}/role", data={"role": "viewer"}, follow_redirects=True),
    ):
        assert b"make another member owner first" in response.data
    assert logged_in.get("/activity").status_code == 200  # still the owner
    # With a second owner, the first may step down.
    member(app, logged_in, "co@example.com", "owner")
    assert logged_in.post(f"/team/{me}/role", data={"role": "editor"}).status_code == 302
    assert logged_in.get("/activity").status_code == 403


def test_role_changes_are_in_the_activity(app, logged_in):
    member(app, logged_in, "v@example.com", "viewer")
    with app.app_context():
        v = get_db().execute("""SELECT "id" FROM "user" WHERE "email" = 'v@example.com'""").fetchone()[0]
    logged_in.post(f"/team/{v}/role", data={"role": "editor"})
    page = logged_in.get("/activity").get_data(as_text=True)
    assert "changed the role of" in page and "Viewer" not in page  # roles are shown as stored
    assert re.search(r"<del>viewer</del>\s*→\s*<ins>editor</ins>", page)
    assert "v@example.com joined" in page and "invited" in page


def test_a_database_of_single_user_accounts_migrates_with_owners(app, tmp_path):
    """A user of a database made before teams becomes the owner of their account."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE "account" ("id" INTEGER PRIMARY KEY, "name" TEXT NOT NULL,
            "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')));
        CREATE TABLE "user" ("id" INTEGER PRIMARY KEY,
            "account_id" INTEGER NOT NULL REFERENCES "account"("id") ON DELETE CASCADE,
            "email" TEXT NOT NULL UNIQUE, "password_hash" TEXT NOT NULL,
            "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')));
        INSERT INTO "account" ("name") VALUES ('Old Co');
        INSERT INTO "user" ("account_id", "email", "password_hash") VALUES (1, 'old@example.com', 'x');
        """
    )
    conn.commit()
    conn.close()
    app.config["DATABASE"] = str(path)
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(path)
    assert conn.execute('SELECT "email", "role" FROM "user"').fetchall() == [("old@example.com", "owner")]
    assert {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")} == {
        "app_audit_no_update", "app_audit_no_delete"}
    conn.close()


def test_invitation_mail_links_are_absolute(app, logged_in):
    invite(logged_in, "abs@example.com")
    assert re.search(r"http://localhost/invite/\S+", mails(app, "abs@example.com")[-1].get_content())
    assert link_in(mails(app, "abs@example.com")[-1]).startswith("/invite/")
