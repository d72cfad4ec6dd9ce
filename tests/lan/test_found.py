"""What a LAN announcement may carry into the client (no network needed)."""

from __future__ import annotations

from typing import Any

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
