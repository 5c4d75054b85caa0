# Training curves (src/io/curves.cpp) draw with PLplot's C library through its pngcairo device
# (Debian: libplplot-dev for the headers and library, plplot-driver-cairo for the device). It is
# optional: without it dptrain builds and trains as before, and plotting says once why it is
# skipped. The unit tests decode the PNGs with libpng (libpng-dev) where it is found.
#
# Included from the top CMakeLists.txt before the targets exist, so the links are made by a call
# deferred to the end of that file.
option(DPTRAIN_PLOT "Draw training curves with PLplot where it is found (OFF: never, as without it)" ON)
set(PLPLOT_FOUND FALSE)
if(DPTRAIN_PLOT)
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(PLPLOT QUIET IMPORTED_TARGET plplot)
  endif()
endif()
if(PLPLOT_FOUND)
  message(STATUS "Plotting: PLplot ${PLPLOT_VERSION} (training curves are drawn)")
elseif(NOT DPTRAIN_PLOT)
  message(STATUS "Plotting: off (DPTRAIN_PLOT=OFF), training curves are skipped")
else()
  message(STATUS "Plotting: PLplot not found, training curves are skipped "
                 "(apt-get install libplplot-dev plplot-driver-cairo)")
endif()
find_package(PNG QUIET)

function(_dptrain_link_plotting)
  if(PLPLOT_FOUND AND TARGET dptrain_io)
    # Private: PLplot's include folder holds generic names (drivers.h, pdf.h, qt.h); only
    # src/io/curves.cpp includes plplot.h, and the rest asks plot_unavailable_reason().
    target_link_libraries(dptrain_io PRIVATE PkgConfig::PLPLOT)
    target_compile_definitions(dptrain_io PRIVATE DPTRAIN_HAVE_PLOT=1)
  endif()
  if(PNG_FOUND AND TARGET dptrain_unit_tests)
    target_link_libraries(dptrain_unit_tests PRIVATE PNG::PNG)
    target_compile_definitions(dptrain_unit_tests PRIVATE DPTRAIN_HAVE_PNG=1)
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _dptrain_link_plotting)
