"""The project stands alone: no file points at the re-implementation notes it was written from
(a folder of notes that is not part of the repository), at their sections or at their numbered
defects. What a user needs to know is in docs/seeds/."""

import re

from conftest import ROOT

SKIP_DIRS = {".git", ".whl", "multirun", "logs", "data", "outputs", "lightning_logs", "__pycache__", ".pytest_cache"}
TEXT = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini", ""}
# Built from pieces so that this file does not match itself.
PATTERNS = {
    "a path into the spec notes": re.compile("spec" + "s/"),
    "a section sign": re.compile("\u00a7"),
    "a numbered defect": re.compile(r"\b(?:defects?\s\d+|spec\sD\d+|\(D\d+[),:;/])"),
}


def _files():
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or rel.parts[:2] == ("bench", "out"):
            continue
        if path.is_file() and path.suffix in TEXT:
            yield rel, path


def test_no_file_refers_to_the_spec_notes():
    hits = []
    for rel, path in _files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for line_no, line in enumerate(text.splitlines(), 1):
            for what, pattern in PATTERNS.items():
                if pattern.search(line):
                    hits.append(f"{rel}:{line_no}: {what}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_every_seed_has_its_page():
    pages = {p.stem for p in (ROOT / "docs" / "seeds").glob("*.md")}
    assert {"mini_vit", "outgrid", "clear_vit", "qavit"} <= pages
    readme = (ROOT / "README.md").read_text()
    for page in ("mini_vit", "outgrid", "clear_vit", "qavit"):
        assert f"docs/seeds/{page}.md" in readme
