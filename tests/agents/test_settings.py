"""Every ``EDGEVEIL_*`` variable is a documented, TOML-settable field of the frozen Settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agents.settings import NOT_FIELDS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"EDGEVEIL_[A-Z0-9_]*[A-Z0-9]")
FIELDS = {f"EDGEVEIL_{f.name.upper()}" for f in dataclasses.fields(Settings)}


def _is_exception(name: str) -> bool:
    return name in NOT_FIELDS or name.startswith("EDGEVEIL_ASSET")


def _names_in(paths: list[Path]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        for name in NAME.findall(path.read_text(errors="replace")):
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_every_variable_in_the_code_and_docs_is_a_settings_field() -> None:
    files = [ROOT / "README.md"]
    for folder, pattern in (("agents", "*.py"), ("pipeline", "*.py"), ("docs", "*.md"),
                            ("compose", "*")):
        files += [p for p in (ROOT / folder).rglob(pattern) if p.is_file()]
    found = _names_in(files)
    assert "EDGEVEIL_DATA_DIR" in found and "EDGEVEIL_RUN_DIR" in found  # the scan sees them
    stray = {n: where for n, where in found.items() if n not in FIELDS and not _is_exception(n)}
    assert not stray, f"EDGEVEIL_* names that are not Settings fields: {stray}"


def test_no_raw_environment_reads_of_edgeveil_variables_in_agents() -> None:
    raw = re.compile(r"os\.environ(?:\.get)?[\[(]\s*[\"']EDGEVEIL_")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "agents").rglob("*.py")
                if p.name != "settings.py"  # the loader itself
            for i, line in enumerate(p.read_text().splitlines(), 1) if raw.search(line)]
    assert not hits, f"read these through agents.settings instead: {hits}"


def test_readme_configuration_table_lists_exactly_the_fields() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration"):]
    table = section[section.index("| variable |"):section.index("\n\n", section.index("| variable |"))]
    rows = {n for line in table.splitlines()[2:] for n in NAME.findall(line.split("|")[1])}
    assert rows == FIELDS, (f"missing from README: {sorted(FIELDS - rows)}; "
                            f"not fields: {sorted(rows - FIELDS)}")
    for name in NOT_FIELDS:
        assert name in section, f"{name} is not documented in README's Configuration"


TOML_VALUES = {str: ("bootstrap_servers", "10.0.0.1:9093", "10.0.0.1:9093"),
               int: ("topic_partitions", 7, 7),
               float: ("camera_fps", 2.5, 2.5),
               bool: ("demo_camera", False, False),
               type(None): ("run_dir", "/srv/run", "/srv/run")}


@pytest.mark.parametrize("kind", list(TOML_VALUES), ids=lambda k: k.__name__)
def test_a_toml_file_sets_each_field_type_and_the_environment_wins(
        kind: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    field, value, expected = TOML_VALUES[kind]
    literal = {True: "true", False: "false"}.get(value) if isinstance(value, bool) else None
    toml = f"{field} = {literal or (repr(value) if not isinstance(value, str) else f'{value!r}')}"
    cfg = tmp_path / "edgeveil.toml"
    cfg.write_text(f"[kafka]\n{toml}\n")
    monkeypatch.setenv("EDGEVEIL_CONFIG", str(cfg))
    s = load_settings()
    assert getattr(s, field) == expected and type(getattr(s, field)) is type(expected)
    assert getattr(Settings(), field) != expected  # the file changed it
    env = {str: "h:1", int: "9", float: "0.5", bool: "1", type(None): "/other"}[kind]
    monkeypatch.setenv(f"EDGEVEIL_{field.upper()}", env)
    want = {str: "h:1", int: 9, float: 0.5, bool: True, type(None): "/other"}[kind]
    assert getattr(load_settings(), field) == want


def test_every_field_has_a_toml_type_the_loader_accepts(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    lines = []
    for f in dataclasses.fields(Settings):
        default = getattr(Settings(), f.name)
        if isinstance(default, bool):
            lines.append(f"{f.name} = {'false' if default else 'true'}")
        elif isinstance(default, (int, float)):
            lines.append(f"{f.name} = {default + 1}")
        else:
            lines.append(f"{f.name} = \"x-{f.name}\"" if f.name != "security_protocol"
                         else f"{f.name} = \"ssl\"")
    cfg = tmp_path / "all.toml"
    cfg.write_text("\n".join(lines) + "\n")
    s = load_settings(cfg)
    for f in dataclasses.fields(Settings):
        assert getattr(s, f.name) != getattr(Settings(), f.name), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.run_dir = "/x"  # type: ignore[misc]


def test_bad_boolean_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEVEIL_DEMO_CAMERA", "maybe")
    with pytest.raises(ValueError, match="demo_camera must be a boolean"):
        load_settings()
