import MMArch
import MMCore
import MMSync

/// Why one pass of the range walk stopped early.
enum HMMWalkStop {
    /// Fault [start, end) in, then walk again from start (`hmm_vma_fault` → -EBUSY).
    case fault(start: UInt64, end: UInt64, write: Bool)
    /// A migration entry: wait for the page, then walk again from `at`.
    case waitMigration(page: Page, at: UInt64)
    case error(Errno)
}

/// The per-VMA part of the walk (`hmm_walk_ops`). PTEs are read without the PTE lock, as
/// hmm.c does; the notifier sequence catches any change that races with the read.
struct HMMVMAWalker: PageWalker {
    let memory: PhysicalMemory
    let rangeStart: UInt64
    let segmentEnd: UInt64
    let vma: VMA
    let pfns: UnsafeMutablePointer<UInt64>
    let defaultFlags: UInt64
    let flagsMask: UInt64
    let owner: AnyObject?
    var stop: HMMWalkStop? = nil

    var locksPTE: Bool { false }

    @inline(__always) func index(_ a: UInt64) -> Int { Int((a - rangeStart) >> pageShift) }

    /// `hmm_pte_need_fault`: (fault?, write fault?) for a page with `cpuFlags`.
    func needFault(_ request: UInt64, _ cpuFlags: UInt64) -> (Bool, Bool) {
        let req = (request & flagsMask) | defaultFlags
        guard req & HMMPfn.requestFault != 0 else { return (false, false) }
        if req & HMMPfn.requestWrite != 0 && cpuFlags & HMMPfn.write == 0 { return (true, true) }
        if cpuFlags & HMMPfn.valid == 0 { return (true, false) }
        return (false, false)
    }

    /// `hmm_range_need_fault` over [start, end) for pages with `cpuFlags`.
    func rangeNeedsFault(_ start: UInt64, _ end: UInt64, _ cpuFlags: UInt64) -> (Bool, Bool) {
        var fault = false, write = false
        var a = start
        while a < end {
            let (f, w) = needFault(pfns[index(a)], cpuFlags)
            fault = fault || f; write = write || w
            if write { break }
            a += pageSize
        }
        return (fault, write)
    }

    /// Writes an output entry, keeping the driver's in/out flags (`HMM_PFN_INOUT_FLAGS`).
    @inline(__always) func put(_ i: Int, _ value: UInt64) { pfns[i] = pfns[i] & HMMPfn.inoutFlags | value }

    func fill(_ start: UInt64, _ end: UInt64, _ value: UInt64) {
        var a = start
        while a < end { put(index(a), value); a += pageSize }
    }

    /// The end of the chunk a fault covers: the current PMD span, clipped to the walk.
    func faultEnd(_ a: UInt64) -> UInt64 { min(PageTableLevel.pmd.addressEnd(a, segmentEnd), segmentEnd) }

    // The `hmm_walk_ops` slots: each forwards to the function named as in mm/hmm.c.
    mutating func hole(_ start: UInt64, _ end: UInt64, level: PageTableLevel) -> WalkStep {
        // In a hugetlb VMA an empty entry at the huge page's own level goes to
        // hmm_vma_walk_hugetlb_entry (the table holding it exists); above, to the hole.
        if let h = vma.hstate, level == h.level { return hmmHandleLeaf(.none, level, start, end) }
        return hmmVMAWalkHole(start, end)
    }
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        hmmVMAWalkPMD(pmd, start, end)
    }
    // (No `pteEntry`: `hmmVMAWalkPMD` walks its PTE table itself, as hmm.c does.)

    /// `hmm_vma_walk_hole`: an empty range faults if any page asks for it, else reports 0.
    mutating func hmmVMAWalkHole(_ start: UInt64, _ end: UInt64) -> WalkStep {
        let (f, w) = rangeNeedsFault(start, end, 0)
        if f { stop = .fault(start: start, end: end, write: w); return .stop(nil) }
        fill(start, end, 0)
        return .next
    }

    /// `hmm_vma_walk_pmd`: a PMD leaf or non-present PMD gives every page of its range the
    /// same answer; a PTE table is walked here, one `hmmVMAHandlePTE` per entry, without the
    /// table's lock (hmm.c maps it with `pte_offset_map` and reads each entry once; the
    /// notifier sequence catches a change that races with the read).
    mutating func hmmVMAWalkPMD(_ pmd: EntryPointer, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        if v.isPresent && !v.isHuge {
            // The common entry (a present user page, not special, that the request does not
            // make fault) is answered by a tight loop; every other goes through
            // hmmVMAHandlePTE, and the loop resumes after it.
            let first = EntryPointer(memory.frame(v.pfn) + PageTableLevel.pte.index(start) &* 8)
            let out = pfns + index(start)
            let n = Int((end - start) >> pageShift)
            var k = 0
            while true {
                k = HMMVMAWalker.handlePlainPTEs(first, out, from: k, to: n, mask: flagsMask, defaults: defaultFlags)
                guard k < n else { break }
                let step = hmmVMAHandlePTE(first + k, start + UInt64(k) << pageShift)
                if case .stop = step { return step }
                k += 1
            }
            return .skip
        }
        // Emptied since the walk looked (a zap under the read lock): a hole, as pmd_none.
        if v.isNone { return hmmVMAWalkHole(start, end) }
        if !v.isPresent {
            if v.swapEntry.isMigration {
                let (f, _) = rangeNeedsFault(start, end, 0)
                if f { stop = .waitMigration(page: memory.page(v.swapEntry.pfn), at: start); return .stop(nil) }
                fill(start, end, 0)
                return .skip
            }
            return hmmVMAHandleAbsentPMD(v, start, end)
        }
        return hmmHandleLeaf(v, .pmd, start, end)
    }

    /// `hmm_vma_handle_absent_pmd`: a device-private PMD of the caller's own device memory
    /// answers every page with its device pfn, valid, write if the entry is, and order 9
    /// (the pfn of the page at each address: the kernel starts every range at the head's,
    /// wrong for a range that begins inside the 2 MiB; docs/linux-divergences.md, D17). Any
    /// other absent PMD faults if asked (a device-private one: through the CPU fault, which
    /// migrates it back; anything else is EFAULT), else is HMM_PFN_ERROR.
    mutating func hmmVMAHandleAbsentPMD(_ v: PTE, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let s = v.swapEntry
        if s.isDevicePrivate, let owner, let pgmap = memory.pagemap(of: memory.page(s.pfn)), pgmap.isOwned(by: owner) {
            let cpu = HMMPfn.valid | (s.isWrite ? HMMPfn.write : 0) | UInt64(pmdOrder) << HMMPfn.orderShift
            var a = start
            while a < end {
                put(index(a), (s.pfn + ((a & (pmdSize - 1)) >> pageShift)) | cpu)
                a += pageSize
            }
            return .skip
        }
        let (f, w) = rangeNeedsFault(start, end, 0)
        if f {
            if s.isDevicePrivate { stop = .fault(start: start, end: end, write: w); return .stop(nil) }
            stop = .error(.EFAULT)
            return .stop(nil)
        }
        fill(start, end, HMMPfn.error)
        return .skip
    }

    /// `hmm_vma_walk_pud`: a 1 GiB leaf (hugetlb) answers as a PMD leaf does, with the PUD
    /// order; a non-present PUD entry faults if asked (there are none such yet).
    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pud.load()
        guard v.isPresent else {
            let (f, w) = rangeNeedsFault(start, end, 0)
            if f { stop = .fault(start: start, end: end, write: w); return .stop(nil) }
            fill(start, end, 0)
            return .skip
        }
        return hmmHandleLeaf(v, .pud, start, end)
    }

    /// A present PMD or PUD leaf (`hmm_vma_handle_pmd`, `hmm_vma_walk_pud`, and for hugetlb
    /// VMAs `hmm_vma_walk_hugetlb_entry`): every page reports the leaf's pfn plus its offset,
    /// valid (and write) as the entry allows, and the leaf's map order; or the range faults.
    /// In a hugetlb VMA, as `hmm_vma_walk_hugetlb_entry` does, the order is reported even for
    /// an empty entry (with no valid bit), and only the first page's request decides whether
    /// the range faults.
    mutating func hmmHandleLeaf(_ v: PTE, _ level: PageTableLevel, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let present = v.isPresent && v.isUser
        var cpu = present ? HMMPfn.valid : 0
        if present && v.isWrite { cpu |= HMMPfn.write }
        let (f, w) = vma.isHugetlb ? needFault(pfns[index(start)], cpu) : rangeNeedsFault(start, end, cpu)
        if f { stop = .fault(start: start, end: end, write: w); return .stop(nil) }
        let orderBits = UInt64(level.shift - pageShift) << HMMPfn.orderShift
        let base = present ? v.pfn : 0
        var a = start
        while a < end {
            put(index(a), (base + ((a & (level.size - 1)) >> pageShift)) | cpu | orderBits)
            a += pageSize
        }
        return .skip
    }

    /// `hmm_vma_handle_pte` for the entries it answers without a decision: from `k` while the
    /// PTE maps a user page (not special) and the request does not ask for a write it lacks,
    /// `out[k]` keeps its in/out flags and gets pfn | valid (| write). Return: the index of the
    /// first other entry, or `n`.
    @inline(__always)
    static func handlePlainPTEs(_ first: EntryPointer, _ out: UnsafeMutablePointer<UInt64>, from k0: Int, to n: Int,
                                mask: UInt64, defaults: UInt64) -> Int {
        mm_hmm_plain_ptes(first.address.assumingMemoryBound(to: UInt64.self), out, k0, n, mask, defaults,
                          PTE.present | PTE.user | PTE.special, PTE.present | PTE.user, PTE.write,
                          PTE.pfnMask, HMMPfn.valid, HMMPfn.write, HMMPfn.inoutFlags,
                          HMMPfn.requestFault | HMMPfn.requestWrite)
    }

    /// `hmm_vma_handle_pte`: one PTE to an output entry, or the reason to stop (fault, wait for
    /// a migration, error).
    mutating func hmmVMAHandlePTE(_ pte: EntryPointer, _ addr: UInt64) -> WalkStep {
        let i = index(addr)
        let request = pfns[i]
        let v = pte.load()
        if v.isSwap {
            let s = v.swapEntry
            if s.isDevicePrivate, let owner, let pgmap = memory.pagemap(of: memory.page(s.pfn)), pgmap.isOwned(by: owner) {
                put(i, s.pfn | HMMPfn.valid | (s.isWrite ? HMMPfn.write : 0))
                return .next
            }
            let (f, w) = needFault(request, 0)
            if !f { put(i, 0); return .next }
            if s.isSwapSlot || s.isDevicePrivate || s.isDeviceExclusive {
                stop = .fault(start: addr, end: faultEnd(addr), write: w); return .stop(nil)
            }
            if s.isMigration { stop = .waitMigration(page: memory.page(s.pfn), at: addr); return .stop(nil) }
            stop = .error(.EFAULT)
            return .stop(nil)
        }
        if v.isNone { // raced with a zap: a hole now
            let (f, w) = needFault(request, 0)
            if f { stop = .fault(start: addr, end: faultEnd(addr), write: w); return .stop(nil) }
            put(i, 0)
            return .next
        }
        var cpu: UInt64 = v.isUser ? HMMPfn.valid : 0
        if v.isUser && v.isWrite { cpu |= HMMPfn.write }
        let (f, w) = needFault(request, cpu)
        if f { stop = .fault(start: addr, end: faultEnd(addr), write: w); return .stop(nil) }
        if v.isSpecial && v.pfn != PhysicalMemory.zeroPfn {
            // A special mapping with no page behind it: an error, or a fault error if asked for.
            if needFault(request, 0).0 { stop = .error(.EFAULT); return .stop(nil) }
            put(i, HMMPfn.error)
            return .next
        }
        put(i, v.pfn | cpu)
        return .next
    }
}

extension AddressSpace {
    /// `hmm_range_fault`: fills `range.hmmPfns` with the CPU page table's view of
    /// [start, end), faulting pages in where requested (`defaultFlags` or per-page requests
    /// under `pfnFlagsMask`). Device-private pages of `devPrivateOwner` are reported as they are;
    /// those of other owners are faulted back to system memory when a fault is requested.
    ///
    /// Loop invariant: whenever a pass restarts from `last` (after a fault or a migration
    /// wait), entries below `last` are outputs and entries from `last` on are still inputs.
    ///
    /// Locking: caller holds the mmap lock for read; no driver lock (faults may sleep).
    /// Return: on success every entry is an output. Throws EBUSY when the notifier sequence
    /// moved (restart from `readBegin`), EFAULT for holes, VMAs without read permission,
    /// VM_IO/VM_PFNMAP VMAs or special mappings when a fault was requested there (and for a
    /// fault that fails), EPERM for a write request on a VMA without write permission.
    public func hmmRangeFault(_ range: inout HMMRange) throws(Errno) {
        mmapLock.assertLocked()
        guard range.start < range.end, isPageAligned(range.start), isPageAligned(range.end) else { throw .EINVAL }
        var last = range.start
        var restarts = 0
        while true {
            if range.notifier.checkRetry(range.notifierSeq) { throw .EBUSY }
            let (start, end, defaults, mask, owner) = (range.start, range.end, range.defaultFlags, range.pfnFlagsMask, range.devPrivateOwner)
            let stop = range.hmmPfns.withUnsafeMutableBufferPointer { buf in
                walkHMM(start: start, end: end, defaults: defaults, flagsMask: mask, owner: owner, buf.baseAddress!, from: last)
            }
            guard let stop else { return }
            switch stop {
            case .error(let e): throw e
            case .waitMigration(let page, let at):
                // pmd/migration_entry_wait holds no reference (one would make the migration's
                // count check fail); page metadata outlives the page, so a freed one only
                // wakes the wait early.
                page.waitUnlocked()
                last = at
            case .fault(let start, let end, let write):
                guard let vma = vmaLookup(start) else { throw .EFAULT }
                if write && !vma.flags.contains(.write) { throw .EPERM }
                var a = start
                while a < end {
                    switch handleMMFault(vma: vma, address: a, flags: write ? [.write, .remote] : [.remote]) {
                    case .ok, .retry: break
                    default: throw .EFAULT
                    }
                    a += pageSize
                }
                last = start
            }
            restarts += 1
            if restarts > 100_000 { throw .EBUSY } // livelock guard: bounded, never a hang
        }
    }

    /// One pass of `walk_page_range` over the range: per VMA, hmm's VMA test
    /// (`hmm_vma_walk_test`) and the gaps between VMAs.
    private func walkHMM(start rangeStart: UInt64, end rangeEnd: UInt64, defaults: UInt64, flagsMask: UInt64, owner: AnyObject?,
                         _ pfns: UnsafeMutablePointer<UInt64>, from last: UInt64) -> HMMWalkStop? {
        var addr = last
        func needsFault(_ s: UInt64, _ e: UInt64) -> Bool {
            var a = s
            while a < e {
                let req = (pfns[Int((a - rangeStart) >> pageShift)] & flagsMask) | defaults
                if req & HMMPfn.requestFault != 0 { return true }
                a += pageSize
            }
            return false
        }
        func fill(_ s: UInt64, _ e: UInt64, _ v: UInt64) {
            var a = s
            while a < e {
                let i = Int((a - rangeStart) >> pageShift)
                pfns[i] = pfns[i] & HMMPfn.inoutFlags | v
                a += pageSize
            }
        }
        while addr < rangeEnd {
            let vma = findVMA(addr)
            let holeEnd = min(vma.map { max($0.start, addr) } ?? rangeEnd, rangeEnd)
            if holeEnd > addr {
                // No VMA: an error for every page, or EFAULT if any was to be faulted.
                if needsFault(addr, holeEnd) { return .error(.EFAULT) }
                fill(addr, holeEnd, HMMPfn.error)
                addr = holeEnd
                continue
            }
            guard let vma else { break }
            let segEnd = min(vma.end, rangeEnd)
            if vma.flags.contains(.io) || vma.flags.contains(.pfnMap) || !vma.flags.contains(.read) {
                if needsFault(addr, segEnd) { return .error(.EFAULT) }
                fill(addr, segEnd, HMMPfn.error)
                addr = segEnd
                continue
            }
            var walker = HMMVMAWalker(memory: memory, rangeStart: rangeStart, segmentEnd: segEnd, vma: vma, pfns: pfns,
                                      defaultFlags: defaults, flagsMask: flagsMask, owner: owner)
            _ = pageTable.walk(addr, segEnd, &walker)
            if let stop = walker.stop { return stop }
            addr = segEnd
        }
        return nil
    }
}
