# Finds the torch of the Python that builds Kiln and defines the imported target Kiln::torch.
#
# Torch's own CMake config (find_package(Torch)) is not used: its Caffe2 CUDA setup sets
# CMAKE_CUDA_ARCHITECTURES to OFF, appends its arch flags to CMAKE_CUDA_FLAGS, calls the removed
# FindCUDA module and runs its own cuDNN lookup, all of which fight Kiln's CUDA/cuDNN setup
# (cmake/FindKilnCudnn.cmake). The runtime needs only headers and five libraries, so they are
# taken straight from the torch Python package.
#
# Sets KilnTorch_FOUND, KILN_TORCH_DIR (the package), KILN_TORCH_LIBRARY_DIR, KILN_TORCH_VERSION,
# KILN_TORCH_CXX11_ABI (0/1), KILN_TORCH_CUDA (whether torch is a CUDA build).
if(Python3_EXECUTABLE)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
            "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(int(torch.compiled_with_cxx11_abi())); print(int(torch.version.cuda is not None))"
    OUTPUT_VARIABLE _kiln_torch_out OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
    RESULT_VARIABLE _kiln_torch_rc)
endif()
if(_kiln_torch_rc EQUAL 0 AND _kiln_torch_out)
  string(REPLACE "\n" ";" _kiln_torch_out "${_kiln_torch_out}")
  list(GET _kiln_torch_out 0 KILN_TORCH_DIR)
  list(GET _kiln_torch_out 1 KILN_TORCH_VERSION)
  list(GET _kiln_torch_out 2 KILN_TORCH_CXX11_ABI)
  list(GET _kiln_torch_out 3 KILN_TORCH_CUDA)
  set(KILN_TORCH_LIBRARY_DIR "${KILN_TORCH_DIR}/lib")
  set(_kiln_torch_libs torch torch_cpu c10)
  if(KILN_TORCH_CUDA)
    list(APPEND _kiln_torch_libs torch_cuda c10_cuda)
  endif()
  set(KILN_TORCH_LIBRARIES "")
  foreach(lib ${_kiln_torch_libs})
    find_library(KILN_TORCH_${lib}_LIBRARY NAMES ${lib} PATHS "${KILN_TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH)
    list(APPEND KILN_TORCH_LIBRARIES "${KILN_TORCH_${lib}_LIBRARY}")
    list(APPEND _kiln_torch_required KILN_TORCH_${lib}_LIBRARY)
  endforeach()
  find_path(KILN_TORCH_INCLUDE_DIR torch/custom_class.h PATHS "${KILN_TORCH_DIR}/include" NO_DEFAULT_PATH)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(KilnTorch
  REQUIRED_VARS KILN_TORCH_DIR KILN_TORCH_INCLUDE_DIR ${_kiln_torch_required}
  VERSION_VAR KILN_TORCH_VERSION)

if(KilnTorch_FOUND AND NOT TARGET Kiln::torch)
  add_library(Kiln::torch INTERFACE IMPORTED)
  set_target_properties(Kiln::torch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES
      "${KILN_TORCH_INCLUDE_DIR};${KILN_TORCH_INCLUDE_DIR}/torch/csrc/api/include"
    INTERFACE_LINK_LIBRARIES "${KILN_TORCH_LIBRARIES}"
    INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${KILN_TORCH_CXX11_ABI}")
endif()
