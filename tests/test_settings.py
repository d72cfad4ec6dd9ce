"""casemate.settings: defaults, validation messages, the rendered default file, immutability."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from casemate.settings import (
    _SCHEMA,
    DEFAULT_PORT,
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
)
from casemate.settings_file import render_default_toml, render_settings_reference, set_toml_value

ALL_KEYS = [(section, f.name) for section, fields in _SCHEMA.items() for f in fields]


def parse_toml(text: str) -> Settings:
    return parse_settings(tomllib.loads(text), "test.toml")


def error_for(text: str) -> str:
    with pytest.raises(SettingsError) as ei:
        parse_toml(text)
    return str(ei.value)


# -- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    s = parse_settings({})
    assert s.network.publication_name == "Casemate"
    assert s.network.listen == ("127.0.0.1",)
    assert s.network.port == DEFAULT_PORT == 19812
    assert s.network.encrypt_client_server_connections is False
    assert s.network.min_tls_version == "1.2"
    assert s.network.require_client_certificate is False
    assert s.storage.backend == "sqlite"
    assert s.storage.busy_timeout_seconds == 5.0
    assert s.storage.worker_threads == 16
    assert s.limits.max_sessions == 1000
    assert s.limits.max_message_bytes == 16 * 1024 * 1024
    assert s.limits.login_timeout_seconds == 10.0
    assert s.limits.idle_timeout_seconds == 0.0
    # Dead peers are noticed by default: TCP keepalive, and a limit on idle transactions.
    assert s.network.keepalive_seconds == 30.0
    assert s.limits.idle_in_transaction_timeout_seconds == 60.0
    assert s.access.rules == ()
    assert s.access.check_address("10.1.2.3") is None


def test_the_declared_defaults_are_the_parsed_defaults() -> None:
    assert Settings() == parse_settings({})  # one declaration: no second list of defaults


def test_empty_sections_give_defaults() -> None:
    assert parse_toml("[network]\n[storage]\n[limits]\n[access]\n") == parse_settings({})


def test_values_are_read_and_normalised() -> None:
    s = parse_toml(
        '[network]\nlisten = ["0.0.0.0", "::"]\nport = 0\nmin_tls_version = "1.3"\n'
        "encrypt_client_server_connections = true\n"
        "[storage]\nbusy_timeout_seconds = 2\n"
        "[limits]\nlogin_timeout_seconds = 0.5\n"
        "[access]\nthrottle_max_delay_seconds = 0.25\n"
    )
    assert s.network.listen == ("0.0.0.0", "::")  # list -> tuple
    assert s.network.port == 0
    assert s.network.min_tls_version == "1.3"
    assert s.network.encrypt_client_server_connections is True
    assert s.storage.busy_timeout_seconds == 2.0
    assert type(s.storage.busy_timeout_seconds) is float  # int accepted for a number, as float
    assert s.limits.login_timeout_seconds == 0.5


def test_access_rules_are_parsed_in_order() -> None:
    s = parse_toml(
        '[[access.rules]]\naction = "allow"\nfrom = "10.0.0.0/8"\n'
        '[[access.rules]]\naction = "deny"\nfrom = "::1"\n'
        '[[access.rules]]\naction = "deny"\nfrom = "*"\n'
    )
    rules = s.access.rules
    assert [r.action for r in rules] == ["allow", "deny", "deny"]
    assert rules[0].network == ipaddress.ip_network("10.0.0.0/8")
    assert rules[2].network is None
    assert s.access.check_address("10.9.9.9") is rules[0]
    assert s.access.check_address("::1") is rules[1]
    assert s.access.check_address("fe80::1%eth0") is rules[2]
    assert s.access.check_address("not an address") is rules[2]


# -- errors -------------------------------------------------------------------------------


def test_unknown_section() -> None:
    msg = error_for("[netwrok]\nport = 1\n")
    assert msg.startswith("test.toml: ")
    assert "[netwrok]" in msg
    for section in _SCHEMA:
        assert section in msg


def test_section_that_is_not_a_table() -> None:
    msg = error_for("network = 5\n")
    assert "network" in msg and "table" in msg


def test_unknown_key() -> None:
    msg = error_for("[network]\nprot = 1\n")
    assert "network.prot" in msg
    assert "port" in msg and "listen" in msg  # the known keys are listed


def test_key_in_the_wrong_section() -> None:
    msg = error_for("[storage]\nport = 1\n")
    assert "storage.port" in msg


@pytest.mark.parametrize(("toml", "key", "shown", "allowed"), [
    ('[network]\nport = "80"', "network.port", "'80'", "an integer"),
    ("[network]\nport = 80.0", "network.port", "80.0", "an integer"),
    ("[network]\nport = true", "network.port", "True", "an integer"),
    ("[storage]\nworker_threads = false", "storage.worker_threads", "False", "an integer"),
    ("[storage]\nbusy_timeout_seconds = true", "storage.busy_timeout_seconds", "True",
     "a number"),
    ('[limits]\nlogin_timeout_seconds = "10"', "limits.login_timeout_seconds", "'10'",
     "a number"),
    ("[network]\nencrypt_client_server_connections = 1",
     "network.encrypt_client_server_connections", "1", "true or false"),
    ('[network]\nencrypt_client_server_connections = "yes"',
     "network.encrypt_client_server_connections", "'yes'", "true or false"),
    ("[network]\nmin_tls_version = 1.3", "network.min_tls_version", "1.3", "a string"),
    ('[network]\nlisten = "0.0.0.0"', "network.listen", "'0.0.0.0'", "a list"),
    ("[network]\npublication_name = 5", "network.publication_name", "5", "a string"),
    ('[access]\nrules = "none"', "access.rules", "'none'", "a list"),
])
def test_wrong_type(toml: str, key: str, shown: str, allowed: str) -> None:
    msg = error_for(toml + "\n")
    assert f"{key} = {shown}" in msg
    assert msg.endswith(f"expected {allowed}")


@pytest.mark.parametrize(("toml", "key", "allowed"), [
    ("[network]\nport = 65536", "network.port", "0 to 65535"),
    ("[network]\nport = -1", "network.port", "0 to 65535"),
    ("[storage]\nworker_threads = 0", "storage.worker_threads", "1 to 256"),
    ("[storage]\nbusy_timeout_seconds = 600.5", "storage.busy_timeout_seconds", "0 to 600"),
    ("[limits]\nmax_message_bytes = 100", "limits.max_message_bytes", "4096 to"),
    ("[limits]\nlogin_timeout_seconds = 0.0", "limits.login_timeout_seconds", "0.1 to 600"),
    ("[limits]\nidle_timeout_seconds = nan", "limits.idle_timeout_seconds", "0 to"),
    ("[limits]\nidle_timeout_seconds = inf", "limits.idle_timeout_seconds", "0 to"),
    ("[network]\nkeepalive_seconds = -1", "network.keepalive_seconds", "0 to 3600"),
    ("[limits]\nidle_in_transaction_timeout_seconds = -1",
     "limits.idle_in_transaction_timeout_seconds", "0 to"),
    ("[access]\nthrottle_after_failures = 0", "access.throttle_after_failures", "1 to 1000"),
])
def test_out_of_range(toml: str, key: str, allowed: str) -> None:
    value = toml.split(" = ")[1]
    msg = error_for(toml + "\n")
    assert key in msg
    assert f"= {float(value)!r}" in msg or f"= {value}" in msg
    assert "a number from" in msg and allowed in msg


@pytest.mark.parametrize(("toml", "key", "allowed"), [
    ('[network]\nmin_tls_version = "1.1"', "network.min_tls_version", "'1.2', '1.3'"),
    ('[storage]\nbackend = "postgres"', "storage.backend", "'sqlite'"),
])
def test_bad_choice(toml: str, key: str, allowed: str) -> None:
    msg = error_for(toml + "\n")
    bad = toml.split(" = ")[1].strip('"')
    assert f"{key} = {bad!r}" in msg
    assert f"one of {allowed}" in msg


@pytest.mark.parametrize("toml", [
    '[network]\npublication_name = "   "',
    "[network]\nlisten = []",
    '[network]\nlisten = [""]',
    "[network]\nlisten = [1]",
    '[network]\nlisten = ["[::1]"]',
    '[network]\nlisten = ["a b"]',
    '[[access.rules]]\naction = "allow"',
    '[[access.rules]]\naction = "permit"\nfrom = "*"',
    '[[access.rules]]\naction = "allow"\nfrom = "10.0.0.0/33"',
    '[[access.rules]]\naction = "allow"\nfrom = "*"\nextra = 1',
    '[[access.rules]]\naction = "allow"\nfrom = 1',
    "[access]\nrules = [1]",
])
def test_other_invalid_values(toml: str) -> None:
    msg = error_for(toml + "\n")
    assert "is not valid: expected" in msg
    key = "access.rules" if "access" in toml else "network." + toml.split("\n")[1].split(" ")[0]
    assert key in msg


def test_invalid_cidr_is_quoted() -> None:
    msg = error_for('[[access.rules]]\naction = "allow"\nfrom = "10.0.0.0/33"\n')
    assert "'10.0.0.0/33'" in msg


def test_load_settings_reports_toml_syntax_errors(tmp_path: Path) -> None:
    p = tmp_path / "casemate.toml"
    p.write_text("[network]\nport = = 5\n", encoding="utf-8")
    with pytest.raises(SettingsError) as ei:
        load_settings(p)
    msg = str(ei.value)
    assert str(p) in msg and "not valid TOML" in msg
    assert "line 2" in msg
    assert isinstance(ei.value.__cause__, tomllib.TOMLDecodeError)


def test_load_settings_reports_a_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as ei:
        load_settings(p)
    assert str(p) in str(ei.value) and "cannot read" in str(ei.value)


def test_load_settings_names_the_file_in_value_errors(tmp_path: Path) -> None:
    p = tmp_path / "casemate.toml"
    p.write_text("[network]\nport = 70000\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=re.escape(f"{p}: network.port = 70000")):
        load_settings(p)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


# -- the rendered default file ------------------------------------------------------------


def test_render_default_round_trips_to_the_defaults() -> None:
    assert parse_toml(render_default_toml()) == parse_settings({})


def test_render_default_has_a_comment_line_for_every_key() -> None:
    lines = render_default_toml().splitlines()
    for section, fields in _SCHEMA.items():
        header = lines.index(f"[{section}]")
        for f in fields:
            assert f"# {f.comment}" in lines, f.name
            at = lines.index(f"# {f.comment}")
            assert at > header
            if f.example:
                # shown as a commented-out example, right after its comment
                block = lines[at + 1: at + 2 + len(f.example)]
                assert block == ["# For example:"] + [f"# {e}" for e in f.example]
                assert not any(ln.startswith(f"{f.name} =") for ln in lines)
            else:
                assert lines[at + 1].startswith(f"{f.name} = "), (f.name, lines[at + 1])
    # nothing but comments, tables, keys and blank lines
    assert all(ln == "" or ln.startswith(("#", "[")) or " = " in ln for ln in lines)
    assert len(ALL_KEYS) == len({f"# {f.comment}" for fs in _SCHEMA.values() for f in fs})


def test_uncommenting_the_rules_example_gives_valid_rules() -> None:
    text = render_default_toml()
    example = [f"# {e}" for f in _SCHEMA["access"] if f.example for e in f.example]
    for line in example:
        text = text.replace(line + "\n", line[2:] + "\n", 1)
    s = parse_toml(text)
    assert [r.action for r in s.access.rules] == ["allow", "deny"]
    assert s.access.check_address("127.0.0.1") is s.access.rules[0]
    assert s.access.check_address("192.0.2.1") is s.access.rules[1]


@pytest.mark.parametrize("name", [
    "Sales DB", 'quote " and back\\slash', "accents éü and ☃", "tab\there", "new\nline",
    "bell\x07 and del\x7f",
])
def test_render_default_with_publication_name(name: str) -> None:
    s = parse_toml(render_default_toml(publication_name=name))
    assert s.network.publication_name == name
    assert dataclasses.replace(s, network=parse_settings({}).network) == parse_settings({})


def test_render_default_overrides() -> None:
    s = parse_toml(render_default_toml({"network.port": 0, "network.listen": ["::1"]},
                                       busy_timeout_seconds=1.5,
                                       encrypt_client_server_connections=True))
    assert s.network.port == 0
    assert s.network.listen == ("::1",)
    assert s.storage.busy_timeout_seconds == 1.5
    assert s.network.encrypt_client_server_connections is True
    # The other sections' keys of the same names keep their defaults.
    assert s.admin_web == parse_settings({}).admin_web


def test_render_default_overrides_only_the_section_named() -> None:
    s = parse_toml(render_default_toml({"admin_web.port": 0, "admin_web.listen": ["::1"]}))
    assert (s.admin_web.port, s.admin_web.listen) == (0, ("::1",))
    assert (s.network.port, s.network.listen) == (DEFAULT_PORT, ("127.0.0.1",))


@pytest.mark.parametrize("name", ["port", "listen"])
def test_render_default_refuses_a_name_in_two_sections(name: str) -> None:
    # It used to set network.port and admin_web.port both: the web page then took the port
    # of the database server (or both 0), and a second init option silently won.
    with pytest.raises(TypeError, match=f"network.{name}, admin_web.{name}"):
        render_default_toml(**{name: 0})
    with pytest.raises(TypeError, match="unknown setting"):
        render_default_toml({"network.prot": 0})


def test_set_values_round_trip_through_the_file(tmp_path: Path) -> None:
    p = tmp_path / "casemate.toml"
    p.write_text(render_default_toml(), encoding="utf-8")
    assert load_settings(p) == parse_settings({})


# -- immutability -------------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    s = parse_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.network.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.network = s.network  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.access.rules = ()  # type: ignore[misc]
    assert isinstance(s.network.listen, tuple)
    assert isinstance(s.access.rules, tuple)
    hash(s)  # frozen and made of tuples: hashable


def test_replace_network_returns_a_copy() -> None:
    s = parse_settings({})
    t = s.replace_network(port=1234, listen=("::1",))
    assert t.network.port == 1234 and t.network.listen == ("::1",)
    assert s.network.port == DEFAULT_PORT
    assert t.storage is s.storage


def test_parsing_does_not_share_mutable_defaults() -> None:
    data: dict[str, Any] = {"network": {"listen": ["10.0.0.1"]}}
    s = parse_settings(data)
    data["network"]["listen"].append("10.0.0.2")
    assert s.network.listen == ("10.0.0.1",)
    assert parse_settings({}).network.listen == ("127.0.0.1",)


def test_throttle_delay_must_stay_below_the_login_timeout() -> None:
    with pytest.raises(SettingsError) as e:
        parse_toml("[limits]\nlogin_timeout_seconds = 2\n[access]\nthrottle_max_delay_seconds = 3\n")
    assert "access.throttle_max_delay_seconds = 3" in str(e.value)
    assert "limits.login_timeout_seconds (2)" in str(e.value)


def test_postgresql_backend_needs_a_dsn() -> None:
    with pytest.raises(SettingsError) as e:
        parse_toml('[storage]\nbackend = "postgresql"\n')
    assert "storage.dsn" in str(e.value)


def test_listen_addresses_are_checked_in_every_section() -> None:
    for section in ("network", "admin_web"):
        msg = error_for(f'[{section}]\nlisten = ["[::1]"]\n')
        assert f"{section}.listen = ['[::1]'] is not valid: expected" in msg
        assert "without brackets or spaces: '[::1]'" in msg


# -- one declaration: the docs and set_toml_value -------------------------------------------


def test_docs_settings_reference_matches_the_code() -> None:
    docs = Path(__file__).parents[1] / "docs" / "settings.md"
    assert docs.read_text(encoding="utf-8") == render_settings_reference(), (
        "docs/settings.md is stale; regenerate it with the command in its first comment")
    for section, key in ALL_KEYS:
        assert f"| `{key}` |" in render_settings_reference().split(f"## [{section}]")[1]


def test_every_attribute_is_a_declared_setting() -> None:
    for section in dataclasses.fields(Settings):
        names = [f.name for f in dataclasses.fields(getattr(parse_settings({}), section.name))]
        assert names == [f.name for f in _SCHEMA[section.name]]


def test_set_toml_value_sets_only_its_section() -> None:
    text = set_toml_value(render_default_toml(), "admin_web", "port", 0)
    s = parse_toml(text)
    assert s.admin_web.port == 0 and s.network.port == DEFAULT_PORT
    assert text.count("port = 0") == 1


def test_set_toml_value_leaves_array_tables_alone() -> None:
    text = ('[access]\nmax_sessions_per_address = 5\n[[access.rules]]\naction = "allow"\n'
            'from = "*"\n')
    # "action" is a key of a rule, not of [access]: unknown, and the rule is untouched
    with pytest.raises(SettingsError, match="unknown setting access.action"):
        set_toml_value(text, "access", "action", "deny")
    out = set_toml_value(text, "access", "throttle_after_failures", 4)
    s = parse_toml(out)
    assert s.access.throttle_after_failures == 4 and s.access.max_sessions_per_address == 5
    assert [r.action for r in s.access.rules] == ["allow"]


def test_set_toml_value_reads_headers_with_comments_and_spaces() -> None:
    text = "[ network ]  # the server\nport = 1\n[admin_web] # web\nport = 2\n"
    s = parse_toml(set_toml_value(text, "network", "port", 3))
    assert (s.network.port, s.admin_web.port) == (3, 2)


def test_set_toml_value_replaces_a_value_written_on_several_lines() -> None:
    text = ('[network]\nlisten = [\n  "127.0.0.1",\n  "::1",\n]\nport = 1\n'
            '[admin_web]\nlisten = [\n  "127.0.0.1",\n]\n')
    out = set_toml_value(text, "network", "listen", ["0.0.0.0"])
    s = parse_toml(out)
    assert s.network.listen == ("0.0.0.0",) and s.network.port == 1
    assert s.admin_web.listen == ("127.0.0.1",)
    out = set_toml_value(text, "admin_web", "session_minutes", 5)  # added after the array
    assert parse_toml(out).admin_web.session_minutes == 5
