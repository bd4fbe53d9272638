import HMM
import MMCore
import MMSync

/// A registered memory region (`struct ib_umem_odp` with its MR): the NIC's translation of
/// each of its pages, kept coherent with the CPU's page table by an interval notifier over the
/// region (ODP), or fixed by long-term pins (pinned).
public final class ODPMemoryRegion: @unchecked Sendable {
    public let device: ODPDevice
    public let mm: AddressSpace
    public let address: UInt64
    public let length: UInt64
    public let access: ODPAccess
    public let pinned: Bool
    /// Whether the NIC may write the region (its access allows a local or remote write or an
    /// atomic): only then does it ask for writable pages.
    public let writable: Bool
    /// The region's pages: [pageStart, pageStart + pages × 4 KiB).
    let pageStart: UInt64
    let pages: Int
    /// `umem_mutex`: the notifier callback and every NIC access to the region's bytes take it,
    /// so a page cannot go while the NIC reads or writes it.
    let lock = Lock("odp-umem")
    /// Per page: pfn << 2 | present (2) | writable (1), or 0 for no translation (the zero
    /// page's pfn may be 0). Locking: `lock`.
    @exclusivity(unchecked) var table: [UInt64]
    private(set) var notifier: MMUIntervalNotifier?
    /// Locking: `lock`.
    @exclusivity(unchecked) private var pins: [Page] = []
    /// Locking: `lock`.
    @exclusivity(unchecked) private(set) var registered = true
    @inline(__always) static func entry(_ pfn: UInt64, writable: Bool) -> UInt64 { pfn << 2 | 2 | (writable ? 1 : 0) }

    /// Pages a NIC fault brings in at most (the rest of the access, up to 2 MiB).
    static let faultBatchPages = 512

    init(device: ODPDevice, mm: AddressSpace, address: UInt64, length: UInt64, access: ODPAccess, pinned: Bool) throws(Errno) {
        self.device = device; self.mm = mm; self.address = address; self.length = length
        self.access = access; self.pinned = pinned
        pageStart = address & ~(pageSize - 1)
        let pageEnd = (address + length + pageSize - 1) & ~(pageSize - 1)
        pages = Int((pageEnd - pageStart) >> pageShift)
        table = [UInt64](repeating: 0, count: pages)
        let writable = access.contains(.localWrite) || access.contains(.remoteWrite) || access.contains(.remoteAtomic)
        self.writable = writable
        if pinned {
            mm.mmapLock.lockRead()
            let got: [Page]
            do { got = try mm.getUserPagesRemote(pageStart, count: pages, flags: writable ? [.pin, .longterm, .write] : [.pin, .longterm]) }
            catch { mm.mmapLock.unlockRead(); throw error }
            mm.mmapLock.unlockRead()
            lock.withLock {
                pins = got
                for (i, p) in got.enumerated() { table[i] = ODPMemoryRegion.entry(p.pfn, writable: writable) }
            }
            return
        }
        let sub = MMUIntervalNotifier(start: pageStart, end: pageEnd) { [weak self] sub, range, seq in
            guard let self else { sub.setSeq(seq); return true }
            return self.invalidate(sub, range, seq)
        }
        notifier = sub
        try mm.notifiers.insert(sub)
    }

    /// `ib_umem_notifier_invalidate_range_start` (mlx5's `mlx5_ib_invalidate_range`): drops the
    /// translations of the range under `lock` and publishes the sequence.
    /// Locking: called by the core with no region lock held; takes `lock` (or tries, for a
    /// non-blockable range).
    private func invalidate(_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ seq: UInt64) -> Bool {
        lock.assertNotHeld()
        if range.blockable { lock.lock() } else if !lock.tryLock() { return false }
        sub.setSeq(seq)
        let first = Int((max(range.start, pageStart) - pageStart) >> pageShift)
        let last = Int((min(range.end, pageStart + UInt64(pages) << pageShift) - pageStart + pageSize - 1) >> pageShift)
        var dropped = 0
        if first < last { for i in first..<last where table[i] != 0 { table[i] = 0; dropped += 1 } }
        lock.unlock()
        if dropped > 0 { device.stats.count(.invalidations); device.stats.count(.pagesInvalidated, dropped) }
        return true
    }

    /// `ibv_dereg_mr`: the notifier goes (or the pins are released); the region can no longer
    /// be used (EINVAL). Locking: none held; not from a notifier callback.
    public func deregister() {
        lock.assertNotHeld()
        let (wasRegistered, unpin): (Bool, [Page]) = lock.withLock {
            let was = registered
            registered = false
            for i in table.indices { table[i] = 0 }
            let p = pins
            pins = []
            return (was, p)
        }
        guard wasRegistered else { return }
        if let notifier { mm.notifiers.remove(notifier) }
        mm.unpinUserPages(unpin)
    }

    deinit {
        if registered, let notifier { mm.notifiers.remove(notifier, wait: false) }
        if !pins.isEmpty { mm.unpinUserPages(pins) }
    }

    /// Translations the NIC holds now.
    public var mappedPages: Int { lock.withLock { table.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } } }

    /// `ibv_advise_mr` (prefetch): faults [address, address + length) in now, writable if
    /// `write`. Errors: as an access.
    public func advise(_ address: UInt64, length: Int, write: Bool) throws(Errno) {
        try access(address, length, write: write) { _, _, _ in }
    }

    /// The NIC's access to [address, address + length) of the region: `body(bytes, done, n)`
    /// for each page's span, called under `lock` (an invalidation waits for it); a missing or
    /// read-only translation is faulted in first (a NIC page fault: `hmmRangeFault` under the
    /// notifier protocol, for the rest of the access up to 2 MiB).
    /// Errors: EINVAL for a deregistered region; EFAULT outside the region or for a page that
    /// cannot be faulted in (no VMA, protection, no memory); EPERM for a write to a region that
    /// is not writable; EBUSY if invalidations kept overtaking (1,000 faults of one page in a
    /// row, or the fault loop's 1 s).
    /// Locking: none held.
    func access(_ address: UInt64, _ length: Int, write: Bool,
                _ body: (UnsafeMutableRawPointer, Int, Int) -> Void) throws(Errno) {
        lock.assertNotHeld()
        guard lock.withLock({ registered }) else { throw .EINVAL }
        guard length >= 0, address >= self.address, address.addingReportingOverflow(UInt64(length)).overflow == false,
              address + UInt64(length) <= self.address + self.length else { throw .EFAULT }
        // Never a write fault on a region the NIC may not write (it would break copy-on-write).
        guard !write || writable else { throw .EPERM }
        let memory = device.machine.memory
        var done = 0, faultsHere = 0
        while done < length {
            let a = address + UInt64(done)
            let index = Int((a - pageStart) >> pageShift)
            let offset = Int(a & (pageSize - 1))
            let n = min(length - done, Int(pageSize) - offset)
            lock.lock()
            guard registered else { lock.unlock(); throw .EINVAL }
            let e = table[index]
            if e != 0 && (!write || e & 1 != 0) {
                body(memory.frame(e >> 2) + offset, done, n)
                lock.unlock()
                done += n
                faultsHere = 0
                continue
            }
            lock.unlock()
            // Invalidations that keep taking the page between the fault and the access: EBUSY,
            // never a livelock.
            faultsHere += 1
            guard faultsHere <= 1000 else { throw .EBUSY }
            guard !pinned else { throw .EFAULT } // a pinned region's translation never misses (read-only: EFAULT)
            try fault(index, upTo: Int((address + UInt64(length) - 1 - pageStart) >> pageShift) + 1, write: write)
        }
    }

    /// A NIC page fault (`ib_umem_odp_map_dma_and_lock`): pages [first, end) (at most
    /// `faultBatchPages`) faulted in through `hmmRangeFault` and programmed under `lock` if
    /// no invalidation overtook the walk. Errors: EFAULT, EBUSY.
    private func fault(_ first: Int, upTo end: Int, write: Bool) throws(Errno) {
        guard let notifier else { throw .EFAULT }
        let last = min(end, first + ODPMemoryRegion.faultBatchPages)
        var range = HMMRange(notifier: notifier, notifierSeq: 0, start: pageStart + UInt64(first) << pageShift,
                             end: pageStart + UInt64(last) << pageShift,
                             defaultFlags: HMMPfn.valid | (write ? HMMPfn.write : 0), devPrivateOwner: nil)
        var faulted = 0
        do {
            try HMMMirror.faultAndProgram(&range, driverLock: lock) { (r: HMMRange) throws(Errno) in
                guard self.registered else { throw .EINVAL }
                faulted = 0
                for (k, e) in r.hmmPfns.enumerated() where HMMPfn.isValid(e) && !HMMPfn.isError(e) {
                    let old = self.table[first + k]
                    if old == 0 || (write && old & 1 == 0) { faulted += 1 } // missing, or read-only for a write
                    self.table[first + k] = ODPMemoryRegion.entry(HMMPfn.pfn(e), writable: HMMPfn.isWrite(e))
                }
            }
        } catch {
            throw error == .EBUSY ? .EBUSY : error == .EINVAL ? .EINVAL : .EFAULT
        }
        device.stats.count(.pageFaults, faulted)
    }
}
