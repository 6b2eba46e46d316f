# Kiln's CMake package (find_package(Kiln) in LibTorch apps; template cmake/KilnConfig.cmake.in),
# generated twice, for the two places the libraries live:
#   build/cmake-package/python/   -> kiln/share/cmake/Kiln/ in the Python package (setup.py copies
#                                    it next to kiln/libkiln_*.so; kiln.cmake_prefix_path)
#   build/cmake-package/install/  -> <prefix>/<libdir>/cmake/Kiln/ by `cmake --install`
# plus KilnConfigVersion.cmake (0.x: the same minor version is compatible).
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)

set(_kiln_pkg "${PROJECT_BINARY_DIR}/cmake-package")
write_basic_package_version_file("${_kiln_pkg}/KilnConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)

set(KILN_CONFIG_TO_LIBDIR "../../..")  # kiln/share/cmake/Kiln -> kiln
set(KILN_CONFIG_TO_INCLUDEDIR "../../../include")  # kiln/include (setup.py copies the headers)
configure_file("${PROJECT_SOURCE_DIR}/cmake/KilnConfig.cmake.in"
  "${_kiln_pkg}/python/KilnConfig.cmake" @ONLY)
configure_file("${_kiln_pkg}/KilnConfigVersion.cmake"
  "${_kiln_pkg}/python/KilnConfigVersion.cmake" COPYONLY)

set(_kiln_cmake_dir "${CMAKE_INSTALL_LIBDIR}/cmake/Kiln")
file(RELATIVE_PATH KILN_CONFIG_TO_LIBDIR "/root/${_kiln_cmake_dir}" "/root/${CMAKE_INSTALL_LIBDIR}")
file(RELATIVE_PATH KILN_CONFIG_TO_INCLUDEDIR "/root/${_kiln_cmake_dir}" "/root/${CMAKE_INSTALL_INCLUDEDIR}/kiln")
configure_file("${PROJECT_SOURCE_DIR}/cmake/KilnConfig.cmake.in"
  "${_kiln_pkg}/install/KilnConfig.cmake" @ONLY)

install(TARGETS kiln_core kiln_compiler kiln_runtime kiln_torchscript LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
# The TorchScript C++ API: torchscript/compile.h (it includes torch headers and
# driver/compile_options.h, which includes only standard headers).
install(FILES "${PROJECT_SOURCE_DIR}/torchscript/compile.h"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/kiln/torchscript")
install(FILES "${PROJECT_SOURCE_DIR}/driver/compile_options.h"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/kiln/driver")
# The plugin API (core/plugin.h and the three IR headers it includes), for plugin libraries.
foreach(_kiln_header core/plugin.h ir/attributes.h ir/dims.h ir/dtype.h)
  get_filename_component(_kiln_header_dir "${_kiln_header}" DIRECTORY)
  install(FILES "${PROJECT_SOURCE_DIR}/${_kiln_header}"
    DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/kiln/${_kiln_header_dir}")
endforeach()
install(FILES "${_kiln_pkg}/install/KilnConfig.cmake" "${_kiln_pkg}/KilnConfigVersion.cmake"
  DESTINATION "${_kiln_cmake_dir}")
