"""README.md is the front door and docs/ the manual: every link between them must lead somewhere.

Why: the manual was split out of a 50 KB README into pages named after their
concern. Pages move and headings get renamed, and a link that breaks does so
silently: the reader lands on nothing. So these tests read the Markdown
closely enough to GitHub's rendering to find its links, images and headings
(what is inside code blocks and code spans is not a link and not a heading),
and check that every relative target is a file of the repository, that every
``#anchor`` is a heading of its page under GitHub's slug rules, and that
external links are well-formed URLs (nothing is fetched: no network). The
README also keeps a size budget, and the controller examples that README and
user guide show are run in the harness, so they stay true.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from cosihost import InMemoryState, Resource
from cosihost.testing import ControllerHarness, load_controller

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_BUDGET = 12 * 1024
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
LIST_ITEM = re.compile(r"^( *)([-*+]|\d{1,9}[.)])( +|$)")
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^\s()]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(\S+)", re.MULTILINE)
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>")
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?\b(?:href|src)=\"([^\"]*)\"", re.IGNORECASE)
HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}$")
LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


@dataclass(frozen=True)
class Link:
    line: int
    target: str


@dataclass
class Page:
    """What of a Markdown page matters for links: where it points, and what its anchors are."""
    links: list[Link]
    headings: list[str]


def parse(text: str) -> Page:
    """Links and headings outside code: fenced and indented blocks, code spans."""
    links: list[Link] = []
    headings: list[str] = []
    prose: list[tuple[int, str]] = []          # (line number, text) of every line that is not code
    paragraph: list[str] = []
    fence = ""
    indented = False
    list_indent = 0
    for number, line in enumerate(text.split("\n"), start=1):
        marker = FENCE.match(line)
        if fence:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = ""
            continue
        if marker:
            fence, paragraph = marker.group(1), []
            continue
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip():
            paragraph = []
            prose.append((number, ""))
            continue
        if (indented or not paragraph) and indent >= list_indent + 4:
            indented = True
            continue
        indented = False
        item = LIST_ITEM.match(line)
        if item:
            list_indent = len(item.group(1)) + len(item.group(2)) + max(len(item.group(3)), 1)
        elif indent < list_indent and not paragraph:
            list_indent = 0
        heading = ATX.match(line)
        setext = SETEXT.match(line)
        if heading:
            headings.append(heading.group(1) or "")
            paragraph = []
        elif setext and paragraph and not item and not paragraph[-1].lstrip().startswith("|"):
            headings.append(" ".join(part.strip() for part in paragraph))
            paragraph = []
        else:
            paragraph.append(line)
        prose.append((number, line))
    links.extend(_links(prose))
    return Page(links=links, headings=headings)


def _links(prose: list[tuple[int, str]]) -> Iterator[Link]:
    """Every link target of the prose, code spans blanked out (spans may cross lines)."""
    text = "\n".join(line for _, line in prose)
    text = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    numbers = [number for number, _ in prose]
    for pattern in (INLINE_LINK, REFERENCE, AUTOLINK, HTML_LINK):
        for match in pattern.finditer(text):
            target = match.group(1)
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            yield Link(line=numbers[text.count("\n", 0, match.start())], target=target)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]*>", "", text)                                         # HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(headings: list[str]) -> set[str]:
    """The anchors GitHub gives these headings in order: a repeated slug gets -1, -2, ..."""
    counts: dict[str, int] = {}
    for heading in headings:
        base = result = slug(heading)
        while result in counts:
            counts[base] += 1
            result = f"{base}-{counts[base]}"
        counts[result] = 0
    return set(counts)


def check_link(page: Path, target: str, *, root: Path, anchors_of: Callable[[Path], set[str]]) -> str | None:
    """Why this link of this page leads nowhere, or None when it resolves."""
    if not target:
        return "empty link"
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if any(c.isspace() for c in target) or not HOST.match(host):
            return "malformed URL"
        return None
    if parts.scheme == "mailto":
        return None if re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", parts.path) else "malformed mailto link"
    if parts.scheme or parts.netloc:
        return f"unexpected link scheme {parts.scheme!r}"
    destination = (page.parent / unquote(parts.path)).resolve() if parts.path else page
    if not destination.is_relative_to(root):
        return "points outside the repository"
    if not destination.exists():
        return f"no such file: {destination.relative_to(root)}"
    if "#" not in target:
        return None
    fragment = unquote(parts.fragment)
    if destination.suffix != ".md":
        return None if destination.is_file() and LINE_ANCHOR.match(fragment) else "anchor into a non-Markdown file"
    if fragment not in anchors_of(destination):
        return f"no heading with anchor #{fragment} in {destination.relative_to(root)}"
    return None


def broken_links(page: Path, *, root: Path) -> list[str]:
    """'file:line: target: why' for every link of the page that leads nowhere."""
    found: dict[Path, set[str]] = {}

    def anchors_of(path: Path) -> set[str]:
        if path not in found:
            found[path] = anchors(parse(path.read_text(encoding="utf-8")).headings)
        return found[path]

    problems = []
    for link in parse(page.read_text(encoding="utf-8")).links:
        why = check_link(page, link.target, root=root, anchors_of=anchors_of)
        if why:
            problems.append(f"{page.relative_to(root)}:{link.line}: {link.target}: {why}")
    return problems


# -- the repository's own pages -----------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_resolves(page: Path) -> None:
    assert broken_links(page, root=ROOT) == []


def test_readme_stays_a_front_door() -> None:
    size = README.stat().st_size
    assert size < README_BUDGET, f"README.md is {size} bytes; move detail into docs/ (budget {README_BUDGET})"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / urlsplit(link.target).path).resolve()
              for link in parse(README.read_text(encoding="utf-8")).links}
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == [], "add these to the README's Documentation list"


# -- the checker itself, on pages made to break -------------------------------------

def test_the_checker_finds_every_kind_of_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## 1. Install: it (`pip`)\n\n## Twice\n\n## Twice\n")
    (tmp_path / "docs" / "pic.png").write_bytes(b"png")
    page = tmp_path / "README.md"
    page.write_text("\n".join([
        "# Title",                                                      # 1
        "[ok](docs/guide.md#1-install-it-pip) [ok](docs/guide.md#twice-1) ![ok](docs/pic.png)",
        "[ok](#title) [ok](https://github.com/cosi-project/runtime) <https://example.org/x>",
        "[missing file](docs/nowhere.md)",                              # 4
        "[missing anchor](docs/guide.md#twice-2)",                      # 5
        "[missing here](#nothing)",                                     # 6
        "![missing image](docs/gone.png)",                              # 7
        "[bad url](https:/github.com/x) [outside](../elsewhere.md)",  # 8
        "`[not a link](nowhere.md)` and a span that crosses `[a",
        "line](nowhere.md)`",
        "",
        "    [indented code](nowhere.md)",
        "",
        "```",
        "[fenced code](nowhere.md)",
        "```",
        "- item",
        "",
        "    [a list's paragraph](docs/nothing.md)",                   # 19
        "",
        "[ref]: docs/absent.md",                                        # 21
    ]))
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ")[0] for p in problems] == [
        "README.md:4", "README.md:5", "README.md:6", "README.md:7", "README.md:8", "README.md:8",
        "README.md:19", "README.md:21"]
    assert "no heading with anchor #twice-2 in docs/guide.md" in problems[1]
    assert problems[4].endswith("malformed URL") and problems[5].endswith("points outside the repository")


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Installing on a device (systemd)", "installing-on-a-device-systemd"),
    ("Fleets: namespaces in etcd", "fleets-namespaces-in-etcd"),
    ("3. Configure something: a config, a controller, a finalizer",
     "3-configure-something-a-config-a-controller-a-finalizer"),
    ("Test fixture (`tests/etcd/`)", "test-fixture-testsetcd"),
    ("write_rate: ratio 0.15-0.57 across runs, 0.38 above (target 0.75)",
     "write_rate-ratio-015-057-across-runs-038-above-target-075"),
    ("See [the guide](docs/guide.md) now", "see-the-guide-now"),
])
def test_anchors_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


# -- the examples the pages show ----------------------------------------------------

def code_block(page: Path, first_line: str) -> str:
    """The fenced code block of the page whose first line is first_line."""
    match = re.search(r"^```\w*\n(" + re.escape(first_line) + r"\n.*?)^```", page.read_text(encoding="utf-8"),
                      re.MULTILINE | re.DOTALL)
    assert match, f"{page.name} has no code block starting {first_line!r}"
    return match.group(1)


def test_the_readme_controller_runs(tmp_path: Path) -> None:
    module = tmp_path / "greeting.py"
    module.write_text(code_block(README, "# controllers/greeting.py"))
    configs, greetings = "HostnameConfigs.net.cosihost.dev", "Greetings.example.cosihost.dev"
    with ControllerHarness(load_controller(module), state=InMemoryState()) as h:
        h.state.create(Resource("config", configs, "hostname", {"hostname": "edge-7"}))
        h.wait_for_spec("network", greetings, "hostname", {"text": "hello from edge-7"})
        h.state.destroy("config", configs, "hostname")
        h.wait_destroyed("network", greetings, "hostname")


def test_the_user_guide_controller_and_its_tests_run(tmp_path: Path) -> None:
    guide = ROOT / "docs" / "user-guide.md"
    for folder, name in (("controllers", "loadalert.py"), ("tests", "test_loadalert.py")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(code_block(guide, f"# {folder}/{name}"))
    spec = importlib.util.spec_from_file_location("user_guide_test_loadalert", tmp_path / "tests" / "test_loadalert.py")
    assert spec and spec.loader
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    ran = [name for name in dir(tests) if name.startswith("test_")]
    for name in ran:
        getattr(tests, name)()
    assert ran == ["test_alert_comes_and_goes", "test_no_alert_below_the_limit"]
