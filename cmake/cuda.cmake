# Decide whether the CUDA kernels are built (FASTGUIDE_WITH_CUDA) and set the language up.
set(FASTGUIDE_WITH_CUDA OFF)
set(FASTGUIDE_ARCHS_STRING "")
set(_fg_why "")

# nvcc: CUDACXX, then CUDA_HOME, then the standard prefix. torch's own CUDA_HOME guess is not
# trusted here, and the nvcc on PATH may be a wrapper script.
set(_fg_nvcc "")
foreach(_cand "$ENV{CUDACXX}" "$ENV{CUDA_HOME}/bin/nvcc" "$ENV{CUDA_PATH}/bin/nvcc" "/usr/local/cuda/bin/nvcc")
  if(_cand AND EXISTS "${_cand}" AND NOT IS_DIRECTORY "${_cand}")
    set(_fg_nvcc "${_cand}")
    break()
  endif()
endforeach()

if(FASTGUIDE_CUDA STREQUAL "OFF")
  set(_fg_why "FASTGUIDE_CUDA=OFF")
elseif(TORCH_CUDA_VERSION STREQUAL "")
  set(_fg_why "torch ${TORCH_VERSION} is a CPU-only build")
elseif(NOT _fg_nvcc)
  set(_fg_why "nvcc not found (looked at CUDACXX, CUDA_HOME, CUDA_PATH, /usr/local/cuda/bin)")
else()
  set(FASTGUIDE_WITH_CUDA ON)
endif()

if(NOT FASTGUIDE_WITH_CUDA)
  if(FASTGUIDE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FASTGUIDE_CUDA=ON but the CUDA kernels cannot be built: ${_fg_why}. "
                        "Install a CUDA build of torch and the CUDA toolkit, or use FASTGUIDE_CUDA=AUTO/OFF.")
  endif()
  message(STATUS "fastguide: CUDA kernels OFF (${_fg_why}); building the CPU kernels only")
  return()
endif()

# Architectures: CMAKE_CUDA_ARCHITECTURES or CUDAARCHS, else TORCH_CUDA_ARCH_LIST, else a default.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
    string(REPLACE " " ";" _tal "$ENV{TORCH_CUDA_ARCH_LIST}")
    set(_archs "")
    foreach(_a ${_tal})
      string(REGEX MATCH "^([0-9]+)\\.([0-9]+)([a-z]?)(\\+PTX)?$" _m "${_a}")
      if(NOT _m)
        message(FATAL_ERROR "fastguide: cannot read TORCH_CUDA_ARCH_LIST entry '${_a}'")
      endif()
      set(_num "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
      list(APPEND _archs "${_num}-real")
      if(CMAKE_MATCH_4)
        list(APPEND _archs "${_num}-virtual")
      endif()
    endforeach()
    set(CMAKE_CUDA_ARCHITECTURES "${_archs}")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
  endif()
endif()

set(CMAKE_CUDA_COMPILER "${_fg_nvcc}")
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
# CMake < 3.26 does not know nvcc's C++20 flag.
set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")

_fg_find_torch_lib(_c10_cuda c10_cuda)
_fg_find_torch_lib(_torch_cuda torch_cuda)
set(TORCH_CUDA_LIBS ${_c10_cuda} ${_torch_cuda})
string(REPLACE ";" " " FASTGUIDE_ARCHS_STRING "${CMAKE_CUDA_ARCHITECTURES}")
message(STATUS "fastguide: CUDA kernels ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION} at ${_fg_nvcc}, "
               "torch CUDA ${TORCH_CUDA_VERSION}, architectures ${FASTGUIDE_ARCHS_STRING})")
