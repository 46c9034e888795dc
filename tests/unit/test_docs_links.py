"""Every markdown page of the repository stays true: relative links resolve, the recipe commands they show
parse, every test they name exists, and every ```python block compiles.

Links: every relative markdown link (and image) points to an existing file, and a #fragment names a
heading of that file (GitHub's anchor rules). Commands: every `recipes/<name>.py ...` command in a
code span or block is parsed by that recipe's own CLI (unknown keys, wrong types and missing config
files fail), and every repository path a command names (launch/..., slurm/..., --config files) exists.
Tests: a `tests/<file>.py` in a code span exists, and so does a test it names (`file.py::test_x`, `::test_x`
after it, or a bare `test_x`, which may be in any test file).
"""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from common.cli import parse_cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(p for p in ROOT.rglob("*.md") if not any(part.startswith(".") or part in ("build", "runs", "node_modules")
                                                        for part in p.relative_to(ROOT).parts))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PYTHON_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
RECIPE = re.compile(r"recipes/(\w+)\.py")
REPO_PATH = re.compile(r"(?:recipes|launch|slurm|bench|tests|docs|common)/[\w./-]*")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _prose(text: str) -> str:
    """The page without fenced code blocks and code spans (links inside code are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats get -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_there_are_pages_to_check():
    assert len(PAGES) >= 2 and all(p.is_file() for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_point_to_existing_files_and_headings(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target}: no heading '#{fragment}' in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def _commands(text: str) -> list[str]:
    """Code spans and code-block lines (backslash continuations joined) that run a recipe."""
    blocks = FENCE.findall(text)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    return [c for c in lines + CODE_SPAN.findall(FENCE.sub("", text)) if RECIPE.search(c)]


_recipes: dict[str, object] = {}


def _recipe_config(name: str):
    if name not in _recipes:
        path = ROOT / "recipes" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_docs_recipe_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _recipes[name] = module.Config
    return _recipes[name]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_recipe_commands_parse_and_name_existing_files(page, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # commands are run from the repository root
    problems = []
    text = page.read_text()
    made = set(re.findall(r"^cp \S+ (\S+)", "\n".join(FENCE.findall(text)), re.M))  # files the page has you create
    for command in _commands(text):
        tokens = shlex.split(command, comments=True)
        for tok in tokens:
            for path in REPO_PATH.findall(tok.split("=", 1)[-1]):
                if not (ROOT / path).exists() and path not in made:
                    problems.append(f"{command!r}: no {path}")
        at = [i for i, t in enumerate(tokens) if RECIPE.fullmatch(t)]
        if not at:
            continue
        name = RECIPE.fullmatch(tokens[at[0]]).group(1)
        args = [t for t in tokens[at[0] + 1:] if t not in ("--dry-run", "--help")]
        try:
            parse_cli(_recipe_config(name), str(ROOT / "recipes" / f"{name}.py"), args)
        except SystemExit as e:
            problems.append(f"{command!r}: exit {e.code}: {capsys.readouterr().err.strip()}")
    assert not problems, f"{page.name}: " + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_python_blocks_compile(page):
    for i, block in enumerate(PYTHON_FENCE.findall(page.read_text())):
        compile(block, f"{page.name}: python block {i + 1}", "exec")


TEST_REF = re.compile(r"(tests/[\w/]+\.py)?(?:::)?(test_\w+)?")


def _test_names() -> dict[str, set[str]]:
    return {str(f.relative_to(ROOT)): set(re.findall(r"^\s*(?:async )?def (test_\w+)", f.read_text(), re.M))
            for f in (ROOT / "tests").rglob("*.py")}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_tests_the_page_names_exist(page):
    names = _test_names()
    everywhere = set().union(*names.values())
    missing, last_file = [], None
    for span in CODE_SPAN.findall(page.read_text()):
        m = TEST_REF.fullmatch(span.strip())
        if not m or not (m.group(1) or m.group(2)):
            continue
        file, test = m.group(1), m.group(2)
        if file:
            last_file = file
            if file not in names:
                missing.append(file)
        if test:
            where = names.get(file or (last_file if span.startswith("::") else None), everywhere)
            if test not in where:
                missing.append(span)
    assert not missing, f"{page.relative_to(ROOT)} names tests that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_profiling_commands_profile_in_an_out_dir_of_their_own(page, monkeypatch):
    """A command with train.profile_steps in the recipe's default out_dir would resume the README's
    finished run there and record nothing; each one names its own."""
    monkeypatch.chdir(ROOT)
    seen, problems = set(), []
    for command in _commands(page.read_text()):
        tokens = shlex.split(command, comments=True)
        at = [i for i, t in enumerate(tokens) if RECIPE.fullmatch(t)]
        if not at or not any(t.startswith("train.profile_steps=") for t in tokens):
            continue
        name = RECIPE.fullmatch(tokens[at[0]]).group(1)
        out_dir = parse_cli(_recipe_config(name), str(ROOT / "recipes" / f"{name}.py"), tokens[at[0] + 1:]).cfg.out_dir
        default = parse_cli(_recipe_config(name), str(ROOT / "recipes" / f"{name}.py"), []).cfg.out_dir
        if out_dir == default or out_dir in seen:
            problems.append(f"{command!r}: out_dir {out_dir} is {'the default' if out_dir == default else 'reused'}")
        seen.add(out_dir)
    assert not problems, f"{page.name}: " + "\n".join(problems)
