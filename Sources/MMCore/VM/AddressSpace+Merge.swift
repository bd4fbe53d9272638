import MMSync

extension AddressSpace {
    /// Whether `prev` and the VMA right after it may become one (`is_mergeable_vma`,
    /// `is_mergeable_anon_vma`, Linux 7.2 mm/vma.c): adjacent, the same flags and backing,
    /// contiguous page offsets, and anon_vmas that can be shared — the same one, or one side
    /// without an anon_vma while the other side's chain holds only its own (a VMA of a forked
    /// child, linked to its parents' anon_vmas too, never adopts or lends one). Device-file
    /// mappings (driver pages) never merge.
    /// Locking: mmap lock held.
    func canMerge(_ prev: VMA, _ next: VMA) -> Bool {
        mmapLock.assertLocked()
        guard prev.end == next.start, prev.flags == next.flags, prev.file === next.file,
              !prev.isSpecialMapping, !next.isSpecialMapping,
              // hugetlb VMAs are VM_DONTEXPAND (VM_SPECIAL): never merged.
              !prev.isHugetlb, !next.isHugetlb,
              prev.pgoff &+ ((prev.end - prev.start) >> pageShift) == next.pgoff else { return false }
        switch (prev.anonVMA, next.anonVMA) {
        case (nil, nil): return true
        case (nil, .some): return next.anonVMAChain.count <= 1
        case (.some, nil): return prev.anonVMAChain.count <= 1
        case let (a?, b?): return a === b
        }
    }

    /// Merges every mergeable pair among the VMAs that touch [start, end], its neighbours
    /// included (`vma_merge_new_range` after mmap or mremap, `vma_modify_*` after mprotect and
    /// madvise). The earlier VMA grows and the later one goes; when only the later one had an
    /// anon_vma, the earlier joins its chain first, so every page's anon_vma and index still
    /// find it. Page tables are untouched.
    /// Locking: mmap lock held for write.
    /// `keepApart`: a VMA that must not merge here (the source a DONTUNMAP move keeps).
    func mergeVMAs(around start: UInt64, _ end: UInt64, keepApart: VMA? = nil) {
        mmapLock.assertWriteLocked()
        var i = max(vmaIndex(atOrAfter: start) - 1, 0)
        while i + 1 < vmaList.count && vmaList[i].start < end {
            let prev = vmaList[i], next = vmaList[i + 1]
            guard prev !== keepApart, next !== keepApart, canMerge(prev, next) else { i += 1; continue }
            vmaStartWrite(prev)
            if prev.anonVMA == nil && next.anonVMA != nil { anonVMAClone(dst: prev, src: next) }
            // vma_complete: `next` leaves i_mmap under the hold that grows `prev`.
            withVMAPrepared(prev) {
                prev.end = next.end
                next.file?.unlinkMappingLocked(next)
            }
            removeVMA(at: i + 1)
        }
    }
}
