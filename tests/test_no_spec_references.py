"""The project stands alone: no file points at the re-implementation notes it was written from
(a folder of notes that is not part of the repository), at their sections or at their numbered
defects. What a user needs to know is in docs/seeds/."""

import os
import re
from pathlib import Path

from conftest import ROOT

SKIP_DIRS = {".git", ".whl", "multirun", "logs", "data", "outputs", "lightning_logs", "__pycache__", ".pytest_cache",
             "build", "dist"}
TEXT = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini", ""}
# Built from pieces so that this file does not match itself.
PATTERNS = {
    "a path into the spec notes": re.compile("spec" + "s/"),
    "a section sign": re.compile("\u00a7"),
    "a numbered defect": re.compile(r"\b(?:defects?\s\d+|spec\sD\d+|\(D\d+[),:;/])"),
}


def _skipped(folder: Path) -> bool:
    """Run outputs, caches, builds and virtual environments (a ``.venv`` in the checkout, as .ci/run makes)."""
    rel = folder.relative_to(ROOT)
    return (folder.name in SKIP_DIRS or folder.name.endswith(".egg-info") or rel.parts[:2] == ("bench", "out")
            or (folder / "pyvenv.cfg").is_file())


def _files():
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not _skipped(Path(top) / d))
        for name in sorted(names):
            path = Path(top) / name
            if path.suffix in TEXT:
                yield path.relative_to(ROOT), path


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
