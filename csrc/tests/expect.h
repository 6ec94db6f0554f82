// The checks the C++ tests share: EXPECT counts a failed condition and goes on, so one
// run reports every failure; finish() prints the verdict and gives main's exit status.
#pragma once

#include <cstdio>

namespace adaptir_test {

inline int failures = 0;

inline int finish(const char* suite) {
  if (failures) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", suite, failures);
    return 1;
  }
  std::printf("%s: all checks passed\n", suite);
  return 0;
}

}  // namespace adaptir_test

#define EXPECT(cond)                                                                \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++adaptir_test::failures;                                                     \
    }                                                                               \
  } while (0)
