"""The index maths of the tensor-core attention kernels, checked on the CPU: builds
tests/attention_tc_layout_emu.cpp against csrc/attention/tc_layout.h (the header the kernels
include) and runs it. The program models ldmatrix (.x4, .trans) and mma.sync m16n8k16 from the
PTX ISA's fragment tables and checks, for every tile the launchers instantiate, in both memory
layouts and with padded head dims: the copy map (each element once, zero fill, nothing written
outside the matrix), Q K^T and P V products through the kernels' own lane offsets and
accumulator maps, the staged output round trip, and zero bank conflicts for ldmatrix and the
cp.async writes. It does not run the CUDA code."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_index_maths_through_a_model_of_ldmatrix_and_mma(tmp_path):
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++, clang++)")
    exe = tmp_path / "emu"
    # -O0: the program is template-heavy and quick to run; optimising it costs more than it saves.
    subprocess.run([cxx, "-std=c++20", "-O0", "-I", str(ROOT / "csrc"),
                    str(ROOT / "tests" / "attention_tc_layout_emu.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "all index checks passed" in run.stdout
    assert "ldmatrix bank conflicts: 0, cp.async write phases with conflicts: 0" in run.stdout
