"""The vgen command line: thin click commands over the library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import fleet, ports, project as projects, render
from . import install as install_mod, status as status_mod
from .errors import VgenError

# Piped output (a file, grep, CI logs) is never cut to 80 columns: lines run as long as
# their content.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 1000)

STATUS_STYLE = {
    "created": "green", "updated": "green", "unchanged": "dim",
    "conflict": "yellow", "failed": "red",
}


class VgenGroup(click.Group):
    """Turns a VgenError into `Error: ...` and exit code 1: never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VgenError as exc:
            err_console.print(f"[red]Error:[/red] {escape(str(exc))}", soft_wrap=True)
            sys.exit(1)


@click.group(cls=VgenGroup)
@click.option("--project", "project_dir", type=click.Path(file_okay=False),
              help="The template repository (default: found from here).")
@click.version_option(package_name="vgen")
@click.pass_context
def main(ctx, project_dir):
    """Stamp out and run a fleet of small vertical Flask + SQLite apps."""
    ctx.obj = {"project_dir": project_dir}


def get_project(ctx, out=None) -> projects.Project:
    return projects.find_project(ctx.obj["project_dir"], out)


@main.command()
@click.argument("slug")
@click.option("--name", help="Display name (default: the slug, capitalised).")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps go (default: apps/ or $VGEN_OUT).")
@click.pass_context
def new(ctx, slug, name, out):
    """Write a starter verticals/SLUG.toml, assign its port and generate the app.

    Nothing is kept when a step fails: no spec, no port, no app.
    """
    project = get_project(ctx, out)
    started = fleet.start_vertical(project, slug, name)
    console.print(f"Wrote {project.shown(started.spec_path)}")
    if started.assigned:
        console.print(f"Assigned port {started.port} to {slug} in ports.toml")
    try:
        outcomes = _generate(project, [slug], jobs=1)
    except BaseException:
        fleet.undo_start(project, started)
        raise
    if any(o.status != "created" for o in outcomes):
        fleet.undo_start(project, started)
        kept = "" if started.assigned else f" (its port {started.port} was there before and stays)"
        raise VgenError(f"{slug} was not generated: removed {project.shown(started.spec_path)}"
                        + (" and its port" if started.assigned else "") + kept)


@main.command()
@click.argument("slugs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every vertical in verticals/.")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps go (default: apps/ or $VGEN_OUT).")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), help="Parallel workers (default: the number of cores).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--diff", "show_diff", is_flag=True, help="With --dry-run: the full diff, not only the files.")
@click.pass_context
def generate(ctx, slugs, all_, out, jobs, dry_run, show_diff):
    """Create each app that is missing and update each that exists.

    Hand edits are kept (a three-way merge); a vertical that would conflict or fail is
    left exactly as it was. The exit code is 1 when any vertical conflicts or fails.
    """
    if bool(slugs) == all_:
        raise click.UsageError("name one or more verticals, or pass --all")
    project = get_project(ctx, out)
    outcomes = _generate(project, None if all_ else list(slugs), jobs, dry_run)
    if dry_run:
        for o in outcomes:
            if o.diff or o.schema:
                console.print(f"\n== {escape(o.slug)} ==", highlight=False)
            if o.diff:
                text = o.diff if show_diff else o.diff.split("diff --git", 1)[0]
                console.print(text.rstrip(), markup=False, highlight=False)
            if o.schema:
                console.print("Schema (flask --app app migrate --dry-run):", highlight=False)
                console.print(o.schema.rstrip(), markup=False, highlight=False)
    if any(o.status in ("conflict", "failed") for o in outcomes):
        sys.exit(1)


def _generate(project: projects.Project, slugs, jobs, dry_run=False) -> list[fleet.Outcome]:
    dirty = render.uncommitted_template_changes(project.root)
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        err_console.print(
            f"[yellow]Warning:[/yellow] uncommitted template changes are not used ({escape(shown)}): "
            "apps are rendered from the last commit of the template", soft_wrap=True)
    job_list, failures, new_ports = fleet.plan(project, slugs, dry_run=dry_run)
    for slug, port in new_ports.items():
        verb = "Would assign" if dry_run else "Assigned"
        console.print(f"{verb} port {port} to {slug} in ports.toml")
    if len(job_list) > 1 and console.is_terminal:
        # No auto-refresh: a refresh thread must not run while fleet.run forks workers.
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True, auto_refresh=False) as progress:
            task = progress.add_task("generating", total=len(job_list))

            def advance(outcome):
                progress.update(task, advance=1, description=f"{outcome.slug} {outcome.status}")
                progress.refresh()

            outcomes = fleet.run(job_list, jobs, on_done=advance)
    else:
        outcomes = fleet.run(job_list, jobs)
    outcomes += failures
    _print_outcomes(project, outcomes, dry_run)
    return outcomes


def _print_outcomes(project, outcomes, dry_run=False) -> None:
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("vertical", "port", "outcome", "files"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        shown = ", ".join(o.files[:6]) + (f" and {len(o.files) - 6} more" if len(o.files) > 6 else "")
        if o.status == "conflict":
            shown += f" ({o.message})"
        style = STATUS_STYLE.get(o.status, "")
        status = ("would be " if dry_run and o.status in ("created", "updated") else "") + o.status
        table.add_row(o.slug, str(o.port or ""), f"[{style}]{status}[/{style}]", escape(shown))
    console.print(table)
    reasons: dict[str, list[str]] = {}
    for o in outcomes:
        if o.status == "failed":
            reasons.setdefault(o.message, []).append(o.slug)
    for reason, slugs in reasons.items():
        console.print(f"[red]failed[/red] ({', '.join(slugs)}): {escape(reason)}", soft_wrap=True)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    console.print(f"{summary} in {project.out}" + (" (dry run: nothing written)" if dry_run else ""))


@main.command()
@click.pass_context
def check(ctx):
    """Validate every spec and ports.toml; list every problem."""
    project = get_project(ctx)
    problems = projects.check(project)
    if problems:
        raise VgenError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", problems)
    count = len(project.slugs())
    console.print(f"{count} vertical{'s' if count != 1 else ''} and ports.toml are valid")


@main.group("ports", invoke_without_command=True)
@click.pass_context
def ports_group(ctx):
    """List the port registry (or check it)."""
    if ctx.invoked_subcommand is None:
        project = get_project(ctx)
        registry = ports.load(project.ports_path)
        slugs = set(project.slugs())
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in ("vertical", "port", "note"):
            table.add_column(column)
        for slug, port in sorted(registry.ports.items(), key=lambda item: item[1]):
            table.add_row(slug, str(port), "" if slug in slugs else "no spec")
        for slug in sorted(slugs - set(registry.ports)):
            table.add_row(slug, "", "no port yet")
        console.print(table)
        console.print(f"range {registry.first}-{registry.last}, {len(registry.ports)} assigned")


@ports_group.command("check")
@click.pass_context
def ports_check(ctx):
    """Find duplicate, out-of-range or reserved ports, and verticals without one."""
    project = get_project(ctx)
    problems = ports.check(ports.load(project.ports_path), project.slugs())
    if problems:
        raise VgenError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in ports.toml", problems)
    console.print("ports.toml is valid")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def status(ctx, out):
    """One row per vertical: port, template version, drift, health, last good backup."""
    project = get_project(ctx, out)
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("vertical", "port", "template", "spec", "hand edits", "health", "last backup"):
        table.add_column(column)
    yes_no = {True: "yes", False: "no", None: "-"}
    for row in status_mod.status(project):
        template = row.template or "[yellow]not generated[/yellow]"
        if row.template and not row.template_current:
            template = f"[yellow]{row.template} (behind)[/yellow]"
        spec_state = {True: "[yellow]changed[/yellow]", False: "same", None: "-"}[row.spec_changed]
        health = "[green]ok[/green]" if row.health == "ok" else f"[red]{row.health}[/red]"
        table.add_row(row.slug, str(row.port or "-"), template, spec_state, yes_no[row.hand_edits],
                      health, row.last_backup or "-")
    console.print(table)


@main.command()
@click.argument("slugs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every vertical in verticals/.")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="Where to lay the files, as they would sit under / (use / on the box itself).")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def install(ctx, slugs, all_, root, out):
    """Lay each app with its systemd units, cron file and nginx site under ROOT."""
    if bool(slugs) == all_:
        raise click.UsageError("name one or more verticals, or pass --all")
    project = get_project(ctx, out)
    chosen = project.slugs() if all_ else list(slugs)
    laid = install_mod.install(chosen, Path(root), project.out)
    changed = [item for item in laid if item.status != "unchanged"]
    for item in changed:
        console.print(f"{item.status:9} {escape(str(item.path))}")
    console.print(f"{len(changed)} paths changed, {len(laid) - len(changed)} unchanged under {escape(str(root))}")
    console.print("To put them into service, run as root on the box:")
    for command in install_mod.enable_commands(chosen, project.out):
        console.print(f"  {escape(command)}", soft_wrap=True)


@main.command()
@click.argument("slug")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def serve(ctx, slug, out):
    """Migrate, then run one generated app under gunicorn on its port."""
    project = get_project(ctx, out)
    app = project.app_dir(slug)
    if not (app / "gunicorn.conf.py").is_file():
        raise VgenError(f"{app} is not a generated app: run vgen generate {slug} first")
    registry = ports.load(project.ports_path)
    env = dict(os.environ)
    env.setdefault("DATA_DIR", str(app / "instance"))
    migrate = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env)
    if migrate.returncode != 0:
        raise VgenError(f"{slug}: flask --app app migrate failed; the app was not started")
    console.print(f"Serving {slug} on http://127.0.0.1:{registry.ports.get(slug, '?')}/ (Ctrl-C stops)")
    os.chdir(app)
    os.execve(sys.executable, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], env)


if __name__ == "__main__":
    main()
