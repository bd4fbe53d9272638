import HMM
import MMCore
import MMSync

/// One chunk of device memory (`struct dmirror_chunk`): a 256 MiB registration.
final class DmirrorChunk {
    let pagemap: DevicePagemap
    /// Being evicted by RELEASE: freed pages no longer return to the free list.
    var remove = false
    init(pagemap: DevicePagemap) { self.pagemap = pagemap }
}

/// A dmirror device (`struct dmirror_device`, `/dev/hmm_dmirrorN`): its device memory in
/// 256 MiB chunks, a free list of device pages, and the callbacks the core mm calls.
/// Devices 0 and 1 are device-private, 2 and 3 device-coherent.
/// Sendable: its mutable state is guarded by `lock` (and `releaseLock` for RELEASE).
public final class DmirrorDevice: DevicePagemapOps, @unchecked Sendable {
    public let minor: Int
    public let memoryType: DmirrorMemoryType
    public let machine: Machine
    var memory: PhysicalMemory { machine.memory }
    /// Locking: `lock` guards chunks, the free list and the counters (`devmem_lock`+`lock`).
    let lock = Lock("dmirror-device")
    /// Serialises RELEASE. Lock order: releaseLock before `lock`.
    let releaseLock = Lock("dmirror-devmem")
    @exclusivity(unchecked) var chunks: [DmirrorChunk] = []
    /// Free device pages ready for allocation (each carries `.deviceFree` while listed).
    @exclusivity(unchecked) var freePages: [UInt64] = []
    /// Free order-9 device folios (head pfns; each head carries `.deviceFree` while listed):
    /// the kernel's `free_folios`, filled by chunks made for a large allocation and by large
    /// folios freed whole.
    @exclusivity(unchecked) var freeFolios: [UInt64] = []
    /// Pages freed while their chunk was being removed (not on the free list).
    @exclusivity(unchecked) var released: Set<UInt64> = []
    @exclusivity(unchecked) public private(set) var calloc = 0
    @exclusivity(unchecked) public private(set) var cfree = 0
    /// Mirrors opened on this device, by id − 1 (ids are never reused). The backing page of
    /// migrated data records the id of the mirror that migrated it in its private word (the
    /// kernel keeps a pointer in the backing page's zone_device_data). Locking: `lock`.
    var mirrors: [UInt64: WeakMirror] = [:]
    /// Locking: lock. Ids are never reused, so a page recorded with a closed mirror's id never
    /// names a later mirror; entries go when their mirror is freed (`forget`).
    var nextMirrorID: UInt64 = 1

    /// The device's DMA engine: migration copies overlap with the next batch's page-table work.
    /// Its thread starts with the first copy and is stopped when the device goes away.
    public let copyEngine: CopyEngine

    /// The device's TLB shootdown (issue 17): its latency, waited for in the notifier's one
    /// pass or in the second pass of Linux 7.2's two-pass interval notifiers, and a fault
    /// injection for a device that never confirms (its mirror is cut off,
    /// `Dmirror.isCutOff`: its whole table goes before the invalidation returns, and its
    /// commands fail with EIO from then on; the process runs on).
    public let shootdown = DeviceShootdown()
    /// `shootdown.latencyNanoseconds`: every invalidation that reaches one of the device's
    /// mirrors waits this long for the device to confirm (0: none, as the kernel's test
    /// driver; at most 10 s).
    public var invalidationLatencyNanoseconds: UInt64 {
        get { shootdown.latencyNanoseconds }
        set { shootdown.latencyNanoseconds = newValue }
    }
    /// `shootdown.twoPhase`.
    public var twoPhaseInvalidation: Bool {
        get { shootdown.twoPhase }
        set { shootdown.twoPhase = newValue }
    }
    /// `shootdown.fails`.
    public var shootdownFails: Bool {
        get { shootdown.fails }
        set { shootdown.fails = newValue }
    }
    /// Shootdowns waited for in a second pass (for tests and counters).
    public var finishPasses: AtomicCounter { shootdown.finishPasses }

    /// Coherent memory is one fixed region per device; private memory grows chunk by chunk.
    static let maxCoherentChunks = 1

    init(minor: Int, machine: Machine) {
        self.minor = minor
        self.machine = machine
        memoryType = minor < 2 ? .devicePrivate : .deviceCoherent
        copyEngine = CopyEngine(name: "dmirror\(minor)-copy")
    }

    /// The engine's thread exits once its queue is empty. Not waited for: the last reference
    /// to a device may go anywhere, even inside a page free under a PTE lock.
    deinit { copyEngine.stop(wait: false) }

    var pageKind: MemoryKind { memoryType == .devicePrivate ? .devicePrivate : .deviceCoherent }
    /// The migrate selection that names this device's pages (`dmirror_select_device`).
    var selectDevice: MigrateSelect { memoryType == .devicePrivate ? .devicePrivate : .deviceCoherent }

    /// Device pages in use (allocated and not yet freed).
    public var pagesInUse: Int { lock.withLock { calloc - cfree } }

    /// The device pages in use and who owns each one's data: by mirror id (see `Dmirror.id`;
    /// 0 for pages not yet recorded). A scan of every chunk, for inspection.
    public func pageCensus() -> (inUse: Int, chunks: Int, byMirror: [UInt64: Int]) {
        lock.withLock {
            var byMirror: [UInt64: Int] = [:]
            var inUse = 0
            for c in chunks {
                for pfn in c.pagemap.startPfn..<(c.pagemap.startPfn + c.pagemap.pageCount) {
                    let page = memory.page(pfn)
                    let head = page.folioHead
                    guard !head.test(.deviceFree), !released.contains(head.pfn), head.refcount > 0 else { continue }
                    inUse += 1
                    let backing = memoryType == .devicePrivate ? (head.privateWord == 0 ? 0 : backingPage(page).pfn) : pfn
                    byMirror[backing == 0 ? 0 : memory.page(backing).folioHead.privateWord, default: 0] += 1
                }
            }
            return (inUse, chunks.count, byMirror)
        }
    }
    public var chunkCount: Int { lock.withLock { chunks.count } }

    /// `open("/dev/hmm_dmirrorN")`: a mirror of `mm`.
    public func open(_ mm: AddressSpace) throws(Errno) -> Dmirror {
        let m = try Dmirror(device: self, mm: mm)
        lock.withLock {
            m.mirrorID = nextMirrorID
            mirrors[nextMirrorID] = WeakMirror(m)
            nextMirrorID += 1
        }
        return m
    }
    /// Drops a freed mirror's entry (from `Dmirror.deinit`).
    func forget(mirrorID: UInt64) { lock.withLock { _ = mirrors.removeValue(forKey: mirrorID) } }
    var openMirrors: [Dmirror] {
        // Only the weak boxes are copied under the lock: a strong reference dropped inside it
        // could run a mirror's deinit, which takes this lock again.
        let boxes = lock.withLock { mirrors.sorted { $0.key < $1.key }.map(\.value) }
        return boxes.compactMap { $0.mirror }.filter { $0.isOpen }
    }

    // MARK: memory

    /// `dmirror_allocate_chunk`: a chunk of small pages, or (`large`) of free order-9 folios.
    /// Locking: `lock` held.
    private func allocateChunkLocked(large: Bool = false) throws(Errno) {
        lock.assertHeld()
        if memoryType == .deviceCoherent && chunks.count >= DmirrorDevice.maxCoherentChunks { throw .ENOMEM }
        let pgmap = try memory.registerDeviceMemory(kind: pageKind, pageCount: PhysicalMemory.deviceChunkPages,
                                                    owner: self, ops: self)
        chunks.append(DmirrorChunk(pagemap: pgmap))
        // Free list order: lowest pfn handed out first.
        if large {
            for pfn in stride(from: pgmap.startPfn, to: pgmap.startPfn + pgmap.pageCount, by: ptrsPerTable).reversed() {
                pushFreeFolio(pfn)
            }
        } else {
            for pfn in (pgmap.startPfn..<(pgmap.startPfn + pgmap.pageCount)).reversed() { pushFree(pfn) }
        }
    }

    /// `dmirror_devmem_alloc_page(dmirror, true)`: an order-9 device folio, referenced and
    /// locked, backed (private memory) by an order-9 system folio. Nil when either side has
    /// no 2 MiB: the caller falls back to small pages. As the kernel's driver, the first
    /// chunk is always one of small pages (made at module load there; on first use here).
    func allocateLarge() -> Page? {
        var backing: Page? = nil
        if memoryType == .devicePrivate {
            guard let b = memory.allocate(order: pmdOrder) else { return nil }
            backing = b
        }
        lock.lock()
        if freeFolios.isEmpty {
            if chunks.isEmpty { try? allocateChunkLocked() }
            if (try? allocateChunkLocked(large: true)) == nil {
                lock.unlock()
                if let b = backing { memory.put(b) }
                return nil
            }
        }
        let pfn = freeFolios.removeLast()
        memory.page(pfn).clear(.deviceFree)
        calloc += ptrsPerTable
        lock.unlock()
        let head = memory.page(pfn)
        memory.zoneDevicePageInit(head, order: pmdOrder)
        head.privateWord = backing?.pfn ?? 0
        return head
    }

    /// `dmirror_devmem_alloc_page`, for up to `count` pages at once (one round on the device
    /// lock and one on the zone lock): device pages, referenced and locked. For private memory
    /// a system page is allocated as each one's backing store (the simulated device memory).
    /// Return: fewer pages (possibly none) when device or backing memory runs out.
    /// With `mayReclaim` the backing pages may be reclaimed for (test_hmm allocates them with
    /// `GFP_HIGHUSER`); the caller then holds no spin lock.
    func allocatePages(_ count: Int, mayReclaim: Bool = false) -> [Page] {
        guard count > 0 else { return [] }
        var backing: [Page] = []
        if memoryType == .devicePrivate {
            backing = memory.allocateBatch(count, mayReclaim: mayReclaim)
            if backing.isEmpty { return [] }
        }
        let want = memoryType == .devicePrivate ? backing.count : count
        var pfns: [UInt64] = []
        pfns.reserveCapacity(want)
        lock.lock()
        while pfns.count < want {
            if freePages.isEmpty { do { try allocateChunkLocked() } catch { break } }
            let pfn = freePages.removeLast()
            memory.page(pfn).clear(.deviceFree)
            pfns.append(pfn)
        }
        calloc += pfns.count
        lock.unlock()
        for b in backing.dropFirst(pfns.count) { memory.put(b) }
        return pfns.indices.map { i in
            let page = memory.page(pfns[i])
            memory.zoneDevicePageInit(page)
            page.privateWord = backing.isEmpty ? 0 : backing[i].pfn
            return page
        }
    }

    /// `BACKING_PAGE`: where a device page's bytes live. A device folio's backing is a
    /// system folio of its order, named by the head: a tail's bytes are at its offset.
    func backingPage(_ page: Page) -> Page {
        guard memoryType == .devicePrivate else { return page }
        let head = page.folioHead
        return memory.page(head.privateWord + (page.pfn - head.pfn))
    }

    func chunk(of page: Page) -> DmirrorChunk? { chunks.first { $0.pagemap.contains(page.pfn) } }

    /// `dmirror_devmem_free` (the pagemap's `page_free`): the backing goes back to the
    /// system, the device page (or whole order-9 folio) to its free list.
    public func pageFree(_ page: Page) {
        let backing = memoryType == .devicePrivate ? page.privateWord : page.pfn
        page.privateWord = 0
        let large = page.test(.head)
        lock.lock()
        cfree += large ? Int(page.folioPages) : 1
        let keep = !(chunk(of: page)?.remove ?? true)
        if keep { if large { pushFreeFolio(page.pfn) } else { pushFree(page.pfn) } } else { released.insert(page.pfn) }
        lock.unlock()
        if memoryType == .devicePrivate, backing != 0 { memory.put(memory.page(backing)) }
    }

    /// `dmirror_devmem_folio_split` (the pagemap's `folio_split`): the backing folio is split
    /// with the device folio, each new device folio naming its own backing page, which records
    /// the same mirror; with `tail == nil`, the backing head becomes a small page.
    /// Locking: the device folio is frozen and unmapped; its backing is this driver's alone.
    public func folioSplit(head: Page, tail: Page?) {
        assert(head.refcount == 0 && head.isLocked, "folioSplit: the folio must be frozen and locked")
        guard memoryType == .devicePrivate, head.privateWord != 0 else { tail?.privateWord = 0; return }
        let rhead = memory.page(head.privateWord)
        guard let tail else {
            rhead.order = 0
            rhead.clear(.head)
            return
        }
        let rtail = memory.page(rhead.pfn + (tail.pfn - head.pfn))
        rtail.clear(.tail)
        rtail.order = 0
        rtail.ownerBits = 0
        rtail.privateWord = rhead.privateWord   // the mirror that migrated the data
        rtail.refcountWord.store(1)
        tail.privateWord = rtail.pfn
    }

    /// `pageFree` for a batch: one round on the device lock, the backing pages freed together.
    public func pageFreeBatch(_ pages: [Page]) {
        var backing: [Page] = []
        lock.lock()
        var lastChunk: DmirrorChunk? = nil
        for page in pages {
            if memoryType == .devicePrivate, page.privateWord != 0 { backing.append(memory.page(page.privateWord)) }
            page.privateWord = 0
            let large = page.test(.head)
            cfree += large ? Int(page.folioPages) : 1
            if !(lastChunk?.pagemap.contains(page.pfn) ?? false) { lastChunk = chunk(of: page) }
            if !(lastChunk?.remove ?? true) {
                if large { pushFreeFolio(page.pfn) } else { pushFree(page.pfn) }
            } else { released.insert(page.pfn) }
        }
        lock.unlock()
        memory.putBatch(backing)
    }

    /// A free order-9 folio (its head's pfn) onto `freeFolios`.
    /// Locking: `lock` held.
    private func pushFreeFolio(_ pfn: UInt64) {
        lock.assertHeld()
        pushFree(pfn, onto: &freeFolios)
    }

    /// Locking: `lock` held. A page (or folio) is on a free list at most once.
    private func pushFree(_ pfn: UInt64, onto list: inout [UInt64]) {
        lock.assertHeld()
        let p = memory.page(pfn)
        guard !p.test(.deviceFree) else { return }
        p.set(.deviceFree)
        list.append(pfn)
    }

    /// A free small page onto `freePages`. Locking: `lock` held.
    private func pushFree(_ pfn: UInt64) {
        lock.assertHeld()
        pushFree(pfn, onto: &freePages)
    }

    /// Records which mirror migrated the data in `backing` (private: the system backing page,
    /// whose private word is otherwise unused; coherent: the device page, whose is not either).
    /// A backing folio records it in its head.
    func recordOwner(backing: Page, mirror: Dmirror) { backing.folioHead.privateWord = mirror.mirrorID }
    func owner(ofBacking pfn: UInt64) -> Dmirror? {
        let id = memory.page(pfn).folioHead.privateWord
        return lock.withLock { mirrors[id]?.mirror }
    }

    // MARK: CPU fault on a device-private entry

    /// `dmirror_devmem_fault`: migrates the faulting page back to system memory; a large
    /// folio mapped by a PMD moves whole (its 2 MiB, COMPOUND), one mapped by PTEs page by page.
    public func migrateToRAM(_ fault: DevicePrivateFault) -> FaultResult {
        let mirror = owner(ofBacking: fault.page.folioHead.privateWord)
        // The mirror that migrated the page erases its own entry below, so it may skip the
        // MIGRATE invalidation (which would also drop the next page: the inclusive-end quirk).
        let whole = fault.pmdMapped && fault.page.folioHead.order > 0
        let start = whole ? fault.address & pmdMask : fault.address
        let m = MigrateVMA(vma: fault.vma, start: start, end: start + (whole ? pmdSize : pageSize),
                           pgmapOwner: self, flags: whole ? selectDevice.union(.compound) : selectDevice,
                           faultPage: fault.page, notifierOwner: mirror ?? self)
        let held = Mutation.on(.driverLockInMigrateToRAM) ? mirror?.mutex : nil
        held?.lock()
        do { try m.setup() } catch { held?.unlock(); return .sigbus }
        held?.unlock()
        var injected = false
        guard let copied = allocAndCopyToSystem(m, mirror: mirror, isFault: true, injected: &injected) else {
            m.finalize()
            // VM_FAULT_OOM from FAIL_ALLOC: a user fault's OOM reaches x86's #PF handler, whose
            // pagefault_out_of_memory only logs "VM_FAULT_OOM leaked out" and retries; the flag
            // is consumed, so the retry succeeds. A real allocation failure stays OOM (the OOM
            // killer, when the machine has it on, ran inside the allocation already: D23).
            return injected ? .retry : .oom
        }
        copied.wait()
        m.pages()
        let n = m.migratedCount
        machine.stats.count(.pagesMigrated, n)
        machine.stats.count(.pagesMigratedToSystem, n)
        m.finalize()
        return .ok
    }

    /// `dmirror_devmem_fault_alloc_and_copy`: for each selected device page, a system page with
    /// its data; the mirror's entry for the address is erased. A CPU fault copies here; a
    /// command's batch copies on the copy engine (wait on the fence before `pages`).
    /// Return: nil (VM_FAULT_OOM) if FAIL_ALLOC hit a small page (`injected` is then set), or
    /// if a single-page allocation failed during a CPU fault.
    /// `makeRoom` as for `Dmirror.allocAndCopyToDevice`.
    func allocAndCopyToSystem(_ m: MigrateVMA, mirror: Dmirror?, isFault: Bool, injected: inout Bool,
                              makeRoom: () -> Void = {}) -> CopyFence? {
        // One round on the mirror's lock for the batch: FAIL_ALLOC makes the allocation for
        // the first selected page fail. For a large one the driver falls back to small pages;
        // for a small one it is VM_FAULT_OOM (Linux 7.2's dmirror_devmem_fault_alloc_and_copy:
        // `!dpage && !order`), before any entry is erased. Otherwise the entries of the pages
        // that move are erased before their data is copied.
        let selected = m.src.indices.filter { i in
            m.src[i] & MigratePfn.migrate != 0 && MigratePfn.pfn(m.src[i]).map { memory.page($0).isZoneDevice } == true
        }
        guard !selected.isEmpty else { return .signalled() }
        let owner = mirror ?? owner(ofBacking: backingPage(memory.page(MigratePfn.pfn(m.src[selected[0]])!)).pfn)
        var failAlloc = false
        var injectedOOM = false
        owner?.mutex.withLock {
            failAlloc = owner!.flags & DmirrorFlag.failAlloc != 0
            owner!.flags &= ~DmirrorFlag.failAlloc
            if failAlloc && m.src[selected[0]] & MigratePfn.compound == 0 { injectedOOM = true; return }
            for i in selected {
                let n = m.src[i] & MigratePfn.compound != 0 ? ptrsPerTable : 1
                for k in 0..<n { owner!.pt[(m.start >> pageShift) + UInt64(i + k)] = nil }
            }
        }
        if injectedOOM {
            for i in m.dst.indices { m.dst[i] = 0 }
            injected = true
            return nil
        }
        // A CPU fault on a small page, the common case: one page from the per-CPU lists
        // (`alloc_page_vma(GFP_HIGHUSER_MOVABLE)`, reclaim allowed, kswapd woken below the low
        // watermark), copied here. The batch path below allocates under one zone-lock round
        // and reclaims only for what that round could not get.
        if isFault && selected.count == 1 && m.src[selected[0]] & MigratePfn.compound == 0 {
            let i = selected[0]
            guard let d = memory.allocate(order: 0, mayReclaim: true) else {
                for k in m.dst.indices { m.dst[k] = 0 }
                return nil
            }
            d.lock()
            memory.copyPage(to: d, from: backingPage(memory.page(MigratePfn.pfn(m.src[i])!)))
            m.dst[i] = MigratePfn.make(d.pfn) | m.src[i] & MigratePfn.write
            machine.stats.count(.bytesCopied, Int(pageSize))
            return .signalled()
        }
        // Large sources first: an order-9 folio each, or (FAIL_ALLOC once, or no 2 MiB free)
        // 512 small pages, without COMPOUND (the folio is then split by migrate_vma_pages).
        var smallWanted: [(index: Int, from: UInt64, write: UInt64)] = []
        var to: [UInt64] = [], from: [UInt64] = []
        var allocated: [Page] = []
        for i in selected {
            let spage = memory.page(MigratePfn.pfn(m.src[i])!)
            let write = m.src[i] & MigratePfn.write
            guard m.src[i] & MigratePfn.compound != 0 else {
                smallWanted.append((i, backingPage(spage).pfn, write)); continue
            }
            let backing = backingPage(spage)
            let n = Int(spage.folioPages)
            if !failAlloc, let d = memory.allocate(order: pmdOrder) {
                d.lock()
                allocated.append(d)
                m.dst[i] = MigratePfn.make(d.pfn) | write | MigratePfn.compound
                for k in 0..<UInt64(n) { to.append(d.pfn + k); from.append(backing.pfn + k) }
            } else {
                failAlloc = false
                for k in 0..<n { smallWanted.append((i + k, backing.pfn + UInt64(k), write)) }
            }
        }
        var dpages = memory.allocateBatch(smallWanted.count)
        if dpages.count < smallWanted.count && memory.freeFrames < smallWanted.count - dpages.count {
            makeRoom()
            // alloc_page_vma(GFP_HIGHUSER_MOVABLE): what is still missing may be reclaimed for.
            dpages += memory.allocateBatch(smallWanted.count - dpages.count, mayReclaim: true)
        }
        if isFault && dpages.count < smallWanted.count {
            for d in dpages { memory.put(d) }
            for d in allocated { d.unlock(); memory.put(d) }
            for i in m.dst.indices { m.dst[i] = 0 }
            return nil
        }
        for d in dpages { d.lock() }
        to.reserveCapacity(to.count + dpages.count); from.reserveCapacity(from.count + dpages.count)
        for k in dpages.indices { to.append(dpages[k].pfn); from.append(smallWanted[k].from) }
        let fence: CopyFence
        if isFault {
            memory.copyFramesBulk(to: to, from: from)
            fence = .signalled()
        } else {
            fence = memory.copyFramesAsync(on: copyEngine, to: to, from: from)
        }
        // The entries after the copy started (the engine copies meanwhile).
        for k in dpages.indices {
            let (i, _, write) = smallWanted[k]
            m.dst[i] = MigratePfn.make(dpages[k].pfn) | write
        }
        machine.stats.count(.bytesCopied, to.count * Int(pageSize))
        return fence
    }

    // MARK: RELEASE

    /// How long RELEASE waits for system memory or busy pages before it gives up (the kernel
    /// waits forever or OOM-kills; docs/linux-divergences.md, D4). Settable for tests.
    public var releaseWaitNanoseconds: UInt64 {
        get { lock.withLock { releaseWait } }
        set { lock.withLock { releaseWait = newValue } }
    }
    /// Locking: lock.
    private var releaseWait: UInt64 = 10_000_000_000

    /// `dmirror_device_remove_chunks`: evicts every page of every chunk back to system memory
    /// and unregisters the chunks. As in Linux 7.2 it does not fail: the eviction allocates
    /// with `__GFP_NOFAIL` and `memunmap_pages` waits for the last reference, so a page that
    /// cannot move yet (no free system page, a reference held by a fault in flight) is waited
    /// for and retried. Only after `releaseWaitNanoseconds` without success does it give up
    /// with ENOMEM (the chunk stays, still valid; a later RELEASE retries).
    /// Locking: takes `releaseLock`, then `lock` in turns; no mmap lock held.
    func removeChunks() throws(Errno) {
        releaseLock.assertNotHeld(); lock.assertNotHeld()
        // One RELEASE at a time per device (the kernel's devmem_lock): two would evict and
        // unregister the same chunks twice.
        releaseLock.lock(); defer { releaseLock.unlock() }
        let list = lock.withLock { () -> [DmirrorChunk] in
            for c in chunks {
                c.remove = true
                // Free pages of a chunk being removed leave the free list.
                for pfn in freePages + freeFolios where c.pagemap.contains(pfn) {
                    memory.page(pfn).clear(.deviceFree)
                    released.insert(pfn)
                }
            }
            freePages.removeAll { !memory.page($0).test(.deviceFree) }
            freeFolios.removeAll { !memory.page($0).test(.deviceFree) }
            return chunks
        }
        var busy = false
        let wait = releaseWaitNanoseconds
        for chunk in list {
            let deadline = monotonicNanoseconds() + wait
            var pause: UInt64 = 10_000
            var rounds = 0
            // Under the explorer, a number of rounds instead of the clock (replays must match).
            while evict(chunk) != 0 && (Sync.scheduler != nil ? rounds < 64 : monotonicNanoseconds() < deadline) {
                rounds += 1
                syncSleep(nanoseconds: pause)              // wait for memory or for the reference
                pause = min(pause * 2, 10_000_000)
            }
            do { try memory.unregisterDeviceMemory(chunk.pagemap) } catch {
                // Some page could not be evicted: the chunk stays, and its free pages (those
                // whose page-free ran) become allocatable again.
                busy = true
                lock.withLock {
                    chunk.remove = false
                    for pfn in released.filter({ chunk.pagemap.contains($0) }).sorted(by: >) {
                        released.remove(pfn)
                        if memory.page(pfn).test(.head) { pushFreeFolio(pfn) } else { pushFree(pfn) }
                    }
                }
                continue
            }
            lock.withLock {
                chunks.removeAll { $0 === chunk }
                released = released.filter { !chunk.pagemap.contains($0) }
            }
        }
        if busy { throw .ENOMEM }
    }

    /// `dmirror_device_evict_chunk`. Return: pages of the chunk still in use afterwards.
    private func evict(_ chunk: DmirrorChunk) -> Int {
        let g = chunk.pagemap
        var src = machine.migrateDeviceRange(startPfn: g.startPfn, count: Int(g.pageCount))
        var dst = [UInt64](repeating: 0, count: src.count)
        var to: [UInt64] = [], from: [UInt64] = []
        for i in src.indices {
            guard src[i] & MigratePfn.migrate != 0, let spfn = MigratePfn.pfn(src[i]) else { continue }
            let spage = memory.page(spfn)
            // A large folio moves whole into an order-9 system folio (none free: it stays,
            // and the RELEASE loop tries again).
            let order = src[i] & MigratePfn.compound != 0 ? pmdOrder : 0
            guard let dpage = memory.allocate(order: order) else { continue }
            dpage.lock()
            let backing = backingPage(spage)
            for k in 0..<(UInt64(1) << order) { to.append(dpage.pfn + k); from.append(backing.pfn + k) }
            dst[i] = MigratePfn.make(dpage.pfn) | (src[i] & MigratePfn.write) | (order > 0 ? MigratePfn.compound : 0)
        }
        memory.copyFramesBulk(to: to, from: from)
        machine.stats.count(.bytesCopied, to.count * Int(pageSize))
        machine.migrateDevicePages(&src, dst)
        machine.migrateDeviceFinalize(src, dst)
        var inUse = 0
        for pfn in g.startPfn..<(g.startPfn + g.pageCount) where memory.page(pfn).refcount != 0 { inUse += 1 }
        return inUse
    }
}

final class WeakMirror { weak var mirror: Dmirror?; init(_ m: Dmirror) { mirror = m } }

/// The four dmirror devices of a machine (the module's `dmirror_devices[]`).
/// Sendable: immutable after creation (the four devices).
public final class DmirrorModule: @unchecked Sendable {
    public let devices: [DmirrorDevice]
    public init(machine: Machine) {
        devices = (0..<4).map { DmirrorDevice(minor: $0, machine: machine) }
    }
    /// `open("/dev/hmm_dmirrorN")`. ENODEV for a minor outside 0…3.
    public func open(minor: Int, mm: AddressSpace) throws(Errno) -> Dmirror {
        guard devices.indices.contains(minor) else { throw .ENODEV }
        return try devices[minor].open(mm)
    }
}
