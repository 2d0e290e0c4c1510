// The example programs take no arguments. Without this they would ignore any they were given,
// so that `--help` would run the program instead of saying what it does.
#pragma once

#include <cstdio>
#include <cstring>

namespace tools {

/// -1 when there is no argument (run the program); otherwise prints the usage and returns the
/// exit status: 0 for -h or --help (usage on stdout), 2 for anything else (on stderr, naming it).
inline int check_no_arguments(int argc, char** argv, const char* about) {
  if (argc <= 1) return -1;
  const bool help = std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0;
  if (!help)
    std::fprintf(stderr, "%s: unexpected argument '%s'; it takes none\n", argv[0], argv[1]);
  std::fprintf(help ? stdout : stderr,
               "usage: %s\n%s\n"
               "Environment: SIMDATTN_ISA=NAME forces an instruction set (avx512, avx2, sse2,\n"
               "neon or naive: one this CPU can run); OMP_NUM_THREADS sets the threads.\n",
               argv[0], about);
  return help ? 0 : 2;
}

}  // namespace tools
