"""deploy/ai-node.service: systemd accepts every line, and the sandbox is the documented one.

``systemd-analyze verify`` (Debian package ``systemd``) exits 0 even on unknown keys
or bad values and prints them instead, so any output fails the test.  The unit's
ExecStart names the installed path (/opt/ai-node); the copy verified here points
it at this checkout's console script, which verify requires to exist.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "ai-node.service"
INSTALLED_SCRIPT = "/opt/ai-node/.venv/bin/ai-node"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian: systemd) missing"
)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    unit = directory / "ai-node.service"
    script = str(Path(sys.executable).parent / "ai-node")
    unit.write_text(text.replace(INSTALLED_SCRIPT, script), encoding="utf-8")
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_systemd_accepts_every_line_of_the_unit(tmp_path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_SCRIPT in text
    result = verify(text, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_verify_would_catch_a_mistyped_directive(tmp_path) -> None:
    text = UNIT.read_text(encoding="utf-8").replace("ProtectHome=yes", "ProtectHom=yes")
    result = verify(text, tmp_path)
    assert "Unknown key" in result.stdout + result.stderr


def test_the_unit_runs_sandboxed_as_its_own_user() -> None:
    unit = directives(UNIT.read_text(encoding="utf-8"))
    expected = {
        "User": "ainode",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "UMask": "0077",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "",
        "ReadWritePaths": "/var/lib/ai-node",
        "StateDirectory": "ai-node",
        "RestrictSUIDSGID": "yes",
    }
    assert {key: unit.get(key, [None])[-1] for key in expected} == expected
    assert unit["ExecStart"] == [f"{INSTALLED_SCRIPT} serve"]
    environment = dict(value.split("=", 1) for value in unit["Environment"])
    assert environment["AINODE_CONFIG"] == "/etc/ai-node/ae_config.yaml"
    assert environment["AINODE_DATA_DIR"] == unit["ReadWritePaths"][0]
    assert "2" in unit["RestartPreventExitStatus"]  # a configuration error does not loop
