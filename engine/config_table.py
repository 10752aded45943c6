"""The README's config reference, generated from RunConfig's fields and their metadata.

`python -m engine.config_table` prints the tables (one per group: key, default, allowed values,
what it does); `--write` puts them into README.md between the two marker comments (or
`make config-table`). tests/test_choices.py fails when README.md is stale, so the table
cannot drift from the keys, defaults and choices it documents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.config import GROUPS, field_info

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"
REGENERATE = "python -m engine.config_table --write  (or: make config-table)"


def shown_default(info: dict[str, Any]) -> str:
    if info.get("shown_default"):
        return info["shown_default"]
    value = info["default"]
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def shown_allowed(info: dict[str, Any]) -> str:
    if info.get("shown_allowed"):
        return info["shown_allowed"]
    if info.get("choices"):
        return ", ".join(info["choices"])
    low, high = info.get("min"), info.get("max")
    if low is not None or high is not None:
        return f"{'' if low is None else low}…{'' if high is None else high}"
    kind = str(info["type"])
    return kind.split("|")[0].strip() + (" or empty" if "None" in kind else "")


def _cell(text: str) -> str:
    # A bare pipe would end the cell early.
    return str(text).replace("|", "\\|")


def render_config_table() -> str:
    """Markdown: a bold group name and its table, for every group in GROUPS order."""
    fields = field_info()
    blocks = []
    for group in GROUPS:
        rows = [
            "| key | default | allowed | what it does |",
            "|---|---|---|---|",
            *(
                f"| `{f['name']}` | {_cell(shown_default(f))} | {_cell(shown_allowed(f))} "
                f"| {_cell(f['help'])} |"
                for f in fields
                if f["group"] == group
            ),
        ]
        blocks.append(f"**{group}**\n\n" + "\n".join(rows))
    return "\n\n".join(blocks) + "\n"


def _markers(text: str) -> tuple[int, int]:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} ... {END} section")
    return start + len(START), end


def readme_section(text: str) -> str:
    """What README.md holds between the markers, without the blank lines around it."""
    start, end = _markers(text)
    return text[start:end].strip("\n") + "\n"


def replace_section(text: str, table: str) -> str:
    start, end = _markers(text)
    return text[:start] + "\n" + table.strip("\n") + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.config_table",
        description="Print the config reference generated from RunConfig.",
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const=str(README),
        metavar="README",
        help=f"replace the section between the markers in README (default: {README})",
    )
    args = parser.parse_args(argv)
    table = render_config_table()
    if not args.write:
        sys.stdout.write(table)
        return 0
    path = Path(args.write)
    text = path.read_text()
    updated = replace_section(text, table)
    if updated != text:
        path.write_text(updated)
        print(f"updated the config table in {path}")
    else:
        print(f"{path}: the config table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
