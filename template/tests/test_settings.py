"""Settings (email, account deletion), the audit trail's guarantees, password strength,
and the CSV export's refusal of cross-site requests."""

import sqlite3

import pytest

import factories
from app.db import get_db
from conftest import PASSWORD, link_in, mails, member


def audit_rows(app, account_id=None):
    with app.app_context():
        query = 'SELECT "account_id", "actor", "action" FROM "app_audit"'
        rows = get_db().execute(query + (' WHERE "account_id" = ?' if account_id else ""),
                                (account_id,) if account_id else ()).fetchall()
        return [tuple(row) for row in rows]


def test_changing_the_email_takes_the_link_mailed_to_the_new_address(app, logged_in, auth):
    assert logged_in.get("/settings").status_code == 200
    wrong = logged_in.post("/settings/email", data={"email": "new@example.com", "current_password": "not it"})
    assert wrong.status_code == 400 and b"not your current password" in wrong.data
    assert logged_in.post("/settings/email", data={"email": "New@Example.com", "current_password": PASSWORD}).status_code == 302
    [notice] = [m for m in mails(app, "owner@example.com") if "being changed" in m["Subject"]]
    assert "new@example.com" in notice.get_content()
    link = link_in(mails(app, "new@example.com")[-1])
    assert logged_in.get("/settings").status_code == 200 and b"owner@example.com" in logged_in.get("/settings").data
    auth.open_link(link)
    assert b"new@example.com" in logged_in.get("/settings").data
    assert logged_in.post(link).status_code == 410  # used
    auth.logout()
    assert auth.login("new@example.com").status_code == 302
    assert auth.login("owner@example.com").status_code == 200  # the old address is no login now
    assert ("email_changed" in [action for _, _, action in audit_rows(app)])


def test_deleting_the_account_deletes_its_data_and_nothing_else(app, logged_in, other_client):
    factories.one_of_each(logged_in)
    theirs = factories.one_of_each(other_client)
    editor = member(app, logged_in, "ed@example.com", "editor")
    with app.app_context():
        acme = get_db().execute("""SELECT "id" FROM "account" WHERE "name" = 'Acme'""").fetchone()[0]
    assert audit_rows(app, acme)
    page = logged_in.get("/settings").get_data(as_text=True)
    assert "Delete the account" in page and "export.csv" in page  # the data is offered first
    wrong = logged_in.post("/settings/delete", data={"account": "Acm", "current_password": PASSWORD})
    assert wrong.status_code == 400 and b"not the account" in wrong.data
    assert editor.post("/settings/delete", data={"account": "Acme", "current_password": PASSWORD}).status_code == 403
    done = logged_in.post("/settings/delete", data={"account": "Acme", "current_password": PASSWORD})
    assert done.status_code == 302
    assert logged_in.get("/settings").status_code == 302  # logged out
    assert editor.get("/settings").status_code == 302  # the members too
    with app.app_context():
        db = get_db()
        assert db.execute('SELECT count(*) FROM "user" WHERE "account_id" = ?', (acme,)).fetchone()[0] == 0
        for name in factories.ROUTES:
            assert db.execute(f'SELECT count(*) FROM "{name}" WHERE "account_id" = ?', (acme,)).fetchone()[0] == 0
            assert db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] > 0  # the other account's
    assert audit_rows(app, acme) == []
    urls = {route[0]: route[1] for route in factories.ROUTES.values()}
    for blueprint, id in theirs.items():
        assert other_client.get(f"{urls[blueprint]}{id}").status_code == 200


def test_the_audit_trail_cannot_be_changed(app, logged_in):
    factories.one_of_each(logged_in)
    with app.app_context():
        db = get_db()
        assert db.execute('SELECT count(*) FROM "app_audit"').fetchone()[0] > 0
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("""UPDATE "app_audit" SET "actor" = 'someone else'""")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute('DELETE FROM "app_audit"')
        db.rollback()


def test_logins_and_failed_logins_are_recorded(app, logged_in, auth):
    auth.logout()
    auth.login(password="a wrong guess")
    auth.login()
    actions = [action for _, actor, action in audit_rows(app) if actor == "owner@example.com"]
    assert actions[-2:] == ["login_failed", "login"]
    page = logged_in.get("/activity").get_data(as_text=True)
    assert "failed to log in" in page and "logged in" in page


@pytest.mark.parametrize("password", ["password123", "qwertyuiop", "12345678", "owner@example.com"])
def test_easy_passwords_are_refused(client, password):
    response = client.post("/signup", data={"account": "Acme", "email": "owner@example.com",
                                            "password": password, "confirm": password})
    assert response.status_code == 200 and b"Choose a longer one" in response.data
    assert mails(client.application) == []  # refused before anything was mailed


def test_a_new_password_must_be_hard_to_guess_too(logged_in):
    response = logged_in.post("/account/password", data={
        "current_password": PASSWORD, "password": "iloveyou1", "confirm": "iloveyou1"})
    assert response.status_code == 200 and b"Choose a longer one" in response.data


@pytest.mark.parametrize("site, status", [("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200), (None, 200)])
def test_the_export_refuses_other_sites(logged_in, site, status):
    url = next(iter(factories.ROUTES.values()))[1] + "export.csv"
    headers = {"Sec-Fetch-Site": site} if site else {}
    assert logged_in.get(url, headers=headers).status_code == status
