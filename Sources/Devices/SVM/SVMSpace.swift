import HMM
import MMCore
import MMSync

/// One device page-table entry: a page the device may access at a virtual page.
struct SVMEntry: Equatable {
    /// The page: a system frame, or a device-private pfn of this device (`local`).
    let pfn: UInt64
    let write: Bool
    /// Exclusive access to a system page (a device-exclusive entry in the CPU's table):
    /// atomics allowed.
    let atomic: Bool
    /// In this device's own memory.
    let local: Bool
}

/// A process address space bound to an SVM device (nouveau's `nouveau_svmm`): the device's
/// page table for it, kept coherent by an interval notifier over the whole address space.
public final class SVMSpace: @unchecked Sendable {
    public let device: SVMDevice
    public let mm: AddressSpace
    /// The device page table's lock (the driver lock of the notifier protocol): the notifier
    /// callback, the fault thread's programming and every engine access take it, so a page
    /// cannot be freed or moved while an engine reads or writes it.
    let lock = Lock("svm-space")
    /// Virtual page number → entry. Locking: `lock`.
    @exclusivity(unchecked) var table: [UInt64: SVMEntry] = [:]
    private(set) var notifier: MMUIntervalNotifier!
    /// Bumped whenever an entry goes or changes: an engine whose TLB saw another generation
    /// flushes it before its next lookup (a shootdown that takes effect under `lock`, so no TLB
    /// entry outlives the invalidation that dropped it). Locking: `lock`.
    @exclusivity(unchecked) var tlbGeneration: UInt64 = 0
    /// Remote accesses per 64 KiB region since its counter last fired. Locking: `lock`.
    @exclusivity(unchecked) var remoteAccesses: [UInt64: Int] = [:]
    static let counterRegionShift: UInt64 = 16
    let id: Int

    init(device: SVMDevice, mm: AddressSpace, id: Int) throws(Errno) {
        self.device = device
        self.mm = mm
        self.id = id
        guard !mm.isDead else { throw .EINVAL }
        notifier = MMUIntervalNotifier(start: 0, end: UInt64.max & pageMask, invalidateStart: { [weak self] sub, range, seq in
            guard let self else { sub.setSeq(seq); return .done }
            return self.invalidateStart(sub, range, seq)
        })
        try mm.notifiers.insert(notifier)
    }

    /// Set (under `lock`) when a shootdown failed: the space has no entries and programs none
    /// again; its faults are fatal (EIO). Locking: written under `lock`.
    private let cutOffWord = AtomicCounter(0)
    /// Whether the device's mirror of this space was cut off (a shootdown it never confirmed).
    public var isCutOff: Bool { cutOffWord.load() != 0 }

    /// The first pass (`DeviceShootdown.start`): the entries go, then the device's TLB
    /// shootdown is waited for (its latency, `device.shootdown`) here or in the finish pass.
    /// Like xe's notifier, a range that held no entry needs no shootdown (and a non-blockable
    /// one is refused only if the space holds entries in it). A failed shootdown cuts the
    /// space off. Locking: called by the core with no device lock held.
    private func invalidateStart(_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ seq: UInt64) -> IntervalInvalidationStart {
        lock.assertNotHeld()
        var dropped = false
        return device.shootdown.start(blockable: range.blockable, isCutOff: isCutOff, mayNeed: { mayHoldEntries(range.start, range.end) },
                                      needed: { dropped }, drop: {
            guard let n = invalidate(sub, range, seq) else { return false }
            dropped = n > 0
            return true
        }, cutOff: { { [weak self] in self?.cutOff() } })
    }

    /// Cuts the device's mirror of this space off (the 2014 HMM review's rule for a device
    /// that cannot invalidate): every entry goes, none is programmed again, and every fault in
    /// the space cancels its kernel with EIO. The notifier stays until the space is unbound.
    /// Locking: takes `lock`.
    func cutOff() {
        lock.assertNotHeld()
        lock.withLock {
            cutOffWord.store(1)
            table.removeAll()
            tlbGeneration &+= 1
        }
    }

    /// The notifier callback (`nouveau_svm_range_invalidate`): drops the device's entries in
    /// the range under the table lock and publishes the new sequence. The device's own
    /// EXCLUSIVE invalidation is skipped, as nouveau skips it: the page stays the same, and
    /// the fault thread maps it atomic right after (with its own sequence check).
    /// Return: the entries dropped, or nil if a non-blockable range found `lock` taken.
    /// Locking: called by the core with no device lock held; takes `lock` (or tries, for a
    /// non-blockable range).
    private func invalidate(_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ seq: UInt64) -> Int? {
        lock.assertNotHeld()
        if range.event == .exclusive && range.isOwned(by: device) { return 0 }
        if range.blockable { lock.lock() } else if !lock.tryLock() { return nil }
        sub.setSeq(seq)
        // The device's own migration (`migrate_vma` collects no device-exclusive entry) leaves
        // its atomic entries: their pages stay where they are, exclusive.
        let keepAtomic = range.event == .migrate && range.isOwned(by: device)
        let dropped = dropEntries(range.start, range.end, keepAtomic: keepAtomic)
        lock.unlock()
        if dropped > 0 {
            device.trace?.record(.invalidate(start: range.start, end: range.end), virtual: device.faultClock.now)
            device.stats.count(.invalidations)
            device.faultClock.advance(by: device.costs.tlbInvalidateNs)
        }
        return dropped
    }

    /// Whether the space may hold entries in [start, end): true if it does, or if `lock` is
    /// taken (a non-blockable caller cannot wait to look). Locking: tries `lock`.
    func mayHoldEntries(_ start: UInt64, _ end: UInt64) -> Bool {
        lock.assertNotHeld()
        guard start < end else { return false }
        guard lock.tryLock() else { return true }
        defer { lock.unlock() }
        let first = start >> pageShift, last = (end - 1) >> pageShift
        if last - first < UInt64(table.count) { return (first...last).contains { table[$0] != nil } }
        return table.keys.contains { $0 >= first && $0 <= last }
    }

    /// Removes the entries of [start, end) (but atomic ones, with `keepAtomic`).
    /// Return: how many. Locking: `lock` held.
    func dropEntries(_ start: UInt64, _ end: UInt64, keepAtomic: Bool = false) -> Int {
        lock.assertHeld()
        guard !table.isEmpty else { return 0 }
        let first = start >> pageShift, last = (end - 1) >> pageShift
        let before = table.count
        if last - first < UInt64(table.count) {
            for vpn in first...last where !(keepAtomic && table[vpn]?.atomic == true) { table.removeValue(forKey: vpn) }
        } else {
            table = table.filter { $0.key < first || $0.key > last || (keepAtomic && $0.value.atomic) }
        }
        if before != table.count { tlbGeneration &+= 1 }
        return before - table.count
    }

    /// Programs the entry of virtual page `vpn`; replacing a different entry shoots down the
    /// engines' TLBs (a new entry needs none: no TLB holds it). Locking: `lock` held.
    @inline(__always) func setEntry(_ vpn: UInt64, _ e: SVMEntry) {
        lock.assertHeld()
        if let old = table.updateValue(e, forKey: vpn), old != e { tlbGeneration &+= 1 }
    }

    /// Device page-table entries now (for tests and reports).
    public var mappedPages: Int { lock.withLock { table.count } }
    /// Entries that point into the device's own memory.
    public var localPages: Int { lock.withLock { table.values.reduce(0) { $0 + ($1.local ? 1 : 0) } } }

    /// Stops mirroring: every entry goes, then the notifier (no engine or fault thread may
    /// run: the device has stopped them).
    func unbind() {
        lock.withLock { table.removeAll(); tlbGeneration &+= 1 }
        mm.notifiers.remove(notifier)
    }

    /// Every device entry agrees with the CPU's page table: a local entry's address holds a
    /// device-private entry of that pfn (a device-private PMD of its 2 MiB device page), an atomic one a device-exclusive entry of that pfn,
    /// any other a present PTE of that pfn, writable if the device entry is. Return: the
    /// problems found. Locking: takes the mmap lock for read and `lock`; run it when no
    /// engine, fault thread or CPU is changing the range (a quiescent point).
    public func checkInvariants() -> [String] {
        mm.mmapLock.assertNotHeld(); lock.assertNotHeld()
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        return lock.withLock {
            var problems: [String] = []
            for (vpn, e) in table.sorted(by: { $0.key < $1.key }) {
                let addr = vpn << pageShift
                let what = "svm space \(id) page \(String(addr, radix: 16))"
                guard let found = mm.pageTable.lookup(addr, level: .pte) else {
                    problems.append("\(what): mapped by the device, not by the CPU"); continue
                }
                var v = found.entry.load()
                // The subpage of a huge entry the device maps (a 2 MiB device page's, a THP's).
                var subpage: UInt64 = 0
                if found.level != .pte {
                    subpage = (addr & (found.level.size - 1)) >> pageShift
                    if v.isSwap && v.swapEntry.isDevicePrivate && found.level == .pmd {
                        // A 2 MiB device page mapped by a device-private PMD.
                    } else {
                        // A huge leaf (a THP or hugetlb page): the device maps its subpage.
                        guard v.isPresent && v.isHuge else { problems.append("\(what): CPU entry \(v) at \(found.level)"); continue }
                        v = PTE(raw: (v.raw & ~PTE.pfnMask) | (v.pfn + subpage) << pageShift)
                    }
                }
                if e.local {
                    let s = v.swapEntry
                    if !(v.isSwap && s.isDevicePrivate && s.pfn + subpage == e.pfn) {
                        problems.append("\(what): local pfn \(e.pfn), CPU entry \(v)")
                    }
                    if e.write && !s.isWrite { problems.append("\(what): writable on the device, read-only device-private entry") }
                } else if e.atomic {
                    let s = v.swapEntry
                    if !(v.isSwap && s.isDeviceExclusive && s.pfn == e.pfn) { problems.append("\(what): atomic pfn \(e.pfn), CPU entry \(v)") }
                } else {
                    if !(v.isPresent && v.pfn == e.pfn) { problems.append("\(what): pfn \(e.pfn), CPU entry \(v)") }
                    else if e.write && !v.isWrite { problems.append("\(what): writable on the device, read-only for the CPU") }
                }
            }
            return problems
        }
    }
}
