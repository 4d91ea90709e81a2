"""The vgen command line: thin click commands over the library."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import certs, fleet, newvertical, ports, project as projects, serve as serving
from . import install as install_mod, status as status_mod
from .appupdate import Status
from .errors import VgenError

# Piped output (a file, grep, CI logs) is never cut to 80 columns: lines run as long as
# their content.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 1000)

STATUS_STYLE = {
    Status.CREATED: "green", Status.UPDATED: "green", Status.UNCHANGED: "dim",
    Status.CONFLICT: "yellow", Status.REFUSED: "red", Status.FAILED: "red",
}


class VgenGroup(click.Group):
    """Turns a VgenError into `Error: ...` and exit code 1: never a traceback.

    An operating-system error (a path under a plain file, a folder vgen may not write)
    is the user's to fix too: one line naming the path.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VgenError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(os_error_text(exc))


def _fail(message: str) -> None:
    err_console.print(f"[red]Error:[/red] {escape(message)}", soft_wrap=True)
    sys.exit(1)


def os_error_text(exc: OSError) -> str:
    """An OSError as one line: the path (or paths) and what the system says."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    said = exc.strerror or str(exc)
    return f"{' -> '.join(paths)}: {said}" if paths else said


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
    done = newvertical.new_vertical(project, slug, name)
    started = done.started
    console.print(f"Wrote {project.shown(started.spec_path)}")
    if started.assigned:
        console.print(f"Assigned port {started.port} to {slug} in ports.toml")
    _print_report(project, done.report)
    if not done.kept:
        raise VgenError(done.failure(project))


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

    Hand edits are kept (a three-way merge); a vertical that would conflict, whose
    database would refuse the new schema, or that fails is left exactly as it was. The
    exit code is 1 when any vertical conflicts, is refused or fails.
    """
    if bool(slugs) == all_:
        raise click.UsageError("name one or more verticals, or pass --all")
    project = get_project(ctx, out)
    report = _generate_with_progress(project, None if all_ else list(slugs), jobs, dry_run)
    if dry_run:
        for o in report.outcomes:
            # A refusal's reason, printed below the table, is migrate's plan already.
            schema = o.schema if o.status != Status.REFUSED else ""
            if o.diff or schema:
                console.print(f"\n== {escape(o.slug)} ==", highlight=False)
            if o.diff:
                text = o.diff if show_diff else o.diff.split("diff --git", 1)[0]
                console.print(text.rstrip(), markup=False, highlight=False)
            if schema:
                console.print("Schema (flask --app app migrate --dry-run):", highlight=False)
                console.print(schema.rstrip(), markup=False, highlight=False)
    _print_report(project, report)
    if not report.ok:
        sys.exit(1)


def _generate_with_progress(project: projects.Project, slugs, jobs, dry_run) -> fleet.Report:
    """fleet.generate, with a progress bar on a terminal when there is more than one app."""
    if not console.is_terminal:
        return fleet.generate(project, slugs, jobs, dry_run)
    # No auto-refresh: a refresh thread must not run while fleet.run forks workers.
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True, auto_refresh=False)
    task = None

    def advance(outcome, done, total):
        nonlocal task
        if total < 2:
            return
        if task is None:
            progress.start()
            task = progress.add_task("generating", total=total)
        progress.update(task, completed=done, description=f"{outcome.slug} {outcome.status}")
        progress.refresh()

    try:
        return fleet.generate(project, slugs, jobs, dry_run, on_done=advance)
    finally:
        progress.stop()


def _print_report(project: projects.Project, report: fleet.Report) -> None:
    for warning in report.warnings:
        err_console.print(f"[yellow]Warning:[/yellow] {escape(warning)}", soft_wrap=True)
    for slug, port in report.new_ports.items():
        verb = "Would assign" if report.dry_run else "Assigned"
        console.print(f"{verb} port {port} to {slug} in ports.toml")
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("vertical", "port", "outcome", "files"):
        table.add_column(column, overflow="fold")
    for o in report.outcomes:
        shown = ", ".join(o.files[:6]) + (f" and {len(o.files) - 6} more" if len(o.files) > 6 else "")
        if o.status == Status.CONFLICT:
            shown += f" ({o.message})"
        style = STATUS_STYLE.get(o.status, "")
        would = report.dry_run and o.status in (Status.CREATED, Status.UPDATED)
        status = ("would be " if would else "") + o.status
        table.add_row(o.slug, str(o.port or ""), f"[{style}]{status}[/{style}]", escape(shown))
    console.print(table)
    # Refusals and failures with their reasons, one line per reason; a refusal's reason
    # names its own rows and database, so each is printed on its own.
    reasons: dict[tuple[Status, str], list[str]] = {}
    for o in report.outcomes:
        if o.status in (Status.REFUSED, Status.FAILED) or (o.status == Status.UPDATED and o.message):
            reasons.setdefault((o.status, o.message), []).append(o.slug)
    for (status, reason), slugs in reasons.items():
        style = STATUS_STYLE.get(status, "")
        console.print(f"[{style}]{status}[/{style}] ({', '.join(slugs)}): {escape(reason)}", soft_wrap=True)
    for o in report.serving:
        console.print(f"[yellow]{o.slug} is running on port {o.port} with its old code: "
                      "restart it to serve the new code[/yellow] (stop vgen serve, then start it again)",
                      soft_wrap=True)
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    console.print(f"{summary} in {project.out}" + (" (dry run: nothing written)" if report.dry_run else ""))


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
@click.option("--check", is_flag=True,
              help="Only what needs attention, one line each, exit 1 when anything does (for cron and monitors).")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="The host's files (its units, backups and certificates), as `vgen install --root` laid them.")
@click.pass_context
def status(ctx, out, check, root):
    """One row per vertical: port, template version, drift, health, last good backup, and
    on a host where `vgen install` put it, its state under systemd and when its HTTPS
    certificate expires. With hosts.toml: the host each lives on, its state there (over
    SSH) and its health through that host's nginx.

    With --check: a line for each vertical whose last verified backup is older than 26
    hours, whose last backup run or off-site copy failed or is missing, whose service
    failed, or whose certificate expires within 14 days; exit 1 if there is any."""
    project = get_project(ctx, out)
    if check:
        from . import alarms

        checked, problems = alarms.check(project, Path(root))
        for problem in problems:
            console.print(str(problem), markup=False, soft_wrap=True)
        if problems:
            sys.exit(1)
        console.print(f"{len(checked)} vertical{'s' if len(checked) != 1 else ''} checked: backups, "
                      "off-site copies, services and certificates are fine", markup=False, soft_wrap=True)
        return
    rows = status_mod.status(project, root=Path(root))
    on_host = any(row.service for row in rows)
    with_certificates = any(row.certificate_expires for row in rows)
    hosts = any(row.host != "local" for row in rows)  # hosts.toml places them
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("vertical", *(["host"] if hosts else []), "port", "template", "spec", "hand edits", "health",
                   "last backup"):
        table.add_column(column)
    if on_host:
        table.add_column("service")
    if with_certificates:
        table.add_column("certificate expires")
    yes_no = {True: "yes", False: "no", None: "-"}
    service_style = {"active": "green", "idle": "green", "failed": "red", "stopped": "yellow",
                     "unreachable": "red", "not installed": "yellow"}
    for row in rows:
        template = row.template or "[yellow]not generated[/yellow]"
        if row.template and not row.template_current:
            template = f"[yellow]{row.template} (behind)[/yellow]"
        spec_state = {True: "[yellow]changed[/yellow]", False: "same", None: "-"}[row.spec_changed]
        health = f"[green]{row.health}[/green]" if row.health in ("ok", "idle") else f"[red]{row.health}[/red]"
        backup = f"{row.last_backup} ({row.last_backup_kind})" if row.last_backup else "-"
        cells = [row.slug, *([row.host] if hosts else []), str(row.port or "-"), template, spec_state,
                 yes_no[row.hand_edits], health, backup]
        if on_host:
            style = service_style.get(row.service, "")
            cells.append(f"[{style}]{row.service}[/{style}]" if style else row.service or "-")
        if with_certificates:
            cells.append(row.certificate_expires.strftime("%Y-%m-%dT%H:%M:%SZ") if row.certificate_expires else "-")
        table.add_row(*cells)
    console.print(table)


@main.command()
@click.argument("slugs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every vertical in verticals/.")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="Where to lay the files, as they would sit under / (use / on the box itself).")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.option("--acme-server", envvar="VGEN_ACME_SERVER", default=certs.LETS_ENCRYPT, show_default=True,
              help="The ACME directory certbot gets certificates from (or $VGEN_ACME_SERVER).")
@click.pass_context
def install(ctx, slugs, all_, root, out, acme_server):
    """Lay each app as a release, with its wheels, units, cron file and nginx sites, under
    ROOT; then print the command that puts them into service on the host, and the
    certbot command that turns HTTPS on for each domain without a certificate yet."""
    if bool(slugs) == all_:
        raise click.UsageError("name one or more verticals, or pass --all")
    project = get_project(ctx, out)
    chosen = project.slugs() if all_ else list(slugs)
    wheels = install_mod.wheels_for(chosen, Path(root), project.out)
    installed = install_mod.install(chosen, Path(root), project.out, wheels)
    changed = installed.changed
    for item in changed:
        console.print(f"{item.status:9} {escape(str(item.path))}")
    if changed:
        console.print(f"{len(changed)} paths changed, {len(installed.laid) - len(changed)} unchanged under {escape(str(root))}")
    else:
        console.print(f"Nothing changed under {escape(str(root))}: every file is as it was laid before.")
    for slug, release in installed.releases.items():
        console.print(f"{slug}: release {release}")
    console.print("To put them into service (or check they are), run as root on the host:")
    for command in install_mod.enable_commands(installed.releases):
        console.print(f"  {escape(command)}", soft_wrap=True)
    waiting = {slug: domain for slug, domain in installed.domains.items() if certs.expiry(Path(root), domain) is None}
    if waiting:
        console.print("Then, for HTTPS once each domain points at the host, run as root there (once: "
                      "certbot.timer renews):")
        for slug, domain in waiting.items():
            console.print(f"  {escape(shlex.join(certs.command(slug, domain, acme_server)))}", soft_wrap=True)


@main.command()
@click.argument("slugs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every vertical in verticals/.")
@click.option("--host", "only_host", help="Only the verticals placed on this host.")
@click.option("--check", is_flag=True, help="Ansible's check mode: show what would change, change nothing.")
@click.option("--diff", is_flag=True, help="Show the differences (Ansible's --diff).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Hosts rolled out at a time.")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def deploy(ctx, slugs, all_, only_host, check, diff, batch, out):
    """Roll verticals out to the hosts of hosts.toml with Ansible: rolling, health-gated,
    rolled back on failure; the inventory and playbook are in build/deploy/."""
    from . import deploy as deploying
    from . import move as moving

    if bool(slugs) == all_:
        raise click.UsageError("name one or more verticals, or pass --all")
    project = get_project(ctx, out)
    fleet, by_host = deploying.plan(project, project.slugs() if all_ else list(slugs), only_host)
    if not by_host:
        raise VgenError("no vertical to deploy on the chosen host")
    staged = deploying.stage(project, fleet, by_host)
    inventory, playbook = deploying.write_playbook(project, staged, batch)
    # A vertical in service on another host than hosts.toml's placement moves there first, with its data.
    moved = moving.follow_placement(project, fleet, [slug for on_host in by_host.values() for slug in on_host],
                                    check=check, say=lambda text: console.print(escape(text), soft_wrap=True))
    status, outcomes, recap = deploying.run(staged, inventory, playbook, check=check, diff=diff)
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("host", "vertical", "release", "outcome"):
        table.add_column(column)
    for o in outcomes:
        style = "red" if o.outcome.startswith("FAILED") else "dim" if o.outcome.endswith("nothing changed") else ""
        shown = escape(o.outcome.splitlines()[0]) if o.outcome else "-"
        if check and o.outcome == "not reached":
            shown = "check mode: not activated"
        if o.slug in moved:
            if style == "dim":  # the move put this very release into service
                style, shown = "", f"release {o.release} in service"
            shown = f"{'would move' if check else 'moved'} from {moved[o.slug].name}, with its data; {shown}"
        table.add_row(o.host, o.slug, o.release, f"[{style}]{shown}[/{style}]" if style else shown)
    console.print(table)
    console.print(escape(recap), soft_wrap=True)
    console.print(f"Inventory and playbook: {escape(str(inventory))}, {escape(str(playbook))}")
    if status != 0:
        sys.exit(1)


@main.command()
@click.argument("slug")
@click.argument("host")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def move(ctx, slug, host, out):
    """Move SLUG, with its data, to HOST of hosts.toml: stop writes on the old host, carry
    a verified backup over, restore, check health, serve, then retire the old copy; the
    Ansible files are in build/move/SLUG/."""
    from . import move as moving

    project = get_project(ctx, out)
    moved = moving.move(project, slug, host, say=lambda text: console.print(escape(text), soft_wrap=True))
    console.print(escape(f"{slug}: release {moved.release} serves on {moved.target.name} ({moved.target.address}); "
                         f"{moved.restored}"), soft_wrap=True)
    console.print(escape(f"{moved.source.name} no longer serves {slug}; it keeps its data and settings in "
                         f"{moved.retired} until you remove them. Point {slug}'s DNS name at "
                         f"{moved.target.address}."), soft_wrap=True)


@main.command()
@click.argument("slug")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def serve(ctx, slug, out):
    """Migrate, then run one generated app under gunicorn on its port."""
    project = get_project(ctx, out)
    command = serving.prepare(project, slug)
    console.print(f"Serving {slug} on http://127.0.0.1:{command.port or '?'}/ (Ctrl-C stops)")
    os.chdir(command.cwd)
    os.execve(command.argv[0], command.argv, command.env)


@main.command("drill")
@click.argument("slugs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every vertical generated here or installed under --root.")
@click.option("--root", type=click.Path(file_okay=False), default="/", show_default=True,
              help="Where the host's files are (/etc/vgen/<slug>.env, /var/lib/<slug>, /srv/vgen).")
@click.option("--out", type=click.Path(file_okay=False), help="Where apps are (default: apps/ or $VGEN_OUT).")
@click.pass_context
def drill_command(ctx, slugs, all_, root, out):
    """Fetch each vertical's latest off-site backup into a scratch folder and check it:
    checksum, integrity_check, the row counts recorded at backup time, the app's schema.
    Nothing live is touched; exit 1 when any copy fails."""
    from . import drill

    if bool(slugs) == all_:
        raise click.UsageError("name one or more verticals, or pass --all")
    try:
        project = get_project(ctx, out)
    except VgenError:
        if ctx.obj["project_dir"] or os.environ.get("VGEN_PROJECT") or out:
            raise
        project = None  # on a host: the releases installed under --root
    results = drill.drill(project, None if all_ else list(slugs), Path(root))
    if not results:
        raise VgenError(f"no vertical to drill: none is generated here or installed under {root}")
    for result in results:
        console.print(result.line(), markup=False, soft_wrap=True)
    failed = [r.slug for r in results if not r.verified]
    if failed:
        console.print(f"{len(failed)} of {len(results)} failed: {', '.join(failed)}", markup=False, soft_wrap=True)
        sys.exit(1)
    console.print(f"{len(results)} verified", markup=False, soft_wrap=True)


# Imported here, with the command, so that this block merges on its own.
from . import stats as stats_mod


@main.command()
@click.option("--days", default="7", metavar="N", help="The period: the last N days (default 7).")
@click.option("--log-dir", type=click.Path(), metavar="DIR", default=str(stats_mod.DEFAULT_LOG_DIR), show_default=True,
              help="Where nginx writes <slug>.access.log.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object keyed by slug, nothing else.")
@click.option("--html", "html_file", type=click.Path(), metavar="FILE", help="Also write a self-contained page with a chart per vertical.")
@click.pass_context
def stats(ctx, days, log_dir, as_json, html_file):
    """Traffic per vertical from nginx's access logs (rotated and gzipped ones too):
    unique visitors, requests, peak hour and error rate, bots left out.

    Every vertical of the project is listed, and every <slug>.access.log in the folder;
    without a project (on a host), the logs found."""
    days = stats_mod.parse_days(days)
    try:
        slugs = get_project(ctx).slugs()
    except VgenError:
        if ctx.obj["project_dir"] or os.environ.get("VGEN_PROJECT"):
            raise
        slugs = None
    report = stats_mod.stats(Path(log_dir), slugs, days)
    if html_file:
        stats_mod.write_html(report, Path(html_file))
    if as_json:
        click.echo(stats_mod.to_json(report))
        return
    for line in stats_mod.text_lines(report):
        console.print(line, markup=False, soft_wrap=True)
    if html_file:
        console.print(f"Wrote {html_file}", markup=False, soft_wrap=True)


if __name__ == "__main__":
    main()
