# Included by the top-level CMakeLists.txt before any target is defined when SIMDATTN_BUILD_FUZZ
# is ON. Every target of that build, the library included, gets libFuzzer's coverage
# instrumentation and ASan + UBSan: the fuzzer is then steered by the library's branches, not
# only by the harness's, and any memory or UB error in the library stops it.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "SIMDATTN_BUILD_FUZZ needs clang with libFuzzer, e.g. "
                      "-DCMAKE_CXX_COMPILER=clang++-14 (Debian: apt-get install clang-14 "
                      "libclang-rt-14-dev libomp-14-dev)")
endif()
add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
                    -fno-omit-frame-pointer -g)
add_link_options(-fsanitize=address,undefined)
