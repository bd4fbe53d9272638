import HMM
import MMCore
import MMSync

/// One open of a dmirror device (`struct dmirror`): a device page table mirroring one address
/// space, kept coherent by an interval notifier over the whole space.
///
/// Device page-table entries are a page (pfn) with a 2-bit tag: read-only (0), WRITE (3) or
/// ATOMIC (1, exclusive access). For device-private memory the page is the backing system
/// page; for coherent memory it is the coherent page itself.
public final class Dmirror: @unchecked Sendable {
    public let device: DmirrorDevice
    public let mm: AddressSpace
    var machine: Machine { device.machine }
    var memory: PhysicalMemory { device.machine.memory }
    /// The mirror's mutex: guards `pt` and `flags`; taken by the notifier callback.
    let mutex = Lock("dmirror")
    /// Locking: `mutex`.
    let pt = DmirrorPageTable()
    /// Locking: `mutex`.
    var flags: UInt64 = 0
    private(set) var notifier: MMUIntervalNotifier!
    /// Reusable bounce buffers (a fresh multi-MiB allocation per command would cost a host
    /// page fault per page). Locking: `bounceLock`.
    @exclusivity(unchecked) var bouncePool: [UnsafeMutableRawBufferPointer] = []
    let bounceLock = Lock("dmirror-bounce")
    public private(set) var isOpen = true
    private let cutOffWord = AtomicCounter(0)
    /// This mirror's id on its device (see `DmirrorDevice.mirrors`).
    var mirrorID: UInt64 = 0
    /// The id that `DmirrorDevice.pageCensus` reports this mirror's pages under.
    public var id: UInt64 { mirrorID }

    static let tagRead: UInt64 = 0
    static let tagAtomic: UInt64 = 1
    static let tagWrite: UInt64 = 3

    /// Pages per fault and snapshot batch (`pfns[32]`), and per migration batch (PTRS_PER_PTE).
    static let faultBatch: UInt64 = 32
    static let migrateBatch: UInt64 = 512
    /// Largest bounce buffer a command allocates (16 GiB of pages).
    static let maxBouncePages: UInt64 = 1 << 22

    init(device: DmirrorDevice, mm: AddressSpace) throws(Errno) {
        self.device = device
        self.mm = mm
        guard !mm.isDead else { throw .EINVAL }
        // Weak: an invalidation that found this interval may call it after the last reference
        // went away (deinit is then removing it); there is nothing left to invalidate.
        notifier = MMUIntervalNotifier(start: 0, end: UInt64.max & pageMask) { [weak self] sub, range, seq in
            guard let self else { sub.setSeq(seq); return .done }
            return self.invalidateStart(sub, range, seq)
        }
        try mm.notifiers.insert(notifier)
    }

    /// `close()`: removes the notifier and drops the device page table. Device memory stays
    /// (pages migrated by this mirror remain on the device until faulted back or released).
    public func close() {
        guard isOpen else { return }
        mm.notifiers.remove(notifier)
        mutex.withLock { pt.removeAll(); isOpen = false }
    }

    deinit {
        // `notifier` is nil when init failed (an exited mm): nothing was inserted.
        // Without waiting: the last reference may go inside an invalidation (a finish pass or a
        // callback held it), whose end the removal would wait for. The callback sees no mirror
        // from now on and only publishes the sequence.
        if isOpen, let notifier { mm.notifiers.remove(notifier, wait: false) }
        if mirrorID != 0 { device.forget(mirrorID: mirrorID) }
        for b in bouncePool { b.deallocate() }
    }

    /// A bounce buffer of at least `bytes` (`dmirror_bounce_init`); give it back with
    /// `returnBounce`.
    func takeBounce(_ bytes: Int) -> UnsafeMutableRawBufferPointer {
        let b = bounceLock.withLock { () -> UnsafeMutableRawBufferPointer? in
            guard let i = bouncePool.firstIndex(where: { $0.count >= bytes }) else { return nil }
            return bouncePool.remove(at: i)
        }
        return b ?? .allocate(byteCount: max(bytes, Int(pageSize)), alignment: 4096)
    }
    func returnBounce(_ b: UnsafeMutableRawBufferPointer) {
        let keep = bounceLock.withLock { () -> Bool in
            guard bouncePool.count < 2 else { return false }
            bouncePool.append(b)
            return true
        }
        if !keep { b.deallocate() }
    }

    /// `dmirror_interval_invalidate`, as the first pass of a two-pass notifier: the entries go
    /// under the mutex, then the device's TLB shootdown (`DeviceShootdown`: its latency, if the
    /// device has one) is waited for here, or, with two-phase invalidation, in the finish pass.
    /// A non-blockable range that would have to wait for a shootdown is refused; a failed
    /// shootdown cuts the mirror off.
    /// Locking: called by the core with no mirror lock held; takes `mutex`.
    private func invalidateStart(_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ seq: UInt64) -> IntervalInvalidationStart {
        mutex.assertNotHeld()
        // Weak: the finish may run after the last reference to the mirror went.
        return device.shootdown.start(blockable: range.blockable, isCutOff: isCutOff,
                                      drop: { invalidate(sub, range, seq) }, cutOff: { { [weak self] in self?.cutOff() } })
    }

    /// Cuts this mirror off its device (the 2014 HMM review's rule for a device that cannot
    /// invalidate: tear its mirror down, never leave it stale access): every entry goes, and
    /// every command fails with EIO. The notifier stays until `close` (it cannot be removed
    /// from inside an invalidation) and only publishes sequences. Locking: takes `mutex`.
    func cutOff() {
        mutex.assertNotHeld()
        mutex.withLock {
            pt.removeAll()
            cutOffWord.store(1)
        }
    }

    /// Whether the mirror was cut off (its device failed a shootdown).
    public var isCutOff: Bool { cutOffWord.load() != 0 }

    /// The one-pass work: entries dropped, the sequence published.
    private func invalidate(_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ seq: UInt64) -> Bool {
        if range.blockable { mutex.lock() } else if !mutex.tryLock() { return false }
        // The sequence always moves, so a device fault that walked before this invalidation
        // retries instead of installing a page that is about to be freed.
        sub.setSeq(seq)
        // Migrations this mirror started keep its table up to date themselves (the kernel
        // driver compares with the device; we compare with the mirror, so other mirrors of the
        // same device still drop their entries).
        if !(range.event == .migrate && range.isOwned(by: self)) { doUpdate(range.start, range.end) }
        mutex.unlock()
        return true
    }

    /// `dmirror_do_update`: erases entries of [start, end]. Quirk kept from the driver: the
    /// upper page index is inclusive, so one page past the range goes too.
    /// Locking: `mutex` held.
    func doUpdate(_ start: UInt64, _ end: UInt64) {
        mutex.assertHeld()
        pt.removeRange(start >> pageShift, end >> pageShift)
    }

    /// Erases one entry (used when the device migrates a page back).
    func erase(vpn: UInt64) { mutex.withLock { pt[vpn] = nil } }

    // MARK: device table access (for tests and invariants)

    /// The device table entry for `address`: (pfn, tag) or nil.
    public func entry(at address: UInt64) -> (pfn: UInt64, tag: UInt64)? {
        mutex.withLock { pt[address >> pageShift].map { ($0 >> 2, $0 & 3) } }
    }
    public var entryCount: Int { mutex.withLock { pt.count } }

    // MARK: the device fault (`dmirror_fault`)

    /// Faults [start, end) into the device table in batches of 32 pages through the canonical
    /// loop. A dead mm is success doing nothing (as the driver's mmget_not_zero check).
    func fault(_ start: UInt64, _ end: UInt64, write: Bool) throws(Errno) {
        guard !mm.isDead else { throw .EFAULT }  // mmget_not_zero failed (Linux 7.2: -EFAULT)
        var addr = start
        while addr < end {
            let next = min(end, addr + Dmirror.faultBatch * pageSize)
            var range = HMMRange(notifier: notifier, notifierSeq: 0, start: addr, end: next,
                                 defaultFlags: HMMPfn.requestFault | (write ? HMMPfn.requestWrite : 0),
                                 devPrivateOwner: device)
            try HMMMirror.faultAndProgram(&range, driverLock: mutex) { (r: HMMRange) throws(Errno) in
                try self.doFault(r)
            }
            addr = next
        }
    }

    /// `dmirror_do_fault`: stores every page of the range in the device table.
    /// Locking: `mutex` held.
    private func doFault(_ range: HMMRange) throws(Errno) {
        mutex.assertHeld()
        guard !isCutOff else { throw .EIO } // cut off while the command ran
        var vpn = range.start >> pageShift
        for e in range.hmmPfns {
            guard HMMPfn.isValid(e), !HMMPfn.isError(e) else { throw .EFAULT }
            var page = memory.page(HMMPfn.pfn(e))
            // Our own device-private pages are reported, not faulted: the device reaches their
            // data through the backing page (the kernel driver stores the ZONE_DEVICE page
            // itself here, a latent gap the spec asks us not to copy).
            if page.isDevicePrivate { page = device.backingPage(page) }
            var entry = page.pfn << 2
            if HMMPfn.isWrite(e) { entry |= Dmirror.tagWrite } else if range.defaultFlags & HMMPfn.requestWrite != 0 { throw .EFAULT }
            pt[vpn] = entry
            vpn += 1
        }
    }
}

extension Dmirror {
    /// `mmap` of the device file itself (`dmirror_fops_mmap`): a mixed-map VMA with a freshly
    /// zeroed driver page inserted at every page. Errors: EINVAL, ENOMEM.
    public func mmapDevice(length: UInt64, prot: Protection, flags: MapFlags) throws(Errno) -> UInt64 {
        guard isOpen else { throw .EINVAL }
        guard length > 0, let len = pageAlignUp(length), len <= 1 << 30 else { throw .EINVAL }
        var pages: [Page] = []
        defer { for p in pages { memory.put(p) } } // the mappings keep their own references
        for _ in 0..<(len >> pageShift) {
            guard let p = memory.allocate(order: 0, zeroed: true, mayReclaim: true) else { throw .ENOMEM }
            pages.append(p)
        }
        return try mm.mmapDriverPages(length: len, prot: prot, flags: flags, pages: pages)
    }
}
