# Ask the build's Python where torch is. find_package(Torch) is avoided on purpose: its config
# fails on these hosts with a CUDA torch (nvcc wrapper script, nvrtc only in pip wheels, and an
# nvcc C++20 flag CMake 3.25 does not know). The probe writes a CMake snippet we include.
set(_fg_snippet "${CMAKE_BINARY_DIR}/torch_probe.cmake")
set(_fg_probe [=[
import sys
try:
    import torch, torch.utils.cpp_extension as ext
except Exception as e:
    sys.exit("could not import torch: %r" % (e,))
def q(v):
    return '"' + str(v).replace('\\', '/') + '"'
with open(sys.argv[1], "w") as f:
    f.write("set(TORCH_INCLUDE_DIRS %s)\n" % q(";".join(ext.include_paths())))
    f.write("set(TORCH_LIBRARY_DIRS %s)\n" % q(";".join(ext.library_paths())))
    f.write("set(TORCH_CXX11_ABI %d)\n" % int(torch._C._GLIBCXX_USE_CXX11_ABI))
    f.write("set(TORCH_VERSION %s)\n" % q(torch.__version__))
    f.write("set(TORCH_CUDA_VERSION %s)\n" % q(torch.version.cuda or ""))
]=])
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "${_fg_probe}" "${_fg_snippet}"
  ERROR_VARIABLE _fg_err RESULT_VARIABLE _fg_rc)
if(NOT _fg_rc EQUAL 0)
  message(FATAL_ERROR
    "fastguide needs PyTorch installed at build time, and ${Python_EXECUTABLE} "
    "cannot import it (${_fg_err}).\n"
    "Install torch first, then build without build isolation:\n"
    "    pip install torch==2.13.0          # CPU build (or torch==2.14.1 for CUDA 13.0)\n"
    "    pip install scikit-build-core ninja\n"
    "    pip install --no-build-isolation .")
endif()
include("${_fg_snippet}")

function(_fg_find_torch_lib out name)
  find_library(_fg_lib_${name} NAMES ${name} PATHS ${TORCH_LIBRARY_DIRS} NO_DEFAULT_PATH)
  if(NOT _fg_lib_${name})
    message(FATAL_ERROR "fastguide: lib${name} not found in torch's library paths ${TORCH_LIBRARY_DIRS}")
  endif()
  set(${out} "${_fg_lib_${name}}" PARENT_SCOPE)
endfunction()
_fg_find_torch_lib(_c10 c10)
_fg_find_torch_lib(_torch torch)
_fg_find_torch_lib(_torch_cpu torch_cpu)
set(TORCH_CPU_LIBS ${_c10} ${_torch} ${_torch_cpu})

message(STATUS "fastguide: torch ${TORCH_VERSION} (CUDA '${TORCH_CUDA_VERSION}'), C++11 ABI ${TORCH_CXX11_ABI}")

# at::parallel_for is header-inline OpenMP: without -fopenmp it silently runs serially. Compile
# with -fopenmp, but link the libgomp torch ships (never a second OpenMP runtime).
find_library(TORCH_GOMP NAMES libgomp.so.1 gomp PATHS ${TORCH_LIBRARY_DIRS} NO_DEFAULT_PATH)
if(TORCH_GOMP)
  message(STATUS "fastguide: at::parallel_for via torch's OpenMP (${TORCH_GOMP})")
else()
  message(STATUS "fastguide: torch ships no libgomp; at::parallel_for in the CPU kernels runs serially")
endif()
