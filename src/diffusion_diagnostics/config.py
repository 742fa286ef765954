"""Checking a workflow config against its JSON schema, with Snakemake's own validator."""

from __future__ import annotations

import os

import yaml
from jsonschema import ValidationError

from .errors import DiagnosticsError


def check_config(config: dict, schema_path: str | os.PathLike) -> None:
    """Validate ``config`` (as Snakemake's ``validate`` does, filling schema defaults).

    A violation becomes a DiagnosticsError of one line that names the offending key, instead of
    jsonschema's multi-line dump of the schema.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, schema=str(schema_path))
    except WorkflowError as error:
        cause = error.__context__
        if not isinstance(cause, ValidationError):
            raise
        raise DiagnosticsError(describe(cause)) from None
    with open(schema_path) as handle:
        _integers_as_int(config, yaml.safe_load(handle))


def _integers_as_int(node, schema: dict, definitions: dict | None = None) -> None:
    """JSON Schema counts 1.0 as an integer; hand the code a real int for it (sizes, counts)."""
    definitions = schema.get("definitions", {}) if definitions is None else definitions

    def resolve(sub: dict) -> dict:
        return definitions[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub

    if not isinstance(node, dict):
        return
    children = {key: resolve(sub) for key, sub in schema.get("properties", {}).items() if key in node}
    if isinstance(schema.get("additionalProperties"), dict):
        extra = resolve(schema["additionalProperties"])
        children.update({key: extra for key in node if key not in schema.get("properties", {})})
    for key, sub in children.items():
        kind = sub.get("type")
        if kind == "integer" and isinstance(node[key], float):
            node[key] = int(node[key])
        elif kind == "array" and resolve(sub.get("items", {})).get("type") == "integer":
            node[key] = [int(v) for v in node[key]]
        elif kind == "object" or (isinstance(kind, list) and "object" in kind):
            _integers_as_int(node[key], sub, definitions)


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
