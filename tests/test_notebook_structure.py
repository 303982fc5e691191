"""Every chapter follows the book's template (read from the notebook JSON, nothing executed):
a header block (number and title, what you will learn, prerequisites, run time, previous/next
links to the neighbouring chapters), a summary and an exercises section; and its solutions
notebook exists."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path):
    return json.loads(path.read_text())["cells"]


def markdown(path):
    return ["".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown"]


def headings(path):
    return [line.strip() for text in markdown(path) for line in text.splitlines() if line.startswith("#")]


def test_chapters_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in CHAPTERS]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 13


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_header_block(path):
    header = markdown(path)[0]
    number = path.name[:2]
    assert re.match(rf"# {number} · \S", header), "the first cell starts with '# NN · Title'"
    for field in ("**You will learn**", "**Prerequisites:**", "**Runs in:**"):
        assert field in header, f"header lacks {field}"
    assert re.search(r"\*\*Runs in:\*\*[^\n]*\d+ ?(s\b|CPU|seconds|minutes)", header), "Runs in gives a measured time"
    i = CHAPTERS.index(path)
    if i > 0:
        assert f"**Previous:** [{CHAPTERS[i - 1].name[:2]} · " in header and f"({CHAPTERS[i - 1].name})" in header
    if i + 1 < len(CHAPTERS):
        assert f"**Next:** [{CHAPTERS[i + 1].name[:2]} · " in header and f"({CHAPTERS[i + 1].name})" in header
    else:
        assert "**Next:** none" in header


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_links_to_other_chapters_exist(path):
    for text in markdown(path):
        for target in re.findall(r"\]\(([0-9][0-9]_[^)#]+\.ipynb)", text):
            assert (ROOT / "notebooks" / target).exists(), f"broken link to {target}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_summary_and_exercises_sections(path):
    h = headings(path)
    assert "## Summary" in h, "no '## Summary' section"
    assert "## Exercises" in h, "no '## Exercises' section"
    assert h.index("## Summary") < h.index("## Exercises")
    text = "\n".join(markdown(path))
    exercises = text[text.index("## Exercises"):]
    assert len(re.findall(r"^\d+\. ", exercises, flags=re.M)) >= 2, "at least two numbered exercises"
    summary = text[text.index("## Summary"):text.index("## Exercises")]
    assert 3 <= len(re.findall(r"^- ", summary, flags=re.M)) <= 8, "a summary of 3-6 bullets (a few more tolerated)"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_solutions_notebook_exists(path):
    solution = ROOT / "solutions" / path.name
    assert solution.exists(), f"no solutions/{path.name}"
    assert f"../notebooks/{path.name}" in "".join(markdown(solution)[0])


def code_after_exercises(path):
    cs = cells(path)
    i = next(k for k, c in enumerate(cs) if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"]))
    return ["".join(c["source"]) for c in cs[i + 1:] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_exercises_are_stubs_with_checkers(path):
    """At least two implement-it-yourself exercises: a stub (NotImplementedError) and a checker call
    in a later cell; no reference solution left in the chapter."""
    from rlbook.exercises import CHECKERS

    code = code_after_exercises(path)
    stubs = [k for k, src in enumerate(code) if "raise NotImplementedError" in src]
    called = {name for src in code for name in CHECKERS if f"exercises.{name}(" in src}
    assert len(stubs) >= 2 and len(called) >= 2, f"{len(stubs)} stubs, checkers called: {sorted(called)}"
    for k in stubs:
        assert any("exercises.check_" in later for later in code[k:k + 2]), "a stub is followed by its checker call"
    assert not any("reference solution below" in src for src in code), "a reference solution is still in the chapter"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_unsolved_stubs_report_false(path):
    """In the committed outputs each checker call printed its report and returned False (the stub is unsolved)."""
    cs = cells(path)
    for c in cs:
        src = "".join(c["source"])
        if c["cell_type"] == "code" and src.startswith("exercises.check_"):
            outputs = c.get("outputs", [])
            text = "".join("".join(o.get("text", "")) for o in outputs)
            results = "".join("".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
            assert "not implemented yet" in text and results == "False", (path.name, src, text, results)
