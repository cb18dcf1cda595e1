"""Pipeline spec text ⇄ passes.

A spec is text that round-trips: ``simplify,fuse{target=standard,skip=conv-relu,gelu},quantize{mode=static}``.
Inside braces a comma-separated piece without ``=`` continues the list value of the key before it, which
is how ``skip=conv-relu,gelu`` reads. ``Pipeline.parse(s).to_string()`` is the canonical form: options in
declaration order, defaults left out.
"""

from __future__ import annotations

import re
from typing import Any

from onnxkit.errors import SpecError
from onnxkit.pass_base import Pass, make_options
from onnxkit.registry import get_pass_class

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def split_top_level(text: str) -> list[str]:
    """Split ``text`` at commas that are not inside braces."""
    pieces, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
            if depth > 1:
                raise SpecError(f"nested '{{' in pipeline spec at position {i}: {text!r}")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unmatched '}}' in pipeline spec at position {i}: {text!r}")
        elif char == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise SpecError(f"unclosed '{{' in pipeline spec: {text!r}", hint="write options as name{key=value,...}")
    pieces.append(text[start:])
    return pieces


def parse_pass_text(text: str) -> tuple[str, dict[str, str]]:
    """``fuse{target=standard,skip=a,b}`` → ``("fuse", {"target": "standard", "skip": "a,b"})``."""
    text = text.strip()
    if not text:
        raise SpecError("empty pass in pipeline spec", hint="remove the doubled or trailing comma")
    name, brace, rest = text.partition("{")
    name = name.strip()
    if not _NAME.match(name):
        raise SpecError(
            f"bad pass name {name!r} in pipeline spec", hint="a spec looks like: cleanup,fuse{target=standard}"
        )
    options: dict[str, str] = {}
    if not brace:
        return name, options
    if not rest.endswith("}"):
        raise SpecError(f"text after '}}' in {text!r}", hint="separate passes with commas")
    body = rest[:-1]
    last_key = None
    for piece in body.split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, equals, value = piece.partition("=")
        if equals:
            key = key.strip()
            if not key:
                raise SpecError(f"pass '{name}': option without a name in {text!r}")
            if key in options:
                raise SpecError(f"pass '{name}': option '{key}' given twice")
            options[key] = value.strip()
            last_key = key
        elif last_key is not None:
            options[last_key] += "," + piece  # continues a list value: skip=conv-relu,gelu
        else:
            raise SpecError(f"pass '{name}': expected key=value, got {piece!r}")
    return name, options


def build_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    pass_class = get_pass_class(name)
    return pass_class(make_options(pass_class, options or {}))
