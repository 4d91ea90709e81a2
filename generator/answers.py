"""An app's answers file (.copier-answers.yml): copier's record of the template commit
and the answers the app was rendered from.

It is how vgen tells an app it made (or plain copier made) from any other folder, and
whether an app is current: read once per app per run, so a run over hundreds of apps
that changes nothing costs little more than reading these files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .gitrepo import TEMPLATE_BRANCH
from .render import ANSWERS_FILE

# libyaml's loader where installed: reading every app's answers is most of a no-change run.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def recorded(app: Path) -> dict:
    """The app's answers file, or {} when it is missing, unreadable or not a mapping."""
    try:
        answers = yaml.load((Path(app) / ANSWERS_FILE).read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return answers if isinstance(answers, dict) else {}


def questions(answers: dict) -> dict:
    """The answers to the template's questions, without copier's own `_` entries
    (`_commit`, `_src_path`)."""
    return {k: v for k, v in answers.items() if not k.startswith("_")}


def plain(answers: dict) -> dict:
    """The answers as they read back from YAML (tuples become lists and so on)."""
    return yaml.load(yaml.dump(answers, Dumper=_Dumper), Loader=_Loader)


def is_current(app: Path, version: str, answers: dict) -> bool:
    """True when the app was last generated from this template version with these answers."""
    found = recorded(app)
    return found.get("_commit") == version and questions(found) == plain(answers)


def is_app(path: Path) -> bool:
    """True when the folder is an app made from the template (by vgen or plain copier):
    its answers file names the template commit it was rendered from."""
    return bool(recorded(path).get("_commit"))


def not_an_app(app: Path, shown: str | None = None) -> str:
    """Why vgen will not touch the folder at app (is_app is False): its answers file is
    damaged, or it was not made from the template at all."""
    shown = shown or str(app)
    try:
        yaml.load((Path(app) / ANSWERS_FILE).read_text(encoding="utf-8"), Loader=_Loader)
    except OSError:
        pass
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return (f"{shown}/{ANSWERS_FILE} is damaged ({_yaml_problem(exc)}), so vgen cannot tell "
                "which template commit and answers the app was made from: repair it, for example "
                f"from the last rendering: git -C {shown} checkout {TEMPLATE_BRANCH} -- {ANSWERS_FILE}")
    return f"{shown} exists and is not a vgen app: move it away"


def _yaml_problem(exc: Exception) -> str:
    """A YAML or decoding error in one line: what is wrong, and where."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: {exc.reason} at byte {exc.start}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML: {problem}{where}"
