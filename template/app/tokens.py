"""The links the app mails: finishing a sign-up and verifying an address (/verify/<token>),
resetting a forgotten password (/forgot, then /reset/<token>).

A link carries a random token (secrets.token_urlsafe); the "app_token" table keeps only
its SHA-256, so a copy of the database opens no account. A link works once, for
TOKEN_HOURS; a used or expired one gets a page that says so. Opening a link (GET) only
shows a page with a button: the button's POST does the work, so a mail scanner that
fetches every link in a mail uses none.

Known and unknown addresses get the same answer (status and page), after the same work:
every request to /signup and /forgot that passes the form's checks records one row of
"app_mail_request" and sends exactly one mail, to the address typed, after the commit.
An unknown address gets the sign-up link or a "no account uses this address" notice; a
known one gets a reset link or an "already have an account" notice. Only an INSERT in
the same transaction differs, so the times differ by far less than the network's noise;
the mail itself takes as long either way (it is the same kind of mail to the same place).
The limits on mail (MAIL_MAX_PER_EMAIL_*, MAIL_MAX_PER_ADDRESS) count requests, not
accounts, so their 429 tells nothing either.

Email verification (VERIFY_EMAIL, from the spec's `verify_email`, on by default): a
sign-up makes no account until the link mailed to the address is opened, so every
sign-up answers "check your mail" whether or not the address has an account, and
nobody can hold an address they cannot read. Users without a verified address (signed
up while verification was off) may use the app fully; a banner asks them to verify, with
a button that mails a new link (the same per-address limits: one a minute, five an hour).
"""

import hashlib
import secrets
import sqlite3
from datetime import datetime, timedelta, timezone

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for

from . import audit, auth, mail
from .db import get_db
from .values import now

bp = Blueprint("tokens", __name__)


def utc(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def issue(db, purpose, email, user_id=None, account_name=None, password_hash=None):
    """A new token for a link, stored (hashed) on `db` within the caller's transaction."""
    token = secrets.token_urlsafe(32)
    issued = datetime.now(timezone.utc)
    expires = issued + timedelta(hours=current_app.config["TOKEN_HOURS"])
    db.execute(
        'INSERT INTO "app_token" ("hash", "purpose", "email", "user_id", "account_name", "password_hash", "expires_at")'
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token_hash(token), purpose, email, user_id, account_name, password_hash, utc(expires)),
    )
    db.execute('DELETE FROM "app_token" WHERE "expires_at" < ?', (utc(issued - timedelta(days=7)),))
    return token


def find(token, purposes):
    """The token's row when it is one of `purposes` and can still be used; else abort
    with a page saying what is wrong with the link (404 unknown, 410 used or expired)."""
    row = get_db().execute(
        'SELECT * FROM "app_token" WHERE "hash" = ?', (token_hash(token),)
    ).fetchone()
    if row is None or row["purpose"] not in purposes:
        abort(404, "This link is not valid. Check that you copied all of it, or ask for a new one.")
    if row["used_at"] is not None:
        gone("This link has already been used: each link works once.", row["purpose"])
    if row["expires_at"] <= now():
        gone("This link has expired.", row["purpose"])
    return row


def gone(message, purpose):
    again = {"signup": " Sign up again for a new one.", "reset": " Ask for a new one.",
             "verify": " Log in and ask for a new one.", "email": " Change it again in your settings."}
    abort(410, message + again[purpose])


def use(db, row):
    """Mark the token used, within the caller's transaction; False when another request
    used it first (or it expired meanwhile)."""
    return db.execute(
        'UPDATE "app_token" SET "used_at" = ? WHERE "hash" = ? AND "used_at" IS NULL AND "expires_at" > ?',
        (now(), row["hash"], now()),
    ).rowcount == 1


def mail_limit(email, address):
    """(seconds to wait, what to say) when no more mail may be asked for: for this
    recipient (one a minute, a few an hour) or from this client address; else None."""
    config = current_app.config
    if auth.recent("app_mail_request", 60, email=email) >= config["MAIL_MAX_PER_EMAIL_MINUTE"]:
        window = 60
    elif auth.recent("app_mail_request", 3600, email=email) >= config["MAIL_MAX_PER_EMAIL_HOUR"]:
        window = 3600
    elif auth.recent("app_mail_request", 3600, address=address) >= config["MAIL_MAX_PER_ADDRESS"]:
        window = 3600
    else:
        return None
    message = f"We sent a mail to {email} a moment ago, or too many from your address. Look in your inbox (and spam folder)."
    return window, message


def record_mail_request(db, email, address):
    """Count a mail asked for, within the caller's transaction; prune the old rows."""
    db.execute('INSERT INTO "app_mail_request" ("email", "address") VALUES (?, ?)', (email, address))
    db.execute(
        """DELETE FROM "app_mail_request" WHERE "created_at" < strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-1 hour')"""
    )


def send(to, subject, template, **context):
    """Mail a text template from templates/mail/ to `to`; False (logged) when the mail
    could not be handed over."""
    body = render_template(f"mail/{template}", **context)
    try:
        mail.send(to, subject, body)
    except OSError as e:
        current_app.logger.error("mail to %s not sent (%s): %s", to, subject, e)
        return False
    return True


def not_sent():
    return render_template(
        "errors/error.html", status=503, title="Mail not sent",
        message="We could not send the mail just now. Try again in a few minutes.",
    ), 503


def check_mail(email, sent, heading):
    """The answer to a sign-up or a reset request: the same for every address."""
    if not sent:
        return not_sent()
    return render_template("auth/check_mail.html", email=email, heading=heading)


# -- sign-up (called by auth.signup) and verification ----------------------------------


def start_signup(email, account_name, password_hash, existing):
    """Mail the link that finishes a sign-up, or, when `existing` (a user) has the
    address already, a notice to its owner; the same page either way."""
    db = get_db()
    with db:
        record_mail_request(db, email, request.remote_addr or "unknown")
        if existing is None:
            token = issue(db, "signup", email, account_name=account_name, password_hash=password_hash)
    if existing is None:
        sent = send(email, "Finish signing up", "signup.txt", link=mail.link("tokens.verify", token=token))
    else:
        sent = send(email, "Someone tried to sign up with your address", "signup_taken.txt",
                    login=mail.link("auth.login"), forgot=mail.link("tokens.forgot"))
    return check_mail(email, sent, "Check your mail to finish signing up")


@bp.route("/verify/<token>", methods=("GET", "POST"))
def verify(token):
    row = find(token, ("signup", "verify", "email"))
    if request.method == "GET":  # (CSRFProtect has checked the POST's token)
        return render_template("auth/verify.html", row=row)
    db = get_db()
    try:
        with db:
            if not use(db, row):
                gone("This link has already been used: each link works once.", row["purpose"])
            if row["purpose"] == "verify":
                db.execute(
                    'UPDATE "user" SET "email_verified_at" = ? WHERE "id" = ? AND "email" = ?',
                    (now(), row["user_id"], row["email"]),
                )
            elif row["purpose"] == "email":
                user = db.execute('SELECT "email", "account_id" FROM "user" WHERE "id" = ?', (row["user_id"],)).fetchone()
                db.execute(
                    'UPDATE "user" SET "email" = ?, "email_verified_at" = ? WHERE "id" = ?',
                    (row["email"], now(), row["user_id"]),
                )
                audit.record(db, "email_changed", "user", row["user_id"], {"email": [user["email"], row["email"]]},
                             account_id=user["account_id"], actor=user["email"])
            else:
                user_id = auth.create_account(db, row["account_name"], row["email"], row["password_hash"], now())
    except sqlite3.IntegrityError:
        # The address got an account since this link was mailed (an earlier link).
        if row["purpose"] == "email":
            flash(f"Another user has {row['email']} now: your address is unchanged.", "error")
            return redirect(url_for("settings.settings"))
        flash("This address has an account already: log in.", "success")
        return redirect(url_for("auth.login"))
    if row["purpose"] == "verify":
        flash("Thank you: your email address is verified.", "success")
        return redirect(url_for("main.index"))
    if row["purpose"] == "email":
        flash(f"Your email address is now {row['email']}.", "success")
        return redirect(url_for("main.index"))
    auth.start_session(user_id)
    auth.remember_address(user_id, request.remote_addr or "unknown")
    flash("Welcome! Your account is ready.", "success")
    return auth.remember_device(redirect(url_for("main.index")), user_id)


@bp.route("/verify", methods=("POST",))
@auth.login_required
def resend():
    """Mail a new verification link to the logged-in user (the banner's button)."""
    back = auth.safe_next(request.form.get("next")) or url_for("main.index")
    if g.user["email_verified_at"] is not None:
        return redirect(back)
    email = g.user["email"]
    limited = mail_limit(email, request.remote_addr or "unknown")
    if limited is not None:
        flash(limited[1] + " Wait a minute, then try again.", "error")
        return redirect(back)
    db = get_db()
    with db:
        record_mail_request(db, email, request.remote_addr or "unknown")
        token = issue(db, "verify", email, user_id=g.user["id"])
    if not send(email, "Verify your email address", "verify.txt", link=mail.link("tokens.verify", token=token)):
        return not_sent()
    flash(f"We sent a new link to {email}.", "success")
    return redirect(back)


# -- password reset --------------------------------------------------------------------


@bp.route("/forgot", methods=("GET", "POST"))
def forgot():
    form = auth.ForgotForm()
    if not form.validate_on_submit():
        return render_template("auth/forgot.html", form=form)
    email = auth.normal_email(form.email.data)
    address = request.remote_addr or "unknown"
    limited = mail_limit(email, address)
    if limited is not None:
        return auth.too_many("auth/forgot.html", *limited, form=form)
    user = auth.user_by_email(email, form.email.data)
    db = get_db()
    with db:
        record_mail_request(db, email, address)
        if user is not None:
            token = issue(db, "reset", user["email"], user_id=user["id"])
    if user is not None:
        sent = send(user["email"], "Reset your password", "reset.txt", link=mail.link("tokens.reset", token=token))
    else:
        sent = send(email, "Password reset", "reset_unknown.txt", signup=mail.link("auth.signup"))
    return check_mail(email, sent, "Check your mail")


@bp.route("/reset/<token>", methods=("GET", "POST"))
def reset(token):
    row = find(token, ("reset",))
    form = auth.ResetForm()
    if not form.validate_on_submit():
        return render_template("auth/reset.html", form=form)
    password_hash = auth.hash_password(form.password.data)
    db = get_db()
    with db:  # the token used, the new password, every session of the user ended
        if not use(db, row):
            gone("This link has already been used: each link works once.", "reset")
        db.execute(
            'UPDATE "user" SET "password_hash" = ?, "email_verified_at" = coalesce("email_verified_at", ?)'
            ' WHERE "id" = ?',
            (password_hash, now(), row["user_id"]),
        )
        db.execute('DELETE FROM "app_session" WHERE "user_id" = ?', (row["user_id"],))
        user = db.execute('SELECT "account_id" FROM "user" WHERE "id" = ?', (row["user_id"],)).fetchone()
        audit.record(db, "reset", "user", row["user_id"], account_id=user["account_id"], actor=row["email"])
    auth.start_session(row["user_id"])  # this browser only, in a fresh session
    auth.remember_address(row["user_id"], request.remote_addr or "unknown")
    send(row["email"], "Your password was changed", "password_changed.txt", forgot=mail.link("tokens.forgot"))
    flash("Your password has been changed. You are logged in, and logged out everywhere else.", "success")
    return auth.remember_device(redirect(url_for("main.index")), row["user_id"])
