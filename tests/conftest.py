"""Shared fixtures. Reference vectors from openai/guided-diffusion ship in tests/reference
(PROVENANCE.md there); FASTGUIDE_REFERENCE=DIR points the tests at another copy. A missing
folder is a failure, not a skip: on a machine without a GPU only CUDA tests may skip, and the
session fails if any other test skips (FASTGUIDE_ALLOW_SKIPS=1 lifts that, for local runs)."""
import json
import os
import pathlib

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def reference_path():
    return pathlib.Path(os.environ.get("FASTGUIDE_REFERENCE", ROOT / "tests" / "reference"))


@pytest.fixture(scope="session")
def reference_dir():
    path = reference_path()
    if not (path / "README.txt").exists():
        pytest.fail(f"reference vectors not found at {path}: they ship in tests/reference; "
                    "FASTGUIDE_REFERENCE overrides the folder")
    return path


# One intra-op thread by default: on a loaded 2-core machine OpenMP's spinning threads make torch
# tens of times slower (measured 70x), while the results do not depend on the thread count.
# test_cpu_threads.py runs the multi-threaded CPU kernels. FASTGUIDE_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("FASTGUIDE_TEST_THREADS", "1")))

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def cuda_kernels_built():
    import fastguide
    return fastguide.build_info()["cuda"]


HEAD_KEYS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")


def load_reference_model(reference_dir, name, config_json):
    """A reference checkpoint with the head settings its JSON config records (heads change no
    tensor shape, so they cannot be inferred from the state dict)."""
    import fastguide
    config = json.loads(config_json)
    overrides = {k: config[k] for k in HEAD_KEYS if k in config}
    return fastguide.load_checkpoint(reference_dir / name, **overrides).eval()


@pytest.fixture(scope="module")
def ref(reference_dir):
    """diffusion.npz as a dict."""
    return dict(np.load(reference_dir / "diffusion.npz"))


# ---- only CUDA tests may skip --------------------------------------------------------------

_NON_CUDA_SKIPS = []


def _is_cuda_skip(reason):
    return "cuda" in reason.lower()


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not _is_cuda_skip(reason):
            _NON_CUDA_SKIPS.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if _NON_CUDA_SKIPS and not os.environ.get("FASTGUIDE_ALLOW_SKIPS") and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _NON_CUDA_SKIPS and not os.environ.get("FASTGUIDE_ALLOW_SKIPS"):
        terminalreporter.section("skipped tests that do not need CUDA (this fails the run)")
        for nodeid, reason in _NON_CUDA_SKIPS:
            terminalreporter.line(f"{nodeid}: {reason}")
