import MMSync

/// `MADV_*` advice values (Linux numbering).
public struct MadviseAdvice: RawRepresentable, Hashable, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let normal = MadviseAdvice(rawValue: 0)
    public static let random = MadviseAdvice(rawValue: 1)
    public static let sequential = MadviseAdvice(rawValue: 2)
    public static let willNeed = MadviseAdvice(rawValue: 3)
    public static let dontNeed = MadviseAdvice(rawValue: 4)
    public static let free = MadviseAdvice(rawValue: 8)
    public static let dontFork = MadviseAdvice(rawValue: 10)
    public static let doFork = MadviseAdvice(rawValue: 11)
    public static let hugePage = MadviseAdvice(rawValue: 14)
    public static let noHugePage = MadviseAdvice(rawValue: 15)
    /// `MADV_COLLAPSE`: make THPs of the range now (see `madviseCollapse`).
    public static let collapse = MadviseAdvice(rawValue: 25)
    /// `MADV_COLD`: the pages are old (their referenced bits go).
    public static let cold = MadviseAdvice(rawValue: 20)
    /// `MADV_PAGEOUT`: reclaim the pages now (anonymous ones are swapped out).
    public static let pageout = MadviseAdvice(rawValue: 21)
    static let known: Set<Int32> = [0, 1, 2, 3, 4, 8, 10, 11, 14, 15, 20, 21, 25]
}

/// `madvise_free_pte_range`: clean and old, marked lazily freeable.
struct LazyFreeWalker: PageWalker {
    let memory: PhysicalMemory
    let machine: Machine
    var changed = false
    /// Pages that swap entries' puts dropped from the swap cache, released after the walk
    /// (outside the page-table lock).
    var released: [Page] = []

    /// `madvise_free_huge_pmd`: a THP mapped by this PMD alone, covered whole, becomes clean,
    /// old and lazily freeable; covered in part, it is split (`split_folio`) and its pages
    /// are then taken one by one. The huge zero folio, a folio mapped elsewhere too, or one
    /// whose lock is taken, is left as it is. A PTE table: large folios it maps in part are
    /// split first (`splitPartlyCoveredFolios`).
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        if v.isPresent && !v.isHuge { return machine.splitPartlyCoveredFolios(v.pfn, start, end) }
        guard v.isPresent && v.isHuge else { return .next }
        guard !v.isSpecial else { return .skip }
        table.ptl.lock()
        let now = pmd.load()
        guard PageTable.isTHPLeaf(now), !now.isSpecial else { table.ptl.unlock(); return now.isHuge ? .skip : .next }
        let folio = memory.page(now.pfn)
        guard folio.entireMapcount == 1, folio.tryLock() else { table.ptl.unlock(); return .skip }
        if end - start != pmdSize {
            memory.get(folio)
            table.ptl.unlock()
            let split = machine.splitFolio(folio) == nil
            folio.unlock()
            memory.put(folio)
            return split ? .again : .skip
        }
        folio.clear(.dirty)
        folio.unlock()
        let (old, _) = pmd.modify { $0.mkclean().mkold() }
        if old.isDirty || old.isAccessed { changed = true }
        folio.set(.lazyFree)
        table.ptl.unlock()
        return .skip
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        if v.isSwap && v.swapEntry.isSwapSlot {
            // A swapped-out page is dropped rather than read back later: its entry is put and
            // the PTE cleared (a later touch faults in a zero page).
            pte.store(.none)
            if let p = memory.swap.putEntryDirect(v.swapEntry) { released.append(p) }
            return .next
        }
        guard v.isPresent, !v.isSpecial else { return .next }
        let page = memory.page(v.pfn)
        guard page.isAnon, !page.isZoneDevice else { return .next }
        if page.isInLargeFolio {
            // A large folio the range covers whole (the others were split, or left because
            // they may be shared or were locked): if dirty, made clean while every mapping is
            // one of its pages' here (`folio_mapcount == folio_nr_pages`: exclusive); then
            // each PTE is made clean and old and the folio lazily freeable.
            let head = page.folioHead
            guard head.entireMapcount == 0, head.folioMapcount == Int32(head.folioPages) else { return .next }
            if head.test(.dirty) {
                guard head.tryLock() else { return .next }
                head.clear(.dirty)
                head.unlock()
            }
            head.set(.lazyFree)
        } else {
            guard page.mapcount == 1 else { return .next }
            if page.test(.swapCache) || page.test(.dirty) {
                // Under the page lock: an exclusive page leaves the swap cache (its slot would
                // otherwise keep stale bytes that reclaim could skip writing) and becomes clean.
                guard page.tryLock() else { return .next }
                guard page.mapcount == 1, !page.test(.swapCache) || memory.swap.folioFreeSwap(page) else { page.unlock(); return .next }
                page.clear(.dirty)
                page.unlock()
            }
            page.set(.lazyFree)
        }
        pte.modify { $0.mkclean().mkold() }   // atomically: a concurrent accessed/dirty update retries
        changed = true
        return .next
    }
}

extension AddressSpace {
    /// `madvise`. EINVAL for an unaligned start, unknown advice, a wrapping length, or
    /// MADV_FREE on a non-anonymous mapping (hugetlb included); MADV_COLLAPSE fails as
    /// `madviseCollapse` says (EINVAL, EAGAIN, ENOMEM); MADV_DONTNEED in a hugetlb
    /// VMA must start on a huge page (EINVAL) and zaps whole huge pages only (its end rounds
    /// down); ENOMEM if part of the range is unmapped (the
    /// mapped parts are still advised). Zero length succeeds.
    /// Locking: takes the mmap lock (write for advice that changes VMA flags, else read).
    public func madvise(_ address: UInt64, length: UInt64, advice: MadviseAdvice) throws(Errno) {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("madvise") }
        guard isPageAligned(address), MadviseAdvice.known.contains(advice.rawValue) else { throw .EINVAL }
        guard let len = pageAlignUp(length), address.addingReportingOverflow(len).overflow == false else { throw .EINVAL }
        guard len > 0 else { return }
        let end = address + len
        // Advice that changes VMA flags splits the VMAs at the range's edges and merges what
        // it can afterwards (madvise_update_vma): the mmap lock for write. The rest only zaps
        // or marks pages and takes it for read, as 7.2's get_lock_mode (MADV_DONTNEED and
        // MADV_FREE take the VMA's read lock there, which excludes the same writers): faults
        // run concurrently with them.
        let changesFlags = [.hugePage, .noHugePage, .dontFork, .doFork, .normal, .random, .sequential].contains(advice)
        // A hugetlb zap excludes the VMA's faults (the kernel's hugetlb VMA lock, held for
        // write by the zap until its pages are freed): the mmap lock for write and the VMA's.
        // (Looked for under the read lock the other advice takes anyway, so that advice on
        // other VMAs takes no lock more.)
        var writer = changesFlags
        if writer { mmapWriteLock() } else { mmapLock.lockRead() }
        var hugetlbZap = false
        if advice == .dontNeed {
            var j = vmaIndex(atOrAfter: address)
            while j < vmaList.count && vmaList[j].start < end && !hugetlbZap { hugetlbZap = vmaList[j].isHugetlb; j += 1 }
            if hugetlbZap { mmapLock.unlockRead(); mmapWriteLock(); writer = true }
        }
        defer { if writer { mmapWriteUnlock() } else { mmapLock.unlockRead() } }
        var i = vmaIndex(atOrAfter: address)
        var cursor = address
        var hole = false
        defer { if changesFlags { mergeVMAs(around: address, end) } }
        vmaLoop: while i < vmaList.count && vmaList[i].start < end {
            var vma = vmaList[i]
            if vma.start > cursor { hole = true }
            if changesFlags {
                // madvise_update_vma: a VMA whose flags stay as they are is not split.
                let flags = madviseFlags(vma, advice)
                if flags != vma.flags {
                    if vma.start < address { try splitVMA(at: i, address: address); i += 1; vma = vmaList[i] }
                    if vma.end > end { try splitVMA(at: i, address: end); vma = vmaList[i] }
                    vmaStartWrite(vma)
                    vma.flags = flags
                }
                cursor = vma.end
                i += 1
                continue
            }
            let s = max(address, vma.start), e = min(end, vma.end)
            if hugetlbZap && vma.isHugetlb { vmaStartWrite(vma) }
            switch advice {
            case .dontNeed:
                if let h = vma.hstate {
                    // madvise_dontneed_free_valid_vma: a hugetlb range starts on a huge page
                    // (EINVAL) and its end rounds down to one (nothing left: nothing done).
                    guard s & (h.size - 1) == 0 else { throw .EINVAL }
                    let he = e & h.mask
                    if s < he { zapRange(vma: vma, start: s, end: he, event: .clear) }
                } else {
                    zapRange(vma: vma, start: s, end: e, event: .clear)
                }
            case .free:
                guard vma.isAnonymous else { throw .EINVAL }
                let range = MMUNotifierRange(start: s, end: e, event: .clear)
                notifiers.invalidateRangeStart(range)
                var w = LazyFreeWalker(memory: memory, machine: machine)
                _ = pageTable.walk(s, e, &w)
                if w.changed { flushTLB() }
                for p in w.released { memory.put(p) }
                notifiers.invalidateRangeEnd(range)
            case .cold, .pageout:
                try madviseColdOrPageout(vma, s, e, pageout: advice == .pageout)
            case .collapse:
                // The mmap lock is dropped inside: the VMA list is looked at afresh after it.
                if let err = madviseCollapse(vma, s, e) { throw err }
                cursor = e
                if e >= end { break vmaLoop }
                i = vmaIndex(atOrAfter: e)
                continue
            default: break
            }
            cursor = vma.end
            i += 1
        }
        if hole || cursor < end { throw .ENOMEM }
    }

    /// The flags advice that changes VMA flags gives `vma` (`madvise_vma_behavior`).
    func madviseFlags(_ vma: VMA, _ advice: MadviseAdvice) -> VMFlags {
        var f = vma.flags
        switch advice {
        case .hugePage: f.remove(.noHugePage); f.insert(.hugePage)
        case .noHugePage: f.remove(.hugePage); f.insert(.noHugePage)
        case .normal: f.subtract([.seqRead, .randRead])
        case .random: f.remove(.seqRead); f.insert(.randRead)
        case .sequential: f.remove(.randRead); f.insert(.seqRead)
        case .dontFork: f.insert(.dontCopy)
        case .doFork: f.remove(.dontCopy)
        default: break
        }
        return f
    }
}
