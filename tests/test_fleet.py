"""Regenerating a fleet: parallel, atomic per vertical, honest about conflicts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import cli
from generator.gitrepo import CONFLICT_BRANCH, TEMPLATE_BRANCH

from conftest import generate, git, write_spec

SPEC = '''
slug = "{slug}"
name = "{name}"

[[entities]]
name = "client"
fields = [
  {{ name = "name", type = "string", required = true }},
  {{ name = "visits", type = "integer", min = 0 }},
]
'''
FLEET = ["alpha", "bravo", "charlie", "delta"]


def snapshot(app: Path) -> dict:
    """Every file of the app (data and untracked files included) and the repo's HEAD."""
    files = {str(p.relative_to(app)): p.read_bytes() for p in sorted(app.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(app).parts}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=app, capture_output=True, text=True).stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=app, capture_output=True, text=True).stdout
    return {"files": files, "head": head, "status": status}


def code_of(app: Path) -> dict:
    """snapshot() without instance/, where SQLite may leave its -wal and -shm files."""
    taken = snapshot(app)
    taken["files"] = {k: v for k, v in taken["files"].items() if not k.startswith("instance/")}
    return taken


def branches(app: Path) -> dict[str, str]:
    """Each branch of the app's repository and the commit it points at."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads"],
                         cwd=app, capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())


def change_template(root: Path, old: str, new: str, path="template/gunicorn.conf.py.jinja") -> None:
    target = root / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new))
    git(root, "commit", "-qam", f"template: {new}")


def run_cli(project, *args):
    return CliRunner().invoke(cli.main, ["--project", str(project.root), *args, "--out", str(project.out)])


def test_fleet_regeneration_reports_and_protects_each_vertical(project):
    for slug in FLEET:
        write_spec(project, slug, SPEC.format(slug=slug, name=slug.title()))
    first = run_cli(project, "generate", *FLEET, "--jobs", "2")
    assert first.exit_code == 0, first.output
    assert first.output.count("created") >= 4

    apps = {slug: project.app_dir(slug) for slug in FLEET}
    # alpha: no hand edit. bravo: a hand edit elsewhere (merges cleanly, left uncommitted).
    # charlie and delta: a hand edit on the very line the template change touches.
    readme = apps["bravo"] / "README.md"
    readme.write_text(readme.read_text() + "\nOur own notes.\n")
    (apps["bravo"] / "NOTES.txt").write_text("an untracked file of the founder's\n")
    for slug in ("charlie", "delta"):
        conf = apps[slug] / "gunicorn.conf.py"
        conf.write_text(conf.read_text().replace("keepalive = 5", "keepalive = 7  # tuned by hand"))
    (apps["delta"] / "instance").mkdir()
    (apps["delta"] / "instance" / "delta.db").write_bytes(b"customer data, ignored by git")
    write_spec(project, "echo", 'slug = "echo"\nname = "Echo"\n')  # broken: no entities

    change_template(project.root, "keepalive = 5", "keepalive = 10")
    before = {slug: snapshot(apps[slug]) for slug in ("charlie", "delta")}

    result = run_cli(project, "generate", "--all", "--jobs", "2")
    assert result.exit_code == 1, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.split() and line.split()[0] in FLEET + ["echo"]}
    assert "updated" in rows["alpha"] and "gunicorn.conf.py" in rows["alpha"]
    assert "updated" in rows["bravo"]
    assert "conflict" in rows["charlie"] and "gunicorn.conf.py" in rows["charlie"]
    assert "conflict" in rows["delta"]
    assert "failed" in rows["echo"]
    assert "failed (echo): invalid spec: at least one [[entities]] is required" in result.output

    # Conflicting verticals are exactly as they were, their data included...
    for slug in ("charlie", "delta"):
        assert snapshot(apps[slug]) == before[slug]
        # ...and the merge result waits on a branch, conflict markers and all.
        aside = subprocess.run(["git", "show", f"{CONFLICT_BRANCH}:gunicorn.conf.py"], cwd=apps[slug],
                               capture_output=True, text=True).stdout
        assert "<<<<<<<" in aside and "keepalive = 10" in aside and "keepalive = 7" in aside
    # The others are updated with their hand edits kept.
    assert "keepalive = 10" in (apps["alpha"] / "gunicorn.conf.py").read_text()
    assert "keepalive = 10" in (apps["bravo"] / "gunicorn.conf.py").read_text()
    assert "Our own notes." in readme.read_text()
    assert (apps["bravo"] / "NOTES.txt").read_text() == "an untracked file of the founder's\n"
    log = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=apps["alpha"], capture_output=True, text=True).stdout
    assert log.startswith("Regenerate alpha from template ") and "(spec " in log
    assert not project.app_dir("echo").exists()

    # A second run: every clean vertical is unchanged, the conflicts are still reported.
    second = run_cli(project, "generate", "--all")
    rows = {line.split()[0]: line for line in second.output.splitlines() if line.split() and line.split()[0] in FLEET}
    assert "unchanged" in rows["alpha"] and "unchanged" in rows["bravo"]
    assert "conflict" in rows["charlie"]


def test_unchanged_verticals_render_nothing(project):
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    app = project.app_dir("alpha")
    template_tip = subprocess.run(["git", "rev-parse", TEMPLATE_BRANCH], cwd=app, capture_output=True, text=True).stdout
    outcome = generate(project, ["alpha"])["alpha"]
    assert outcome.status == "unchanged"
    assert subprocess.run(["git", "rev-parse", TEMPLATE_BRANCH], cwd=app, capture_output=True, text=True).stdout == template_tip


def test_spec_change_reaches_the_app_and_port_is_kept(project):
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    port_before = (project.app_dir("alpha") / "gunicorn.conf.py").read_text()
    path = project.spec_path("alpha")
    path.write_text(path.read_text().replace('{ name = "visits", type = "integer", min = 0 },',
                                             '{ name = "visits", type = "integer", min = 0 },\n  { name = "phone", type = "string" },'))
    outcome = generate(project, ["alpha"])["alpha"]
    assert outcome.status == "updated"
    assert "phone" in (project.app_dir("alpha") / "app" / "schema.sql").read_text()
    assert (project.app_dir("alpha") / "gunicorn.conf.py").read_text() == port_before


def test_dry_run_writes_nothing_and_shows_the_diff(project):
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    app = project.app_dir("alpha")
    change_template(project.root, "keepalive = 5", "keepalive = 10")
    before = snapshot(app)
    ports_before = project.ports_path.read_text()
    write_spec(project, "bravo", SPEC.format(slug="bravo", name="Bravo"))
    result = run_cli(project, "generate", "alpha", "bravo", "--dry-run", "--diff")
    assert result.exit_code == 0, result.output
    assert "would be updated" in result.output and "would be created" in result.output
    assert "gunicorn.conf.py" in result.output
    assert "+keepalive = 10" in result.output
    assert "Would assign port" in result.output
    assert "Schema (flask --app app migrate --dry-run):" in result.output
    assert 'table "client"' in result.output  # bravo's database would be created
    assert snapshot(app) == before
    assert project.ports_path.read_text() == ports_before
    assert not project.app_dir("bravo").exists()


@pytest.mark.slow
def test_an_app_made_by_plain_copier_is_adopted(project, tmp_path):
    """An app from `copier copy` has no vgen/template branch: vgen derives it."""
    import sys
    import yaml

    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])  # assigns the port; then replace the app by a plain copier copy
    app = project.app_dir("alpha")
    answers = yaml.safe_load((app / ".copier-answers.yml").read_text())
    subprocess.run(["rm", "-rf", str(app)], check=True)
    data = tmp_path / "answers.yml"
    data.write_text(yaml.safe_dump({k: v for k, v in answers.items() if not k.startswith("_")}))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project.root, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet", "--vcs-ref", head,
                    "--data-file", str(data), str(project.root), str(app)], check=True, capture_output=True)
    git(app, "init", "-q")
    git(app, "add", "-A")
    git(app, "commit", "-qm", "made by copier")
    readme = app / "README.md"
    readme.write_text(readme.read_text() + "\nHand edit.\n")
    git(app, "commit", "-qam", "hand edit")
    change_template(project.root, "keepalive = 5", "keepalive = 10")
    outcome = generate(project, ["alpha"])["alpha"]
    assert outcome.status == "updated", outcome.message
    assert outcome.files == ["gunicorn.conf.py"]
    assert "Hand edit." in readme.read_text()


@pytest.mark.slow
def test_status_reports_drift_hand_edits_health_and_backups(project):
    import json

    from conftest import gunicorn, port_of, wait_for

    for slug in ("alpha", "bravo"):
        write_spec(project, slug, SPEC.format(slug=slug, name=slug.title()))
    generate(project, ["alpha", "bravo"])
    write_spec(project, "charlie", SPEC.format(slug="charlie", name="Charlie"))  # never generated
    # bravo: a hand edit (committed: still a hand edit) and a changed spec;
    # alpha: a recorded good backup, and serving.
    (project.app_dir("bravo") / "README.md").write_text("mine\n")
    git(project.app_dir("bravo"), "commit", "-qam", "my README")
    path = project.spec_path("bravo")
    path.write_text(path.read_text().replace('name = "Bravo"', 'name = "Bravo Two"'))
    backups = project.app_dir("alpha") / "instance" / "backups"
    backups.mkdir(parents=True)
    (backups / "last.json").write_text(json.dumps(
        {"time": "2026-11-25T03:17:00Z", "verified": True, "last_good": {"time": "2026-11-25T03:17:00Z"}}))
    change_template(project.root, "keepalive = 5", "keepalive = 6")
    shutil.copytree(project.app_dir("alpha"), project.out / "alpha.bak")  # a copy, no vertical

    with gunicorn(project.app_dir("alpha")):
        wait_for(f"http://127.0.0.1:{port_of(project, 'alpha')}/healthz")
        result = CliRunner().invoke(cli.main, ["--project", str(project.root), "status", "--out", str(project.out)],
                                    terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:] if line.strip()}
    alpha, bravo, charlie = rows["alpha"], rows["bravo"], rows["charlie"]
    assert str(port_of(project, "alpha")) in alpha
    assert "(behind)" in alpha and "same" in alpha and " ok " in alpha + " "
    assert "2026-11-25T03:17:00Z" in alpha
    assert "changed" in bravo and "yes" in bravo and "down" in bravo
    assert "not generated" in charlie
    assert "alpha.bak" not in rows


def test_generate_refuses_a_vertical_whose_port_is_shared_or_reserved(project):
    for slug in ("alpha", "bravo", "charlie", "delta"):
        write_spec(project, slug, SPEC.format(slug=slug, name=slug.title()))
    with project.ports_path.open("a") as f:  # [ports] is the file's last table
        f.write("alpha = 8151\nbravo = 8151\ncharlie = 8200\ndelta = 8160\n")
    result = run_cli(project, "generate", "alpha", "bravo", "charlie", "delta", "--jobs", "2")
    assert result.exit_code == 1, result.output
    assert "failed (alpha, bravo): ports.toml: port 8151 is given to more than one vertical: alpha, bravo" in result.output
    assert 'failed (charlie): ports.toml: "charlie" = 8200 is a reserved port' in result.output
    assert [s for s in ("alpha", "bravo", "charlie") if project.app_dir(s).exists()] == []
    assert "127.0.0.1:8160" in (project.app_dir("delta") / "gunicorn.conf.py").read_text()


@pytest.mark.parametrize("text", ["range = 5\n", "ports = 5\n", "ports = [1, 2]\n"])
def test_every_command_names_a_ports_toml_that_is_not_tables(project, text):
    project.ports_path.write_text(text)
    key = text.split()[0]
    for args in (["check"], ["ports"], ["ports", "check"], ["generate", "honeybees", "--out", str(project.out)]):
        result = CliRunner().invoke(cli.main, ["--project", str(project.root), *args])
        assert result.exit_code == 1, (args, result.output)
        assert f"ports.toml: {key} must be a table" in result.output, (args, result.output)
        assert not isinstance(result.exception, AttributeError)
    assert not project.out.exists()


@pytest.mark.parametrize("registry, message", [
    ("ports = 5\n", "ports.toml: ports must be a table"),
    ("[range]\nfirst = 9000\nlast = 9000\nreserved = []\n\n[ports]\nother = 9000\n",
     'no free port left in 9000-9000 for "bakery"'),
])
def test_new_writes_nothing_when_no_port_can_be_given(project, registry, message):
    project.ports_path.write_text(registry)
    result = run_cli(project, "new", "bakery")
    assert result.exit_code == 1
    assert message in result.output
    assert "Wrote" not in result.output
    assert not project.spec_path("bakery").exists()
    assert project.ports_path.read_text() == registry
    assert not project.app_dir("bakery").exists()


@pytest.mark.parametrize("files", [{}, {"notes.txt": "someone else's\n"}])
def test_new_refuses_a_folder_that_is_not_a_vgen_app(project, files):
    app = project.app_dir("leftover")
    app.mkdir(parents=True)
    for name, text in files.items():
        (app / name).write_text(text)
    ports_before = project.ports_path.read_text()
    result = run_cli(project, "new", "leftover")
    assert result.exit_code == 1
    assert f"{app} exists and is not a vgen app: move it away" in result.output
    assert not project.spec_path("leftover").exists()
    assert project.ports_path.read_text() == ports_before
    assert sorted(p.name for p in app.iterdir()) == sorted(files)  # no git init, nothing added


def test_generate_never_takes_over_a_folder_that_is_not_a_vgen_app(project):
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    app = project.app_dir("alpha")
    app.mkdir(parents=True)
    (app / "notes.txt").write_text("someone else's\n")
    for extra in ([], ["--dry-run"]):
        result = run_cli(project, "generate", "alpha", *extra)
        assert result.exit_code == 1
        assert f"failed (alpha): {app} exists and is not a vgen app: move it away" in result.output
        assert [p.name for p in app.iterdir()] == ["notes.txt"]


def test_new_takes_back_its_spec_and_port_when_generation_fails(project, monkeypatch):
    from generator import fleet
    from generator.appupdate import Outcome, Status

    ports_before = project.ports_path.read_text()
    monkeypatch.setattr(fleet, "run", lambda jobs, *a, **k: [Outcome(j.slug, Status.FAILED, message="boom") for j in jobs])
    result = run_cli(project, "new", "bakery")
    assert result.exit_code == 1
    assert "failed (bakery): boom" in result.output
    assert "bakery was not generated: removed verticals/bakery.toml and its port" in result.output
    assert not project.spec_path("bakery").exists()
    assert project.ports_path.read_text() == ports_before
    again = run_cli(project, "new", "bakery", "--name", "Bakery")
    assert "already exists" not in again.output


def test_new_refuses_a_name_of_two_lines(project):
    result = run_cli(project, "new", "bakery", "--name", "two\nlines")
    assert result.exit_code == 1
    assert "the name must be one line of text" in result.output
    assert "TOML syntax error" not in result.output
    assert not project.spec_path("bakery").exists()


def test_a_modify_delete_conflict_names_its_files(project):
    """A hand-edited file of an entity that leaves the spec: git leaves it unmerged
    (modified here, deleted by the template), with no markers in it; it is listed."""
    two = SPEC + '''
[[entities]]
name = "visit"
fields = [{{ name = "day", type = "date" }}]
'''
    write_spec(project, "alpha", two.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    app = project.app_dir("alpha")
    with (app / "app/visit.py").open("a") as f:
        f.write("# tuned by hand\n")
    before = snapshot(app)
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    outcome = generate(project, ["alpha"])["alpha"]
    assert outcome.status == "conflict"
    assert outcome.files == ["app/visit.py"]
    assert snapshot(app) == before


def test_a_damaged_app_repository_is_named_with_gits_words(project):
    """rm .git/HEAD: git no longer sees a repository there. vgen says so, in git's own
    words, and never runs git in a repository around the app (here: the project's)."""
    from generator.project import Project

    inside = Project(root=project.root, out=project.root / "apps")  # git-ignored there
    write_spec(inside, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    assert run_cli(inside, "generate", "alpha").exit_code == 0
    app = inside.app_dir("alpha")
    (app / ".git/HEAD").unlink()
    path = inside.spec_path("alpha")
    path.write_text(path.read_text().replace('name = "Alpha"', 'name = "Alpha Two"'))
    project_before = snapshot(project.root)
    for extra in ([], ["--dry-run"]):
        result = run_cli(inside, "generate", "alpha", *extra)
        assert result.exit_code == 1, result.output
        assert f"failed (alpha): {app}: its git repository is damaged (git: fatal: not a git repository: " in result.output
        assert "returned non-zero exit status" not in result.output
        assert snapshot(project.root) == project_before


def test_a_damaged_answers_file_is_named(project):
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    app = project.app_dir("alpha")
    (app / ".copier-answers.yml").write_text("_commit: abc\nslug: [alpha\n")
    git(app, "commit", "-qam", "a bad edit")
    path = project.spec_path("alpha")
    path.write_text(path.read_text().replace('name = "Alpha"', 'name = "Alpha Two"'))
    for extra in ([], ["--dry-run"]):
        result = run_cli(project, "generate", "alpha", *extra)
        assert result.exit_code == 1, result.output
        assert f"failed (alpha): {app}/.copier-answers.yml is damaged (not valid YAML: " in result.output
        assert " at line 3, column 1), so vgen cannot tell which template commit" in result.output
        assert f"git -C {app} checkout vgen/template -- .copier-answers.yml" in result.output
        assert "not a vgen app" not in result.output
    # The advice works.
    git(app, "checkout", "vgen/template", "--", ".copier-answers.yml")
    assert generate(project, ["alpha"])["alpha"].status == "updated"


def alpha_with_a_client(project) -> tuple[Path, Path]:
    """The alpha app generated and migrated, with one client (Ann, no visits) in its
    database: (app, database)."""
    import sqlite3

    from conftest import migrate

    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    app = project.app_dir("alpha")
    migrate(app)
    db_path = app / "instance" / "alpha.db"
    db = sqlite3.connect(db_path)
    db.execute("INSERT INTO account (id, name) VALUES (1, 'Acme')")
    db.execute("INSERT INTO client (account_id, name, created_at, updated_at) VALUES (1, 'Ann', 't', 't')")
    db.commit()
    db.close()
    return app, db_path


@pytest.mark.slow
def test_a_spec_change_the_data_cannot_take_is_refused_and_the_app_kept(project):
    """visits made required while a client has none: the app's migrate would refuse,
    so the app would no longer start. The dry run says refused; generate leaves the app
    as it was (its update set aside) and says what to do; once the data is fixed, it
    goes through."""
    import sqlite3

    from generator.gitrepo import REFUSED_BRANCH

    from conftest import migrate

    app, db_path = alpha_with_a_client(project)
    path = project.spec_path("alpha")
    path.write_text(path.read_text().replace('type = "integer", min = 0', 'type = "integer", min = 0, required = true'))
    before, data_before, branches_before = code_of(app), db_path.read_bytes(), branches(app)
    reason = "NOT NULL constraint failed: client.visits (visits=None): required now"

    dry = run_cli(project, "generate", "alpha", "--dry-run")
    assert dry.exit_code == 1, dry.output
    assert "would be" not in dry.output and "refused" in dry.output
    assert f"refused (alpha): left as it was: its database ({app}/instance) cannot take the new schema" in dry.output
    assert reason in dry.output and '"client" id 1' in dry.output
    assert code_of(app) == before and db_path.read_bytes() == data_before

    result = run_cli(project, "generate", "alpha")
    assert result.exit_code == 1, result.output
    assert f"refused (alpha): left as it was; the update is on branch {REFUSED_BRANCH}: its database" in result.output
    assert reason in result.output
    assert ("Either change those rows first (set the missing values; for a removed or renamed choice, map its "
            "rows to a choice the spec keeps), or change the spec back; then run vgen generate alpha again") in result.output
    assert "1 refused in " in result.output
    assert code_of(app) == before and db_path.read_bytes() == data_before
    assert branches(app) == {**branches_before, REFUSED_BRANCH: branches(app)[REFUSED_BRANCH]}
    assert migrate(app).returncode == 0  # the app still starts on its data

    db = sqlite3.connect(db_path)
    db.execute("UPDATE client SET visits = 0")
    db.commit()
    db.close()
    fixed = run_cli(project, "generate", "alpha")
    assert fixed.exit_code == 0, fixed.output
    assert "updated" in fixed.output
    assert "migrated" in migrate(app).stdout


@pytest.mark.slow
def test_generate_names_an_updated_app_that_is_running_its_old_code(project):
    from conftest import gunicorn, port_of, wait_for, wait_port_free

    write_spec(project, "served", SPEC.format(slug="served", name="Served"))
    write_spec(project, "resting", SPEC.format(slug="resting", name="Resting"))
    generate(project, ["served", "resting"])
    port = port_of(project, "served")
    for slug in ("served", "resting"):
        path = project.spec_path(slug)
        path.write_text(path.read_text().replace('name = "visits"', 'name = "calls"'))
    wait_port_free(port)
    with gunicorn(project.app_dir("served")):
        wait_for(f"http://127.0.0.1:{port}/healthz")
        result = run_cli(project, "generate", "served", "resting")
    assert result.exit_code == 0, result.output
    assert (f"served is running on port {port} with its old code: restart it to serve the new code "
            "(stop vgen serve, then start it again)") in result.output
    assert "resting is running" not in result.output
    assert "2 updated in" in result.output


@pytest.mark.slow
def test_status_shows_the_latest_backup_of_either_kind(project):
    """migrate's own backup before a rename counts as much as the nightly one."""
    import json

    from conftest import migrate

    app, _ = alpha_with_a_client(project)
    path = project.spec_path("alpha")
    path.write_text(path.read_text().replace('name = "visits",', 'name = "calls", renamed_from = "visits",'))
    assert generate(project, ["alpha"])["alpha"].status == "updated"
    assert "Backup taken before migrating" in migrate(app).stdout
    taken = next((app / "instance" / "backups").glob("pre-migrate-alpha-*.db")).name
    stamp = taken.removeprefix("pre-migrate-alpha-").removesuffix(".db")
    shown = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"

    def last_backup():
        result = run_cli(project, "status")
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if line.startswith("alpha "))
        return row.split()[-2:]

    assert last_backup() == [shown, "(pre-migrate)"]
    record = project.app_dir("alpha") / "instance" / "backups" / "last.json"
    record.write_text(json.dumps({"verified": True, "last_good": {"time": "2000-01-01T03:00:00Z"}}))
    assert last_backup() == [shown, "(pre-migrate)"]
    record.write_text(json.dumps({"verified": True, "last_good": {"time": "2999-01-01T03:00:00Z"}}))
    assert last_backup() == ["2999-01-01T03:00:00Z", "(backup)"]


def test_serve_migrates_then_gives_gunicorns_command(project):
    from generator import serve
    from generator.errors import VgenError

    from conftest import port_of

    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    with pytest.raises(VgenError, match=r"is not a generated app: run vgen generate alpha first"):
        serve.prepare(project, "alpha")
    generate(project, ["alpha"])
    app = project.app_dir("alpha")
    command = serve.prepare(project, "alpha")
    assert command.argv[1:] == ["-m", "gunicorn", "-c", "gunicorn.conf.py"]
    assert (command.cwd, command.port) == (app, port_of(project, "alpha"))
    assert command.env["DATA_DIR"] == str(app / "instance")
    assert (app / "instance" / "alpha.db").is_file()  # migrated: created


def test_serve_says_what_to_install_when_a_python_lacks_the_apps_dependencies(project, tmp_path):
    from generator import serve
    from generator.errors import VgenError

    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    generate(project, ["alpha"])
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(VgenError, match=r"alpha: the app's dependencies are not installed for .*bare/bin/python: "
                                        r"install those listed in .*alpha/pyproject.toml"):
        serve.prepare(project, "alpha", python=str(bare / "bin" / "python"))


def test_new_vertical_is_a_library_call(project):
    from generator.newvertical import new_vertical

    from conftest import port_of

    done = new_vertical(project, "bakery", "Bakery")
    assert done.kept and done.failure(project) == ""
    assert (done.started.spec_path, done.started.port) == (project.spec_path("bakery"), port_of(project, "bakery"))
    assert done.report.by_slug()["bakery"].status == "created" and done.report.ok


@pytest.mark.parametrize("command", [["generate", "alpha"], ["generate", "alpha", "--dry-run"], ["new", "bakery"]])
def test_an_output_folder_under_a_plain_file_is_one_error_line(project, tmp_path, command):
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    ports_before = project.ports_path.read_text()
    (tmp_path / "file").write_text("not a folder\n")
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), *command, "--out", str(tmp_path / "file" / "apps")])
    assert result.exit_code == 1
    assert result.output == f"Error: output folder {tmp_path}/file/apps is not a folder ({tmp_path}/file is a file)\n"
    assert project.ports_path.read_text() == ports_before
    assert not project.spec_path("bakery").exists()


def test_an_operating_system_error_is_one_error_line_naming_the_path(project, tmp_path):
    """A plain file where vgen keeps its lock and template exports (.git/vgen), a project
    under a plain file, a spec that is a folder: one line each, never a traceback."""
    write_spec(project, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    (project.root / ".git" / "vgen").write_text("in the way\n")
    result = run_cli(project, "generate", "alpha")
    assert result.exit_code == 1
    assert result.output == f"Error: {project.root}/.git/vgen: File exists\n"

    (tmp_path / "file").write_text("not a folder\n")
    result = CliRunner().invoke(cli.main, ["--project", str(tmp_path / "file" / "vgen"), "check"])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path}/file/vgen: not a vgen project (no copier.yml there)\n"

    project.spec_path("bravo").mkdir()
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "check"])
    assert result.exit_code == 1
    assert "  verticals/bravo.toml: cannot read the file ([Errno 21] Is a directory: " in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_refused_update_of_an_app_without_its_template_branch_leaves_it_without(project):
    """An app vgen adopts in the same run (no vgen/template yet, as copier makes them):
    refused, it is left without the branch, so the next run adopts it anew."""
    import sqlite3

    from generator.gitrepo import REFUSED_BRANCH, TEMPLATE_BRANCH

    app, db_path = alpha_with_a_client(project)
    git(app, "branch", "-D", TEMPLATE_BRANCH)
    path = project.spec_path("alpha")
    path.write_text(path.read_text().replace('type = "integer", min = 0', 'type = "integer", min = 0, required = true'))
    before, branches_before = code_of(app), branches(app)
    assert generate(project, ["alpha"])["alpha"].status == "refused"
    assert code_of(app) == before
    assert branches(app) == {**branches_before, REFUSED_BRANCH: branches(app)[REFUSED_BRANCH]}
    db = sqlite3.connect(db_path)
    db.execute("UPDATE client SET visits = 0")
    db.commit()
    db.close()
    assert generate(project, ["alpha"])["alpha"].status == "updated"
    assert TEMPLATE_BRANCH in branches(app)


def test_a_project_in_a_git_worktree_generates(project, tmp_path):
    """In a worktree, .git is a file: vgen's lock and exports go to the worktree's git folder."""
    from generator.project import Project

    git(project.root, "worktree", "add", "-q", str(tmp_path / "wt"))
    tree = Project(root=tmp_path / "wt", out=tmp_path / "wt-apps")
    assert (tree.root / ".git").is_file()
    write_spec(tree, "alpha", SPEC.format(slug="alpha", name="Alpha"))
    result = run_cli(tree, "generate", "alpha")
    assert result.exit_code == 0, result.output
    assert "1 created in" in result.output
    assert tree.ports_lock.is_file() and project.root / ".git" in tree.ports_lock.parents
