"""docs/protocol.md's evaluation table and the settings each benchmark module declares
(``paper_settings``) say the same: one row per declared setting, with its value."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ablate.evals import benchmark_names, get_benchmark

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
ROW = re.compile(r"^\| (\w+) \| (\w+) \| [^|]+ \| `` (.*?) `` \(([\w.]+)\) \| ([^|]+) \|$")


def evaluation_rows() -> list[re.Match]:
    section = DOC.read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")
             and not line.startswith(("| benchmark ", "|---"))]
    rows = [ROW.match(line) for line in lines]
    assert all(rows), [line for line, row in zip(lines, rows) if not row]
    return rows


def test_every_declared_setting_has_its_row_with_its_value():
    documented = {}
    for row in evaluation_rows():
        key = (row[1], row[2])
        assert key not in documented, f"{key} twice in {DOC}"
        documented[key] = json.loads(row[3])
    declared = {(b, k): json.loads(json.dumps(v))  # tuples read as the lists JSON writes
                for b in benchmark_names() for k, v in get_benchmark(b).paper_settings.items()}
    assert all(get_benchmark(b).paper_settings for b in benchmark_names())
    assert set(documented) == set(declared), set(documented) ^ set(declared)
    changed = {k: (documented[k], declared[k]) for k in declared if documented[k] != declared[k]}
    assert not changed, f"{DOC} differs from the modules' paper_settings: {changed}"


def test_each_row_names_the_module_that_declares_it_and_says_whether_it_is_the_papers():
    for row in evaluation_rows():
        module = type(get_benchmark(row[1])).__module__
        assert module == f"ablate.evals.{row[4].removesuffix('.py')}", row[0]
        assert row[5].strip(), row[0]
