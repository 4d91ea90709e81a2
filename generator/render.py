"""Rendering the template: the one place that knows how copier lays out an app.

vgen renders with the same Jinja environment copier builds (copier's sandbox, its
``yield`` path tag, the Ansible filters, the template's ``_envops``), but compiles each
template file once per process instead of once per app, and reads the template from a
plain export of one commit instead of cloning the repository for every app. That is what
makes regenerating hundreds of apps fast. The output is the same as ``copier copy`` with
the same answers (a test holds us to it), so an app made by vgen keeps working with
``copier update`` and an app made by copier with ``vgen generate``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePath

import yaml
from jinja2 import TemplateError

from .errors import VgenError
from .gitrepo import git

TEMPLATES_SUFFIX = ".jinja"
# What of the repository makes the template: copier's configuration, the macros the
# template files share (outside template/, so no app gets a copy) and the app tree.
TEMPLATE_PATHS = ("copier.yml", "macros.jinja", "template")
# copier's record in each app of the template commit and the answers it was rendered
# from: copier's default name, which the template's copier.yml keeps.
ANSWERS_FILE = ".copier-answers.yml"


def template_commit(root: Path) -> str:
    """The full HEAD commit of the template repository: the version apps record."""
    commit = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    if not commit:
        raise VgenError(f"{root}: the template repository has no commit yet: commit template/ and copier.yml first")
    return commit


def template_version(root: Path, commit: str) -> str:
    """A readable name for the template version: a tag if one points there, else a short hash."""
    described = git(root, "describe", "--tags", "--always", commit, check=False).strip()
    return described or commit[:12]


def uncommitted_template_changes(root: Path) -> list[str]:
    """Template files changed but not committed: only committed content is rendered."""
    out = git(root, "status", "--porcelain", "--", *TEMPLATE_PATHS, check=False)
    return [line[3:] for line in out.splitlines() if line.strip()]


def export(root: Path, commit: str) -> Path:
    """The template repository's files at `commit`, exported once into .git/vgen/."""
    git_dir = Path(git(root, "rev-parse", "--absolute-git-dir").strip())
    dest = git_dir / "vgen" / "templates" / commit
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}.", dir=dest.parent))
    # An older commit may lack a path (macros.jinja came later): archive what it has.
    present = set(git(root, "ls-tree", "--name-only", commit, check=False).splitlines())
    paths = [p for p in TEMPLATE_PATHS if p in present] or list(TEMPLATE_PATHS)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, *paths],
                             cwd=root, capture_output=True)
    if archive.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VgenError(f"{root}: cannot read the template at commit {commit[:12]}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process exported it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


class Template:
    """One commit of the template, ready to render any number of apps."""

    def __init__(self, root: Path, commit: str):
        self.root = Path(root)
        self.commit = commit
        self.version = template_version(self.root, commit)  # what copier records as _commit
        self.src = export(self.root, commit)
        try:
            conf = yaml.safe_load((self.src / "copier.yml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise VgenError(f"copier.yml at {commit[:12]}: {exc}") from None
        self.subdirectory = conf.get("_subdirectory", "")
        self.answers_file = conf.get("_answers_file", ANSWERS_FILE)
        self.skip_if_exists = list(conf.get("_skip_if_exists", []))
        self.questions = [k for k in conf if not k.startswith("_")]
        self.env = _environment(self.src, conf.get("_envops", {}))
        self._parts: dict[str, object] = {}
        self._files = sorted(self._walk(self.src / self.subdirectory))

    def _walk(self, top: Path):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in filenames:
                yield Path(dirpath, name).relative_to(self.src)

    def compile(self) -> None:
        """Compile every template file now (forked workers then share the result)."""
        for rel in self._files:
            if rel.name.endswith(TEMPLATES_SUFFIX):
                self.env.get_template(rel.as_posix())

    def render(self, answers: dict, dest: Path, src_path: str) -> None:
        """Render the app for `answers` into dest (created when missing)."""
        remembered = {"_commit": self.version, "_src_path": src_path}
        remembered.update((k, answers[k]) for k in self.questions if k in answers)
        context = dict(answers)
        context.update(
            _copier_answers=remembered,
            _copier_conf={"answers_file": PurePath(self.answers_file), "src_path": PurePath(self.src),
                          "dst_path": PurePath(dest), "vcs_ref_hash": self.commit, "sep": os.sep},
            _folder_name=Path(dest).name,
            _copier_python=sys.executable,
            _copier_phase="render",
        )
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        base = Path(self.subdirectory)
        for rel in self._files:
            inner = rel.relative_to(base)
            is_template = inner.name.endswith(TEMPLATES_SUFFIX)
            if not is_template and (self.src / f"{rel}{TEMPLATES_SUFFIX}").exists():
                continue  # a templated sibling wins, as in copier
            parts = inner.with_suffix("").parts if is_template else inner.parts
            for out_parts, ctx in self._render_parts(parts, context):
                target = dest.joinpath(*out_parts)
                if is_template:
                    try:
                        content = self.env.get_template(rel.as_posix()).render(ctx).encode()
                    except TemplateError as exc:
                        raise VgenError(f"template file {rel}: {exc}") from None
                else:
                    content = (self.src / rel).read_bytes()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                os.chmod(target, (self.src / rel).stat().st_mode & 0o777)

    def _render_parts(self, parts, context, done=()):
        if not parts:
            yield done, context
            return
        part, rest = parts[0], parts[1:]
        match = self._yield(part)
        if match:
            before, name, iterable, body, after = match
            for value in self._expression(iterable)(context) or ():
                ctx = {**context, name: value}
                rendered = self._string(before + body + after).render(ctx)
                if rendered:
                    yield from self._render_parts(rest, ctx, done + (rendered,))
            return
        rendered = self._string(part).render(context) if self._has_markup(part) else part
        if rendered:
            yield from self._render_parts(rest, context, done + (rendered,))

    def _has_markup(self, text: str) -> bool:
        env = self.env
        return any(s in text for s in (env.variable_start_string, env.block_start_string, env.comment_start_string))

    def _yield(self, part: str):
        """(before, name, iterable, body, after) for a path part holding copier's
        `{% yield x from xs %}body{% endyield %}`: one output per item of xs."""
        env = self.env
        bs, be = re.escape(env.block_start_string), re.escape(env.block_end_string)
        match = re.fullmatch(
            rf"(.*?){bs}-?\s*yield\s+(\w+)\s+from\s+(.+?)\s*-?{be}(.*?){bs}-?\s*endyield\s*-?{be}(.*)", part)
        return match.groups() if match else None

    def _string(self, source: str):
        if source not in self._parts:
            self._parts[source] = self.env.from_string(source)
        return self._parts[source]

    def _expression(self, source: str):
        key = "expr:" + source
        if key not in self._parts:
            compiled = self.env.compile_expression(source)
            self._parts[key] = lambda ctx: compiled(**ctx)
        return self._parts[key]


def _environment(src: Path, envops: dict):
    """The Jinja environment copier would build for this template."""
    from copier._jinja_ext import CopierTemplateLoader, SandboxedEnvironment  # same sandbox as copier
    from jinja2_ansible_filters import AnsibleCoreFiltersExtension

    return SandboxedEnvironment(loader=CopierTemplateLoader(src), extensions=[AnsibleCoreFiltersExtension],
                                **envops)


_templates: dict[tuple[Path, str], Template] = {}


def template(root: Path, commit: str) -> Template:
    """The process-wide Template for (root, commit): compiled files are reused."""
    key = (Path(root), commit)
    if key not in _templates:
        _templates[key] = Template(root, commit)
    return _templates[key]
