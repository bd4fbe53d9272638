import MMSync

/// Callbacks a driver supplies for its device memory (`struct dev_pagemap_ops`).
public protocol DevicePagemapOps: AnyObject {
    /// The last reference to a device page was dropped (`page_free`). The driver returns the
    /// page to its allocator. Locking: none held; must not sleep for long.
    func pageFree(_ page: Page)
    /// A CPU touched a device-private entry (`migrate_to_ram`). The driver migrates the page
    /// (or its folio) back to system memory. Locking: called with the mmap read lock held and
    /// no page-table lock; the faulting page is referenced (and the entry was seen under the PTE
    /// lock). Return: `.ok` or `.retry` to refault, `.sigbus`/`.oom` on failure.
    func migrateToRAM(_ fault: DevicePrivateFault) -> FaultResult
    /// `page_free` for several pages at once (from `putBatch`); by default one `pageFree` each.
    func pageFreeBatch(_ pages: [Page])
    /// `folio_split` (device-private only, from a split of a large device folio): `tail` has
    /// just become a folio of its own, split off `head` (the driver moves its per-page data,
    /// e.g. the backing of `tail`, into it); a last call with `tail == nil` says the head is
    /// now small too. Locking: the folio is frozen (no references) and unmapped.
    func folioSplit(head: Page, tail: Page?)
}

extension DevicePagemapOps {
    public func pageFreeBatch(_ pages: [Page]) { for p in pages { pageFree(p) } }
    public func folioSplit(head: Page, tail: Page?) {}
}

/// A CPU fault on a device-private entry, handed to the owner's `migrateToRAM`.
public struct DevicePrivateFault {
    public let mm: AddressSpace
    public let vma: VMA
    public let address: UInt64
    public let page: Page
    public let isWrite: Bool
    /// The entry is a device-private PMD (`vmf->pte == NULL`): the whole folio may move.
    public let pmdMapped: Bool
    public init(mm: AddressSpace, vma: VMA, address: UInt64, page: Page, isWrite: Bool, pmdMapped: Bool = false) {
        self.mm = mm; self.vma = vma; self.address = address; self.page = page; self.isWrite = isWrite; self.pmdMapped = pmdMapped
    }
}

/// A registration of device memory (`struct dev_pagemap`): a pfn range of one kind, an owner
/// identity (matched by `pgmap_owner` / `dev_private_owner`), and the driver's callbacks.
public final class DevicePagemap: @unchecked Sendable {
    public let kind: MemoryKind
    public let startPfn: UInt64
    public let pageCount: UInt64
    /// The owner cookie: devices compare owners by identity. Weak: physical memory keeps every
    /// registration, and the owner (a driver) keeps the machine.
    public private(set) weak var owner: AnyObject?
    let ownerID: ObjectIdentifier
    public private(set) weak var ops: DevicePagemapOps?
    unowned let memory: PhysicalMemory

    init(memory: PhysicalMemory, kind: MemoryKind, startPfn: UInt64, pageCount: UInt64, owner: AnyObject, ops: DevicePagemapOps) {
        self.memory = memory; self.kind = kind; self.startPfn = startPfn; self.pageCount = pageCount
        self.owner = owner; self.ownerID = ObjectIdentifier(owner); self.ops = ops
    }

    public func contains(_ pfn: UInt64) -> Bool { pfn >= startPfn && pfn < startPfn + pageCount }
    public func isOwned(by candidate: AnyObject?) -> Bool {
        guard let c = candidate, ObjectIdentifier(c) == ownerID else { return false }
        return owner != nil
    }

    func pageFree(_ page: Page) { ops?.pageFree(page) }
    func pageFreeBatch(_ pages: [Page]) { ops?.pageFreeBatch(pages) }
    func folioSplit(head: Page, tail: Page?) { ops?.folioSplit(head: head, tail: tail) }
}

extension PhysicalMemory {
    /// Device pfn space is managed in 256 MiB chunks.
    public static let deviceChunkPages: UInt64 = 1 << 16

    /// Registers `pageCount` pages of device memory (`memremap_pages`). Device-private frames
    /// are not CPU-addressable (their bytes hold device data the CPU never maps); coherent frames
    /// are ordinary memory the CPU maps with present PTEs. Throws ENOMEM when device pfn space is
    /// exhausted, EINVAL for a bad kind or size.
    public func registerDeviceMemory(kind: MemoryKind, pageCount: UInt64, owner: AnyObject,
                                     ops: DevicePagemapOps) throws(Errno) -> DevicePagemap {
        guard kind == .devicePrivate || kind == .deviceCoherent, pageCount > 0,
              pageCount % PhysicalMemory.deviceChunkPages == 0 else { throw .EINVAL }
        let start = try assignDevicePfns(count: pageCount)
        let pgmap = DevicePagemap(memory: self, kind: kind, startPfn: start, pageCount: pageCount, owner: owner, ops: ops)
        for pfn in start..<(start + pageCount) {
            let p = page(pfn)
            p.flagsWord.store(PageFlags.zoneDevice.rawValue)
            p.kind = kind
            p.refcountWord.store(0)
        }
        deviceLock.lock()
        pagemaps.append(pgmap) // a fresh registration: kept for lock-free readers (a few hundred bytes each)
        var chunk = start / PhysicalMemory.deviceChunkPages
        while chunk * PhysicalMemory.deviceChunkPages < start + pageCount {
            pagemapSlot(Int(chunk)).store(UInt64(UInt(bitPattern: Unmanaged.passUnretained(pgmap).toOpaque())), .release)
            chunk += 1
        }
        deviceLock.unlock()
        return pgmap
    }

    /// Unregisters device memory (`memunmap_pages`). EBUSY (and nothing changes) while any
    /// page of it is still referenced or mapped.
    public func unregisterDeviceMemory(_ pgmap: DevicePagemap) throws(Errno) {
        // Refuse a registration that is already gone (its range may belong to someone else now).
        guard deviceLock.withLock({ registered(pgmap) }) else { throw .EINVAL }
        let range = pgmap.startPfn..<(pgmap.startPfn + pgmap.pageCount)
        for pfn in range {
            let p = page(pfn)
            if p.refcount != 0 || p.mapcount != 0 || p.entireMapcount != 0 { throw .EBUSY }
        }
        for pfn in range {
            let p = page(pfn)
            p.flagsWord.store(0); p.kind = .none; p.privateWord = 0
        }
        deviceLock.lock()
        for i in 0..<pagemapSlotCount where pagemapSlot(i).load() == bits(pgmap) { pagemapSlot(i).store(0, .release) }
        releasedDeviceRanges.append((pgmap.startPfn, pgmap.pageCount))
        deviceLock.unlock()
    }

    /// The registrations in place now. Locking: takes deviceLock.
    package func livePagemaps() -> [DevicePagemap] {
        deviceLock.assertNotHeld()
        return deviceLock.withLock { pagemaps.filter { registered($0) } }
    }

    /// The registration a device pfn belongs to (`page_pgmap`).
    public func pagemap(of page: Page) -> DevicePagemap? {
        guard page.pfn >= systemFrames else { return nil }
        let chunk = Int(page.pfn / PhysicalMemory.deviceChunkPages)
        guard chunk < pagemapSlotCount else { return nil }
        let word = pagemapSlot(chunk).load()
        guard word != 0 else { return nil }
        let g = Unmanaged<DevicePagemap>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(word))!).takeUnretainedValue()
        return g.contains(page.pfn) ? g : nil
    }

    private func pagemapSlot(_ chunk: Int) -> AtomicU64Ref { AtomicU64Ref(UnsafeMutableRawPointer(pagemapSlots + chunk)) }
    private func bits(_ g: DevicePagemap) -> UInt64 { UInt64(UInt(bitPattern: Unmanaged.passUnretained(g).toOpaque())) }
    /// Locking: deviceLock held.
    private func registered(_ g: DevicePagemap) -> Bool {
        deviceLock.assertHeld()
        return (0..<pagemapSlotCount).contains { pagemapSlot($0).load() == bits(g) }
    }
}
