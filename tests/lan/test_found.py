"""What a LAN announcement may carry into the client (no network needed)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from casemate import lan


class _Info:  # the parts of a zeroconf ServiceInfo that lan._found reads
    def __init__(self, props: dict[bytes, bytes], port: int | None = 19812) -> None:
        self.properties = props
        self.port = port
        self.name = "Sales." + lan.SERVICE_TYPE

    def parsed_scoped_addresses(self) -> list[str]:
        return ["10.0.0.5"]


def _found(props: dict[bytes, bytes]) -> Any:
    return lan._found(_Info(props))


def test_a_well_formed_fingerprint_is_kept() -> None:
    fp = "sha256:" + "ab" * 32
    f = _found({b"enc": b"1", b"fp": fp.encode(), b"name": b"Sales"})
    assert f.fingerprint == fp and f.encrypted and f.name == "Sales" and f.port == 19812


def test_anything_else_in_the_fingerprint_field_is_dropped() -> None:
    for bad in (b"sha256:" + b"ab" * 32 + b"\x1b[31m", b"sha256:XYZ", b"\x1b]0;owned\x07",
                b"sha256:" + b"AB" * 32, b"see http://evil.example"):
        f = _found({b"enc": b"1", b"fp": bad})
        assert f.fingerprint is None, bad
        assert lan.announcement_mismatch(f.fingerprint, "sha256:" + "cd" * 32) is None


def test_a_key_that_is_not_utf8_is_no_reason_to_fail() -> None:
    f = _found({b"\xff": b"a", b"enc": b"1", b"name": b"Evil"})
    assert f is not None and f.name == "Evil"  # decoded with replacement, as values are
    assert lan._found(_Info({b"name": b"x"}, port=None)) is None
    assert lan._found(_Info({b"name": b"x"}, port="not a port")) is None  # type: ignore[arg-type]


class _FakeZeroconf:
    """Names announced at once, then never answered for (the details never come)."""

    asked: list[int] = []

    def get_service_info(self, type_: str, name: str, timeout: int) -> None:
        self.asked.append(timeout)
        time.sleep(timeout / 1000)

    def close(self) -> None:
        pass


class _FakeBrowser:
    def __init__(self, zc: Any, type_: str, listener: Any) -> None:
        for i in range(lan.MAX_SERVERS + 50):
            listener.add_service(zc, type_, f"S{i}.{type_}")

    def cancel(self) -> None:
        pass


def test_names_that_never_answer_cannot_stall_a_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    import zeroconf
    monkeypatch.setattr(zeroconf, "Zeroconf", _FakeZeroconf)
    monkeypatch.setattr(zeroconf, "ServiceBrowser", _FakeBrowser)
    monkeypatch.setattr(lan, "RESOLVE_SECONDS", 0.3)
    _FakeZeroconf.asked = []
    assert lan.browse(0.1) == []
    # One deadline for all the look-ups (each asked for what is left of it), not a second
    # per name: 300 names would have taken five minutes.
    assert sum(_FakeZeroconf.asked) <= 300 + 50 and len(_FakeZeroconf.asked) <= 10


def test_two_servers_announcing_one_name_is_an_error_not_a_guess(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from casemate.client.params import parse_params
    from casemate.errors import OperationalError
    two = [lan.Found("Sales", ("10.0.0.5",), 19812, True, None),
           lan.Found("sales", ("10.0.0.66",), 19812, True, None)]
    monkeypatch.setattr(lan, "browse", lambda timeout, publication=None: two)
    with pytest.raises(OperationalError) as err:
        parse_params(None, publication="Sales", password="x")
    assert "several servers announce 'Sales'" in str(err.value)
    assert "10.0.0.5:19812" in str(err.value) and "10.0.0.66:19812" in str(err.value)
