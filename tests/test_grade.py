"""scripts/grade.py runs a notebook and reports which checker calls returned True."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("grade", ROOT / "scripts" / "grade.py")
grade = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade)


def write(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a student's notebook")] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_grade_reports_each_checker_call(tmp_path):
    path = write(tmp_path / "student.ipynb",
                 "from rlbook import exercises, kl\nfrom rlbook.exercises import check_k1",
                 "def my_k3(logp, ref_logp):\n    raise NotImplementedError\nexercises.check_k3(my_k3)",
                 "check_k1(kl.k1)",
                 "1 / 0",
                 "exercises.check_dpo_loss(lambda *a: 0.0)")
    before = path.read_text()
    result = grade.grade(path, timeout=120)
    assert [(c["checker"], c["passed"], c["cell"]) for c in result["checks"]] == [
        ("check_k3", False, 3), ("check_k1", True, 4), ("check_dpo_loss", False, 6)]
    assert result["errors"] == [{"cell": 5, "error": "ZeroDivisionError: division by zero"}]
    assert path.read_text() == before          # the student's file is left alone
    text = grade.report(result)
    assert "1 of 3 checker calls passed; 1 cell(s) raised" in text and "check_k1" in text


def test_main_exit_status(tmp_path):
    good = write(tmp_path / "good.ipynb", "from rlbook import exercises, kl\nassert exercises.check_k2(kl.k2)")
    empty = write(tmp_path / "empty.ipynb", "x = 1")
    assert grade.main([str(good), str(empty), "--json", str(tmp_path / "r.json")]) == 1   # empty calls no checker
    results = json.loads((tmp_path / "r.json").read_text())
    assert results[0]["checks"] == [{"checker": "check_k2", "passed": True, "cell": 2}] and results[1]["checks"] == []
