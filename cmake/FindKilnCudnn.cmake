# Finds cuDNN 9 and defines the imported target Kiln::cudnn.
#
# Search order: $KILN_CUDNN_ROOT, the `nvidia-cudnn-cu13` wheel of the Python that builds Kiln
# (the same cuDNN torch loads, so one process never holds two cuDNN builds), the CUDA toolkit,
# then the system. The wheel ships only libcudnn.so.9, so the library is found by that name too.
set(_kiln_cudnn_hints "")
if(DEFINED ENV{KILN_CUDNN_ROOT})
  list(APPEND _kiln_cudnn_hints "$ENV{KILN_CUDNN_ROOT}")
endif()
if(Python3_EXECUTABLE)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
            "import nvidia.cudnn as m, os; print(list(m.__path__)[0])"
    OUTPUT_VARIABLE _kiln_cudnn_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_kiln_cudnn_wheel)
    list(APPEND _kiln_cudnn_hints "${_kiln_cudnn_wheel}")
  endif()
endif()
list(APPEND _kiln_cudnn_hints "${CUDAToolkit_LIBRARY_ROOT}" "${CUDAToolkit_TARGET_DIR}")

find_path(KILN_CUDNN_INCLUDE_DIR cudnn.h
  HINTS ${_kiln_cudnn_hints} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)
find_library(KILN_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR
  HINTS ${_kiln_cudnn_hints} ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(KilnCudnn REQUIRED_VARS KILN_CUDNN_LIBRARY KILN_CUDNN_INCLUDE_DIR)

if(KilnCudnn_FOUND AND NOT TARGET Kiln::cudnn)
  add_library(Kiln::cudnn SHARED IMPORTED)
  set_target_properties(Kiln::cudnn PROPERTIES
    IMPORTED_LOCATION "${KILN_CUDNN_LIBRARY}"
    IMPORTED_NO_SONAME FALSE
    INTERFACE_INCLUDE_DIRECTORIES "${KILN_CUDNN_INCLUDE_DIR}")
  get_filename_component(KILN_CUDNN_LIBRARY_DIR "${KILN_CUDNN_LIBRARY}" DIRECTORY)
  message(STATUS "cuDNN: ${KILN_CUDNN_LIBRARY} (headers ${KILN_CUDNN_INCLUDE_DIR})")
endif()
