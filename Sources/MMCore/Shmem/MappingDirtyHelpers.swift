import MMSync

/// Dirty tracking over a file's shared mappings, as Linux 7.2's `mm/mapping_dirty_helpers.c`
/// (the helpers the 2019 `apply_to_pfn_range` work served; vmwgfx uses them to emulate
/// coherent memory): write-protect every shared PTE of a range so the next write faults, and
/// clean the dirty ones while recording which pages they were.
///
/// Both walk the file's mappings (`i_mmap`) under the mapping lock and take no process's mmap
/// lock: the mapping lock keeps every VMA linked and its page tables in place. Per VMA, the
/// PROTECTION_PAGE invalidation starts before the walk and ends after it, never inside a PTE
/// lock; the walk visits the PTEs under their table's lock, and the TLB is flushed before the
/// invalidation ends if anything changed.
extension ShmemFile {
    /// `wp_shared_mapping_range`: write-protects the writable PTEs mapping pages
    /// [firstIndex, firstIndex + count) in every shared mapping. Return: how many PTEs changed.
    /// Locking: takes the mapping lock for read; no mmap lock, no PTE lock held on entry.
    @discardableResult
    public func wpSharedMappingRange(firstIndex: UInt64, count: UInt64) -> Int {
        Lockdep.assertNoSpinLockHeld()
        var walker = DirtyWalker(mode: .writeProtect)
        walkSharedMappings(firstIndex, count, &walker)
        return walker.total
    }

    /// `clean_record_shared_mapping_range`: cleans the dirty PTEs mapping pages
    /// [firstIndex, firstIndex + count) in every shared mapping (the write bit stays) and sets
    /// bit `index − bitmapPgoff` of `bitmap` for each. `start`/`end` (relative to
    /// `bitmapPgoff`) narrow to the recorded bits: pass start ≥ end for "none yet", and they
    /// come back as the lowest recorded bit and one past the highest (start = count, end = 0
    /// if none). Return: how many PTEs were cleaned.
    /// Locking: takes the mapping lock for read; no mmap lock, no PTE lock held on entry.
    @discardableResult
    public func cleanRecordSharedMappingRange(firstIndex: UInt64, count: UInt64, bitmapPgoff: UInt64,
                                              bitmap: inout [Bool], start: inout UInt64, end: inout UInt64) -> Int {
        Lockdep.assertNoSpinLockHeld()
        var walker = DirtyWalker(mode: .cleanRecord)
        walker.bitmapPgoff = bitmapPgoff
        walker.bitmap = bitmap
        if start >= end { walker.start = count; walker.end = 0 } else { walker.start = start; walker.end = end }
        walkSharedMappings(firstIndex, count, &walker)
        bitmap = walker.bitmap
        start = walker.start; end = walker.end
        return walker.total
    }

    /// `walk_page_mapping` with the helpers' `pre_vma`/`post_vma`. As in 7.2 a mapping that is
    /// not shared and may-write (`wp_clean_test_walk`) ends the whole walk, not just its own
    /// part (docs/linux-divergences.md notes this kernel quirk, kept).
    private func walkSharedMappings(_ firstIndex: UInt64, _ count: UInt64, _ walker: inout DirtyWalker) {
        guard count > 0 else { return }
        let lastIndex = firstIndex &+ count
        mappingLock.lockRead(); defer { mappingLock.unlockRead() }
        for vma in mappings.sorted(by: { $0.pgoff < $1.pgoff }) {
            let vmaPages = (vma.end - vma.start) >> pageShift
            let lo = max(firstIndex, vma.pgoff), hi = min(lastIndex, vma.pgoff + vmaPages)
            guard lo < hi else { continue }
            guard vma.flags.isSuperset(of: [.shared, .mayWrite]), !vma.flags.contains(.hugetlb) else { break }
            let s = vma.start + ((lo - vma.pgoff) << pageShift), e = vma.start + ((hi - vma.pgoff) << pageShift)
            let mm = vma.mm
            let range = MMUNotifierRange(start: s, end: e, event: .protectionPage)
            mm.notifiers.invalidateRangeStart(range)
            walker.vma = vma
            walker.changed = false
            _ = mm.pageTable.walk(s, e, &walker)
            if walker.changed { mm.flushTLB() }
            mm.notifiers.invalidateRangeEnd(range)
        }
    }
}

/// The PTE callbacks of the dirty helpers (`wp_pte`, `clean_record_pte`). Huge leaves are left
/// alone (the kernel warns if one is writable or dirty); only present PTEs are looked at.
struct DirtyWalker: PageWalker {
    enum Mode { case writeProtect, cleanRecord }
    let mode: Mode
    var vma: VMA?
    var total = 0
    var changed = false
    var bitmapPgoff: UInt64 = 0
    var bitmap: [Bool] = []
    var start: UInt64 = 0
    var end: UInt64 = 0

    init(mode: Mode) { self.mode = mode }

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        return v.isPresent && !v.isHuge ? .next : .skip
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        guard v.isPresent, let vma else { return .next }
        switch mode {
        case .writeProtect:
            guard v.isWrite, pte.modify({ $0.wrprotect() }).old.isWrite else { return .next }
        case .cleanRecord:
            guard v.isDirty, pte.modify({ $0.mkclean() }).old.isDirty else { return .next }
            // Pages outside the caller's bitmap are cleaned but not recorded (the kernel
            // would write past the bitmap).
            let index = vma.linearPageIndex(addr)
            if index >= bitmapPgoff, index - bitmapPgoff < UInt64(bitmap.count) {
                let bit = index - bitmapPgoff
                bitmap[Int(bit)] = true
                start = min(start, bit)
                end = max(end, bit + 1)
            }
        }
        total += 1
        changed = true
        return .next
    }
}
