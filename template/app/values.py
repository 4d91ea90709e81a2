"""How field values move between forms, the database, pages and CSV files.

Decimals are stored exactly, as INTEGER scaled by 10^places: 12.30 with places 2 is
1230 in the database and "12.30" everywhere a person sees it. Every entity module uses
these helpers, so the rules live in one place.
"""
from datetime import date, datetime, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from flask import abort, request
from flask_wtf import FlaskForm
from wtforms.validators import StopValidation, ValidationError

# SQLite's INTEGER is a signed 64-bit number.
INTEGER_MIN = -(2**63)
INTEGER_MAX = 2**63 - 1


class PostedForm(FlaskForm):
    """A FlaskForm that reads only the posted form fields (request.form).

    FlaskForm also reads uploaded files and JSON bodies into the fields. No form of this
    app takes either, and a file, a number or a list where a field expects text would
    reach its filters and validators as such (a 500): sent that way, the fields are
    missing, and the form says so.
    """

    def __init__(self, formdata=None, **kwargs):
        if formdata is None and self.is_submitted():
            formdata = request.form
        super().__init__(formdata=formdata, **kwargs)


def same_site():
    """403 unless the request comes from a page of this site or was typed: browsers say
    where a request comes from in Sec-Fetch-Site (a browser too old to send it is let
    through). For downloads (GET) that must not be fetched for another site."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        abort(403, "This download must be started from this site's own pages.")


def now():
    """The current UTC time as stored in created_at / updated_at."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def decimal_to_db(value, places):
    """Decimal("12.30"), 2 -> 1230. None stays None. Refuses to round."""
    if value is None:
        return None
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {places} decimal places")
    return int(scaled)


def decimal_from_db(value, places):
    """1230, 2 -> Decimal("12.30"). None stays None."""
    if value is None:
        return None
    return Decimal(value).scaleb(-places)


def format_decimal(value, places):
    """1230, 2 -> "12.30"; None -> ""."""
    if value is None:
        return ""
    return f"{decimal_from_db(value, places):f}"


def date_to_db(value):
    """date(2024, 1, 31) -> "2024-01-31"."""
    return value.isoformat() if value is not None else None


def date_from_db(value):
    return date.fromisoformat(value) if value is not None else None


def datetime_to_db(value):
    """datetime(2024, 1, 31, 8, 30) -> "2024-01-31T08:30:00"; the year always has four
    digits (strftime's %Y writes the year 999 as "999")."""
    return value.isoformat(timespec="seconds") if value is not None else None


def datetime_from_db(value):
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S") if value is not None else None


def format_datetime(value):
    """"2024-01-31T08:30:00" -> "2024-01-31 08:30:00"; None -> ""."""
    if value is None:
        return ""
    return value.replace("T", " ")


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def readable(field, value):
    """A stored value as a person reads it, for pages and the history: a choice's label,
    numbers grouped by thousands with their unit ("1,234.50 kg"), dates with the month
    in words ("1 Mar 2025", "31 Jan 2024, 08:30"), booleans as Yes/No; "" for none.
    `field` is the field's entry in spec.ENTITIES. A value the type does not expect (a
    database changed by hand) is shown as it is."""
    if value is None:
        return ""
    kind = field["type"]
    try:
        if kind == "choice":
            return field["choice_labels"].get(value, value)
        if kind == "boolean":
            return "Yes" if value else "No"
        if kind in ("integer", "decimal"):
            number = decimal_from_db(value, field["places"]) if kind == "decimal" else value
            text = f"{number:,f}" if kind == "decimal" else f"{number:,d}"
            return f"{text}\N{NO-BREAK SPACE}{field['unit']}" if field["unit"] else text
        if kind == "date":
            return show_date(value)
        if kind == "datetime":
            return show_datetime(value)
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        pass
    return str(value)


def show_date(text):
    """"2025-03-01" -> "1 Mar 2025" (ValueError when it is not a date)."""
    day = date.fromisoformat(text)
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def show_datetime(text):
    """"2024-01-31T08:30:00" -> "31 Jan 2024, 08:30" (the seconds when not 0; a time
    in UTC, such as created_at, ends with "UTC")."""
    moment = datetime.fromisoformat(text)
    time = f"{moment:%H:%M}" if not moment.second else f"{moment:%H:%M:%S}"
    zone = " UTC" if moment.tzinfo is not None else ""
    return f"{moment.day} {MONTHS[moment.month - 1]} {moment.year}, {time}{zone}"


def like_pattern(text):
    """A LIKE pattern matching `text` anywhere, for use with ESCAPE '\\'.

    % and _ typed by a user are matched literally, not as wildcards.
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# The list pages' filters (?made_on_from=2025-03-01, ?site=12, ?weight_to=2.5): each
# parser returns the value to compare with, or None for text that is not one, which the
# filter then ignores. Values reach the SQL as ? parameters only.


def filter_id(text):
    """"12" -> 12, the id of a record; None for anything else."""
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > INTEGER_MAX:
        return None
    return int(text)


def filter_integer(text):
    """"-3" -> -3 within SQLite's INTEGER; None for anything else."""
    text = text.strip()
    digits = text[1:] if text[:1] == "-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    value = int(text)
    return value if INTEGER_MIN <= value <= INTEGER_MAX else None


def filter_decimal(text, places, upper):
    """"2.5", 2 -> 250, the bound as stored (scaled by 10^places); a bound between two
    stored values is rounded inwards (down for an upper bound): "2.505" from -> 251."""
    text = text.strip()
    digits = text[1:] if text[:1] == "-" else text
    whole, _, fraction = digits.partition(".")
    if not (whole + fraction).isascii() or not (whole + fraction).isdigit() or len(whole) > 18 or len(fraction) > 18:
        return None
    scaled = Decimal(text).scaleb(places)
    value = int(scaled.to_integral_value(rounding=ROUND_FLOOR if upper else ROUND_CEILING))
    return value if INTEGER_MIN <= value <= INTEGER_MAX else None


def filter_date(text):
    """"2025-03-01" -> "2025-03-01", as dates are stored; None for anything else."""
    text = text.strip()
    if len(text) != 10:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


# CSV exports are sent in chunks of about this many characters.
CSV_CHUNK_SIZE = 64 * 1024


def csv_text(value):
    """A cell for text a user typed: never read as a formula by a spreadsheet.

    Cells starting with = + - @ (or a tab / carriage return) get a leading
    apostrophe, and so do those starting with one, so that the import (imports.py)
    takes exactly one off again. Numbers and dates the app formats itself are written
    as they are.
    """
    if value is None:
        return ""
    if value[:1] in ("=", "+", "-", "@", "\t", "\r", "'"):
        return "'" + value
    return value


def empty_to_none(value):
    """WTForms filter: an empty or blank input is stored as NULL, not ''."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def strip(value):
    """WTForms filter for one-line text inputs."""
    return value.strip() if isinstance(value, str) else value


def text_or_none(value):
    """SelectField coerce for choices: "" (no choice) -> None."""
    if value is None or value == "":
        return None
    return str(value)


def int_or_none(value):
    """SelectField coerce for refs: "" (no choice) -> None, "7" -> 7."""
    if value is None or value == "":
        return None
    return int(value)


def skip_if_unparsed(form, field):
    """Validator: stop when the input could not be parsed (its error is shown)."""
    if field.process_errors:
        raise StopValidation()


class ExactDecimal:
    """Validator for decimal fields: a finite number, at most `places` decimal
    places (never silently rounded), and small enough for the database."""

    def __init__(self, places):
        self.places = places
        self.largest = Decimal(INTEGER_MAX).scaleb(-places)

    def __call__(self, form, field):
        value = field.data
        if value is None:
            return
        if not value.is_finite():
            raise StopValidation("Not a valid decimal value.")
        # copy_abs() is exact: abs() would raise decimal.Overflow for "1e1000000".
        if value.copy_abs() > self.largest:
            raise StopValidation("Number is too large.")
        if value != value.quantize(Decimal(1).scaleb(-self.places)):
            raise StopValidation(f"Use at most {self.places} decimal places.")


def plain_text(form, field):
    """Validator: no control characters (NUL, escape...) but tab and line breaks, which
    nobody types: they would be stored, and break the CSV export for other programs."""
    if isinstance(field.data, str) and any(
        (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127 for c in field.data
    ):
        raise ValidationError("Remove the control characters (such as NUL) from this text.")


def web_url(form, field):
    """Validator: only http and https links (no javascript: or file: URLs)."""
    if field.data and not field.data.lower().startswith(("http://", "https://")):
        raise ValidationError("Use a link starting with http:// or https://.")
