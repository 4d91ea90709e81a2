"""The account's team: its members and their roles, invitations, and the account's
activity (its audit trail).

An owner invites someone by email with a role (/team); the mail carries a link to
/invite/<token>, where the invited person chooses a password and joins the account
(an address that already has a user cannot join a second account). Like the links in
tokens.py, an invitation's token is random, only its SHA-256 is stored, and it works
once, for INVITATION_DAYS; the owner can withdraw it before.

Owners change roles and remove members; removing a member deletes their user, and with
it their sessions (ON DELETE CASCADE): they are logged out at once. Every member may
leave. An account always keeps an owner: the UPDATE or DELETE that would take away its
last one matches no row (one statement, so two owners demoting each other at the same
moment cannot both succeed).
"""

import secrets
import sqlite3
from datetime import datetime, timedelta, timezone

import flask_wtf
from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for
from wtforms import EmailField, SelectField
from wtforms.validators import Email, InputRequired, Length

from . import audit, auth, mail, tokens
from .db import get_db
from .values import PostedForm, now, strip

bp = Blueprint("team", __name__)

INVITATION_DAYS = 7
ACTIVITY_PER_PAGE = 50
ROLES = [("editor", "Editor: adds, changes and deletes records"), ("viewer", "Viewer: reads records"),
         ("owner", "Owner: also manages the team and the account")]

# The UPDATE/DELETE condition that keeps an account's last owner: the row is not an
# owner's, or another owner remains. Parameters: the account's id.
KEEPS_AN_OWNER = (
    """("role" <> 'owner' OR (SELECT count(*) FROM "user" AS "u" WHERE "u"."account_id" = ? AND "u"."role" = 'owner') > 1)"""
)


class InviteForm(PostedForm):
    email = EmailField("Email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])
    role = SelectField("Role", choices=ROLES, default="editor", validators=[InputRequired()])


class RoleForm(PostedForm):
    role = SelectField("Role", choices=ROLES, validators=[InputRequired()])


class JoinForm(PostedForm):
    password = auth.SignupForm.password
    confirm = auth.SignupForm.confirm


def members():
    return get_db().execute(
        'SELECT "id", "email", "role", "created_at" FROM "user" WHERE "account_id" = ?'
        ' ORDER BY "role" = \'owner\' DESC, "email"',
        (g.user["account_id"],),
    ).fetchall()


def invitations():
    return get_db().execute(
        'SELECT "hash", "email", "role", "invited_by", "expires_at" FROM "app_invitation"'
        ' WHERE "account_id" = ? AND "used_at" IS NULL AND "expires_at" > ? ORDER BY "created_at" DESC',
        (g.user["account_id"], now()),
    ).fetchall()


def member(user_id):
    """A member of the current account; 404 for anyone else."""
    row = get_db().execute(
        'SELECT "id", "email", "role" FROM "user" WHERE "id" = ? AND "account_id" = ?',
        (user_id, g.user["account_id"]),
    ).fetchone()
    if row is None:
        abort(404)
    return row


def page(form, status=200):
    return render_template(
        "team/team.html", form=form, members=members(), invitations=invitations(),
        role_form=RoleForm(), action_form=flask_wtf.FlaskForm(),
    ), status


@bp.route("/team", methods=("GET", "POST"))
@auth.login_required
def team():
    """Every member sees the team; owners invite (POST) from here."""
    form = InviteForm()
    if request.method == "POST" and g.user["role"] != "owner":
        abort(403, "Only an owner of the account can invite.")
    if not form.validate_on_submit():
        return page(form, 400 if form.is_submitted() else 200)
    email = auth.normal_email(form.email.data)
    db = get_db()
    if db.execute(
        'SELECT 1 FROM "user" WHERE "email" = ? AND "account_id" = ?', (email, g.user["account_id"])
    ).fetchone():
        form.email.errors.append("This address is a member already.")
        return page(form, 400)
    limited = tokens.mail_limit(email, request.remote_addr or "unknown")
    if limited is not None:
        flash(limited[1] + " Wait a minute, then try again.", "error")
        return page(form, 429)
    token = secrets.token_urlsafe(32)
    expires = datetime.now(timezone.utc) + timedelta(days=INVITATION_DAYS)
    with db:
        tokens.record_mail_request(db, email, request.remote_addr or "unknown")
        # A new invitation to the same address replaces the one still open.
        db.execute(
            'DELETE FROM "app_invitation" WHERE "account_id" = ? AND "email" = ? AND "used_at" IS NULL',
            (g.user["account_id"], email),
        )
        db.execute(
            'INSERT INTO "app_invitation" ("hash", "account_id", "email", "role", "invited_by", "expires_at")'
            " VALUES (?, ?, ?, ?, ?, ?)",
            (tokens.token_hash(token), g.user["account_id"], email, form.role.data, g.user["email"],
             tokens.utc(expires)),
        )
        db.execute(
            'DELETE FROM "app_invitation" WHERE "expires_at" < ?',
            (tokens.utc(datetime.now(timezone.utc) - timedelta(days=7)),),
        )
        audit.record(db, "invite", changes={"email": [None, email], "role": [None, form.role.data]})
    sent = tokens.send(
        email, f"Join {g.user['account_name']}", "invitation.txt",
        link=mail.link("team.join", token=token), inviter=g.user["email"],
        account=g.user["account_name"], role=form.role.data, days=INVITATION_DAYS,
    )
    if not sent:
        return tokens.not_sent()
    flash(f"Invitation sent to {email}.", "success")
    return redirect(url_for(".team"))


@bp.route("/team/invitations/<key>/withdraw", methods=("POST",))
@auth.owner_required
def withdraw(key):
    form = flask_wtf.FlaskForm()
    if not form.validate_on_submit():
        abort(400)
    db = get_db()
    with db:
        row = db.execute(
            'SELECT "email" FROM "app_invitation" WHERE "hash" = ? AND "account_id" = ? AND "used_at" IS NULL',
            (key, g.user["account_id"]),
        ).fetchone()
        if row is None:
            abort(404)
        db.execute('DELETE FROM "app_invitation" WHERE "hash" = ?', (key,))
        audit.record(db, "withdraw", changes={"email": [row["email"], None]})
    flash(f"The invitation of {row['email']} is withdrawn.", "success")
    return redirect(url_for(".team"))


@bp.route("/team/<int:user_id>/role", methods=("POST",))
@auth.owner_required
def change_role(user_id):
    target = member(user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        abort(400)
    db = get_db()
    with db:
        changed = db.execute(
            f'UPDATE "user" SET "role" = ? WHERE "id" = ? AND "account_id" = ? AND (? = \'owner\' OR {KEEPS_AN_OWNER})',
            (form.role.data, user_id, g.user["account_id"], form.role.data, g.user["account_id"]),
        ).rowcount
        if changed and form.role.data != target["role"]:
            audit.record(db, "role", "user", user_id,
                         changes={"email": [target["email"], target["email"]], "role": [target["role"], form.role.data]})
    if not changed:
        flash("The account needs an owner: make another member owner first.", "error")
    elif form.role.data != target["role"]:
        flash(f"{target['email']} is now {form.role.data}.", "success")
    return redirect(url_for(".team"))


def remove_member(target, action):
    """Delete `target` from the account (their sessions go with it); False when they
    are its last owner."""
    db = get_db()
    with db:
        removed = db.execute(
            f'DELETE FROM "user" WHERE "id" = ? AND "account_id" = ? AND {KEEPS_AN_OWNER}',
            (target["id"], g.user["account_id"], g.user["account_id"]),
        ).rowcount
        if removed:
            audit.record(db, action, "user", target["id"], changes={"email": [target["email"], None]})
    return bool(removed)


@bp.route("/team/<int:user_id>/remove", methods=("POST",))
@auth.owner_required
def remove(user_id):
    target = member(user_id)
    if not flask_wtf.FlaskForm().validate_on_submit():
        abort(400)
    if user_id == g.user["id"]:
        return leave()
    if not remove_member(target, "remove"):
        flash("The account needs an owner: make another member owner first.", "error")
    else:
        flash(f"{target['email']} is removed from the team and logged out.", "success")
    return redirect(url_for(".team"))


@bp.route("/team/leave", methods=("POST",))
@auth.login_required
def leave():
    if not flask_wtf.FlaskForm().validate_on_submit():
        abort(400)
    if not remove_member(g.user, "leave"):
        flash("You are the account's only owner: make another member owner first.", "error")
        return redirect(url_for(".team"))
    session.clear()
    flash(f"You have left {g.user['account_name']}.", "success")
    return redirect(url_for("main.index"))


@bp.route("/invite/<token>", methods=("GET", "POST"))
def join(token):
    """The invited person chooses a password and joins (opening the link proves the
    address is theirs)."""
    row = get_db().execute(
        'SELECT "app_invitation".*, "account"."name" AS "account_name" FROM "app_invitation"'
        ' JOIN "account" ON "account"."id" = "app_invitation"."account_id" WHERE "hash" = ?',
        (tokens.token_hash(token),),
    ).fetchone()
    if row is None:
        abort(404, "This invitation is not valid: it was withdrawn, or the link is incomplete. Ask for a new one.")
    if row["used_at"] is not None:
        abort(410, "This invitation has already been used: each works once. Log in instead.")
    if row["expires_at"] <= now():
        abort(410, "This invitation has expired. Ask the account's owner for a new one.")
    # Nothing to accept here: a page that says why (409 for a form sent anyway).
    status = 200 if request.method == "GET" else 409
    if g.user is not None:
        return render_template("team/join.html", row=row, form=None, logged_in=True), status
    if auth.user_by_email(row["email"], row["email"]) is not None:
        return render_template("team/join.html", row=row, form=None, taken=True), status
    form = JoinForm()
    if not form.validate_on_submit():
        return render_template("team/join.html", row=row, form=form), 400 if form.is_submitted() else 200
    password_hash = auth.hash_password(form.password.data)
    db = get_db()
    try:
        with db:
            used = db.execute(
                'UPDATE "app_invitation" SET "used_at" = ? WHERE "hash" = ? AND "used_at" IS NULL AND "expires_at" > ?',
                (now(), row["hash"], now()),
            ).rowcount
            if not used:
                abort(410, "This invitation has already been used: each works once. Log in instead.")
            user_id = db.execute(
                'INSERT INTO "user" ("account_id", "email", "password_hash", "email_verified_at", "role")'
                " VALUES (?, ?, ?, ?, ?)",
                (row["account_id"], row["email"], password_hash, now(), row["role"]),
            ).lastrowid
            audit.record(db, "join", "user", user_id, changes={"role": [None, row["role"]]},
                         account_id=row["account_id"], actor=row["email"])
    except sqlite3.IntegrityError:  # the address got a user a moment ago
        return render_template("team/join.html", row=row, form=None, taken=True), 409
    auth.start_session(user_id)
    auth.remember_address(user_id, request.remote_addr or "unknown")
    flash(f"Welcome to {row['account_name']}!", "success")
    return auth.remember_device(redirect(url_for("main.index")), user_id)


@bp.route("/activity")
@auth.owner_required
def activity():
    """Everything done in the account, newest first."""
    page_number = max(request.args.get("page", 1, type=int), 1)
    entries = audit.rows(
        get_db(), g.user["account_id"], limit=ACTIVITY_PER_PAGE + 1, offset=(page_number - 1) * ACTIVITY_PER_PAGE
    )
    return render_template(
        "team/activity.html", entries=entries[:ACTIVITY_PER_PAGE], page=page_number,
        more=len(entries) > ACTIVITY_PER_PAGE,
    )
