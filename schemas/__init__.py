"""Versioned wire contracts. Imports nothing from this repository."""

from schemas.update import (
    SCHEMA_VERSION,
    ModelUpdate,
    PrivacyStamp,
    TensorSpec,
    UpdateHeader,
    json_schema,
    write_json_schemas,
)

__all__ = [
    "SCHEMA_VERSION",
    "ModelUpdate",
    "PrivacyStamp",
    "TensorSpec",
    "UpdateHeader",
    "json_schema",
    "write_json_schemas",
]
