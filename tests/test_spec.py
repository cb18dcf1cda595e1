"""Pipeline specs: parsing, canonical form, round-trips, and errors that name what is wrong."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxkit import Pass, PassResult, Pipeline, SpecError, register_pass, unregister_pass


@dataclasses.dataclass(frozen=True)
class KnobOptions:
    level: Literal["low", "high"] = "low"
    count: int = 3
    ratio: float = 0.5
    enabled: bool = True
    names: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


class KnobPass(Pass):
    """A do-nothing pass with one option of every type."""

    name = "knobs"
    Options = KnobOptions

    def call(self, model):
        return PassResult(model, False)


@pytest.fixture(autouse=True)
def knob_pass():
    register_pass(KnobPass)
    yield
    unregister_pass("knobs")


def test_parse_builds_typed_options():
    pipeline = Pipeline.parse("cleanup, knobs{level=high,count=7,ratio=0.25,enabled=false,names=a,b,c,label=x}")
    knobs = pipeline.passes[1]
    assert knobs.options == KnobOptions(
        level="high", count=7, ratio=0.25, enabled=False, names=("a", "b", "c"), label="x"
    )


@pytest.mark.parametrize(
    "spec",
    [
        "cleanup",
        "cleanup,shape-inference{strict=true}",
        "knobs{level=high,names=conv-relu,gelu}",
        "knobs{count=0,ratio=1e-05,label=none-like}",
        "shape-inference{strict=true,data_prop=false},cleanup,knobs",
    ],
)
def test_canonical_specs_round_trip(spec):
    assert Pipeline.parse(spec).to_string() == spec


def test_to_string_is_canonical():
    # Defaults vanish, options follow declaration order, spaces go.
    assert Pipeline.parse(" knobs{ enabled=true , count=4, level=low } ").to_string() == "knobs{count=4}"


@given(
    level=st.sampled_from(["low", "high"]),
    count=st.integers(0, 10**6),
    ratio=st.floats(allow_nan=False, allow_infinity=False, width=32),
    enabled=st.booleans(),
    names=st.lists(st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True), max_size=4),
)
@settings(max_examples=60, deadline=None)
def test_any_options_round_trip(level, count, ratio, enabled, names):
    register_pass(KnobPass)
    options = KnobOptions(level=level, count=count, ratio=ratio, enabled=enabled, names=tuple(names))
    spec = KnobPass(options).spec()
    reparsed = Pipeline.parse(spec)
    assert reparsed.passes[0].options == options
    assert reparsed.to_string() == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cleanp", "unknown pass 'cleanp'"),
        ("knobs{colour=red}", "pass 'knobs' has no option 'colour'"),
        ("knobs{count=many}", "pass 'knobs', option 'count': bad value 'many'"),
        ("knobs{level=medium}", "pass 'knobs', option 'level': bad value 'medium'"),
        ("knobs{enabled=maybe}", "option 'enabled'"),
        ("knobs{count=-1}", "pass 'knobs': count must be >= 0"),
        ("knobs{count=1", "unclosed '{'"),
        ("cleanup,,knobs", "empty pass"),
        ("knobs{count=1}x", "text after '}'"),
        ("", "empty pipeline spec"),
        ("knobs{count=1,count=2}", "given twice"),
    ],
)
def test_bad_specs_are_user_errors(spec, message):
    with pytest.raises(SpecError, match=None) as info:
        Pipeline.parse(spec)
    assert message in str(info.value)


def test_unknown_pass_lists_close_matches():
    with pytest.raises(SpecError) as info:
        Pipeline.parse("shape-inferense")
    assert "shape-inference" in info.value.hint


def test_config_file_desugars_to_the_same_spec(tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text('passes = ["cleanup", { name = "knobs", level = "high", names = ["a", "b"] }]\n')
    assert Pipeline.from_config(config).to_string() == "cleanup,knobs{level=high,names=a,b}"
