"""Checking a workflow config against its JSON schema, with Snakemake's own validator."""

from __future__ import annotations

import os

import yaml
from jsonschema import ValidationError

from .errors import DiagnosticsError


def check_config(config: dict, schema_path: str | os.PathLike) -> None:
    """Validate ``config`` in place with Snakemake's ``validate`` (which fills schema defaults).

    A violation becomes a DiagnosticsError of one line that names the offending key, instead of
    jsonschema's multi-line dump of the schema.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    with open(schema_path) as handle:
        # libyaml's parser where PyYAML has it: the same document, parsed some ten times faster.
        schema = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for node, key, kind in _typed_values(config, schema):
        node[key] = _from_command_line(node[key], kind)
    try:
        validate(config, schema=str(schema_path))
    except WorkflowError as error:
        cause = error.__context__
        if not isinstance(cause, ValidationError):
            raise
        raise DiagnosticsError(describe(cause)) from None
    # JSON Schema counts 1.0 as an integer; the code gets a real int for it (sizes, counts).
    for node, key, kind in _typed_values(config, schema):
        if kind == "integer" and isinstance(node[key], float):
            node[key] = int(node[key])


def _from_command_line(value, kind):
    """Snakemake's --config hands nested values over as strings (``train='{steps: 40000}'`` gives
    ``'40000'``); read such a string as YAML when that gives the type the schema wants (one of
    them, for a key that may also be null)."""
    if isinstance(kind, list):
        for one in kind:
            parsed = _from_command_line(value, one)
            if parsed is not value:
                return parsed
        return value
    if not isinstance(value, str) or kind not in ("integer", "number", "boolean", "array", "null"):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    wanted = {
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "null": lambda v: v is None,
    }[kind]
    return parsed if wanted(parsed) else value


def _typed_values(node, schema: dict, definitions: dict | None = None):
    """(container, key, schema type) of every non-object value in ``node`` that the schema types,
    including array items."""
    definitions = schema.get("definitions", {}) if definitions is None else definitions

    def resolve(sub: dict) -> dict:
        return definitions[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub

    if not isinstance(node, dict):
        return
    properties = schema.get("properties", {})
    children = {key: resolve(sub) for key, sub in properties.items() if key in node}
    if isinstance(schema.get("additionalProperties"), dict):
        extra = resolve(schema["additionalProperties"])
        children.update({key: extra for key in node if key not in properties})
    for key, sub in children.items():
        kind = sub.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind):
            yield from _typed_values(node[key], sub, definitions)
            continue
        yield node, key, kind
        if kind == "array" and isinstance(node[key], list):
            item_kind = resolve(sub.get("items", {})).get("type")
            yield from ((node[key], index, item_kind) for index in range(len(node[key])))


def describe(error: ValidationError) -> str:
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    # A pattern says little to a reader; the schema's description of the value says more.
    described = (
        error.schema.get("description") if error.absolute_path and isinstance(error.schema, dict) else None
    )
    hint = f" ({described})" if described else ""
    return (
        f"config error at {key}: {error.message}{hint}. "
        "See config.yaml for each key's meaning and allowed values."
    )
