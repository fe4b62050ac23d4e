"""What a benchmark writes: CSV files, markdown tables and JSON records."""
import csv
import json
from typing import Any, Dict, List, Sequence

from ..engine.files import atomic_write

__all__ = ["write_csv", "markdown_table", "write_json"]


def write_csv(path: str, fields: Sequence[str], rows: List[Dict[str, Any]]) -> None:
    """``rows`` under the columns ``fields`` (other keys ignored, missing ones empty), written to a temporary file
    and renamed onto ``path``."""
    with atomic_write(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: List[Dict[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as a markdown table with the columns ``fields`` (a missing value is an empty cell)."""
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(row.get(field, "")) for field in fields) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, record: Any) -> None:
    """``record`` as indented JSON, written to a temporary file and renamed onto ``path``."""
    with atomic_write(path, "w") as stream:
        json.dump(record, stream, indent=1)
