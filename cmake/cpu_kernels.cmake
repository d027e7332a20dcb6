# The CPU kernel files hold no ATen, so each can be compiled twice: a baseline build and, on
# x86-64, an AVX2 + FMA + F16C build chosen at run time. -fno-trapping-math lets GCC vectorize
# the branch-free exp (its clamps are otherwise treated as control flow).
set(FASTGUIDE_CPU_KERNEL_SOURCES csrc/adagn/adagn_cpu_kernel.cpp)
set(_fg_kernel_flags -O3 -fno-trapping-math -fno-math-errno)

add_library(fastguide_cpu_kernels_base OBJECT ${FASTGUIDE_CPU_KERNEL_SOURCES})
target_compile_definitions(fastguide_cpu_kernels_base PRIVATE FG_ISA=base)
target_compile_options(fastguide_cpu_kernels_base PRIVATE ${_fg_kernel_flags})
target_include_directories(fastguide_cpu_kernels_base PRIVATE csrc)
set(_fg_kernel_objects $<TARGET_OBJECTS:fastguide_cpu_kernels_base>)

set(FASTGUIDE_CPU_AVX2 OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(FASTGUIDE_CPU_AVX2 ON)
  add_library(fastguide_cpu_kernels_avx2 OBJECT ${FASTGUIDE_CPU_KERNEL_SOURCES})
  target_compile_definitions(fastguide_cpu_kernels_avx2 PRIVATE FG_ISA=avx2)
  target_compile_options(fastguide_cpu_kernels_avx2 PRIVATE ${_fg_kernel_flags} -mavx2 -mfma -mf16c)
  target_include_directories(fastguide_cpu_kernels_avx2 PRIVATE csrc)
  list(APPEND _fg_kernel_objects $<TARGET_OBJECTS:fastguide_cpu_kernels_avx2>)
endif()

add_library(fastguide_cpu_kernels INTERFACE)
target_sources(fastguide_cpu_kernels INTERFACE ${_fg_kernel_objects})
if(FASTGUIDE_CPU_AVX2)
  message(STATUS "fastguide: CPU kernels also built for AVX2 + FMA + F16C (chosen at run time)")
endif()
