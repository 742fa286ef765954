"""The config against its schema: the cases a user meets, config fuzzing (every invalid value is
rejected naming its key; every valid config passes), and the schema's process keys against the
process configuration's one home, ProcessConfig."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_diagnostics.config import check_config
from diffusion_diagnostics.process_config import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    ProcessConfig,
)

from conftest import REPO, tiny_config
from doubles import one_error_line

SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


JSON_TYPES = {
    # JSON Schema counts 1.0 as an integer (check_config then hands the code an int).
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def accepted(value, kind: str | list[str]) -> bool:
    """Of the right type (one of them, for a nullable key), or a string that reads as one (nested
    --config values are strings)."""
    if isinstance(kind, list):
        return any(accepted(value, one) for one in kind)
    if JSON_TYPES[kind](value):
        return True
    if isinstance(value, str) and kind != "string":
        try:
            return JSON_TYPES[kind](yaml.safe_load(value))
        except yaml.YAMLError:
            return False
    return False


def resolve(schema: dict) -> dict:
    if "$ref" in schema:
        return SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def leaves(schema: dict, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path, schema) of every scalar or array key of the config."""
    schema = resolve(schema)
    if schema.get("type") == "object" and "properties" in schema:
        return [item for key, sub in schema["properties"].items() for item in leaves(sub, path + (key,))]
    kinds = schema.get("type")
    if isinstance(kinds, list) and set(kinds) <= set(JSON_TYPES) or kinds in JSON_TYPES:
        return [(path, schema)]
    return []  # free-form mappings (the model sweep) and model sources have their own tests


LEAVES = leaves(SCHEMA)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=2),
)


def with_value(config: dict, path: tuple, value) -> dict:
    changed = copy.deepcopy(config)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


def rejection(config: dict) -> str:
    message = one_error_line(lambda: check_config(config, SCHEMA_PATH))
    assert "Traceback" not in message
    return message


def test_shipped_and_tiny_configs_are_valid():
    check_config(copy.deepcopy(DEFAULT), SCHEMA_PATH)
    check_config(tiny_config(), SCHEMA_PATH)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("threads",), 0, "threads"),
        (("interpolation", "n"), "eight", "interpolation.n"),
        (("data", "source"), "imagenet", "data.source"),
        (("train", "lr"), -1.0, "train.lr"),
        (("unknown_knob",), 1, "(top level)"),
        (("models",), {"bad/name": {}}, "models"),
        (("models",), {"compare": {}}, "models"),
        (("models",), {"a": {"epochs": 3}}, "models.a"),
        (("models",), {"a": {"train": {"lr": -1.0}}}, "models.a.train.lr"),
    ],
)
def test_what_users_get_wrong_is_one_line_naming_the_key(path, value, key):
    """The workflow's own run of one such case is in test_workflow.py."""
    assert rejection(with_value(tiny_config(), path, value)).startswith(f"config error at {key}:")


def test_the_process_keys_are_those_of_the_process_configuration():
    """config.yaml's diffusion defaults are ProcessConfig's, and the schema allows what it does."""
    assert ProcessConfig.from_dict(DEFAULT["diffusion"]) == ProcessConfig()
    settings = SCHEMA["definitions"]["diffusion_settings"]["properties"]
    assert set(settings) <= set(ProcessConfig().to_dict())
    for key, allowed in (
        ("beta_schedule", BETA_SCHEDULES),
        ("prediction_type", PREDICTION_TYPES),
        ("variance_type", VARIANCE_TYPES),
    ):
        assert tuple(settings[key]["enum"]) == allowed, key
    assert tuple(SCHEMA["properties"]["timestep_spacing"]["enum"]) == TIMESTEP_SPACINGS


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_value_of_the_wrong_type_is_rejected_naming_its_key(data):
    path, schema = data.draw(st.sampled_from(LEAVES))
    value = data.draw(ANY_VALUE.filter(lambda v: not accepted(v, schema["type"])))
    assert ".".join(path) in rejection(with_value(DEFAULT, path, value))


BOUNDED = [
    (p, s)
    for p, s in LEAVES
    if s["type"] in ("integer", "number") and ("minimum" in s or "exclusiveMinimum" in s)
]


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_zero_negative_and_out_of_range_numbers_are_rejected(data):
    path, schema = data.draw(st.sampled_from(BOUNDED))
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    below = data.draw(st.integers(-(10**6), -1)) + low
    if "exclusiveMinimum" in schema:
        below = data.draw(st.sampled_from([low, below]))
    assert ".".join(path) in rejection(with_value(DEFAULT, path, below))


@settings(max_examples=40, deadline=None)
@given(
    section=st.sampled_from([(), ("data",), ("train",), ("interpolation",), ("interpolation", "ddim")]),
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
def test_unknown_keys_are_rejected_naming_them(section, key):
    node = DEFAULT
    for part in section:
        node = node[part]
    if key in node:
        return
    message = rejection(with_value(DEFAULT, section + (key,), 1))
    assert repr(key) in message


def valid_value(schema: dict):
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if isinstance(kind, list):  # nullable: null, or a valid value of the other type
        other = valid_value({**schema, "type": next(k for k in kind if k != "null")})
        return st.none() if other is None else st.one_of(st.none(), other)
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1000))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10**6))
        if kind == "integer":
            return st.integers(
                int(low) + ("exclusiveMinimum" in schema), int(high) - ("exclusiveMaximum" in schema)
            )
        return st.floats(
            low, high, exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema
        )
    return None  # strings and arrays keep their shipped values


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_every_valid_config_passes(data):
    config = copy.deepcopy(DEFAULT)
    for path, schema in LEAVES:
        strategy = valid_value(schema)
        if strategy is not None and data.draw(st.booleans()):
            config = with_value(config, path, data.draw(strategy))
    check_config(config, SCHEMA_PATH)


def test_nested_command_line_values_are_read_as_yaml():
    # snakemake --config train='{steps: 40000, lr: 2e-4}' hands these over as strings.
    config = with_value(DEFAULT, ("train", "steps"), "40000")
    config = with_value(config, ("train", "lr"), "2.0e-4")
    config = with_value(config, ("interpolation", "clip_x0"), "false")
    config = with_value(config, ("model", "channel_mults"), "[1, 2]")
    config = with_value(config, ("interpolation", "variance_type"), "null")
    check_config(config, SCHEMA_PATH)
    assert config["interpolation"]["variance_type"] is None
    assert config["train"]["steps"] == 40000 and config["train"]["lr"] == 2e-4
    assert config["interpolation"]["clip_x0"] is False and config["model"]["channel_mults"] == [1, 2]
    assert "train.steps" in rejection(with_value(DEFAULT, ("train", "steps"), "many"))


def test_integral_floats_reach_the_code_as_ints():
    config = with_value(DEFAULT, ("interpolation", "batch_size"), 8.0)
    check_config(config, SCHEMA_PATH)
    assert config["interpolation"]["batch_size"] == 8 and type(config["interpolation"]["batch_size"]) is int
