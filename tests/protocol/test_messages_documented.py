"""docs/protocol.md documents every message type and the declared type of its body."""

from __future__ import annotations

import pathlib
import re

from casemate.protocol import Msg
from casemate.protocol.messages import BODIES

DOC = pathlib.Path(__file__).parents[2] / "docs" / "protocol.md"


def _message_rows() -> dict[str, str]:
    """Each row of the message tables of section 3: message name -> the whole row."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 3. Messages"):text.index("## 4. State machines")]
    rows = {}
    for line in section.splitlines():
        if m := re.match(r"\|\s*`([A-Z_]+)`\s*\|", line):
            rows[m.group(1)] = line
    return rows


def test_every_message_type_is_documented() -> None:
    rows = _message_rows()
    missing = [m.name for m in Msg if m.name not in rows]
    assert not missing, f"docs/protocol.md section 3 lacks a row for {missing}"


def test_each_row_names_the_letter_and_the_body_type() -> None:
    rows = _message_rows()
    for m in Msg:
        row = rows[m.name]
        assert f"`{m.value.decode()}` (0x{m.value[0]:02X})" in row, f"{m.name}: wrong letter"
        body = BODIES[m]
        name = "nil" if body is None else body.__name__
        assert f"`{name}`" in row, f"{m.name}: the row does not name its body type `{name}`"
