"""The multi-host tier's machine check: without what it needs it fails and says what."""

from __future__ import annotations

import pytest

from tests.hosts import netlab


def test_a_non_root_user_is_told_what_the_tier_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    with pytest.raises(netlab.LabUnavailable, match=r"need root, iproute2 .* missing: root"):
        netlab.check_machine()


def test_a_missing_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netlab.shutil, "which", lambda tool: None if tool == "nginx" else "/x")
    with pytest.raises(netlab.LabUnavailable, match=r"missing: nginx\. `.ci/run` installs"):
        netlab.check_machine()
