#include "NativeBaselines.h"
uint64_t nb_sum_words(const uint64_t *base, size_t count) {
    uint64_t s = 0;
    for (size_t i = 0; i < count; i++) s += base[i];
    return s;
}
