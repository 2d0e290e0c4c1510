# Cross build for AArch64 Linux with Debian's cross compiler, tests run under qemu-user:
#   apt-get install g++-aarch64-linux-gnu qemu-user
#   cmake -S . -B build/aarch64 --toolchain cmake/toolchain-aarch64-linux-gnu.cmake \
#     -DSIMDATTN_BUILD_BENCH=OFF -DSIMDATTN_BUILD_TOOLS=OFF
#   cmake --build build/aarch64 && ctest --test-dir build/aarch64
# The target's C and C++ libraries (glibc, libstdc++, libgomp) come from the cross packages
# under /usr/aarch64-linux-gnu. xsimd, Catch2 and nlohmann-json are header-only, so the host's
# Debian packages serve: their headers are searched after the target's own (-idirafter), and
# their CMake package files are found on the host.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(SIMDATTN_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${SIMDATTN_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${SIMDATTN_CROSS_TRIPLE}-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${SIMDATTN_CROSS_TRIPLE})

# Host headers last: the target's glibc and libstdc++ headers always win over the host's, and
# since /usr/include is then one of the compiler's own search directories, CMake never passes
# it again as -isystem (which would put it first).
set(CMAKE_CXX_FLAGS_INIT "-idirafter /usr/include")

set(CMAKE_FIND_ROOT_PATH /usr/${SIMDATTN_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# Packages: the target's first, then the host's header-only ones (Catch2 in /usr/lib/cmake,
# nlohmann-json in /usr/share/cmake, xsimd under the host's multiarch directory).
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
list(APPEND CMAKE_PREFIX_PATH /usr/lib/${CMAKE_HOST_SYSTEM_PROCESSOR}-linux-gnu/cmake)
