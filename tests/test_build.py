"""The build's promises: build facts reported at run time, and clear configure-time errors."""
import pathlib
import shutil
import subprocess
import sys
import venv

import pytest
import torch

import fastguide

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")


def configure(tmp_path, python, *defines):
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython_EXECUTABLE={python}",
           *[f"-D{d}" for d in defines]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # a hang guard
    r.stderr = " ".join(r.stderr.split())  # CMake wraps long messages
    return r


def test_build_info():
    info = fastguide.build_info()
    assert info["torch_version"] == torch.__version__  # built against the torch that runs it
    assert info["cuda"] == (len(info["cuda_archs"]) > 0)
    if torch.version.cuda is None:
        assert info["cuda"] is False


@needs_cmake
@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the CPU-torch case")
def test_cuda_on_with_cpu_torch_is_a_clear_error(tmp_path):
    r = configure(tmp_path, sys.executable, "FASTGUIDE_CUDA=ON")
    assert r.returncode != 0
    assert "FASTGUIDE_CUDA=ON but the CUDA kernels cannot be built" in r.stderr
    assert "is a CPU-only build" in r.stderr


@needs_cmake
def test_bad_option_value(tmp_path):
    r = configure(tmp_path, sys.executable, "FASTGUIDE_CUDA=MAYBE")
    assert r.returncode != 0 and "FASTGUIDE_CUDA must be AUTO, ON or OFF" in r.stderr


@needs_cmake
def test_building_without_torch_says_what_to_run(tmp_path):
    env_dir = tmp_path / "empty-venv"
    venv.create(env_dir, with_pip=False)
    r = configure(tmp_path, env_dir / "bin" / "python")
    assert r.returncode != 0
    assert "fastguide needs PyTorch installed at build time" in r.stderr
    assert "pip install --no-build-isolation ." in r.stderr
