#ifndef NATIVE_BASELINES_H
#define NATIVE_BASELINES_H
#include <stdint.h>
#include <stddef.h>
/// Sums `count` 8-byte words from `base` with a plain loop (the memcpy-class baseline).
uint64_t nb_sum_words(const uint64_t *base, size_t count);
#endif
