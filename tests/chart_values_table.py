"""The values table of the chart's README, generated from values.yaml's comments so the two cannot drift.

Each key commented in values.yaml with no commented key below it is a row: its dotted path, its default and
its comment. `python -m tests.chart_values_table` rewrites the table in helm/audiochat/README.md (between
the two markers); tests/test_helm_chart.py fails when the README's table is not what this generates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "audiochat"
README = CHART_DIR / "README.md"
START = "<!-- values-table:start (python -m tests.chart_values_table) -->"
END = "<!-- values-table:end -->"
KEY_LINE = re.compile(r"^( *)([\w.-]+):")


@dataclass(frozen=True)
class Row:
    """One documented value: its dotted path in values.yaml, its comment joined into one line."""

    path: str
    comment: str


def commented_keys(text: str) -> list[Row]:
    """Every key of values.yaml with the comment lines right above it, in file order."""
    rows: list[Row] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            if comment:
                rows.append(Row(".".join(name for _, name in stack), " ".join(comment)))
        comment = []  # a comment belongs to the key right below it only
    return rows


def leaf_rows(rows: list[Row]) -> list[Row]:
    """The rows with no documented key below them (a parent's comment introduces, its children document)."""
    paths = {row.path for row in rows}
    return [row for row in rows if not any(path.startswith(row.path + ".") for path in paths)]


def default(values: dict[str, Any], path: str) -> str:
    value: Any = values
    for part in path.split("."):
        value = value[part]
    return json.dumps(value, separators=(", ", ": "))


def cell(text: str) -> str:
    """Text safe in a Markdown table cell: no column breaks, no `<release>` read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(values_text: str) -> str:
    """The Markdown table for a values.yaml text."""
    values = yaml.safe_load(values_text)
    lines = ["| value | default | what it does |", "|---|---|---|"]
    for row in leaf_rows(commented_keys(values_text)):
        code = default(values, row.path).replace("|", "\\|")  # in a code span only a pipe needs escaping
        lines.append(f"| `{row.path}` | `{code}` | {cell(row.comment)} |")
    return "\n".join(lines)


def in_readme(readme: str) -> str:
    """The table as it stands in the README, between the markers."""
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> None:
    readme = README.read_text()
    before, rest = readme.split(START, 1)
    after = rest.split(END, 1)[1]
    generated = table((CHART_DIR / "values.yaml").read_text())
    README.write_text(f"{before}{START}\n{generated}\n{END}{after}")


if __name__ == "__main__":
    main()
