"""The collapse hook's samples, one file per eval: `OUTPUT_DIR/samples/step-<N>.jsonl`, a line per sample with
its `prompt`, `completion`, where the prompt came from (`source`, `index`) and the sampling settings.

Every eval samples the same prompts with the same seed, so line k of every file continues the same prompt: read
side by side, the files show the text drift. A file is written whole (temporary file, then rename); a resumed run
drops the files of the evals after its checkpoint, which it measures again."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from synthmix.files import write_text

SAMPLES = "samples"
"""The folder of a run that holds one JSONL file per eval."""
_NAME = re.compile(r"step-(\d+)\.jsonl")


def samples_path(output_dir: Path, step: int) -> Path:
    """The file of the eval at `step`."""
    return output_dir / SAMPLES / f"step-{step}.jsonl"


def write_samples(output_dir: Path, step: int, records: list[dict[str, Any]]) -> Path:
    """Write one eval's samples, whole or not at all; returns the file."""
    path = samples_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def sample_files(output_dir: Path) -> dict[int, Path]:
    """Each eval's samples file, by step, in step order."""
    folder = output_dir / SAMPLES
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            if match := _NAME.fullmatch(path.name):
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The records of one samples file (a line that is not JSON is named)."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{path}, line {number}: not a JSON object") from None
    return records


def drop_samples_after(output_dir: Path, step: int) -> None:
    """A run resumed from the checkpoint at `step` measures the later evals again: their old files go."""
    for later, path in sample_files(output_dir).items():
        if later > step:
            path.unlink()


TABLE_COLUMNS = ["step", "sample", "source", "index", "prompt", "completion"]


def table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One eval's samples as a tracker's table: its columns and rows."""
    return TABLE_COLUMNS, [[record.get(column) for column in TABLE_COLUMNS] for record in records]


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """Rows as a Markdown table (TensorBoard renders its text as Markdown)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
