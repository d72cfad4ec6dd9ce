"""``casemate servers`` shows what strangers on the LAN announce without obeying it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from casemate import lan
from casemate.cli.servers import servers

HOSTILE = "Sales\x1b[2J\x1b]0;owned\x07\nStock\u202eevil"


def _list(monkeypatch: pytest.MonkeyPatch, found: list[lan.Found]) -> str:
    monkeypatch.setattr(lan, "browse", lambda timeout, publication=None: found)
    r = CliRunner().invoke(servers, ["--timeout", "0.1"])
    assert r.exit_code == 0, r.output
    return r.output


def test_announced_names_cannot_drive_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _list(monkeypatch, [
        lan.Found(HOSTILE, ("10.0.0.5",), 19812, True, "sha256:ab\x1b[31m"),
        lan.Found("Stock", ("10.0.0.7",), 19813, False, None),
    ])
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "Sales\\x1b[2J" in out and "\\u202e" in out
    lines = out.splitlines()
    # One line per server under the header and its rule: the newline drew no fake row.
    assert len(lines) == 4, out
    assert "encrypted" in lines[2] and "19812" in lines[2]
    assert lines[3].split("|")[0].strip() == "Stock" and "PLAIN" in lines[3]


def test_no_server_found(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "No Casemate server announced itself" in _list(monkeypatch, [])


def test_line_breaks_of_every_kind_and_the_column_bar_are_escaped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_row = "Sales\u2028 Payroll | 10.0.0.9 | 19812 | encrypted | sha256:cd\u2029\u200b"
    out = _list(monkeypatch, [lan.Found(fake_row, ("10.0.0.5",), 19812, True, None)])
    assert len(out.splitlines()) == 3, out  # header, rule, one server
    assert "\\u2028" in out and "\\u2029" in out and "\\u200b" in out
    assert out.splitlines()[2].count("|") == 4  # the table's own bars only


def test_a_servers_error_text_is_shown_on_its_own_lines_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An error's message and hint come from the server, or whoever answered in its place."""
    from casemate.cli.connect import _exit
    from casemate.errors import OperationalError

    with pytest.raises(SystemExit):
        _exit(OperationalError("bad\x1b]0;owned\x07\r\nerror: password expired", "28P01",
                               "visit\u202e http://evil.example"))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert err.splitlines() == [
        "error: [28P01] bad\\x1b]0;owned\\x07\\x0d\\x0aerror: password expired",
        "Hint: visit\\u202e http://evil.example"]
