"""Wire types and the committed JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from schemas.update import ModelUpdate, PrivacyStamp, json_schema, write_json_schemas

COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "jsonschema"


def _stamp(**kw: object) -> PrivacyStamp:
    args: dict[str, object] = dict(
        epsilon=1.0, delta=1e-5, noise_multiplier=1.1, sample_rate=0.01, steps=10, accountant="rdp"
    )
    args.update(kw)
    return PrivacyStamp(**args)  # type: ignore[arg-type]


def test_committed_schema_files_equal_generated(tmp_path: Path) -> None:
    # Prepare / Execute
    written = write_json_schemas(tmp_path)
    # Assert
    assert [p.name for p in written] == sorted(
        p.name for p in COMMITTED.glob("model_update.*.json")
    )
    for path in written:
        assert (COMMITTED / path.name).read_text() == path.read_text(), (
            "run: python -m schemas.generate"
        )


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")


def test_header_def_requires_every_field_but_delta() -> None:
    header = json_schema()["$defs"]["UpdateHeader"]
    fields = set(ModelUpdate.__dataclass_fields__) - {"delta"}
    assert fields <= set(header["required"])
    assert header["additionalProperties"] is False


@pytest.mark.parametrize(
    "kw",
    [
        {"epsilon": -1.0},
        {"delta": 1.0},
        {"sample_rate": 1.5},
        {"steps": -1},
        {"accountant": "gdp"},
        {"epsilon": float("nan")},
    ],
)
def test_privacy_stamp_rejects_bad_values(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _stamp(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"node_id": ""},
        {"node_id": "a b"},
        {"round": -1},
        {"num_examples": 1.5},
        {"created_at": -1.0},
        {"created_at": float("nan")},
    ],
)
def test_model_update_rejects_bad_header_fields(kw: dict[str, object]) -> None:
    args: dict[str, object] = dict(
        node_id="n1",
        task="t",
        round=0,
        base_version=0,
        num_examples=1,
        metrics={},
        privacy=_stamp(),
        delta={},
    )
    args.update(kw)
    with pytest.raises(ValueError):
        ModelUpdate(**args)  # type: ignore[arg-type]


def test_model_update_defaults() -> None:
    u = ModelUpdate(
        node_id="n1",
        task="t",
        round=0,
        base_version=0,
        num_examples=1,
        metrics={},
        privacy=_stamp(),
        delta={"w": np.zeros(2, np.float32)},
    )
    assert (u.schema_version, u.created_at) == (1, 0.0)


def test_schema_file_is_json() -> None:
    for path in COMMITTED.glob("model_update.*.json"):
        assert json.loads(path.read_text())["title"] == "ModelUpdate"
