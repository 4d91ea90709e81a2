"""Secret key, session cookie, CSRF, security headers, login throttling, escaping."""

import io
import os
import re
import stat
import time
from datetime import timedelta

import pytest
from flask import request, session

from app import create_app, tokens
from app.db import get_db

import factories
from conftest import PASSWORD, TEST_CONFIG, AuthActions, invite


def make_app(data_dir, **config):
    """Another app on the same data folder, as a second worker or a restart would be."""
    return create_app({**TEST_CONFIG, "DATA_DIR": str(data_dir), **config})


def count(app, table):
    with app.app_context():
        return get_db().execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


# -- secret key -------------------------------------------------------------------


def test_secret_key_file_created_private_and_reused(app, tmp_path):
    path = tmp_path / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(app.config["SECRET_KEY"]) >= 32
    assert app.config["SECRET_KEY"] == path.read_text().strip()
    assert make_app(tmp_path).config["SECRET_KEY"] == app.config["SECRET_KEY"]


def test_secret_key_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "from-the-environment")
    app = make_app(tmp_path)
    assert app.config["SECRET_KEY"] == "from-the-environment"
    assert not (tmp_path / "secret_key").exists()


def test_no_debug_by_default(app, monkeypatch):
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    assert not make_app(app.config["DATA_DIR"]).debug


# -- session cookie ---------------------------------------------------------------


def session_cookie_header(response):
    return next(h for h in response.headers.getlist("Set-Cookie") if "session=" in h.split(";")[0])


def test_session_cookie_flags_over_http(client, auth):
    cookie = session_cookie_header(auth.signup())
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    assert "Expires=" in cookie  # a permanent session, with PERMANENT_SESSION_LIFETIME


def test_session_cookie_over_http_keeps_its_plain_name(app, client, auth):
    cookie = session_cookie_header(auth.signup())
    assert cookie.startswith(app.config["SESSION_COOKIE_NAME"] + "=")
    assert "__Host-" not in cookie


def test_session_cookie_behind_https_proxy_is_host_prefixed_and_secure(client, auth):
    auth.client.environ_base["HTTP_X_FORWARDED_PROTO"] = "https"
    cookie = session_cookie_header(auth.signup())
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0].startswith("__Host-session=")
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= set(attributes)
    assert not any(part.lower().startswith("domain=") for part in attributes)
    # The browser sends it back under that name: the session goes on over HTTPS.
    assert client.get("/account/password").status_code == 200


def test_session_cookie_secure_forced(tmp_path, monkeypatch):
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "1")
    app = make_app(tmp_path)
    app.test_cli_runner().invoke(args=["migrate"])
    assert "Secure" in session_cookie_header(AuthActions(app.test_client()).signup())


def test_session_renewed_at_login(client, auth):
    auth.signup()
    auth.logout()
    with client.session_transaction() as s:
        s["planted"] = "by someone else"
    auth.login()
    with client:
        client.get("/")
        assert "planted" not in session
        assert session.permanent


def test_session_cookie_renewed_once_a_day_of_use(client, auth):
    auth.signup()
    client.get("/")  # the first page adds its CSRF token to the session
    assert not client.get("/").headers.getlist("Set-Cookie")  # renewed at login, today
    with client.session_transaction() as s:
        s["renewed"] = "2000-01-01"  # last used long ago (but within its lifetime)
    cookie = session_cookie_header(client.get("/"))
    assert "Expires=" in cookie  # a new lifetime from today
    assert not client.get("/").headers.getlist("Set-Cookie")
    assert b"/logout" in client.get("/").data  # still logged in


def logged_in_page(client):
    return b"/logout" in client.get("/").data


def test_a_remembered_cookie_still_expires(app, client, auth):
    auth.signup()
    assert logged_in_page(client) and logged_in_page(client)  # checked, then remembered
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=1)
    time.sleep(2.1)
    assert not logged_in_page(client)


def test_a_remembered_cookie_follows_the_secret_key(app, client, auth):
    auth.signup()
    assert logged_in_page(client) and logged_in_page(client)
    old = app.secret_key
    app.secret_key = app.config["SECRET_KEY"] = "another key"
    app.config["SECRET_KEY_FALLBACKS"] = [old]
    assert logged_in_page(client)  # still signed with a key the app accepts
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert not logged_in_page(client)


def test_a_remembered_cookie_gives_its_own_values_each_time(app, client, auth):
    auth.signup()
    with client.session_transaction() as s:
        s["_flashes"] = [("success", "Once.")]
    cookie = f"{app.config['SESSION_COOKIE_NAME']}={client.get_cookie(app.config['SESSION_COOKIE_NAME']).value}"
    for _ in range(3):
        with app.test_request_context("/", headers={"Cookie": cookie}):
            opened = app.session_interface.open_session(app, request)
            assert [message for _, message in opened["_flashes"]] == ["Once."]
            opened["_flashes"].append(("error", "Twice?"))  # as flash() does
            opened["user_id"] = -1


# -- CSRF -------------------------------------------------------------------------


@pytest.fixture
def csrf_app(app):
    app.config["WTF_CSRF_ENABLED"] = True
    return app


def csrf_token(client, url, **kwargs):
    page = client.get(url, **kwargs).data
    return re.search(rb'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1).decode()


def test_csrf_refuses_post_without_token(csrf_app, client):
    data = {"account": "Acme", "email": "owner@example.com", "password": PASSWORD, "confirm": PASSWORD}
    response = client.post("/signup", data=data)
    assert response.status_code == 400
    assert b"did not come from this site" in response.data
    assert count(csrf_app, "account") == 0 and count(csrf_app, "user") == 0
    assert AuthActions(client).signup(csrf_token=csrf_token(client, "/signup")).status_code == 302
    assert count(csrf_app, "account") == 1


def test_csrf_refuses_password_change_and_logout_without_token(csrf_app, client):
    assert AuthActions(client).signup(csrf_token=csrf_token(client, "/signup")).status_code == 302
    with csrf_app.app_context():
        before = get_db().execute('SELECT "password_hash" FROM "user"').fetchone()[0]
    response = client.post(
        "/account/password",
        data={"current_password": PASSWORD, "password": "a new long password", "confirm": "a new long password"},
    )
    assert response.status_code == 400
    with csrf_app.app_context():
        assert get_db().execute('SELECT "password_hash" FROM "user"').fetchone()[0] == before
    assert client.post("/logout").status_code == 400
    assert client.get("/account/password").status_code == 200  # still logged in


def test_csrf_token_accepted_as_htmx_header(csrf_app, client, auth):
    token = csrf_token(client, "/login")
    response = client.post("/logout", headers={"X-CSRFToken": token})
    assert response.status_code == 302


# -- headers and error pages ------------------------------------------------------


@pytest.mark.parametrize("url", ["/", "/login", "/no-such-page", "/static/style.css", "/healthz"])
def test_security_headers(client, url):
    headers = client.get(url).headers
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"


def test_every_logged_in_response_is_private(app, logged_in):
    """A crawl of every GET route of the app, logged in: no proxy may keep any of it."""
    records = factories.one_of_each(logged_in)
    with app.app_context():  # the mailed links, unused
        db = get_db()
        with db:
            links = {purpose: tokens.issue(db, purpose, "owner@example.com", user_id=1) for purpose in ("verify", "reset")}
    links["join"] = invite(logged_in, "new@example.com").removeprefix("/invite/")
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        url = rule.rule.replace("<int:id>", str(records.get(rule.endpoint.split(".")[0])))
        url = url.replace("<token>", links.get(rule.endpoint.split(".")[1], ""))
        assert "<" not in url, url
        for headers in ({}, {"HX-Request": "true"}):
            response = logged_in.get(url, headers=headers)
            response.get_data()  # the CSV export streams: read it to its end
            assert response.status_code < 400, (url, response.status_code)
            assert response.headers["Cache-Control"] == "private, no-store", url
    static = logged_in.get("/static/style.css")
    assert "no-store" not in static.headers.get("Cache-Control", "")


def test_logged_out_pages_may_be_cached(client):
    assert "no-store" not in client.get("/").headers.get("Cache-Control", "")
    assert "no-store" not in client.get("/login").headers.get("Cache-Control", "")


def test_strict_transport_security_over_https_only(client):
    assert "Strict-Transport-Security" not in client.get("/login").headers
    assert "Strict-Transport-Security" not in client.get("/login", headers={"X-Forwarded-Proto": "http"}).headers
    headers = client.get("/login", headers={"X-Forwarded-Proto": "https"}).headers
    assert headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"


def test_csrf_over_https_on_another_port(csrf_app, client):
    """Behind nginx on https://host:8443/, the form's Referer names the port: nginx
    passes it in X-Forwarded-Port, and the CSRF check accepts the form."""
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example", "X-Forwarded-Port": "8443"}
    token = csrf_token(client, "/signup", headers=proxy)  # in the HTTPS session (__Host-session)
    response = AuthActions(client).signup(csrf_token=token, headers={**proxy, "Referer": "https://shop.example:8443/signup"})
    assert response.status_code == 302
    assert count(csrf_app, "user") == 1


def test_a_views_own_security_header_wins(app, client):
    @app.get("/framed")
    def framed():
        return "ok", {"X-Frame-Options": "SAMEORIGIN"}

    headers = client.get("/framed").headers
    assert headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "url", "status", "text"),
    [
        ("get", "/no-such-page", 404, b"Page not found"),
        ("post", "/healthz", 405, b"Method not allowed"),
    ],
)
def test_error_pages(client, method, url, status, text):
    response = getattr(client, method)(url)
    assert response.status_code == status
    assert text in response.data
    assert b'href="/static/style.css' in response.data  # the app's own layout


def test_500_page_shows_no_details(app, client):
    app.testing = False  # let the error handler answer instead of raising into the test

    @app.route("/boom")
    def boom():
        raise RuntimeError("secret detail")

    response = client.get("/boom")
    assert response.status_code == 500
    assert b"Something went wrong" in response.data
    assert b"secret detail" not in response.data


@pytest.mark.parametrize("url", ["/", "/signup", "/login", "/no-such-page"])
def test_no_inline_script_or_style(client, url):
    page = client.get(url).data
    assert re.findall(rb"<script(?![^>]*\bsrc=)", page) == []
    assert b"<style" not in page and b" style=" not in page


def test_account_name_is_escaped(client, auth):
    auth.signup(account="<script>alert(1)</script>")
    page = client.get("/").data
    assert b"<script>alert(1)</script>" not in page
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page


# -- login throttling -------------------------------------------------------------


def fail(app, email="owner@example.com", address="127.0.0.1", times=1):
    client = app.test_client()
    for _ in range(times):
        response = AuthActions(client).login(email=email, password="wrong password", environ_base={"REMOTE_ADDR": address})
        assert response.status_code == 200
    return response


def stranger(app):
    """A browser that never logged in here: no known-device cookie."""
    return AuthActions(app.test_client())


def test_throttled_per_email_and_address(app, client, auth):
    auth.signup()
    auth.logout()
    fail(app, times=5)
    response = stranger(app).login()  # even the right password is refused now
    assert response.status_code == 429
    assert b"Too many failed attempts" in response.data
    assert "Retry-After" in response.headers
    with client.session_transaction() as s:
        assert "user_id" not in s
    # The owner's own browser, where they logged in before, is not locked out.
    assert auth.login().status_code == 302
    # Other emails are not affected.
    assert stranger(app).signup(email="second@example.com").status_code == 302
    assert stranger(app).login(email="second@example.com").status_code == 302


def test_a_strangers_failures_do_not_lock_the_owner_out(app, auth):
    auth.signup()
    auth.logout()
    fail(app, address="203.0.113.9", times=5)
    assert stranger(app).login(environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 429
    assert stranger(app).login(environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 302


def test_throttled_per_email_from_anywhere(app, auth):
    """A guess spread over many addresses still meets a limit, at the email..."""
    app.config["LOGIN_MAX_FAILURES_PER_EMAIL"] = 3
    auth.signup()
    auth.logout()
    for n in range(3):
        fail(app, address=f"203.0.113.{n}")
    assert stranger(app).login(environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 429
    assert stranger(app).signup(email="second@example.com").status_code == 302
    # ...which never locks the owner out where they logged in before: not in their own
    # browser, nor in another one at the address they signed up from.
    assert auth.login(environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 302
    assert stranger(app).login().status_code == 302


def test_throttled_per_address(app, auth):
    auth.signup()
    auth.logout()
    for n in range(20):
        fail(app, email=f"guess{n}@example.com", address="203.0.113.9")
    response = stranger(app).login(environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 429
    assert stranger(app).login(environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 302


def test_client_address_comes_from_the_proxy(app, auth):
    """Behind nginx every request comes from 127.0.0.1; X-Forwarded-For tells them apart."""
    auth.signup()
    auth.logout()
    client = app.test_client()
    for n in range(20):
        client.post(
            "/login",
            data={"email": f"guess{n}@example.com", "password": "wrong password"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    assert stranger(app).login(headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 429
    assert stranger(app).login(headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 302


def test_throttling_holds_across_workers_and_restarts(app, tmp_path):
    AuthActions(app.test_client()).signup()
    fail(app, times=3)
    restarted = make_app(tmp_path)
    fail(restarted, times=2)
    assert AuthActions(make_app(tmp_path).test_client()).login().status_code == 429


def test_a_guesser_cannot_lock_the_owner_out(app, auth):
    """Failures at the owner's email from many addresses and from the owner's own
    (shared) office address: the owner still logs in, and the guesser stays limited,
    whoever logs in in between."""
    office, home = {"REMOTE_ADDR": "198.51.100.7"}, {"REMOTE_ADDR": "192.0.2.4"}
    auth.signup(environ_base=office)  # the owner's browser, at the office
    auth.logout()
    assert stranger(app).login(environ_base=home).status_code == 302  # and once from home
    for n in range(100):
        fail(app, address=f"203.0.{n // 200}.{n % 200 + 1}")
    fail(app, address=office["REMOTE_ADDR"], times=5)
    guesser = stranger(app)
    assert guesser.login(environ_base={"REMOTE_ADDR": "203.0.113.250"}).status_code == 429  # per email
    assert guesser.login(environ_base=office).status_code == 429  # per email and address

    # The owner, in the browser they logged in with, at the office; and in a new
    # browser at home, where they logged in lately.
    assert auth.login(environ_base=office).status_code == 302
    auth.logout()
    assert stranger(app).login(environ_base=home).status_code == 302

    # Neither the owner's successes nor a colleague's at the office gave the guesser
    # fresh tries.
    assert stranger(app).signup(email="colleague@example.com", environ_base=office).status_code == 302
    assert guesser.login(environ_base=office).status_code == 429
    assert guesser.login(password="wrong password", environ_base=office).status_code == 429
    with app.app_context():
        failures = get_db().execute('SELECT count(*) FROM "login_attempt" WHERE "email" = ?',
                                    ("owner@example.com",)).fetchone()[0]
    assert failures == 105


def test_a_success_clears_only_the_failures_of_its_own_browser(app, auth):
    auth.signup()
    auth.logout()
    guesser = stranger(app)
    for _ in range(4):
        assert guesser.login(password="wrong password").status_code == 200
    for _ in range(4):  # the owner's own typos, in their known browser
        assert auth.login(password="wrong password").status_code == 200
    assert auth.login().status_code == 302
    auth.logout()
    for _ in range(4):  # the owner's count starts again...
        assert auth.login(password="wrong password").status_code == 200
    assert auth.login().status_code == 302
    auth.logout()
    # ...the guesser's does not: one more try, then the limit.
    assert guesser.login(password="wrong password").status_code == 200
    assert guesser.login().status_code == 429


def test_a_forged_known_device_cookie_counts_for_nothing(app, auth):
    auth.signup()
    auth.logout()
    fail(app, times=5)
    forged = app.test_client()
    forged.set_cookie("known_device", "eyJkZXZpY2UiOiJ4IiwidXNlcnMiOlsxXX0.forged.signature")
    assert AuthActions(forged).login().status_code == 429


def test_old_failures_expire(app, auth):
    auth.signup()
    auth.logout()
    fail(app, times=5)
    assert stranger(app).login().status_code == 429
    with app.app_context():
        db = get_db()
        db.execute("""UPDATE "login_attempt" SET "created_at" = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-16 minutes')""")
        db.commit()
    assert stranger(app).login().status_code == 302


# -- signup throttling ------------------------------------------------------------


def sign_up_from(app, address, n):
    return AuthActions(app.test_client()).signup(email=f"new{n}@example.com", environ_base={"REMOTE_ADDR": address})


def test_signups_are_throttled_per_address(app):
    for n in range(10):
        assert sign_up_from(app, "203.0.113.9", n).status_code == 302
    response = sign_up_from(app, "203.0.113.9", 10)
    assert response.status_code == 429
    assert b"Too many sign-ups" in response.data
    assert response.headers["Retry-After"] == "3600"
    with app.app_context():
        assert get_db().execute('SELECT count(*) FROM "user" WHERE "email" = ?', ("new10@example.com",)).fetchone()[0] == 0
    # Another address signs up as usual.
    assert sign_up_from(app, "198.51.100.7", 11).status_code == 302


def test_old_signups_expire(app):
    for n in range(10):
        sign_up_from(app, "203.0.113.9", n)
    assert sign_up_from(app, "203.0.113.9", 10).status_code == 429
    with app.app_context():
        db = get_db()
        db.execute("""UPDATE "app_signup" SET "created_at" = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-61 minutes')""")
        db.commit()
    assert sign_up_from(app, "203.0.113.9", 10).status_code == 302
    with app.app_context():  # the expired rows were pruned
        assert get_db().execute('SELECT count(*) FROM "app_signup"').fetchone()[0] == 1


# -- what forms read ----------------------------------------------------------------


def test_forms_read_posted_fields_only(app, client, auth):
    """A file, or a JSON body with numbers and lists, where the forms expect text: the
    fields are missing, never a 500."""
    response = client.post("/login", data={"email": (io.BytesIO(b"x"), "email.txt"), "password": "x"})
    assert response.status_code == 200 and b"This field is required." in response.data
    response = client.post("/signup", json={"account": 5, "email": ["a@example.com"], "password": {"a": 1}})
    assert response.status_code == 200 and b"This field is required." in response.data
    assert count(app, "user") == 0
    auth.signup()
    response = client.post("/account/password", json={"current_password": 5, "password": [1], "confirm": None})
    assert response.status_code == 200 and b"This field is required." in response.data
