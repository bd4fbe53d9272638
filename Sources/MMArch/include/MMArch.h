#ifndef MMARCH_H
#define MMARCH_H

#include <stdint.h>

/// Architecture helpers of the core mm (the kernel's arch/x86/lib copy_page and friends).
///
/// The bulk copies use non-temporal stores: the destination does not pass through the caches,
/// as with a device's DMA engine, and no destination line is read first. Each call ends with a
/// store fence, so its copies are complete (globally visible) when it returns. Page pointers
/// should be 16-byte aligned (others fall back to memcpy).

/// Copies 4 KiB pages: frame dst_pfns[i] <- frame src_pfns[i], frames at frame_base + pfn * 4096.
void mm_copy_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const uint64_t *src_pfns, long count);

/// Gathers frames src_pfns[i] into the contiguous buffer dst (page i at dst + i * 4096).
void mm_gather_frames_nocache(void *dst, const void *frame_base, const uint64_t *src_pfns, long count);

/// Scatters the contiguous buffer src (page i at src + i * 4096) into frames dst_pfns[i].
void mm_scatter_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const void *src, long count);

#endif
