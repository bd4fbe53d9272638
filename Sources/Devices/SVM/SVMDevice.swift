import HMM
import MMCore
import MMSync
#if canImport(Glibc)
import Glibc
#endif

/// A GPU-like device with shared virtual memory, written on swift-hmm's public HMM API only,
/// as an out-of-tree driver would be (after nouveau's SVM and NVIDIA's UVM):
/// - device memory of a fixed capacity, in 2 MiB chunks of 4 KiB device-private pages, its
///   bytes in an arena of its own (the CPU cannot address it);
/// - a page table per bound address space (`SVMSpace`), kept coherent by an interval notifier;
/// - compute engines (threads) that run kernels of loads, stores and atomics on user
///   addresses; a miss writes a replayable fault into a bounded buffer and stalls the engine;
/// - a fault thread that drains the buffer in batches, services them under the notifier
///   protocol (`hmmRangeFault`, `MigrateVMA`, `makeDeviceExclusive`) as its `policy` says,
///   and replays the engines;
/// - eviction of the least recently used chunk when its memory is full, and `migrateToRAM`
///   when the CPU touches a page that lives here.
/// Every action has a virtual-time cost (`costs`).
public final class SVMDevice: DevicePagemapOps, @unchecked Sendable {
    public let machine: Machine
    var memory: PhysicalMemory { machine.memory }
    public let costs: SVMCosts
    /// Device memory in 4 KiB pages, a whole number of 2 MiB chunks.
    public let capacityPages: Int
    public static let chunkPages = 512
    /// Pages drained per batch at most (UVM's default batch size).
    public static let batchSize = 256

    /// The device's bytes: page i of the pagemap at `arena + i * 4096`.
    let arena: UnsafeMutableRawPointer
    let arenaBytes: Int
    private(set) var pagemap: DevicePagemap!
    /// Guards the allocator (free list, chunk use), the bound spaces and the policy.
    let lock = Lock("svm-device")
    /// Free device pfns. Locking: `lock`.
    @exclusivity(unchecked) var freePfns: [UInt64] = []
    /// Per page of the pagemap: allocated (in use by a folio). Locking: `lock`.
    @exclusivity(unchecked) var allocated: [Bool]
    /// Per chunk: when it was last filled or mapped (a tick of `useTick`). Locking: `lock`.
    @exclusivity(unchecked) var chunkLastUse: [UInt64]
    @exclusivity(unchecked) var useTick: UInt64 = 0
    /// Locking: `lock`.
    @exclusivity(unchecked) var spaces: [SVMSpace] = []
    /// Kernels running now. Locking: `lock`.
    @exclusivity(unchecked) private var active: [ObjectIdentifier: SVMLaunch] = [:]
    @exclusivity(unchecked) private var policyStorage: SVMPolicy
    public let stats = SVMStats()
    /// The device's TLB shootdown (issue 17, as dmirror's): a latency every invalidation that
    /// drops entries waits for, in the notifier's one pass or the second pass of two-pass
    /// notifiers; a device that never confirms has the space cut off (`SVMSpace.isCutOff`).
    public let shootdown = DeviceShootdown()
    /// The event log, if tracing was asked for at creation.
    public let trace: SVMTrace?
    /// Per page of the pagemap: the virtual address it was migrated for (for the trace's
    /// eviction events). Locking: `lock`.
    @exclusivity(unchecked) var pageAddress: [UInt64]
    let faults = SVMFaultBuffer(capacity: 4096)
    /// Woken after every batch: engines wait here for their replay.
    let replayQueue = WaitQueue()
    /// The fault thread's virtual time; engines resume no earlier than its batch end.
    let faultClock = SVMClock()
    private var faultThread: ModelThread? = nil
    private var nextSpaceID = 0

    /// A device with `capacityBytes` of memory (a multiple of 2 MiB, at most the machine's
    /// device pfn space allows) and a placement policy.
    /// Errors: EINVAL for a capacity that is zero or not whole chunks; ENOMEM/ENOSPC when the
    /// memory or its pfn space cannot be had.
    public init(machine: Machine, capacityBytes: UInt64 = 256 << 20, policy: SVMPolicy = SVMFirstTouchPolicy(),
                costs: SVMCosts = SVMCosts(), trace: SVMTrace? = nil) throws(Errno) {
        let chunkBytes = UInt64(SVMDevice.chunkPages) << pageShift
        guard capacityBytes > 0, capacityBytes % chunkBytes == 0 else { throw .EINVAL }
        self.machine = machine
        self.costs = costs
        self.trace = trace
        self.policyStorage = policy
        capacityPages = Int(capacityBytes >> pageShift)
        arenaBytes = Int(capacityBytes)
        guard let a = mmap(nil, arenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              a != MAP_FAILED else { throw .ENOMEM }
        arena = a
        allocated = []
        pageAddress = []
        chunkLastUse = [UInt64](repeating: 0, count: capacityPages / SVMDevice.chunkPages)
        let pfnSpace = (UInt64(capacityPages) + PhysicalMemory.deviceChunkPages - 1) / PhysicalMemory.deviceChunkPages
            * PhysicalMemory.deviceChunkPages
        do {
            pagemap = try machine.memory.registerDeviceMemory(kind: .devicePrivate, pageCount: pfnSpace, owner: self, ops: self)
        } catch {
            throw error // deinit unmaps the arena (every stored property is set by now)
        }
        allocated = [Bool](repeating: false, count: capacityPages)
        pageAddress = [UInt64](repeating: 0, count: capacityPages)
        freePfns = (0..<UInt64(capacityPages)).reversed().map { pagemap.startPfn + $0 }
        faultThread = ModelThread.spawn(name: "svm-faults") { [self] in faultLoop() }
    }

    deinit { munmap(arena, arenaBytes) }

    /// The placement policy; change it between kernels. Locking: takes `lock`.
    public var policy: SVMPolicy {
        get { lock.withLock { policyStorage } }
        set { lock.withLock { policyStorage = newValue } }
    }

    /// Binds an address space (`nouveau_svmm_init`): the device mirrors it from now on.
    public func bind(_ mm: AddressSpace) throws(Errno) -> SVMSpace {
        let id = lock.withLock { nextSpaceID += 1; return nextSpaceID }
        let s = try SVMSpace(device: self, mm: mm, id: id)
        lock.withLock { spaces.append(s) }
        return s
    }

    /// Whether the device uses 2 MiB device pages (an order-9 device folio in a whole free
    /// chunk) for a 2 MiB-aligned source that is a THP or an empty 2 MiB, as UVM maps big
    /// pages; otherwise every page is a 4 KiB one. Set it between kernels.
    public var largePages: Bool {
        get { largeWord.load() != 0 }
        set { largeWord.store(newValue ? 1 : 0) }
    }
    private let largeWord = AtomicCounter(1)

    /// Free device memory, in pages.
    public var freePages: Int { lock.withLock { freePfns.count } }
    /// The device's virtual time now (the fault thread's clock).
    public var virtualNanoseconds: UInt64 { faultClock.now }

    // MARK: device memory

    /// Where the bytes of device page `pfn` live. Precondition: `pfn` is this device's.
    @inline(__always) func bytes(of pfn: UInt64) -> UnsafeMutableRawPointer {
        arena + Int(pfn - pagemap.startPfn) << Int(pageShift)
    }

    /// Whether `pfn` is one of this device's pages.
    @inline(__always) func isLocal(_ pfn: UInt64) -> Bool {
        pfn >= pagemap.startPfn && pfn < pagemap.startPfn + UInt64(capacityPages)
    }

    /// Takes a free device page. Locking: takes `lock`.
    func allocatePage() -> UInt64? {
        lock.assertNotHeld()
        return lock.withLock { () -> UInt64? in
            guard let pfn = freePfns.popLast() else { return nil }
            let i = Int(pfn - pagemap.startPfn)
            allocated[i] = true
            useTick += 1
            chunkLastUse[i / SVMDevice.chunkPages] = useTick
            return pfn
        }
    }

    /// Whether some chunk has no page in use (a 2 MiB device page can be had without
    /// eviction). Locking: takes `lock`.
    var hasFreeChunk: Bool {
        lock.assertNotHeld()
        return lock.withLock { freeChunkIndex() != nil }
    }

    /// The first chunk none of whose pages is allocated. Locking: `lock` held.
    private func freeChunkIndex() -> Int? {
        lock.assertHeld()
        let n = SVMDevice.chunkPages
        guard freePfns.count >= n else { return nil }
        return (0..<(capacityPages / n)).first { c in !allocated[(c * n)..<(c * n + n)].contains(true) }
    }

    /// Takes a whole free chunk as one 2 MiB device page (an order-9 folio's pfns): the first
    /// chunk none of whose pages is allocated. Return: the head pfn, or nil if every chunk
    /// has a page in use. Locking: takes `lock`.
    func allocateChunk() -> UInt64? {
        lock.assertNotHeld()
        return lock.withLock { () -> UInt64? in
            let n = SVMDevice.chunkPages
            guard let c = freeChunkIndex() else { return nil }
            let head = pagemap.startPfn + UInt64(c * n)
            freePfns.removeAll { $0 >= head && $0 < head + UInt64(n) }
            for i in (c * n)..<(c * n + n) { allocated[i] = true }
            useTick += 1
            chunkLastUse[c] = useTick
            return head
        }
    }

    /// Marks the chunks of local pages just mapped as used now. Locking: takes `lock`.
    func touchChunks(_ pfns: [UInt64]) {
        lock.assertNotHeld()
        guard !pfns.isEmpty else { return }
        lock.withLock {
            useTick += 1
            for p in pfns { chunkLastUse[Int(p - pagemap.startPfn) / SVMDevice.chunkPages] = useTick }
        }
    }

    // MARK: `dev_pagemap_ops`

    /// `page_free`: a device page's last reference went; it is free again (a 2 MiB device
    /// page, its head named, all its 512: the folio is dissolved into free small pages, as
    /// this allocator hands out pages of a free chunk one by one; a free folio left whole
    /// would be half-split by the first of them).
    public func pageFree(_ page: Page) {
        let n = page.test(.head) ? Int(page.folioPages) : 1
        if n > 1 {
            // Tails keep naming the head (a racing reader of a tail's head stays in bounds).
            for k in 1..<UInt64(n) { memory.page(page.pfn + k).clear(.tail) }
            page.clear(.head)
            page.order = 0
        }
        lock.withLock {
            let first = Int(page.pfn - pagemap.startPfn)
            guard first >= 0, first + n <= capacityPages else { return }
            var freed: [UInt64] = []
            for i in first..<(first + n) where allocated[i] {
                allocated[i] = false
                freed.append(pagemap.startPfn + UInt64(i))
            }
            // A whole chunk's pages go to the bottom of the free list (taken last), so small
            // pages come from chunks already in use and whole chunks stay whole for 2 MiB pages.
            if n > 1 { freePfns.insert(contentsOf: freed.reversed(), at: 0) } else { freePfns += freed }
        }
    }

    /// `migrate_to_ram` (`nouveau_dmem_migrate_to_ram`): the CPU touched a page that lives
    /// here; that page goes back to system memory with its bytes.
    /// A 2 MiB device page mapped by a device-private PMD moves whole as one system THP (with
    /// no 2 MiB of system memory free, its PMD is split and the refault moves the faulting
    /// page only); one mapped by PTEs (split) moves page by page.
    public func migrateToRAM(_ fault: DevicePrivateFault) -> FaultResult {
        // The system THP first. Without one, 512 small destinations: the device folio cannot
        // be split under the fault's reference, so nothing moves, but its PMD becomes 512
        // PTEs on the way and the refault moves the faulting page alone (as dmirror's path
        // does; a one-page migration of a PMD-mapped folio would find nothing to collect).
        let whole = fault.pmdMapped && fault.page.folioHead.order > 0
        let folio = whole ? memory.allocate(order: pmdOrder) : nil
        let start = whole ? fault.address & pmdMask : fault.address & ~(pageSize - 1)
        let m = MigrateVMA(vma: fault.vma, start: start, end: start + (whole ? pmdSize : pageSize), pgmapOwner: self,
                           flags: whole ? [.devicePrivate, .compound] : .devicePrivate, faultPage: fault.page)
        do { try m.setup() } catch { folio.map { memory.put($0) }; return .sigbus }
        guard copyBackToSystem(m, folio: folio) else { m.finalize(); return .oom }
        m.pages()
        let entries = SVMDevice.movedEntries(m.src, m.dst)
        let moved = SVMDevice.addresses(m.start, entries)
        let n = moved.count
        stats.count(.hugeToSystem, SVMDevice.hugeCount(entries))
        m.finalize()
        trace?.record(.toSystem(addresses: moved, cause: .cpuFault), virtual: faultClock.now)
        stats.count(.cpuFaultsBack, n)
        stats.count(.migratedToSystem, n)
        stats.count(.bytesToSystem, n * Int(pageSize))
        chargeCopy(n)
        return .ok
    }

    /// The entries that moved in a migration, after `pages`: index and pages (512 for a
    /// 2 MiB entry, COMPOUND both ways; else 1).
    static func movedEntries(_ src: [UInt64], _ dst: [UInt64]) -> [(index: Int, pages: Int)] {
        src.indices.compactMap { i in
            guard src[i] & MigratePfn.migrate != 0, MigratePfn.pfn(dst[i]) != nil else { return nil }
            return (i, dst[i] & MigratePfn.compound != 0 ? ptrsPerTable : 1)
        }
    }

    /// How many of `movedEntries` moved as 2 MiB entries.
    static func hugeCount(_ moved: [(index: Int, pages: Int)]) -> Int { moved.reduce(0) { $0 + ($1.pages > 1 ? 1 : 0) } }

    /// The addresses of the pages that moved in a migration from `start` (of `movedEntries`).
    static func addresses(_ start: UInt64, _ moved: [(index: Int, pages: Int)]) -> [UInt64] {
        moved.flatMap { e in (0..<e.pages).map { start + UInt64(e.index + $0) << pageShift } }
    }

    /// Destinations in system memory for every selected device page of `m`, holding its bytes:
    /// for a 2 MiB device page, a system THP (`folio` if given, allocated first), or (none
    /// free) 512 pages (`pages` then splits the device folio, or, under a CPU fault's
    /// reference, only its PMD). An unused `folio` is freed. Return: false if a system page could not be had
    /// (nothing is then selected to move).
    func copyBackToSystem(_ m: MigrateVMA, folio given: Page? = nil) -> Bool {
        var given = given
        defer { given.map { memory.put($0) } }
        for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            guard let from = MigratePfn.pfn(m.src[i]), isLocal(from) else { continue }
            if m.src[i] & MigratePfn.compound != 0, let folio = given.take() ?? memory.allocate(order: pmdOrder) {
                folio.lock()
                for k in 0..<UInt64(ptrsPerTable) {
                    memory.frame(folio.pfn + k).copyMemory(from: bytes(of: from + k), byteCount: Int(pageSize))
                }
                m.dst[i] = MigratePfn.make(folio.pfn) | (m.src[i] & MigratePfn.write) | MigratePfn.compound
                continue
            }
            let n = m.src[i] & MigratePfn.compound != 0 ? ptrsPerTable : 1
            for k in 0..<n where !allocateSystemCopy(m, i + k, from: from + UInt64(k), write: m.src[i] & MigratePfn.write) { return false }
        }
        return true
    }

    /// One system page for entry `i` of `m`, holding the bytes of device page `from`,
    /// writable if `write` has the flag. Return: false (every destination of `m` dropped) if
    /// none could be had.
    private func allocateSystemCopy(_ m: MigrateVMA, _ i: Int, from: UInt64, write: UInt64) -> Bool {
        guard let page = memory.allocate(mayReclaim: true) else {
            for k in m.dst.indices {
                guard let d = MigratePfn.pfn(m.dst[k]) else { continue }
                let p = memory.page(d)
                p.unlock(); memory.put(p)
                m.dst[k] = 0
            }
            return false
        }
        page.lock()
        memory.frame(page.pfn).copyMemory(from: bytes(of: from), byteCount: Int(pageSize))
        m.dst[i] = MigratePfn.make(page.pfn) | write
        return true
    }

    /// A kernel starts (`retire` when its last engine ends). Locking: takes `lock`.
    func admit(_ l: SVMLaunch) {
        lock.assertNotHeld()
        lock.withLock { active[ObjectIdentifier(l)] = l }
    }
    func retire(_ l: SVMLaunch) {
        lock.assertNotHeld()
        lock.withLock { active[ObjectIdentifier(l)] = nil }
    }

    // MARK: shutdown

    /// Removes the device (driver unbind): running kernels are cancelled (ENODEV) and waited
    /// for, the fault thread stops, every space is unbound, and every page still in device
    /// memory is evicted to system memory with its bytes.
    /// Errors: EBUSY if a page could not be evicted (the device stays registered).
    /// Locking: none held; no kernel may be launched meanwhile.
    public func shutdown() throws(Errno) {
        lock.assertNotHeld()
        let running = lock.withLock { Array(active.values) }
        for l in running { l.cancel(SVMFatalFault(address: 0, access: .read, errno: .ENODEV)) }
        for l in running { l.joinEngines() }
        faults.stop()
        faultThread?.join()
        faultThread = nil
        let bound = lock.withLock { let s = spaces; spaces.removeAll(); return s }
        for s in bound { s.unbind() }
        for _ in 0..<10 {
            let used = lock.withLock { (0..<capacityPages).filter { allocated[$0] }.map { pagemap.startPfn + UInt64($0) } }
            if used.isEmpty { break }
            evict(used)
        }
        try memory.unregisterDeviceMemory(pagemap)
    }
}
