"""CSV import, the partner of each entity's CSV export: reading the file and matching
its columns to the entity's fields. Each entity's module validates and saves the rows
with its own form (its _import_rows), so an imported record obeys exactly the rules of
one typed into the form.

How a file is read:

- Bytes: UTF-8 (with or without the byte order mark Excel writes), else Windows-1252,
  what Excel on Windows saves "CSV" in; anything else is refused with a clear message.
- Refs: matched by the title the pages show for the record pointed at (its title field,
  or "<label> #<id>" when that is empty), within the account; the records added earlier
  in the same file count too.
- Columns: matched by their header, ignoring case and surrounding spaces, to a field's
  label or name. A ref field takes its "<label> title" column (as the export writes it)
  or, without one, its own column, as titles of the records it points to. Other columns
  (the export's "id", "created_at", "updated_at") are shown as not imported.
- Cells: a leading apostrophe that the export put before = + - @ or ' (so that
  spreadsheets do not run the cell as a formula) is taken off again; booleans are yes/no, true/false,
  1/0, on/off, x or empty; choices match their value, else their label, ignoring case.
"""

import base64
import binascii
import csv
import io

import flask_wtf
from flask import request
from flask_wtf.file import FileField

MAX_BYTES = 2 * 1024 * 1024
MAX_ROWS = 10_000
PREVIEW_ROWS = 10
MAX_LISTED_ERRORS = 100

TRUE = {"yes", "y", "true", "t", "1", "on", "x", "✓"}
FALSE = {"no", "n", "false", "f", "0", "off", ""}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class UploadForm(flask_wtf.FlaskForm):
    """Step 1: the file. (Step 2, the confirmation, posts the file's text back.)"""

    file = FileField("CSV file", description="The first row names the columns. At most 2 MB.")


class ImportRefused(Exception):
    """The file as a whole cannot be imported; the message says why."""


def uploaded(form):
    """The bytes of the file: uploaded (step 1), or posted back in base64 (step 2)."""
    if "csv" in request.form:
        try:
            return base64.b64decode(request.form["csv"], validate=True)
        except (binascii.Error, ValueError):
            raise ImportRefused("The file did not come back whole: choose it again.") from None
    if not form.file.data:
        raise ImportRefused("Choose a CSV file to import.")
    return form.file.data.read(MAX_BYTES + 1)


def decode(data):
    """The text of an uploaded file and the encoding it was read in."""
    if len(data) > MAX_BYTES:
        raise ImportRefused(f"The file is larger than {MAX_BYTES // (1024 * 1024)} MB: split it into smaller files.")
    if b"\x00" in data:
        raise ImportRefused("This is not a CSV file (it holds binary data). Save the sheet as CSV and try again.")
    try:
        return data.decode("utf-8-sig"), "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:
        raise ImportRefused("The file's text encoding is not UTF-8: save it as \"CSV UTF-8\" and try again.") from None


class Table:
    """A CSV file matched to an entity's fields.

    columns: [(header, field name or None)], in the file's order.
    rows: [(line, {field name: cell})], line being where the row starts in the file.
    """

    def __init__(self, text, entity):
        self.columns = []
        self.rows = []
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if not header or not any(cell.strip() for cell in header):
                raise ImportRefused("The file is empty: its first row must name the columns.")
            sources = self.match(header, entity)
            line = reader.line_num + 1
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    if len(self.rows) == MAX_ROWS:
                        raise ImportRefused(f"The file has more than {MAX_ROWS:,} rows: split it into smaller files.")
                    row = {name: cells[i] if i < len(cells) else "" for name, i in sources.items()}
                    self.rows.append((line, {name: cell_value(entity["fields"][name], value) for name, value in row.items()}))
                line = reader.line_num + 1
        except csv.Error as e:
            raise ImportRefused(f"Line {reader.line_num}: the file is not valid CSV ({e}).") from None
        if not self.rows:
            raise ImportRefused("The file has a header but no rows to import.")

    def match(self, header, entity):
        """{field name: column index}; sets self.columns.

        A header names a field by its name or its label, ignoring case and surrounding
        spaces; a ref's "<label> title" (or "<name> title") column names it too, and is
        read instead of the ref's own column. Fields that share a label take the columns
        of that label in their order, as the export writes them.
        """
        fields = entity["fields"]
        options = {}  # a header, folded: [(field name, whether a title column)], names first
        for title in (False, True):
            for by_label in (False, True):
                for name, field in fields.items():
                    if title and field["type"] != "ref":
                        continue
                    key = field["label"] if by_label else name
                    key = fold(f"{key} title" if title else key)
                    if (name, title) not in options.setdefault(key, []):
                        options[key].append((name, title))
        own, titles = {}, {}
        for i, cell in enumerate(header):
            found = options.get(fold(cell), [])
            free = [(name, title) for name, title in found if name not in (titles if title else own)]
            if found and not free:
                raise ImportRefused(f"Two columns are for the field “{fields[found[0][0]]['label']}”: keep one.")
            if free:
                name, title = free[0]
                (titles if title else own)[name] = i
        sources = {**own, **titles}  # a ref's title column wins over its own
        if not sources:
            raise ImportRefused("No column matches a field: the first row must name the columns by their labels.")
        read = {i: name for name, i in sources.items()}
        self.columns = [(cell, read.get(i)) for i, cell in enumerate(header)]
        return sources


def fold(text):
    return text.strip().casefold()


def cell_value(field, value):
    """A cell as the form takes it (see the module's docstring)."""
    if field["type"] == "boolean":
        word = fold(value)
        if word in TRUE:
            return "y"
        if word in FALSE:
            return ""
        return value  # the row's check reports it (see boolean_problem)
    if value[:1] == "'" and value[1:2] in (*FORMULA_START, "'"):
        value = value[1:]  # the apostrophe the export put before it (values.csv_text)
    if field["type"] == "choice":
        for choice in field["choices"]:  # its value first, then its label
            if fold(value) == fold(choice):
                return choice
        for choice, label in field["choice_labels"].items():
            if fold(value) == fold(label):
                return choice
    return value


def boolean_problem(field, value):
    """The problem with a boolean cell, or None."""
    if value not in ("y", ""):
        return f"{field['label']}: “{value}” is not yes or no."
    return None


def ref_index(rows):
    """{title, folded: [ids]} of the records a ref field may point to ((id, title) rows)."""
    index = {}
    for id, title in rows:
        if id != "":
            index.setdefault(fold(str(title)), []).append(id)
    return index


def resolve_ref(field, target_label, index, value):
    """(id as form text, problem or None) for a ref cell holding a record's title."""
    title = value.strip()
    if not title:
        return "", None
    ids = index.get(fold(title), [])
    if len(ids) == 1:
        return str(ids[0]), None
    if not ids:
        return "", f"{field['label']}: no {target_label.lower()} is titled “{title}”."
    return "", f"{field['label']}: {len(ids)} records are titled “{title}”; give them different titles first."


def form_problems(form):
    """The errors of a validated form, each with its field's label."""
    problems = [f"{form[name].label.text}: {' '.join(errors)}" for name, errors in form.errors.items() if name]
    return problems + list(form.form_errors)
