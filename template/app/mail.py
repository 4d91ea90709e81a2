"""Outgoing mail: by SMTP when SMTP_HOST is set, else into a file outbox.

Settings, from the environment (/etc/vgen/<slug>.env on a host; see create_app):

    SMTP_HOST       the mail server. Unset: every mail is written to DATA_DIR/outbox/
                    instead, one RFC 5322 message per file (<time>-<id>.eml), and the
                    app says so in its log when it starts.
    SMTP_PORT       default 465 with SMTP_SSL, 587 with SMTP_STARTTLS, else 25
    SMTP_STARTTLS   1: upgrade the plain connection with STARTTLS (port 587)
    SMTP_SSL        1: TLS from the first byte (port 465)
    SMTP_USER       log in with SMTP_USER and SMTP_PASSWORD (only when set)
    SMTP_TIMEOUT    seconds for the connection and each command, default 10
    MAIL_FROM       the From: address, default noreply@<the host of BASE_URL>
    BASE_URL        https://cheesemaking.example.com: the start of every link in a mail.
                    Unset (development): the host the request came to.

Views send mail after their transaction has committed, never inside one: a slow mail
server then never holds the database's write lock, and no mail tells of a change that
was rolled back. `flask --app app mail-test ADDRESS` sends a test mail.
"""

import os
import secrets
import smtplib
import ssl
import tempfile
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import urlsplit

import click
from flask import current_app, request, url_for
from flask.cli import with_appcontext

from . import spec


def init_app(app):
    app.cli.add_command(mail_test_command)
    # Said when a server process starts; the CLI's commands (migrate, backup) stay quiet.
    if not app.config["SMTP_HOST"] and click.get_current_context(silent=True) is None:
        app.logger.warning(
            "SMTP_HOST is not set: mail is written to %s, not sent", outbox_dir(app.config)
        )


def outbox_dir(config):
    return os.path.join(config["DATA_DIR"], "outbox")


def link(endpoint, **values):
    """The absolute URL of a view, for a mail (or a page's canonical and Open Graph
    links, the sitemap): BASE_URL + the path, or else the host this request came to."""
    base = current_app.config["BASE_URL"]
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def sender():
    config = current_app.config
    if config["MAIL_FROM"]:
        return config["MAIL_FROM"]
    host = urlsplit(config["BASE_URL"]).hostname or (request.host.split(":")[0] if request else "localhost")
    # An Address quotes whatever the vertical's name holds (commas, quotes, accents).
    return Address(display_name=spec.NAME, username="noreply", domain=host)


def send(to, subject, body):
    """Send one plain-text mail now (by SMTP, or into the outbox). Raises OSError
    (smtplib.SMTPException is one) when it could not be handed over."""
    message = EmailMessage()
    message["From"] = sender()
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = make_msgid(domain=message["From"].addresses[0].domain or None)
    message.set_content(body)
    config = current_app.config
    if config["SMTP_HOST"]:
        send_smtp(message, config)
    else:
        write_to_outbox(message, outbox_dir(config))
    return message


def smtp_port(config):
    return config["SMTP_PORT"] or (465 if config["SMTP_SSL"] else 587 if config["SMTP_STARTTLS"] else 25)


def send_smtp(message, config):
    host, timeout = config["SMTP_HOST"], config["SMTP_TIMEOUT"]
    if config["SMTP_SSL"]:
        smtp = smtplib.SMTP_SSL(host, smtp_port(config), timeout=timeout, context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(host, smtp_port(config), timeout=timeout)
    with smtp:
        if config["SMTP_STARTTLS"] and not config["SMTP_SSL"]:
            smtp.starttls(context=ssl.create_default_context())
        if config["SMTP_USER"]:
            smtp.login(config["SMTP_USER"], config["SMTP_PASSWORD"])
        smtp.send_message(message)


def write_to_outbox(message, directory):
    """DATA_DIR/outbox/<time>-<id>.eml, written whole or not at all: a temporary file
    (not *.eml, mode 0600: mails carry links that log in) renamed into place."""
    os.makedirs(directory, exist_ok=True)
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = os.path.join(directory, f"{now}-{secrets.token_hex(4)}.eml")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(message.as_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


@click.command("mail-test")
@click.argument("address")
@with_appcontext
def mail_test_command(address):
    """Send a test mail to ADDRESS with the app's mail settings."""
    config = current_app.config
    with current_app.test_request_context(base_url=config["BASE_URL"] or None):
        try:
            send(address, f"{spec.NAME}: test mail", f"This is a test mail from {spec.NAME}. Mail works.\n")
        except OSError as e:
            raise click.ClickException(f"could not send to {address} through {describe(config)}: {e}")
    click.echo(f"Sent a test mail to {address} through {describe(config)}.")


def describe(config):
    if not config["SMTP_HOST"]:
        return f"the outbox {outbox_dir(config)} (SMTP_HOST is not set)"
    return f"{config['SMTP_HOST']}:{smtp_port(config)}"
