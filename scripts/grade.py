"""Grade a student's notebook: run it top to bottom and report which rlbook checker calls returned True.

    python scripts/grade.py NOTEBOOK.ipynb [NOTEBOOK2.ipynb ...] [--timeout 600] [--json results.json]

Every `rlbook.exercises.check_*` call the notebook makes is recorded (the checkers are wrapped
before the first cell runs, so `from rlbook.exercises import check_k3` and
`exercises.check_k3(...)` are both seen). A cell that raises does not stop the run: later cells
still execute and the error is reported with its cell number. The student's notebook file is
not modified. Exit status: 0 when every checker call in every notebook returned True, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARK = "RLBOOK_GRADE_RESULTS:"

RECORDER = """
import functools as _grade_functools
import rlbook.exercises as _grade_exercises
_grade_results = []
def _grade_wrap(name, checker):
    @_grade_functools.wraps(checker)
    def recorded(*args, **kwargs):
        result = checker(*args, **kwargs)
        _grade_results.append({"checker": name, "passed": result is True, "cell": _grade_cell[0]})
        return result
    return recorded
for _grade_name, _grade_checker in list(_grade_exercises.CHECKERS.items()):
    setattr(_grade_exercises, _grade_name, _grade_wrap(_grade_name, _grade_checker))
_grade_cell = [None]
"""

REPORT = f"""
import json as _grade_json
print({MARK!r} + _grade_json.dumps(_grade_results))
"""


def grade(path: Path, timeout: int = 600) -> dict:
    """Run the notebook at `path` on a copy; return {"checks": [...], "errors": [...]}."""
    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    # number each original cell the way Jupyter shows them to the student: by position, from 1
    for i in reversed(code_cells):
        nb.cells.insert(i, nbformat.v4.new_code_cell(f"_grade_cell[0] = {i + 1}"))
    nb.cells.insert(0, nbformat.v4.new_code_cell(RECORDER))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute()
    checks, errors = [], []
    cell_number = None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.source.startswith("_grade_cell[0] = "):
            cell_number = int(cell.source.split("=")[1])
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append({"cell": cell_number, "error": f"{out['ename']}: {out['evalue']}"})
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith(MARK):
                    checks = json.loads(line[len(MARK):])
    return {"notebook": str(path), "checks": checks, "errors": errors}


def report(result: dict) -> str:
    lines = [f"== {result['notebook']}"]
    for c in result["checks"]:
        lines.append(f"  cell {c['cell']:>3}  {c['checker']:<32} {'PASS' if c['passed'] else 'FAIL'}")
    if not result["checks"]:
        lines.append("  no checker was called")
    for e in result["errors"]:
        lines.append(f"  cell {e['cell']:>3}  raised {e['error']}")
    n = len(result["checks"])
    passed = sum(c["passed"] for c in result["checks"])
    lines.append(f"  {passed} of {n} checker calls passed; {len(result['errors'])} cell(s) raised")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    results = [grade(p, args.timeout) for p in args.notebooks]
    for r in results:
        print(report(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    ok = all(r["checks"] and all(c["passed"] for c in r["checks"]) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
