"""kafkajs admin calls, group flow, idempotent producer and codecs (tests/js/semantics.js)."""

import json
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "js" / "semantics.js"


def test_kafkajs_admin_group_idempotence_codecs(broker):
    node = shutil.which("node")
    assert node, "node is not installed"
    try:
        proc = subprocess.run([node, str(SCRIPT), broker.bootstrap], cwd=str(SCRIPT.parent),
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"semantics.js hung\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, out
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(lines) == 1, out
    r = json.loads(lines[0][len("RESULT "):])
    assert r["partitions"] == 4
    assert r["shrink"] == "INVALID_PARTITIONS"
    assert r["retention"] == "3600000"
    assert r["badConfig"] == "INVALID_CONFIG"
    assert r["brokers"] == 1
    assert r["consumed"] == 31
    assert r["values"] == sorted(f"v{i}" for i in range(30))
    assert r["nulls"] == 1
    assert r["headersOk"] is True
    assert r["committed"] == 31
    assert r["reconsumed"] == 31
    assert r["listed"] is True
    assert r["groupState"] == "Empty"
    assert r["low0"] == "2"
    assert r["afterDelete"] is False
    assert r["deleteAgain"] == "GROUP_ID_NOT_FOUND", r
