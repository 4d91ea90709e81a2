"""The user's settings (/settings): their email address and password, and for an owner,
deleting the account with everything in it.

A new email address takes effect when the link mailed to it is opened (tokens.verify,
purpose "email"), so nobody can take an address they cannot read; the old address gets
a notice. Deleting the account asks for the password and the account's name, offers the
CSV exports first, and deletes the account, its members, its records and its audit trail
in one transaction. (The nightly backups still hold it for their retention period.)
"""

import sqlite3

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import Email, InputRequired, Length

from . import auth, mail, spec, tokens
from .db import get_db
from .values import PostedForm, strip

bp = Blueprint("settings", __name__)


class EmailForm(PostedForm):
    email = EmailField("New email", filters=[strip], validators=[InputRequired(), Email(), Length(max=254)])
    current_password = PasswordField("Current password", validators=[InputRequired(), Length(max=auth.PASSWORD_MAX)])


class DeleteForm(PostedForm):
    account = StringField("Account name", filters=[strip], validators=[InputRequired(), Length(max=100)],
                          description="Type the account's name to confirm.")
    current_password = PasswordField("Your password", validators=[InputRequired(), Length(max=auth.PASSWORD_MAX)])


def page(email_form=None, delete_form=None, status=200):
    return render_template(
        "settings/settings.html", email_form=email_form or EmailForm(),
        delete_form=delete_form or DeleteForm(), entities=spec.ENTITIES.values(),
    ), status


@bp.route("/settings")
@auth.login_required
def settings():
    return page()


def password_checked(form):
    """Whether the form's current password is the user's (auth.check_current_password)."""
    checked = auth.check_current_password(form)
    if checked == "throttled":
        form.current_password.errors.append("Too many failed attempts. Wait a few minutes, then try again.")
    return checked == "ok"


@bp.route("/settings/email", methods=("POST",))
@auth.login_required
def change_email():
    form = EmailForm()
    if not form.validate_on_submit() or not password_checked(form):
        return page(email_form=form, status=400)
    email = auth.normal_email(form.email.data)
    if email == g.user["email"]:
        form.email.errors.append("This is your email address already.")
        return page(email_form=form, status=400)
    limited = tokens.mail_limit(email, request.remote_addr or "unknown")
    if limited is not None:
        form.email.errors.append(limited[1])
        return page(email_form=form, status=429)
    db = get_db()
    with db:
        tokens.record_mail_request(db, email, request.remote_addr or "unknown")
        token = tokens.issue(db, "email", email, user_id=g.user["id"])
    if not tokens.send(email, "Confirm your new email address", "email_change.txt",
                       link=mail.link("tokens.verify", token=token)):
        return tokens.not_sent()
    tokens.send(g.user["email"], "Your email address is being changed", "email_change_notice.txt",
                new=email, forgot=mail.link("tokens.forgot"))
    flash(f"Open the link we mailed to {email} to make it your address.", "success")
    return redirect(url_for(".settings"))


@bp.route("/settings/delete", methods=("POST",))
@auth.owner_required
def delete_account():
    form = DeleteForm()
    if not form.validate_on_submit() or not password_checked(form):
        return page(delete_form=form, status=400)
    if form.account.data != g.user["account_name"]:
        form.account.errors.append("This is not the account's name.")
        return page(delete_form=form, status=400)
    account_id = g.user["account_id"]
    db = get_db()
    try:
        with db:  # the account, and by ON DELETE CASCADE its users, sessions and records
            db.execute('DELETE FROM "account" WHERE "id" = ?', (account_id,))
            db.execute('DELETE FROM "app_audit" WHERE "account_id" = ?', (account_id,))
    except sqlite3.IntegrityError:  # every reference is within the account: not expected
        flash("The account could not be deleted. Try again.", "error")
        return redirect(url_for(".settings"))
    tokens.send(g.user["email"], "Your account was deleted", "account_deleted.txt", account=g.user["account_name"])
    session.clear()
    flash(f"The account {g.user['account_name']} and all its data are deleted.", "success")
    return redirect(url_for("main.index"))
