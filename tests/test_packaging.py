"""vgen as a package: what it declares, and a plain `pip install` of it that works.

vgen's own pyproject.toml lists what the generator imports. A generated app's
dependencies are listed once, in template/pyproject.toml.jinja: the app's pyproject.toml,
`vgen install`'s pip command and scripts/install (through scripts/app-requirements) all
come from that list.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from generator.errors import VgenError
from generator.install import _requirements, wheels_for
from generator.schema import schema_plan

from conftest import ROOT, render_app, sample_answers

APP_REQUIREMENTS = ROOT / "scripts" / "app-requirements"


def app_requirements(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP_REQUIREMENTS), *map(str, args)], capture_output=True, text=True)


def dist_name(requirement: str) -> str:
    """The normalized distribution name of a requirement ("Flask-WTF>=1.2" -> "flask-wtf")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def test_every_module_vgen_imports_is_a_declared_dependency():
    declared = {dist_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (ROOT / "generator").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"generator", "__future__"}
    assert {"click", "copier", "wtforms", "yaml"} <= third_party  # the walk sees the imports
    missing = {m for m in third_party if not {dist_name(d) for d in distributions.get(m, [m])} & declared}
    assert not missing, f"generator imports {sorted(missing)}, which pyproject.toml does not declare"


def test_the_app_dependencies_are_written_once():
    """vgen's pyproject.toml lists none of them: they are the template's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed_by_vgen = {dist_name(r) for r in project["dependencies"]}
    listed_by_vgen |= {dist_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    only_the_apps = {dist_name(r) for r in app_requirements().stdout.split()} - {"wtforms", "email-validator"}
    assert only_the_apps == {"flask", "flask-wtf", "gunicorn", "zxcvbn"}
    assert not only_the_apps & listed_by_vgen


@pytest.fixture(scope="module")
def sample_app(template_repo, tmp_path_factory) -> Path:
    return render_app(template_repo, sample_answers(), tmp_path_factory.mktemp("apps") / "sample")


def test_app_requirements_are_the_generated_apps_and_vgen_install_uses_them(sample_app):
    done = app_requirements()
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()
    assert tomllib.loads((sample_app / "pyproject.toml").read_text())["project"]["dependencies"] == listed
    # vgen install gathers the wheels of exactly that list, pinned.
    wheels = wheels_for(["sample"], Path("/"), sample_app.parent)
    pinned = {line.split("==")[0].replace("_", "-").lower() for line in wheels.requirements.split()}
    assert {dist_name(r) for r in listed} <= pinned


def test_app_requirements_refuse_template_markup(tmp_path):
    template = tmp_path / "pyproject.toml.jinja"
    template.write_text('[project]\ndependencies = [\n    "flask>=[[ flask_version ]]",\n]\n')
    done = app_requirements(template)
    assert done.returncode == 1
    assert "the dependencies array holds template markup ([[, ]])" in done.stderr


@pytest.mark.parametrize("text, message", [
    (None, "cannot read the app's dependencies"),
    ("[project\n", "cannot read the app's dependencies"),
    ('[project]\nname = "sample"\n', "[project] dependencies must list what the app needs"),
    ("[project]\ndependencies = []\n", "[project] dependencies must list what the app needs"),
])
def test_vgen_install_names_an_app_pyproject_without_dependencies(tmp_path, text, message):
    if text is not None:
        (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(VgenError) as error:
        _requirements(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'pyproject.toml'}: {message}")


@pytest.mark.slow
def test_pip_install_without_extras_gives_a_working_vgen(template_repo, project, tmp_path):
    """A fresh venv, `pip install <repo>` as pip is configured here, then check and generate."""
    source = tmp_path / "source"  # pip builds in the tree: keep the project's clean
    subprocess.run(["git", "clone", "-q", "--local", str(template_repo), str(source)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VGEN_OUT", "VGEN_PROJECT")}
    done = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(source)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # No extras: the app's own dependencies are not there, and vgen does not need them.
    assert subprocess.run([str(venv / "bin/python"), "-c", "import flask"], capture_output=True).returncode == 1

    def vgen(*args):
        return subprocess.run([str(venv / "bin/vgen"), "--project", str(project.root), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    check = vgen("check")
    assert check.returncode == 0 and "Traceback" not in check.stdout + check.stderr, check.stdout + check.stderr
    generated = vgen("generate", "cheesemaking", "--out", str(tmp_path / "apps"))
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert re.search(r"cheesemaking\s+\d+\s+created", generated.stdout), generated.stdout
    app = tmp_path / "apps" / "cheesemaking"
    assert (app / ".copier-answers.yml").is_file() and (app / "app" / "batch.py").is_file()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=app, capture_output=True, text=True).stdout == ""


def test_a_schema_plan_without_the_apps_dependencies_says_what_to_install(sample_app, tmp_path):
    app = sample_app
    venv = tmp_path / "venv"  # a Python without flask, as after a plain `pip install .` of vgen
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    with pytest.raises(VgenError) as error:
        schema_plan(app, python=str(venv / "bin" / "python"))
    assert str(error.value) == (
        f"{app}: no schema plan: migrate --dry-run runs the app with vgen's own Python ({venv}/bin/python), "
        "which does not have the app's dependencies. Install them into it, as scripts/install does "
        "(they are listed in the app's pyproject.toml)"
    )
