"""Accounts: sign up, log in, log out, change password; who is logged in (g.user) and
what their role lets them do. (The links the app mails, to finish a sign-up or reset a
password, are in tokens.py; teams and invitations in team.py.)

A customer account ("account") has users ("user"), its team; a sign-up creates both,
the user as the account's owner. Roles: an owner may do everything, an editor may add,
change, delete and import records, a viewer may only read them. Every view says who may
use it: login_required (any member), editor_required or owner_required; a member whose
role does not allow a view gets 403, whatever the method. Passwords
are hashed with scrypt. Each login is a row of "app_session" whose random id the signed
session cookie carries: logging out deletes the row, so even a copy of the cookie stops
working, and changing the password deletes the user's other sessions. Failed logins are
counted in the "login_attempt" table and signups in "app_signup", so the limits hold
across workers and restarts.

Login limits, and the threat each answers (windows of LOGIN_WINDOW_SECONDS):

- A guesser at one account from one address: 5 failures per email and address, then
  429 with Retry-After. From many addresses: 100 failures per email. Trying many
  emails from one address: 20 failures per address.
- A guesser turning those limits against the account's owner (a lockout, a denial of
  service): a browser the user logged in from before carries a signed known-device
  cookie, and its attempts count only against that browser ("device:<id>"), never
  against the address or the email; and the per-address and per-email limits never
  apply where the user logged in lately (app_known_address), so a stranger's failures
  elsewhere, or on a shared office connection at other emails, lock nobody out.
- A guesser sharing the owner's address: a success clears only the failures of the
  browser that succeeded (its device's), never those made by others at that address
  or email, so the guesser gets no fresh tries from the owner's login.
What is left: a new browser on an address where someone guessed at the same email
waits out the window, or resets the password by email (/forgot, in tokens.py): the
reset logs that browser in and makes it a known device.
"""

import functools
import secrets
import sqlite3
import unicodedata
from datetime import datetime, timezone
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, InputRequired, Length, ValidationError

from . import audit, spec
from .db import get_db
from .values import PostedForm, plain_text, strip

bp = Blueprint("auth", __name__)

PASSWORD_MIN = 8
PASSWORD_MAX = 200


def strong_password(form, field):
    """Refuse a password that is easy to guess: common ones, keyboard walks, dates, the
    user's own email or the app's name. zxcvbn (Dropbox's estimator) scores 0 to 4; below
    2 means under about a million guesses. Imported on first use: it takes ~15 MB, which
    only the workers that check a new password pay."""
    import zxcvbn

    hints = [spec.NAME, spec.SLUG]
    for name in ("email", "account"):
        if name in form and form[name].data:
            hints.append(str(form[name].data))
    if g.get("user") is not None:
        hints.append(g.user["email"])
    result = zxcvbn.zxcvbn(field.data[:100], user_inputs=hints)
    if result["score"] < 2:
        warning = result["feedback"]["warning"] or "This password is easy to guess."
        raise ValidationError(f"{warning} Choose a longer one: a few unrelated words work well.")


PASSWORD_RULES = f"At least {PASSWORD_MIN} characters, not easy to guess. A few words you will remember make a good one."


# Emails and the account name are stripped of surrounding spaces before validation, so
# " ann@example.com " is Ann's address and "   " is no account name (DataRequired).
class SignupForm(PostedForm):
    account = StringField("Account name", filters=[strip], validators=[DataRequired(), Length(max=100), plain_text])
    email = EmailField("Email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])
    password = PasswordField(
        "Password",
        description=PASSWORD_RULES,
        validators=[InputRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX), strong_password],
    )
    confirm = PasswordField(
        "Confirm password", validators=[InputRequired(), EqualTo("password", message="The passwords do not match.")]
    )


class LoginForm(PostedForm):
    email = EmailField("Email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])
    password = PasswordField("Password", validators=[InputRequired(), Length(max=PASSWORD_MAX)])


class PasswordForm(PostedForm):
    current_password = PasswordField("Current password", validators=[InputRequired(), Length(max=PASSWORD_MAX)])
    password = PasswordField(
        "New password",
        description=PASSWORD_RULES,
        validators=[InputRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX), strong_password],
    )
    confirm = PasswordField(
        "Confirm new password", validators=[InputRequired(), EqualTo("password", message="The passwords do not match.")]
    )


class ForgotForm(PostedForm):
    email = EmailField("Email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])


class ResetForm(PostedForm):
    password = PasswordForm.password
    confirm = PasswordForm.confirm


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
    """Set g.user (id, email, account_id, role, email_verified_at, account_name) from
    the session, or None."""
    g.user = None
    session_id = session.get("session_id")
    if session_id is None:
        return
    user = get_db().execute(
        'SELECT "user"."id", "user"."email", "user"."account_id", "user"."password_hash", "user"."role",'
        ' "user"."email_verified_at", "account"."name" AS "account_name"'
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


def role_required(*roles):
    """login_required, and 403 for a member whose role is not one of `roles`."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped_view(**kwargs):
            if g.user["role"] not in roles:
                abort(403, f"As {g.user['role']} of this account you may not do this. Ask an owner of the account.")
            return view(**kwargs)

        return login_required(wrapped_view)

    return decorator


editor_required = role_required("owner", "editor")
owner_required = role_required("owner")


def may_edit():
    """Whether the logged-in user may change records (pages hide what they may not do)."""
    return g.user is not None and g.user["role"] in ("owner", "editor")


def create_account(db, account_name, email, password_hash, verified_at):
    """A new account with its owner, within the caller's transaction; the owner's id."""
    account_id = db.execute('INSERT INTO "account" ("name") VALUES (?)', (account_name,)).lastrowid
    user_id = db.execute(
        'INSERT INTO "user" ("account_id", "email", "password_hash", "email_verified_at", "role")'
        " VALUES (?, ?, ?, ?, 'owner')",
        (account_id, email, password_hash, verified_at),
    ).lastrowid
    audit.record(db, "signup", account_id=account_id, actor=email)
    return user_id


@bp.route("/signup", methods=("GET", "POST"))
def signup():
    """Sign up. With VERIFY_EMAIL (the default) no account is made here: every sign-up,
    whether or not the address has an account, answers "check your mail", and the link
    mailed to the address makes the account (tokens.py). Without it, a new address gets
    its account at once, logged in; a known one still gets "check your mail" (and its
    owner a notice), which a caller can tell from the logged-in answer."""
    from . import tokens  # (which imports this module: so here, not at the top)

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
        email = normal_email(form.email.data)
        limited = tokens.mail_limit(email, address)
        if limited is not None:
            return too_many("auth/signup.html", *limited, form=form)
        record("app_signup", window, address=address)
        password_hash = hash_password(form.password.data)
        account_name = form.account.data.strip()
        existing = user_by_email(email, form.email.data)
        if existing is None and not current_app.config["VERIFY_EMAIL"]:
            db = get_db()
            try:
                with db:  # one transaction: account and user together, or neither
                    user_id = create_account(db, account_name, email, password_hash, None)
            except sqlite3.IntegrityError:  # signed up a moment ago, in another request
                existing = user_by_email(email, form.email.data)
            else:
                start_session(user_id)
                remember_address(user_id, address)
                flash("Welcome! Your account is ready.", "success")
                return remember_device(redirect(url_for("main.index")), user_id)
        return tokens.start_signup(email, account_name, password_hash, existing)
    return render_template("auth/signup.html", form=form)


def user_by_email(email, typed):
    """The user (id, email, password_hash, account_id) with this normalized email, or
    None. Accounts made before emails were NFKC-folded may hold the `typed` spelling."""
    db = get_db()
    query = 'SELECT "id", "email", "password_hash", "account_id" FROM "user" WHERE "email" = ?'
    return db.execute(query, (email,)).fetchone() or db.execute(query, (typed.strip().lower(),)).fetchone()


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


KNOWN_DEVICE_COOKIE = "known_device"
KNOWN_DEVICE_SECONDS = 90 * 24 * 3600
KNOWN_DEVICE_USERS = 5  # a shared computer remembers this many users
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600


def _devices():
    return URLSafeTimedSerializer(current_app.secret_key, salt="known-device")


def known_device():
    """(device id, user ids) from this browser's signed known-device cookie, or (None, [])."""
    cookie = request.cookies.get(KNOWN_DEVICE_COOKIE)
    if cookie:
        try:
            data = _devices().loads(cookie, max_age=KNOWN_DEVICE_SECONDS)
            return str(data["device"]), [int(user) for user in data["users"]]
        except (BadSignature, KeyError, TypeError, ValueError):
            pass
    return None, []


def remember_device(response, user_id):
    """Mark this browser as a known device of the user, on the response of a login."""
    device, users = known_device()
    users = [user_id, *(u for u in users if u != user_id)][:KNOWN_DEVICE_USERS]
    value = _devices().dumps({"device": device or secrets.token_urlsafe(16), "users": users})
    config = current_app.config
    response.set_cookie(
        KNOWN_DEVICE_COOKIE, value, max_age=KNOWN_DEVICE_SECONDS, httponly=True, samesite="Lax",
        secure=config["SESSION_COOKIE_SECURE"] or request.is_secure,
    )
    return response


def remember_address(user_id, address):
    """The user logged in from this address: the per-address and per-email limits no
    longer apply to them there (for KNOWN_ADDRESS_SECONDS)."""
    db = get_db()
    with db:
        db.execute(
            'INSERT INTO "app_known_address" ("user_id", "address") VALUES (?, ?)'
            ' ON CONFLICT DO UPDATE SET "created_at" = excluded."created_at"',
            (user_id, address),
        )
        db.execute(
            """DELETE FROM "app_known_address" WHERE "created_at" < strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?)""",
            (f"-{KNOWN_ADDRESS_SECONDS} seconds",),
        )


def login_source(user_id, address):
    """Where a login attempt at `user_id` comes from, as failures are counted: this
    browser ("device:<id>") when it is a known device of the user, else the address."""
    device, users = known_device()
    if user_id is not None and user_id in users:
        return f"device:{device}"
    return address


def record_failure(email, source, user=None):
    """Count a failed login; in the audit trail of the user's account when the email
    is a user's."""
    record("login_attempt", current_app.config["LOGIN_WINDOW_SECONDS"], email=email, address=source)
    if user is not None:
        log(user, "login_failed")


def log(user, action):
    """An event of `user` (a row with id, email, account_id) in their account's trail."""
    db = get_db()
    with db:
        audit.record(db, action, "user", user["id"], account_id=user["account_id"], actor=user["email"])


def is_throttled(email, source, user_id=None):
    """Too many recent failures (see the module's docstring for the threats).

    From a known device (source "device:<id>"): that device's failures at this email
    only. Otherwise: this address's at this email (a password guessed); then, unless the
    user logged in from this address lately, this address's at any email (emails tried
    in turn) and this email's from anywhere (a guess spread over many addresses).
    """
    config = current_app.config
    window = config["LOGIN_WINDOW_SECONDS"]
    if recent("login_attempt", window, email=email, address=source) >= config["LOGIN_MAX_FAILURES_PER_EMAIL_AND_ADDRESS"]:
        return True
    if source.startswith("device:") or (user_id is not None and is_known_address(user_id, source)):
        return False
    return (
        recent("login_attempt", window, address=source) >= config["LOGIN_MAX_FAILURES_PER_ADDRESS"]
        or recent("login_attempt", window, email=email) >= config["LOGIN_MAX_FAILURES_PER_EMAIL"]
    )


def is_known_address(user_id, address):
    return get_db().execute(
        'SELECT 1 FROM "app_known_address" WHERE "user_id" = ? AND "address" = ?'
        """ AND "created_at" > strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?)""",
        (user_id, address, f"-{KNOWN_ADDRESS_SECONDS} seconds"),
    ).fetchone() is not None


def forget_failures(email, source):
    """A correct password clears the failures of where it came from, when that is a
    known device: never what others tried at this address or email."""
    if source.startswith("device:"):
        db = get_db()
        with db:
            db.execute('DELETE FROM "login_attempt" WHERE "email" = ? AND "address" = ?', (email, source))


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
        user = user_by_email(email, form.email.data)
        user_id = user["id"] if user is not None else None
        source = login_source(user_id, address)
        if is_throttled(email, source, user_id):
            return too_many_failures("auth/login.html", form=form, next=next_url)
        if check_password(user, form.password.data):
            forget_failures(email, source)
            start_session(user_id)
            remember_address(user_id, address)
            log(user, "login")
            return remember_device(redirect(next_url or url_for("main.index")), user_id)
        record_failure(email, source, user)
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


def check_current_password(form):
    """"ok" when form.current_password is the logged-in user's; else "throttled" or
    "wrong" (with the field's error). Guesses count as failed logins of the user: a
    stolen session cannot try more passwords here than on the login page."""
    email = g.user["email"]
    source = login_source(g.user["id"], request.remote_addr or "unknown")
    if is_throttled(email, source, g.user["id"]):
        return "throttled"
    if not check_password(g.user, form.current_password.data):
        record_failure(email, source, g.user)
        form.current_password.errors.append("This is not your current password.")
        return "wrong"
    forget_failures(email, source)
    return "ok"


@bp.route("/account/password", methods=("GET", "POST"))
@login_required
def change_password():
    form = PasswordForm()
    if form.validate_on_submit():
        checked = check_current_password(form)
        if checked == "throttled":
            return too_many_failures("auth/password.html", form=form)
        if checked == "ok":
            password_hash = hash_password(form.password.data)
            db = get_db()
            with db:  # the new password, and the user logged out everywhere...
                db.execute('UPDATE "user" SET "password_hash" = ? WHERE "id" = ?', (password_hash, g.user["id"]))
                db.execute('DELETE FROM "app_session" WHERE "user_id" = ?', (g.user["id"],))
                audit.record(db, "password_changed", "user", g.user["id"])
            start_session(g.user["id"])  # ...but here, in a fresh session
            flash("Your password has been changed.", "success")
            return redirect(url_for("main.index"))
    return render_template("auth/password.html", form=form)
