"""Versioned wire contracts. Imports nothing from this repository."""

from schemas.update import (
    NAME_PATTERN,
    SCHEMA_VERSION,
    ModelUpdate,
    PrivacyStamp,
    TensorSpec,
    UpdateHeader,
    json_schema,
    valid_name,
    write_json_schemas,
)

__all__ = [
    "NAME_PATTERN",
    "SCHEMA_VERSION",
    "ModelUpdate",
    "PrivacyStamp",
    "TensorSpec",
    "UpdateHeader",
    "json_schema",
    "valid_name",
    "write_json_schemas",
]
