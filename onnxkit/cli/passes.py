"""``onnxkit passes``: every registered pass, its kind, what it does, and its options."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import click

from onnxkit.cli import main


@main.command(name="passes")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_passes_command(as_json: bool) -> None:
    """List every pass: name, kind, what it does, and its options with defaults."""
    from onnxkit.pass_base import option_type_name
    from onnxkit.registry import list_passes

    described = []
    for entry in list_passes():
        record: dict[str, Any] = {"name": entry.name, "source": entry.source}
        if entry.pass_class is None:
            record["error"] = entry.error
        else:
            cls = entry.pass_class
            hints = typing.get_type_hints(cls.Options)
            record.update(
                kind=cls.kind,
                doc=cls.doc(),
                options=[
                    {"name": f.name, "type": option_type_name(hints[f.name]), "default": _default_text(f)}
                    for f in dataclasses.fields(cls.Options)
                ],
            )
            notes = cls.describe_extra()
            if notes:
                record["notes"] = notes
        described.append(record)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for record in described:
        if "error" in record:
            click.echo(f"{record['name']}  [failed to load, {record['source']}]\n    {record['error']}\n")
            continue
        source = "" if record["source"] == "builtin" else f"  [{record['source']}]"
        click.echo(f"{record['name']}  ({record['kind']}){source}\n    {record['doc']}")
        for option in record["options"]:
            click.echo(f"    {option['name']}: {option['type']} = {option['default']}")
        for line in record.get("notes", []):
            click.echo(f"    {line}")
        click.echo("")


def _default_text(field: Any) -> str:
    from onnxkit.pass_base import format_option_value

    if field.default is not dataclasses.MISSING:
        return format_option_value(field.default) or "(empty)"
    if field.default_factory is not dataclasses.MISSING:
        return format_option_value(field.default_factory())
    return "(required)"
