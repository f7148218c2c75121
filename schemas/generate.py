"""Regenerate every committed JSON Schema file: ``python -m schemas.generate [out_dir]``.

Writes the ModelUpdate envelope (``schemas.update``), the other message kinds
(``schemas.messages``) and the rollout control message (``schemas.control``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from schemas.control import write_control_schema
from schemas.messages import write_message_schemas
from schemas.update import write_json_schemas

JSONSCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"


def main(argv: list[str] | None = None) -> int:
    """Write the schema files into ``argv[0]`` (default ``schemas/jsonschema/``)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else JSONSCHEMA_DIR
    for path in [*write_json_schemas(out), *write_message_schemas(out),
                 write_control_schema(out)]:
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
