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

    /// `page_free`: a device page's last reference went; it is free again.
    public func pageFree(_ page: Page) {
        lock.withLock {
            let i = Int(page.pfn - pagemap.startPfn)
            guard i >= 0, i < capacityPages, allocated[i] else { return }
            allocated[i] = false
            freePfns.append(page.pfn)
        }
    }

    /// `migrate_to_ram` (`nouveau_dmem_migrate_to_ram`): the CPU touched a page that lives
    /// here; that page goes back to system memory with its bytes.
    public func migrateToRAM(_ fault: DevicePrivateFault) -> FaultResult {
        let start = fault.address & ~(pageSize - 1)
        let m = MigrateVMA(vma: fault.vma, start: start, end: start + pageSize, pgmapOwner: self, flags: .devicePrivate,
                           faultPage: fault.page)
        do { try m.setup() } catch { return .sigbus }
        guard copyBackToSystem(m) else { m.finalize(); return .oom }
        m.pages()
        let n = m.migratedCount
        m.finalize()
        trace?.record(.toSystem(addresses: n > 0 ? [start] : [], cause: .cpuFault), virtual: faultClock.now)
        stats.count(.cpuFaultsBack, n)
        stats.count(.migratedToSystem, n)
        stats.count(.bytesToSystem, n * Int(pageSize))
        chargeCopy(n)
        return .ok
    }

    /// Destinations in system memory for every selected device page of `m`, holding its bytes.
    /// Return: false if a system page could not be had (nothing is then selected to move).
    func copyBackToSystem(_ m: MigrateVMA) -> Bool {
        for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            guard let from = MigratePfn.pfn(m.src[i]), isLocal(from) else { continue }
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
            m.dst[i] = MigratePfn.make(page.pfn) | (m.src[i] & MigratePfn.write)
        }
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
