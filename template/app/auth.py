"""Accounts: sign up, log in, log out, change password; who is logged in (g.user).

A customer account ("account") has users ("user"); signing up creates both. Passwords
are hashed with scrypt. Each login is a row of "app_session" whose random id the signed
session cookie carries: logging out deletes the row, so even a copy of the cookie stops
working, and changing the password deletes the user's other sessions. Failed logins are
counted in the "login_attempt" table and signups in "app_signup", so the limits hold
across workers and restarts.
"""

import functools
import secrets
import sqlite3
import unicodedata
from datetime import datetime, timezone
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, InputRequired, Length

from .db import get_db
from .values import PostedForm, plain_text, strip

bp = Blueprint("auth", __name__)

PASSWORD_MIN = 8
PASSWORD_MAX = 200


# Emails and the account name are stripped of surrounding spaces before validation, so
# " ann@example.com " is Ann's address and "   " is no account name (DataRequired).
class SignupForm(PostedForm):
    account = StringField("Account name", filters=[strip], validators=[DataRequired(), Length(max=100), plain_text])
    email = EmailField("Email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])
    password = PasswordField("Password", validators=[InputRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)])
    confirm = PasswordField(
        "Confirm password", validators=[InputRequired(), EqualTo("password", message="The passwords do not match.")]
    )


class LoginForm(PostedForm):
    email = EmailField("Email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])
    password = PasswordField("Password", validators=[InputRequired(), Length(max=PASSWORD_MAX)])


class PasswordForm(PostedForm):
    current_password = PasswordField("Current password", validators=[InputRequired(), Length(max=PASSWORD_MAX)])
    password = PasswordField("New password", validators=[InputRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)])
    confirm = PasswordField(
        "Confirm new password", validators=[InputRequired(), EqualTo("password", message="The passwords do not match.")]
    )


def normal_email(email):
    """The one spelling an email is stored and looked up in: lower-case, and Unicode's
    compatibility forms folded (NFKC), so "Ann@ﬀ.example" is "ann@ff.example"."""
    return unicodedata.normalize("NFKC", email).strip().lower()


def hash_password(password):
    # "scrypt" is Werkzeug's strong default (n=2**15); the tests use a cheaper scrypt.
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


def start_session(user_id):
    """Log a user in with a fresh session (nothing carried over from before login)."""
    db = get_db()
    session_id = secrets.token_urlsafe(32)
    day = today()
    lifetime = current_app.config["PERMANENT_SESSION_LIFETIME"].days
    with db:
        db.execute(
            'INSERT INTO "app_session" ("id", "user_id", "renewed_on") VALUES (?, ?, ?)',
            (session_id, user_id, day),
        )
        # Sessions unused for a whole lifetime have expired with their cookies.
        db.execute(
            """DELETE FROM "app_session" WHERE "renewed_on" < date('now', ?)""", (f"-{lifetime} days",)
        )
    session.clear()
    session.permanent = True
    session["user_id"] = user_id
    session["session_id"] = session_id
    session["renewed"] = day


def safe_next(target):
    """`target` when it is a path on this site, else None (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    # Browsers read "\" as "/" and drop tabs and newlines: "/\evil.com" is "//evil.com".
    if any(c == "\\" or ord(c) < 33 or ord(c) == 127 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@bp.before_app_request
def load_logged_in_user():
    """Set g.user (id, email, account_id, account_name) from the session, or None."""
    g.user = None
    session_id = session.get("session_id")
    if session_id is None:
        return
    user = get_db().execute(
        'SELECT "user"."id", "user"."email", "user"."account_id", "user"."password_hash",'
        ' "account"."name" AS "account_name"'
        ' FROM "app_session"'
        ' JOIN "user" ON "user"."id" = "app_session"."user_id"'
        ' JOIN "account" ON "account"."id" = "user"."account_id"'
        ' WHERE "app_session"."id" = ? AND "app_session"."user_id" = ?',
        (session_id, session.get("user_id")),
    ).fetchone()
    if user is None:
        session.clear()  # logged out, here or by a password change elsewhere
        return
    g.user = user
    # A session lasts PERMANENT_SESSION_LIFETIME from its last renewal. Renewing it on
    # the first request of each day keeps active users logged in without re-signing and
    # re-sending the cookie with every response (Flask's default, about as costly as a
    # small page; SESSION_REFRESH_EACH_REQUEST is off in create_app).
    day = today()
    if session.get("renewed") != day:
        db = get_db()
        try:
            with db:
                db.execute('UPDATE "app_session" SET "renewed_on" = ? WHERE "id" = ?', (day, session_id))
        except sqlite3.OperationalError:
            # The database is busy beyond busy_timeout (a long migration or restore):
            # renew on a later request rather than fail this one.
            return
        session["renewed"] = day


def today():
    return datetime.now(timezone.utc).date().isoformat()


def login_required(view):
    """Send visitors who are not logged in to the login page, then back here."""

    @functools.wraps(view)
    def wrapped_view(**kwargs):
        if g.user is None:
            login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
            # (htmx's own reload of a page for the Back button wants the page itself.)
            if request.headers.get("HX-Request") and not request.headers.get("HX-History-Restore-Request"):
                # htmx (the live search) would follow a redirect itself and swap the
                # login page into the table: HX-Redirect makes it load the whole page.
                response = current_app.make_response(("", 401))
                response.headers["HX-Redirect"] = login_url
                return response
            return redirect(login_url)
        return view(**kwargs)

    return wrapped_view


@bp.route("/signup", methods=("GET", "POST"))
def signup():
    if g.user is not None:
        return redirect(url_for("main.index"))
    form = SignupForm()
    if form.validate_on_submit():
        # Every signup costs a password hash: one address gets a few per window, so a
        # script can neither open accounts without end nor keep the CPU busy hashing.
        address = request.remote_addr or "unknown"
        window = current_app.config["SIGNUP_WINDOW_SECONDS"]
        if recent("app_signup", window, address=address) >= current_app.config["SIGNUP_MAX_PER_ADDRESS"]:
            return too_many(
                "auth/signup.html", window, "Too many sign-ups from your address.", form=form
            )
        record("app_signup", window, address=address)
        email = normal_email(form.email.data)
        password_hash = hash_password(form.password.data)
        db = get_db()
        try:
            with db:  # one transaction: account and user together, or neither
                account_id = db.execute(
                    'INSERT INTO "account" ("name") VALUES (?)', (form.account.data.strip(),)
                ).lastrowid
                user_id = db.execute(
                    'INSERT INTO "user" ("account_id", "email", "password_hash") VALUES (?, ?, ?)',
                    (account_id, email, password_hash),
                ).lastrowid
        except sqlite3.IntegrityError:
            form.email.errors.append("An account with this email already exists. Log in instead?")
        else:
            start_session(user_id)
            flash("Welcome! Your account is ready.", "success")
            return redirect(url_for("main.index"))
    return render_template("auth/signup.html", form=form)


def recent(table, window, **values):
    """Rows of `table` (login_attempt, app_signup) with these values, within the window."""
    where = "".join(f' AND "{column}" = ?' for column in values)
    return get_db().execute(
        f'SELECT count(*) FROM "{table}"'
        f" WHERE \"created_at\" > strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?){where}",
        (f"-{window} seconds", *values.values()),
    ).fetchone()[0]


def record(table, window, **values):
    """Add a row to `table`, and prune the rows older than the window: they no longer count."""
    columns = ", ".join(f'"{column}"' for column in values)
    db = get_db()
    with db:
        db.execute(
            f'INSERT INTO "{table}" ({columns}) VALUES ({", ".join("?" * len(values))})',
            tuple(values.values()),
        )
        db.execute(
            f"DELETE FROM \"{table}\" WHERE \"created_at\" < strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?)",
            (f"-{window} seconds",),
        )


def record_failure(email, address):
    record("login_attempt", current_app.config["LOGIN_WINDOW_SECONDS"], email=email, address=address)


def is_throttled(email, address):
    """Too many recent failures: of this client at this email (a password guessed), of
    this client at any email (emails tried in turn), or at this email from anywhere (a
    guess spread over many addresses). The first is the tight one, so a stranger's
    failures at someone's email do not lock its owner out."""
    config = current_app.config
    window = config["LOGIN_WINDOW_SECONDS"]
    return (
        recent("login_attempt", window, email=email, address=address) >= config["LOGIN_MAX_FAILURES_PER_EMAIL_AND_ADDRESS"]
        or recent("login_attempt", window, address=address) >= config["LOGIN_MAX_FAILURES_PER_ADDRESS"]
        or recent("login_attempt", window, email=email) >= config["LOGIN_MAX_FAILURES_PER_EMAIL"]
    )


def forget_failures(email):
    """A correct password clears the email's failed attempts."""
    db = get_db()
    with db:
        db.execute('DELETE FROM "login_attempt" WHERE "email" = ?', (email,))


def too_many(template, window, message, **context):
    """429 with the form again, and when to come back."""
    minutes = max(1, window // 60)
    flash(f"{message} Wait {minutes} minute{'s' if minutes != 1 else ''}, then try again.", "error")
    response = current_app.make_response((render_template(template, **context), 429))
    response.headers["Retry-After"] = str(window)
    return response


def too_many_failures(template, **context):
    return too_many(template, current_app.config["LOGIN_WINDOW_SECONDS"], "Too many failed attempts.", **context)


# Checked against when the email is unknown, so both cases take as long.
_dummy_hash = None


def check_password(user, password):
    global _dummy_hash
    if user is None:
        if _dummy_hash is None:
            _dummy_hash = hash_password("not a real password")
        check_password_hash(_dummy_hash, password)
        return False
    return check_password_hash(user["password_hash"], password)


@bp.route("/login", methods=("GET", "POST"))
def login():
    next_url = safe_next(request.values.get("next"))
    if g.user is not None and request.method == "GET":
        return redirect(next_url or url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        email = normal_email(form.email.data)
        address = request.remote_addr or "unknown"  # the client's, thanks to ProxyFix
        if is_throttled(email, address):
            return too_many_failures("auth/login.html", form=form, next=next_url)
        db = get_db()
        # Accounts made before emails were NFKC-folded may hold the typed spelling.
        typed = form.email.data.strip().lower()
        user = db.execute(
            'SELECT "id", "password_hash" FROM "user" WHERE "email" = ?', (email,)
        ).fetchone() or db.execute(
            'SELECT "id", "password_hash" FROM "user" WHERE "email" = ?', (typed,)
        ).fetchone()
        if check_password(user, form.password.data):
            forget_failures(email)
            start_session(user["id"])
            return redirect(next_url or url_for("main.index"))
        record_failure(email, address)
        form.password.errors.append("Wrong email or password.")
    return render_template("auth/login.html", form=form, next=next_url)


@bp.route("/logout", methods=("POST",))
def logout():
    session_id = session.get("session_id")
    if session_id is not None:
        db = get_db()
        with db:
            db.execute('DELETE FROM "app_session" WHERE "id" = ?', (session_id,))
    session.clear()
    flash("You are logged out.", "success")
    return redirect(url_for("main.index"))


@bp.route("/account/password", methods=("GET", "POST"))
@login_required
def change_password():
    form = PasswordForm()
    if form.validate_on_submit():
        # Guesses at the current password count as failed logins of this user: a
        # stolen session cannot try more passwords here than on the login page.
        email, address = g.user["email"], request.remote_addr or "unknown"
        if is_throttled(email, address):
            return too_many_failures("auth/password.html", form=form)
        if not check_password_hash(g.user["password_hash"], form.current_password.data):
            record_failure(email, address)
            form.current_password.errors.append("This is not your current password.")
        else:
            forget_failures(email)
            password_hash = hash_password(form.password.data)
            db = get_db()
            with db:  # the new password, and the user logged out everywhere...
                db.execute('UPDATE "user" SET "password_hash" = ? WHERE "id" = ?', (password_hash, g.user["id"]))
                db.execute('DELETE FROM "app_session" WHERE "user_id" = ?', (g.user["id"],))
            start_session(g.user["id"])  # ...but here, in a fresh session
            flash("Your password has been changed.", "success")
            return redirect(url_for("main.index"))
    return render_template("auth/password.html", form=form)
