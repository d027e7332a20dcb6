"""tools/gpu_verify.sh's bookkeeping, with stub commands in place of python and
compute-sanitizer (no GPU needed): every stage's status counts, `all` fails when any stage
fails, a failed build fails every stage after it, and the build is never skipped."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_verify.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")

# A python stand-in: records each call, fails where the test asks it to.
STUB_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$*" in
  *"pip install"*) exit ${STUB_BUILD_RC:-0} ;;
  *"get_device_name"*) echo h200 ;;
  *"-m pytest"*) exit ${STUB_TEST_RC:-0} ;;
  *"bench_adagn"*|*"bench_attention"*) exit ${STUB_BENCH_RC:-0} ;;
esac
exit 0
"""
STUB_SANITIZER = """#!/usr/bin/env bash
echo "compute-sanitizer $*" >> "$STUB_LOG"
[ "$2" = "${STUB_FAILING_TOOL:-none}" ] && { echo "ERROR SUMMARY: 1 error"; exit 7; }
echo "ERROR SUMMARY: 0 errors"
exit 0
"""


def run(tmp_path, *stages, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", STUB_PYTHON), ("compute-sanitizer", STUB_SANITIZER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "PYTHON": str(bin_dir / "python"), "OUT": str(tmp_path / "out"),
                "STUB_LOG": str(log), "TOTAL_S": "120", **env}
    r = subprocess.run(["bash", str(SCRIPT), *stages], env=full_env, capture_output=True,
                       text=True, timeout=900)  # a hang guard
    summary = r.stdout[r.stdout.index("== summary"):] if "== summary" in r.stdout else ""
    status = {line.split()[0]: line.split()[1] for line in summary.splitlines()[1:]}
    return r.returncode, status, log.read_text(), r.stdout + r.stderr


def test_every_stage_passing_exits_0_and_the_build_always_runs(tmp_path):
    code, status, calls, out = run(tmp_path, "all")
    assert code == 0, out
    assert status == {s: "ok" for s in ("build", "test", "sanitize", "bench", "models")}, out
    assert "pip install" in calls
    for tool in ("memcheck", "racecheck", "initcheck", "synccheck"):
        assert f"--tool {tool}" in calls


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "initcheck", "synccheck"])
def test_any_sanitizer_tool_failing_fails_the_run(tmp_path, tool):
    code, status, _, out = run(tmp_path, "sanitize", STUB_FAILING_TOOL=tool)
    assert code == 1 and status["sanitize"] == "FAIL", out


def test_an_early_failure_is_not_hidden_by_later_stages(tmp_path):
    code, status, _, out = run(tmp_path, "all", STUB_TEST_RC="1")
    assert code == 1, out
    assert status["test"] == "FAIL" and status["models"] == "ok", out


def test_a_failed_build_fails_every_stage(tmp_path):
    code, status, calls, out = run(tmp_path, "test", "bench", STUB_BUILD_RC="1")
    assert code == 1, out
    assert status == {"build": "FAIL", "test": "FAIL", "bench": "FAIL"}, out
    assert "-m pytest" not in calls


def test_unknown_stage_is_a_usage_error(tmp_path):
    code, _, calls, out = run(tmp_path, "everything")
    assert code == 2 and "usage" in out and calls == ""
