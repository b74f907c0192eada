"""kafkajs getting-started tutorial (tests/js/tutorial.js) against Strata."""

import json
import shutil
import subprocess

import pytest

import kwire
from conftest import REPO_ROOT

TUTORIAL = REPO_ROOT / "tests" / "js" / "tutorial.js"


def test_kafkajs_tutorial(broker):
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (REPO_ROOT / "tests" / "js" / "node_modules" / "kafkajs").is_dir(), \
        "kafkajs not installed: run scripts/test.sh (npm ci in tests/js)"
    try:
        proc = subprocess.run(
            [node, str(TUTORIAL), broker.bootstrap],
            cwd=str(TUTORIAL.parent), capture_output=True, text=True, timeout=150,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tutorial.js hung\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, out
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(lines) == 1, out
    result = json.loads(lines[0][len("RESULT "):])

    # Independent check of the LegacyPartitioner's choice (kafkajs' own, non-Java murmur2).
    expected = kwire.kafkajs_legacy_partition(b"user-1", 3)
    assert result["partitions"] == 3
    assert result["expected_partition"] == expected
    assert result["produced_partition"] == expected
    rec = result["received"]
    assert rec["topic"] == "user-events"
    assert rec["partition"] == expected
    assert rec["offset"] == "0"
    assert rec["key"] == "user-1"
    assert json.loads(rec["value"]) == {"event": "signup", "userId": "user-1"}
