"""Every test of this folder runs on both protocol cores: the pure-Python reference
(core.py) and its compiled twin (_core.pyx), where pip built it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from casemate.protocol import core

IMPLEMENTATIONS = {"pure": core.PureProtocolConnection}
if core.PROTOCOL_CORE == "compiled":
    IMPLEMENTATIONS["compiled"] = core.ProtocolConnection


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS), autouse=True)
def protocol_core(request: pytest.FixtureRequest) -> Iterator[str]:
    """Point the test module's ``ProtocolConnection`` at one implementation (module scope:
    hypothesis tests take it too)."""
    module = request.module
    old = getattr(module, "ProtocolConnection", None)
    if old is not None:
        module.ProtocolConnection = IMPLEMENTATIONS[request.param]
    yield request.param
    if old is not None:
        module.ProtocolConnection = old
