"""mkdocs hook: the config and command references are generated from the code at every build, never written by
hand, so they cannot drift. A page holding `<!-- reference:config -->` or `<!-- reference:cli -->` gets the
generated text in place of the marker: every key of the run config (from the dataclasses' fields, types,
defaults and docstrings, as `synthmix train --help` lists them) and every command's `--help`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from collections.abc import Iterator
from typing import Any

MARKERS = {"<!-- reference:config -->": "config", "<!-- reference:cli -->": "cli"}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, kind in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, config_reference() if kind == "config" else cli_reference())
    return markdown


def config_reference() -> str:
    """Every key of the run config, a table per section, each section introduced by its class docstring."""
    from synthmix.schema import reference
    from synthmix.trainer.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    top, sections = [], []
    for field in dataclasses.fields(RunConfig):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            intro = " ".join((hint.__doc__ or "").split())
            sections.append(f"## `{field.name}`\n\n{intro}\n\n{_table(reference(hint, field.name))}")
        else:
            top.append(field.name)
    entries = [entry for entry in reference(RunConfig) if entry.key in top]
    return "\n\n".join([f"## Top level\n\n{_table(entries)}", *sections])


def _table(entries: Any) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for entry in entries:
        cells = [f"`{entry.key}`", _cell(entry.type), _cell(entry.default), _cell(entry.doc)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def cli_reference() -> str:
    """Every command's summary and `--help` (the config keys that the training commands take are on the config
    reference page)."""
    from synthmix.cli import COMMANDS, _parser

    parts = []
    for name, spec in COMMANDS.items():
        parser = _parser("synthmix", [name])  # no --help in argv: the config epilog stays off
        subparsers = next(a for a in parser._actions if a.dest == "command")
        with _columns(100):  # argparse wraps to the terminal's width: the page's is fixed
            text = subparsers.choices[name].format_help()
        keys = (
            "\n\nAny config key can follow as `--section.key VALUE`: see [Config keys](config.md)."
            if (spec.overrides)
            else ""
        )
        summary = spec.summary[:1].upper() + spec.summary[1:]
        parts.append(f"## `synthmix {name}`\n\n{summary}.{keys}\n\n```text\n{text.rstrip()}\n```")
    return "\n\n".join(parts)
