import HMM
import MMCore
import MMSync

/// A registered memory region (an MR with its `struct ib_umem_odp`): the NIC's translation of
/// each of its pages, kept coherent with the CPU's page table by an interval notifier over the
/// region (ODP), or fixed by long-term pins (pinned). An implicit region (mlx5's implicit ODP
/// MR: address 0, length `UInt64.max`) covers the whole address space; its translations live
/// in children of one aligned GiB each, made (with their notifiers) on the NIC's first fault
/// in them.
public final class ODPMemoryRegion: @unchecked Sendable {
    public let device: ODPDevice
    public let mm: AddressSpace
    public let address: UInt64
    public let length: UInt64
    public let access: ODPAccess
    public let pinned: Bool
    /// Whether this is an implicit region (the whole address space).
    public let implicit: Bool
    /// Whether the NIC may write the region (its access allows a local or remote write or an
    /// atomic): only then does it ask for writable pages.
    public let writable: Bool
    /// An explicit region's translations (nil for an implicit one).
    private let whole: ODPTranslations?
    /// The MR's lock: whether it is still registered, an implicit region's children by GiB
    /// index. Never held while a span's lock is taken.
    private let mrLock = Lock("odp-mr")
    @exclusivity(unchecked) private var children: [UInt64: ODPTranslations] = [:]
    /// Locking: `mrLock`.
    @exclusivity(unchecked) private var isRegistered = true
    /// NIC accesses (and their page faults) running on the region: deregistration waits for
    /// them, as mlx5's waits for the page faults in flight on the key.
    private let inFlight = AtomicCounter(0)
    private let idle = WaitQueue()
    /// A pinned region's pins. Locking: `whole.lock`.
    @exclusivity(unchecked) private var pins: [Page] = []
    /// Bytes an implicit region's child spans (mlx5's `MLX5_IMR_MTT_SIZE`: 1 GiB).
    public static let childShift: UInt64 = 30

    init(device: ODPDevice, mm: AddressSpace, address: UInt64, length: UInt64, access: ODPAccess,
         pinned: Bool, implicit: Bool) throws(Errno) {
        self.device = device; self.mm = mm; self.address = address; self.length = length
        self.access = access; self.pinned = pinned; self.implicit = implicit
        let writable = access.contains(.localWrite) || access.contains(.remoteWrite) || access.contains(.remoteAtomic)
        self.writable = writable
        guard !implicit else { whole = nil; return }
        let pageStart = address & ~(pageSize - 1)
        let pageEnd = (address + length + pageSize - 1) & ~(pageSize - 1)
        // The translation table (`pfn_list`) is 8 bytes a page, charged to the NIC's limit.
        let t = try ODPTranslations(mm: mm, device: device, pageStart: pageStart, pages: Int((pageEnd - pageStart) >> pageShift))
        whole = t
        guard pinned else { try t.attach(); return }
        mm.mmapLock.lockRead()
        let got: [Page]
        do { got = try mm.getUserPagesRemote(pageStart, count: t.pages, flags: writable ? [.pin, .longterm, .write] : [.pin, .longterm]) }
        catch { mm.mmapLock.unlockRead(); throw error }
        mm.mmapLock.unlockRead()
        t.lock.withLock {
            pins = got
            for (i, p) in got.enumerated() { t.table[i] = ODPTranslations.entry(p.pfn, writable: writable) }
        }
    }

    /// `ibv_dereg_mr`: waits for the NIC accesses running on the region (and their page
    /// faults), then the notifiers go (or the pins are released); the region can no longer be
    /// used (EINVAL). Locking: none held; not from a notifier callback or a NIC access.
    public func deregister() {
        mrLock.assertNotHeld(); whole?.lock.assertNotHeld(); mm.mmapLock.assertNotHeld()
        let was: Bool = mrLock.withLock { let w = isRegistered; isRegistered = false; return w }
        guard was else { return }
        idle.wait { inFlight.load() == 0 }
        if let whole {
            let unpin: [Page] = whole.lock.withLock { let p = pins; pins = []; return p }
            whole.detach()
            mm.unpinUserPages(unpin)
            return
        }
        let spans: [ODPTranslations] = mrLock.withLock {
            let s = Array(children.values)
            children = [:]
            return s
        }
        for s in spans { s.detach() }
    }

    deinit { if !pins.isEmpty { mm.unpinUserPages(pins) } }

    /// Translations the NIC holds now.
    public var mappedPages: Int {
        if let whole { return whole.mapped }
        return mrLock.withLock { Array(children.values) }.reduce(0) { $0 + $1.mapped }
    }

    /// An implicit region's children made so far (mlx5's child MRs).
    public var childCount: Int { mrLock.withLock { children.count } }

    /// The span that holds `address`: the whole region, or an implicit region's child (made,
    /// with its notifier, if it does not exist yet; `implicit_get_child_mr`).
    /// Errors: EINVAL once deregistered or the process exited; ENOMEM past the NIC's table
    /// limit. Locking: none held; the caller is a NIC access in flight.
    private func span(_ address: UInt64) throws(Errno) -> ODPTranslations {
        mrLock.assertNotHeld()
        if let whole { return whole }
        let key = address >> ODPMemoryRegion.childShift
        if let c = mrLock.withLock({ children[key] }) { return c }
        let start = key << ODPMemoryRegion.childShift
        let end = min(start + (1 << ODPMemoryRegion.childShift), taskSize)
        let made = try ODPTranslations(mm: mm, device: device, pageStart: start, pages: Int((end - start) >> pageShift))
        try made.attach()
        // The notifier is inserted without `mrLock`; a child made by another thread meanwhile
        // wins, and ours goes.
        let winner: ODPTranslations? = mrLock.withLock {
            guard isRegistered else { return nil }
            if let c = children[key] { return c }
            children[key] = made
            return made
        }
        if winner !== made { made.detach() }
        guard let winner else { throw .EINVAL }
        return winner
    }

    /// `ibv_advise_mr` (prefetch): faults [address, address + length) in now, writable if
    /// `write`. Errors: as an access.
    public func advise(_ address: UInt64, length: Int, write: Bool) throws(Errno) {
        try access(address, length, write: write) { _, _, _ in }
    }

    /// The NIC's access to [address, address + length) of the region: `body(bytes, done, n)`
    /// for each page's span, called under its span's lock (an invalidation waits for it); a
    /// missing or read-only translation is faulted in first (a NIC page fault: `hmmRangeFault`
    /// under the notifier protocol, for the rest of the access up to 2 MiB).
    /// Errors: EINVAL for a deregistered region; EFAULT outside the region (for an implicit
    /// one, past the top of user space) or for a page that cannot be faulted in (no VMA,
    /// protection, no memory); EPERM for a write to a region that is not writable; EBUSY if
    /// invalidations kept overtaking (1,000 faults of one page in a row, or the fault loop's 1 s);
    /// ENOMEM when an implicit region's new child would pass the NIC's table limit.
    /// Locking: none held.
    func access(_ address: UInt64, _ length: Int, write: Bool,
                _ body: (UnsafeMutableRawPointer, Int, Int) -> Void) throws(Errno) {
        mrLock.assertNotHeld(); whole?.lock.assertNotHeld()
        // In flight until it returns: deregistration waits for it.
        guard mrLock.withLock({ () -> Bool in
            guard isRegistered else { return false }
            inFlight.add(1)
            return true
        }) else { throw .EINVAL }
        defer { if inFlight.add(-1) == 0 { idle.wakeAll() } }
        guard length >= 0, address >= self.address, address.addingReportingOverflow(UInt64(length)).overflow == false,
              address + UInt64(length) <= self.address &+ self.length, address + UInt64(length) <= taskSize else { throw .EFAULT }
        // Never a write fault on a region the NIC may not write (it would break copy-on-write).
        guard !write || writable else { throw .EPERM }
        let memory = device.machine.memory
        let accessEnd = address + UInt64(length)
        var done = 0, faultsHere = 0
        var t: ODPTranslations? = nil
        while done < length {
            if t == nil || address + UInt64(done) >= t!.pageEnd { t = try span(address + UInt64(done)) }
            let s = t!
            // One lock hold for the run of pages of this span that are translated (as a NIC's
            // DMA of them is in flight together); it stops at the first miss.
            var missed = -1
            s.lock.lock()
            guard s.live else { s.lock.unlock(); throw .EINVAL }
            let spanEnd = s.pageEnd
            while done < length {
                let a = address + UInt64(done)
                guard a < spanEnd else { break }
                let index = Int((a - s.pageStart) >> pageShift)
                let e = s.table[index]
                guard e != 0 && (!write || e & 1 != 0) else { missed = index; break }
                let offset = Int(a & (pageSize - 1))
                let n = min(length - done, Int(pageSize) - offset)
                body(memory.frame(e >> 2) + offset, done, n)
                done += n
                faultsHere = 0
            }
            s.lock.unlock()
            guard missed >= 0 else { continue }
            // Invalidations that keep taking the page between the fault and the access: EBUSY,
            // never a livelock.
            faultsHere += 1
            guard faultsHere <= 1000 else { throw .EBUSY }
            guard !pinned else { throw .EFAULT } // a pinned region's translation never misses (read-only: EFAULT)
            let index = missed
            let endIndex = Int(((min(accessEnd, s.pageEnd) - 1) - s.pageStart) >> pageShift) + 1
            try s.fault(index, upTo: endIndex, write: write)
        }
    }
}
