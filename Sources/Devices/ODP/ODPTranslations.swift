import HMM
import MMCore
import MMSync

/// One span of a region's NIC translations with its own lock and interval notifier
/// (`struct ib_umem_odp`): the whole of an explicit region, or one child of an implicit region
/// (mlx5's child MR of an implicit MR, one aligned GiB).
final class ODPTranslations: @unchecked Sendable {
    let mm: AddressSpace
    let device: ODPDevice
    var stats: ODPStats { device.stats }
    /// The span: [pageStart, pageStart + pages × 4 KiB).
    let pageStart: UInt64
    let pages: Int
    var pageEnd: UInt64 { pageStart + UInt64(pages) << pageShift }
    /// `umem_mutex`: the notifier callback and every NIC access to the span's bytes take it, so
    /// a page cannot go while the NIC reads or writes it.
    let lock = Lock("odp-umem")
    /// Per page: pfn << 2 | present (2) | writable (1), or 0 for no translation (the zero
    /// page's pfn may be 0). Locking: `lock`.
    @exclusivity(unchecked) var table: [UInt64]
    /// False once the region is deregistered. Locking: `lock`.
    @exclusivity(unchecked) var live = true
    /// The interval notifier over the span (nil for a pinned region). Set once, before use.
    private(set) var notifier: MMUIntervalNotifier?

    @inline(__always) static func entry(_ pfn: UInt64, writable: Bool) -> UInt64 { pfn << 2 | 2 | (writable ? 1 : 0) }

    /// Pages a NIC fault brings in at most (the rest of the access, up to 2 MiB).
    static let faultBatchPages = 512

    /// Errors: ENOMEM when the table would pass the NIC's `tableBytesLimit`.
    init(mm: AddressSpace, device: ODPDevice, pageStart: UInt64, pages: Int) throws(Errno) {
        try device.chargeTable(pages * 8)
        self.mm = mm; self.device = device; self.pageStart = pageStart; self.pages = pages
        table = [UInt64](repeating: 0, count: pages)
    }

    /// Inserts the span's interval notifier (`mmu_interval_notifier_insert`). Errors: EINVAL
    /// once the process has exited. Locking: none held.
    func attach() throws(Errno) {
        lock.assertNotHeld()
        let sub = MMUIntervalNotifier(start: pageStart, end: pageEnd) { [weak self] sub, range, seq in
            guard let self else { sub.setSeq(seq); return true }
            return self.invalidate(sub, range, seq)
        }
        try mm.notifiers.insert(sub)
        notifier = sub
    }

    /// Ends the span: no translation is left or used again, and the notifier goes (waited for
    /// unless `wait` is false, for an owner going away). Locking: none held; not from a
    /// notifier callback unless `wait` is false.
    func detach(wait: Bool = true) {
        lock.assertNotHeld()
        let was: Bool = lock.withLock {
            let was = live
            live = false
            for e in table where e != 0 { dirtyIfWritable(e) }
            table = []
            return was
        }
        guard was else { return }
        device.unchargeTable(pages * 8)
        if let notifier { mm.notifiers.remove(notifier, wait: wait) }
    }

    deinit {
        guard live else { return }
        device.unchargeTable(pages * 8)
        if let notifier { mm.notifiers.remove(notifier, wait: false) }
    }

    /// Translations held now.
    var mapped: Int { lock.withLock { table.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } } }

    /// `ib_umem_notifier_invalidate_range_start` (mlx5's `mlx5_ib_invalidate_range`): drops the
    /// translations of the range under `lock` and publishes the sequence.
    /// Locking: called by the core with no span lock held; takes `lock` (or tries, for a
    /// non-blockable range).
    private func invalidate(_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ seq: UInt64) -> Bool {
        lock.assertNotHeld()
        if range.blockable { lock.lock() } else if !lock.tryLock() { return false }
        sub.setSeq(seq)
        let first = Int((max(range.start, pageStart) - pageStart) >> pageShift)
        let last = Int((min(range.end, pageEnd) - pageStart + pageSize - 1) >> pageShift)
        var dropped = 0
        if live, first < last {
            for i in first..<last where table[i] != 0 {
                dirtyIfWritable(table[i])
                table[i] = 0
                dropped += 1
            }
        }
        lock.unlock()
        if dropped > 0 { stats.count(.invalidations); stats.count(.pagesInvalidated, dropped) }
        return true
    }

    /// `ib_umem_odp_unmap_dma_pages`' `set_page_dirty`: a translation the NIC could write
    /// through dirties its page when it goes (the NIC's writes set no dirty bit in a PTE, and
    /// reclaim would otherwise drop a clean swap-cache page it wrote). Locking: `lock` (the
    /// entry's page cannot be unmapped and freed before its invalidation takes it).
    private func dirtyIfWritable(_ e: UInt64) {
        lock.assertHeld()
        guard e & 1 != 0 else { return }
        mm.memory.page(e >> 2).folioHead.set(.dirty)
    }

    /// A NIC page fault (`ib_umem_odp_map_dma_and_lock`): pages [first, end) of the span (at
    /// most `faultBatchPages`) faulted in through `hmmRangeFault` and programmed under `lock`
    /// if no invalidation overtook the walk. Errors: EFAULT (no VMA, protection, no memory),
    /// EINVAL (deregistered meanwhile), EBUSY (invalidations kept overtaking).
    /// Locking: none held.
    func fault(_ first: Int, upTo end: Int, write: Bool) throws(Errno) {
        lock.assertNotHeld()
        guard let notifier else { throw .EFAULT }
        let last = min(end, pages, first + ODPTranslations.faultBatchPages)
        var range = HMMRange(notifier: notifier, notifierSeq: 0, start: pageStart + UInt64(first) << pageShift,
                             end: pageStart + UInt64(last) << pageShift,
                             defaultFlags: HMMPfn.valid | (write ? HMMPfn.write : 0), devPrivateOwner: nil)
        var faulted = 0
        do {
            try HMMMirror.faultAndProgram(&range, driverLock: lock) { (r: HMMRange) throws(Errno) in
                guard self.live else { throw .EINVAL }
                faulted = 0
                for (k, e) in r.hmmPfns.enumerated() where HMMPfn.isValid(e) && !HMMPfn.isError(e) {
                    let old = self.table[first + k]
                    if old == 0 || (write && old & 1 == 0) { faulted += 1 } // missing, or read-only for a write
                    self.table[first + k] = ODPTranslations.entry(HMMPfn.pfn(e), writable: HMMPfn.isWrite(e))
                }
            }
        } catch {
            throw error == .EBUSY ? .EBUSY : error == .EINVAL ? .EINVAL : .EFAULT
        }
        stats.count(.pageFaults, faulted)
    }
}
