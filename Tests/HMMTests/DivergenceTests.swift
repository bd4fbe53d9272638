import Foundation
import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// The package root, found from this file's path.
let hmmPackageRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // Tests/HMMTests/DivergenceTests.swift
    return parts.joined(separator: "/")
}()

/// `docs/linux-divergences.md`: each listed divergence still behaves as the document says.
final class DivergenceTests: XCTestCase {
    /// Every id in the document has a test here named after it.
    func testEveryDocumentedDivergenceHasATest() throws {
        let doc = try String(contentsOfFile: "\(hmmPackageRoot)/docs/linux-divergences.md", encoding: .utf8)
        let ids = doc.split(separator: "\n").filter { $0.hasPrefix("### D") }.map { $0.dropFirst(4).prefix { $0 != " " } }
        XCTAssertEqual(ids.map(String.init), ["D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D9", "D10", "D11", "D12", "D13", "D15", "D16", "D17", "D18", "D19", "D20", "D21", "D22", "D23", "D24", "D25", "D26"])
        let source = try String(contentsOfFile: "\(hmmPackageRoot)/Tests/HMMTests/DivergenceTests.swift", encoding: .utf8)
        for id in ids {
            XCTAssertTrue(source.contains("func test\(id)"), "\(id) has no test")
            XCTAssertTrue(doc.contains("Test: `test\(id)"), "\(id) names no test")
        }
    }

    /// D24: MADV_PAGEOUT of a PMD-mapped THP splits it (7.2 would write it out whole into a
    /// 512-slot cluster, `thp_swpout` 1, `thp_split_page` 0); the process sees 512 PTE swap
    /// entries either way.
    func testD24ATHPIsSplitToBeSwappedOut() throws {
        let env = try HMMEnv(mib: 64, swapPages: 1024)
        env.memory.thp.mode = .always
        let twoMiB: UInt64 = 2 << 20
        let raw = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + twoMiB - 1) & ~(twoMiB - 1)
        for i in 0..<512 { try env.cpu.store(a + UInt64(i) * MMCore.pageSize, UInt64(i)) }
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        try env.process.madvise(a, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.machine.stats[.thpSwpoutFallback], 1)
        XCTAssertEqual(env.machine.stats[.pswpout], 512)
        let pm = try env.mm.pagemap(a, count: 512)
        XCTAssertEqual(pm.filter { $0.isSwap && !$0.isPresent }.count, 512)
        XCTAssertEqual(Set(pm.map { ($0.raw & ((1 << 55) - 1)) >> 5 }).count, 512, "a slot per page")
        for i in 0..<512 { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * MMCore.pageSize, as: UInt64.self), UInt64(i)) }
        XCTAssertEqual(env.machine.stats[.pswpin], 512)
        env.finish([])
    }

    /// D23: without `oomKillerEnabled` an allocation reclaim cannot satisfy fails the fault
    /// (no kill); with it, the largest process is killed and reaped, and it dies at its next
    /// fault: a TLB entry of its shared memory, which the reaper leaves, still works until then.
    func testD23OOMKillerIsOptInAndAVictimDiesAtItsNextFault() throws {
        for enabled in [false, true] {
            let env = try HMMEnv(mib: 16)
            env.machine.oomKillerEnabled = enabled
            let shared = try env.process.mmap(length: pageSize, prot: .readWrite, flags: [.shared, .anonymous])
            try env.cpu.store(shared, UInt64(9))
            let big = try env.anon(2560)
            for i in 0..<2560 { try env.cpu.store(big + UInt64(i) * pageSize, UInt8(1)) }
            let other = try MMCore.Process(machine: env.machine)
            let cpu2 = other.makeCPU()
            let a = try other.mmap(length: 8 << 20, prot: .readWrite, flags: [.private, .anonymous])
            var failed: AccessFault? = nil
            for i in 0..<2048 {
                do { try cpu2.store(a + UInt64(i) * pageSize, UInt8(2)) } catch { failed = error; break }
            }
            if enabled {
                XCTAssertNil(failed)
                XCTAssertEqual(env.machine.stats[.oomKill], 1)
                XCTAssertTrue(env.mm.isOOMKilled)
                XCTAssertEqual(try env.cpu.load(shared, as: UInt64.self), 9, "a TLB hit: not dead yet")
                XCTAssertThrowsError(try env.cpu.load(big, as: UInt8.self)) { XCTAssertEqual($0 as? AccessFault, .oom(address: big)) }
            } else {
                guard case .oom = failed else { return XCTFail("expected OOM, got \(String(describing: failed))") }
                XCTAssertEqual(env.machine.stats[.oomKill], 0)
                XCTAssertFalse(env.mm.isOOMKilled)
                XCTAssertEqual(try env.cpu.load(big, as: UInt8.self), 1)
            }
            cpu2.detach()
            other.exit()
            env.finish([])
        }
    }

    /// D21: a swap area is synchronous (the page leaves the swap cache at swap-in when no entry
    /// names its slot), and a swap PTE naming no slot in use is SIGBUS, not a fault for ever.
    func testD21AnEntryNamingNoSlotIsSIGBUS() throws {
        let env = try HMMEnv(swapPages: 8)
        let a = try env.anon(1)
        try env.cpu.store(a, UInt8(3))
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(env.memory.swap.freeSlots, 7)
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 3)
        XCTAssertEqual(env.memory.swap.freeSlots, 8, "the slot is free at once: no swap-cache page is left behind")
        env.mm.mmapLock.lockRead()
        let f = try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte))
        let old = f.entry.exchange(SwapEntry(type: 3, offset: 5).pte())
        env.mm.mmapLock.unlockRead()
        env.mm.flushTLB()
        XCTAssertThrowsError(try env.cpu.load(a, as: UInt8.self)) { XCTAssertEqual($0 as? AccessFault, .bus(address: a)) }
        env.mm.mmapLock.lockRead()
        f.entry.store(SwapEntry(type: 0, offset: 5).pte())   // an area that exists, a free slot
        env.mm.mmapLock.unlockRead()
        XCTAssertThrowsError(try env.cpu.load(a, as: UInt8.self)) { XCTAssertEqual($0 as? AccessFault, .bus(address: a)) }
        env.mm.mmapLock.lockRead()
        f.entry.store(old)
        env.mm.mmapLock.unlockRead()
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 3)
        env.finish([])
    }

    /// D21's swap-file half: a swap file is read at once, so the pages readahead brought in
    /// are unlocked and up to date when the fault returns (7.2 would still be reading them),
    /// and the swap cache keeps every page read back.
    func testD21SwapFileReadsAheadAtOnce() throws {
        let m = try Machine(memoryBytes: 32 << 20, devicePfnSpaceBytes: 0, swapBytes: 64 * pageSize, swapBacking: .temporaryFile())
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        // At the start of a page table, so the window is cut there and nowhere else.
        let raw = try p.mmap(length: 2 * MMCore.pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + MMCore.pmdSize - 1) & ~(MMCore.pmdSize - 1)
        for i in 0..<4 { try cpu.store(a + UInt64(i) * pageSize, UInt32(i + 1)) }
        try p.madvise(a, length: 4 * pageSize, advice: .pageout)
        // The VMA's first swap fault: 7.2's initial window of 8 reads pages 1–3 ahead.
        XCTAssertEqual(try cpu.load(a, as: UInt32.self), 1)
        XCTAssertEqual(m.stats[.swapRa], 3)
        let cached = m.memory.swap.allAreas[0]
        var readAhead: [Page] = []
        for pfn in 0..<m.memory.systemFrames where m.memory.page(pfn).test(.readahead) { readAhead.append(m.memory.page(pfn)) }
        XCTAssertEqual(readAhead.count, 3)
        for page in readAhead {
            XCTAssertTrue(page.test(.swapCache) && page.test(.uptodate) && !page.isLocked, "read, unlocked, cached: \(page)")
            XCTAssertEqual(page.mapcount, 0)
        }
        XCTAssertEqual(cached.freeSlots, 59, "every page read back keeps its slot")
        XCTAssertEqual(try cpu.load(a + 2 * pageSize, as: UInt32.self), 3)
        XCTAssertEqual(m.stats[.swapRaHit], 1)
        XCTAssertEqual(m.stats[.pgmajfault], 1)
        XCTAssertEqual(m.checkInvariants(), [])
        cpu.detach()
        p.exit()
        XCTAssertEqual(m.memory.swap.freeSlots, 63)
    }

    /// D22: new anonymous pages reach the inactive list through add batches that hold no
    /// reference; reclaim looks twice before freeing a page used once (the classic LRU); and
    /// allocations run memory down to no free frame without any watermark stopping them.
    func testD22ClassicLRUAndUngatedAllocation() throws {
        let env = try HMMEnv(mib: 16, swapPages: 64)
        let a = try env.anon(4)
        for i in 0..<4 { try env.cpu.store(a + UInt64(i) * pageSize, UInt8(i + 1)) }
        let p = env.memory.page(try XCTUnwrap(env.mm.pagemap(a, count: 1).first).pfn)
        XCTAssertTrue(p.test(.lruBatched))
        XCTAssertEqual(p.refcount, 1, "the add batch holds no reference")
        env.memory.lru.drainAll()
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon), 4)
        XCTAssertEqual(env.memory.lru.count(.activeAnon), 0)
        XCTAssertEqual(env.machine.shrinkInactiveList(4, reclaimer: .direct).freed, 0, "used once since the fault: kept and marked")
        XCTAssertEqual(env.machine.stats[.pgscanDirect], 4)
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon), 4)
        XCTAssertEqual(env.machine.shrinkInactiveList(4, reclaimer: .direct).freed, 4, "not used since: reclaimed")
        XCTAssertEqual(env.machine.stats[.pswpout], 4)
        XCTAssertEqual(env.machine.stats[.pgstealDirect], 4)
        for i in 0..<4 { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt8.self), UInt8(i + 1)) }
        env.finish([])
        let bare = try HMMEnv(mib: 16)
        let hog = try bare.exhaustSystemMemory()   // asserts that no frame is left free
        XCTAssertGreaterThan(hog, 0)
        XCTAssertEqual(bare.machine.stats[.allocstall], 0, "no watermark sent an allocation to reclaim before the last frame")
        let extra = try bare.anon(1)
        XCTAssertThrowsError(try bare.cpu.store(extra, UInt8(1))) { XCTAssertEqual($0 as? AccessFault, .oom(address: extra)) }
        XCTAssertEqual(bare.machine.stats[.allocstall], 16, "16 rounds of direct reclaim without progress (no swap), then OOM")
        try bare.process.munmap(hog, length: 64 << 20)
        bare.finish([])
    }

    /// D1: a second mirror of the same device and mm loses its entries on the first mirror's
    /// migration (Linux 7.2's test_hmm would keep them, naming the replaced system pages).
    func testD1OtherMirrorsOfTheDeviceDropTheirEntries() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        for i in 0..<4 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let m1 = try env.module.open(minor: 0, mm: env.mm), m2 = try env.module.open(minor: 0, mm: env.mm)
        var r = DmirrorCmd(addr: a, npages: 4)
        try m2.ioctl(.read, &r, buffer: DmirrorBuffer(size: 4 * Int(pageSize)))
        XCTAssertEqual((0..<4).compactMap { m2.entry(at: a + UInt64($0) * pageSize) }.count, 4)
        var m = DmirrorCmd(addr: a, npages: 4)
        try m1.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: 4 * Int(pageSize)))
        XCTAssertEqual(m.cpages, 4)
        XCTAssertEqual((0..<4).compactMap { m1.entry(at: a + UInt64($0) * pageSize) }.count, 4)   // kept up to date
        XCTAssertEqual((0..<4).compactMap { m2.entry(at: a + UInt64($0) * pageSize) }.count, 0)   // dropped
        env.finish([m1, m2])
    }

    /// D2: a page pinned across its process's exit still names its anon_vma, on which it took
    /// a reference when its last mapping went.
    func testD2APinnedPageKeepsItsAnonVMAAfterExit() throws {
        let env = try HMMEnv()
        let p = try MMCore.Process(machine: env.machine)
        let cpu = p.makeCPU()
        let a = try p.mmap(length: pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.store(a, UInt64(5))
        let pages = try p.mm.getUserPages(a, count: 1, flags: [.write, .pin])
        cpu.detach()
        p.exit()
        XCTAssertNotNil(pages[0].anonVMA)
        XCTAssertTrue(pages[0].test(.anonVMARef), "the unmapped, pinned page holds its anon_vma")
        XCTAssertEqual(pages[0].pincount, 1)
        XCTAssertEqual(pages[0].mapcount, 0)
        p.mm.unpinUserPages(pages)
        env.finish([])
    }

    /// D3: a whole-mm subscriber that would block a non-blocking start: the core backs out and
    /// leaves no epoch open, so the interval's next readBegin returns at once.
    func testD3FailedSubscriberStartLeavesNoEpochOpen() throws {
        let env = try HMMEnv()
        let subs = env.mm.notifiers
        let i = MMUIntervalNotifier(start: 0, end: taskSize) { s, _, seq in s.setSeq(seq); return true }
        try subs.insert(i)
        let s = RecordingSubscriber("s", failNonBlocking: true)
        subs.register(s)
        XCTAssertFalse(subs.invalidateRangeStart(MMUNotifierRange(start: 0, end: pageSize, event: .clear, blockable: false)))
        XCTAssertEqual(s.take(), ["s start CLEAR", "s end CLEAR"])
        XCTAssertEqual(subs.lock.withLock { subs.activeInvalidateRanges }, 0)
        XCTAssertEqual(subs.currentSeq, 4)
        XCTAssertEqual(i.readBegin(), 3)
        subs.unregister(s); subs.remove(i)
        env.finish([])
    }

    /// D4: with no system page to evict into and nobody freeing one, RELEASE gives up after its
    /// wait with ENOMEM; the device pages stay valid and a later RELEASE succeeds.
    func testD4ReleaseGivesUpWithENOMEMAndLosesNothing() throws {
        let env = try HMMEnv(mib: 16)
        let pages = 64
        let (a, d0) = try env.migratedRegion(pages)
        let hog = try env.exhaustSystemMemory()
        let dev = env.module.devices[0]
        dev.releaseWaitNanoseconds = 100_000_000
        let t0 = monotonicNanoseconds()
        var cmd = DmirrorCmd(addr: a, npages: 1)
        XCTAssertThrowsError(try d0.ioctl(.release, &cmd)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertGreaterThanOrEqual(monotonicNanoseconds() - t0, 100_000_000)
        XCTAssertEqual(dev.chunkCount, 1)
        XCTAssertEqual(try env.mm.pagemap(a, count: pages).filter(\.isSwap).count, pages)  // still on the device
        try env.process.munmap(hog, length: 64 << 20)
        try d0.ioctl(.release, &cmd)
        XCTAssertEqual(dev.chunkCount, 0)
        for i in 0..<pages { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        env.finish([d0])
    }

    /// D6: a pure move of a range covering two VMAs fails with EFAULT and changes nothing.
    func testD6MremapMoveAcrossTwoVMAsIsEFAULT() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        try env.process.mprotect(a + pageSize, length: pageSize, prot: .read)   // two VMAs
        try env.cpu.store(a, UInt64(1))
        let target = try env.anon(2)
        let before = env.mm.vmaCount
        XCTAssertThrowsError(try env.process.mremap(a, oldLength: 2 * pageSize, newLength: 2 * pageSize,
                                                    flags: [.mayMove, .fixed], newAddress: target + 64 * pageSize)) {
            XCTAssertEqual($0 as? Errno, .EFAULT)
        }
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 1)
        XCTAssertEqual(env.mm.vmaCount, before)
        env.finish([])
    }

    /// D7: closing the mirror that migrated pages leaves them on the device, readable.
    func testD7CloseLeavesDevicePagesOnTheDevice() throws {
        let env = try HMMEnv()
        let (a, d0) = try env.migratedRegion(4)
        d0.close()
        XCTAssertEqual(try env.mm.pagemap(a, count: 4).filter(\.isSwap).count, 4)
        XCTAssertEqual(env.module.devices[0].pagesInUse, 4)
        for i in 0..<4 { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        XCTAssertEqual(env.module.devices[0].pagesInUse, 0)
        env.finish([])
    }

    /// D8: 1024 pages on a coherent device (no backing pages), then system memory filled up to
    /// 100 free frames: MIGRATE_TO_SYS moves what fits and succeeds; once memory is back, a
    /// second one moves the rest. Every page keeps its data.
    func testD8MigrateToSystemOutOfMemoryMovesWhatItCan() throws {
        let env = try HMMEnv(mib: 8)
        let n = 1024
        let a = try env.anon(n)
        for i in 0..<n { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let d2 = try env.module.open(minor: 2, mm: env.mm)
        var m = DmirrorCmd(addr: a, npages: UInt64(n))
        try d2.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: n * Int(pageSize)))
        XCTAssertEqual(m.cpages, UInt64(n))
        let hog = env.memory.freeFrames - 100
        let b = try env.anon(hog)
        for i in 0..<hog { try env.cpu.store(b + UInt64(i) * pageSize, UInt64(1)) }
        var back = DmirrorCmd(addr: a, npages: UInt64(n))
        try d2.ioctl(.migrateToSystem, &back)
        XCTAssertGreaterThan(back.cpages, 0)
        XCTAssertLessThan(back.cpages, UInt64(n), "7.2: ENOMEM")
        try env.process.munmap(b, length: UInt64(hog) * pageSize)
        var rest = DmirrorCmd(addr: a, npages: UInt64(n))
        try d2.ioctl(.migrateToSystem, &rest)
        XCTAssertEqual(back.cpages + rest.cpages, UInt64(n))
        for i in stride(from: 0, to: n, by: 17) { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        env.finish([d2])
    }

    /// D5: contended work stays far below the guards: READs racing migrations of the same
    /// pages, then 8 CPU threads faulting the same device pages back, 20 times.
    func testD5GuardsAreNotReachedByContendedWork() throws {
        let env = try HMMEnv()
        let pages = 16
        let a = try env.anon(pages)
        for i in 0..<pages { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let reader = try env.module.open(minor: 0, mm: env.mm), migrator = try env.module.open(minor: 0, mm: env.mm)
        let maxFaults = AtomicCounter(0)
        let t = ModelThread.spawn {
            for _ in 0..<200 {
                var m = DmirrorCmd(addr: a, npages: UInt64(pages))
                _ = try? migrator.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
            }
        }
        for _ in 0..<200 {
            var r = DmirrorCmd(addr: a, npages: UInt64(pages))
            try reader.ioctl(.read, &r, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
            XCTAssertEqual(r.cpages, UInt64(pages))
            if Int(r.faults) > maxFaults.load() { maxFaults.store(Int(r.faults)) }
        }
        t.join()
        XCTAssertLessThan(maxFaults.load(), 100)
        for _ in 0..<20 {
            var m = DmirrorCmd(addr: a, npages: UInt64(pages))
            try migrator.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
            XCTAssertEqual(m.cpages, UInt64(pages))
            let wrong = AtomicCounter(0)
            let threads = (0..<8).map { k in
                env.process.spawnThread(name: "cpu\(k)") { cpu in
                    for i in 0..<pages where (try? cpu.load(a + UInt64(i) * pageSize, as: UInt64.self)) != UInt64(i) { wrong.add(1) }
                }
            }
            threads.forEach { $0.join() }
            XCTAssertEqual(wrong.load(), 0)
        }
        env.finish([reader, migrator])
    }

    /// D9: frames on the per-CPU lists count as free: after a fault and an unmap the frame is
    /// on a list, not in the buddy lists, and `freeFrames` is back where it started.
    func testD9FramesOnPerCPUListsCountAsFree() throws {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
        XCTAssertEqual(m.memory.pcpBatch, 3)
        let free = m.memory.freeFrames
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        let a = try p.mmap(length: pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.store(a, UInt64(1))
        try p.munmap(a, length: pageSize)
        cpu.detach()
        p.exit()
        XCTAssertGreaterThan(m.memory.pcpFrames, 0)
        XCTAssertEqual(m.memory.freeFrames, free)
        XCTAssertEqual(m.checkInvariants(), [])
    }

    /// D10: a CPU's first fault in a VMA takes the mmap lock (its cache is empty), its next
    /// ones the VMA lock; a second CPU starts over.
    func testD10FirstFaultOfACPUInAVMATakesTheMmapLock() throws {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
        let p = try MMCore.Process(machine: m)
        let a = try p.mmap(length: 4 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        for cpuNumber in 0..<2 {
            let cpu = p.makeCPU()
            let success = m.stats[.vmaLockSuccess], abort = m.stats[.vmaLockAbort]
            try cpu.store(a + UInt64(2 * cpuNumber) * pageSize, UInt64(1))
            try cpu.store(a + UInt64(2 * cpuNumber + 1) * pageSize, UInt64(1))
            XCTAssertEqual(m.stats[.vmaLockAbort] - abort, 1, "CPU \(cpuNumber): first fault")
            XCTAssertEqual(m.stats[.vmaLockSuccess] - success, 1, "CPU \(cpuNumber): second fault")
            cpu.detach()
        }
        p.exit()
    }

    /// D11: a refill takes whole buddy blocks (63 frames: 32 + 16 + 8 + 4 + 2 + 1), hands out each
    /// block's frames consecutively in ascending order, and after a mixed history (compound blocks
    /// freed, blocks merged and split again) every frame it hands out is clean: the invariant
    /// check passes with frames sitting on the list.
    func testD11RefillTakesWholeBlocksOfCleanFrames() throws {
        let mem = try PhysicalMemory(systemBytes: 1 << 30, devicePfnSpaceBytes: 0)
        XCTAssertEqual(mem.pcpBatch, 63)
        // A history: order-3 and order-5 blocks allocated and freed (their heads had orders,
        // their tails flags), so merges leave former heads inside bigger blocks.
        var blocks: [Page] = []
        for o in [3, 5, 3, 5, 2] { blocks.append(try XCTUnwrap(mem.allocate(order: o))) }
        for b in blocks.reversed() { mem.put(b) }
        XCTAssertEqual(mem.checkInvariants(), [])
        let first = try XCTUnwrap(mem.allocate(order: 0))
        var pfns = [first.pfn]
        var pages = [first]
        for _ in 1..<63 { let p = try XCTUnwrap(mem.allocate(order: 0)); pfns.append(p.pfn); pages.append(p) }
        XCTAssertEqual(mem.checkInvariants(), [])
        // One refill's worth, in pop order: whole aligned blocks of 32, 16, 8, 4, 2 and 1
        // frames, each consecutive and ascending.
        XCTAssertEqual(Set(pfns).count, 63)
        var k = 0
        for len in [32, 16, 8, 4, 2, 1] {
            let block = Array(pfns[k..<(k + len)])
            XCTAssertEqual(block, (0..<UInt64(len)).map { block[0] + $0 }, "block \(len) at \(k)")
            XCTAssertEqual(block[0] % UInt64(len), 0, "block of \(len) at \(block[0]) is not aligned")
            k += len
        }
        XCTAssertTrue(pages.allSatisfy { $0.order == 0 && $0.refcount == 1 })
        for p in pages { mem.put(p) }
        mem.drainAllPCP()
        XCTAssertEqual(mem.checkInvariants(), [])
        XCTAssertEqual(mem.freeFrames, Int(mem.systemFrames) - 1)
    }

    /// D12: MADV_DONTNEED takes the mmap lock for read (7.2: the VMA's read lock), so it waits
    /// for a thread holding the mmap lock for write, and finishes once it lets go.
    func testD12DontNeedWaitsForAnMmapWriter() throws {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
        let p = try MMCore.Process(machine: m)
        let a = try p.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let cpu = p.makeCPU()
        try cpu.store(a, UInt64(5))
        let mm = p.mm
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0), zapped = DispatchSemaphore(value: 0)
        Thread { mm.mmapLock.lockWrite(); held.signal(); release.wait(); mm.mmapLock.unlockWrite() }.start()
        held.wait()
        Thread { try? p.madvise(a, length: 2 * pageSize, advice: .dontNeed); zapped.signal() }.start()
        XCTAssertEqual(zapped.wait(timeout: .now() + 0.2), .timedOut, "MADV_DONTNEED ran beside an mmap writer")
        release.signal()
        XCTAssertEqual(zapped.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(try cpu.load(a, as: UInt64.self), 0, "the zap dropped the page")
        cpu.detach()
        p.exit()
    }

    /// D13: with no free huge page, the reservation owner's COW fault on a page its child
    /// shares gets SIGBUS (7.2 would unmap the page from the child and reuse it), and the
    /// child keeps its mapping and data.
    func testD13HugetlbCOWWithoutAFreePageIsSIGBUSForTheOwnerToo() throws {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
        let h = m.memory.hugetlb.defaultHState
        m.memory.hugetlb.setPoolSize(h, 1)
        let p = try MMCore.Process(machine: m)
        let a = try p.mmap(length: h.size, prot: .readWrite, flags: [.private, .anonymous, .hugetlb])
        let cpu = p.makeCPU()
        try cpu.store(a, UInt64(5))
        let child = try p.fork()
        XCTAssertThrowsError(try cpu.store(a, UInt64(6))) { XCTAssertEqual($0 as? AccessFault, .bus(address: a)) }
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 5)
        XCTAssertEqual(m.memory.hugetlb.counters(h), HugePoolCounters(total: 1, free: 0, reserved: 0, surplus: 0))
        XCTAssertEqual(m.checkInvariants(), [])
        ccpu.detach(); child.exit()
        // Alone again, the owner's write reuses the page.
        try cpu.store(a, UInt64(6))
        XCTAssertEqual(try cpu.load(a, as: UInt64.self), 6)
        cpu.detach()
        p.exit()
        XCTAssertEqual(m.memory.hugetlb.counters(h), HugePoolCounters(total: 1, free: 1, reserved: 0, surplus: 0))
    }

    /// D15: an anonymous mapping of 4 MiB without a hint is placed as any other (page aligned,
    /// below the previous one), not on a 2 MiB boundary.
    func testD15AnonymousMappingsAreNotTHPAligned() throws {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
        let p = try MMCore.Process(machine: m)
        let first = try p.mmap(length: pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let big = try p.mmap(length: 4 << 20, prot: .readWrite, flags: [.private, .anonymous])
        XCTAssertEqual(big, first - (4 << 20), "right below the previous mapping")
        XCTAssertNotEqual(big & (pmdSize - 1), 0, "not on a 2 MiB boundary (7.2 would align it)")
        p.exit()
    }

    /// D17: a range that starts inside a device PMD of the caller's device gets the pfn of the
    /// page at each address (7.2 would give the head's pfn, and the next ones, from the start).
    func testD17DevicePMDRangeStartingInsideGetsEachPagesPfn() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        let head = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pmd) }).entry.load().swapEntry.pfn
        let start = a + 10 * pageSize
        let sub = MMUIntervalNotifier(start: start, end: start + 4 * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        var range = HMMRange(notifier: sub, notifierSeq: sub.readBegin(), start: start, end: start + 4 * pageSize,
                             devPrivateOwner: d0.device)
        env.mm.mmapLock.lockRead()
        let r = Result { () throws(Errno) in try env.mm.hmmRangeFault(&range) }
        env.mm.mmapLock.unlockRead()
        env.mm.notifiers.remove(sub)
        XCTAssertNoThrow(try r.get())
        XCTAssertEqual(range.hmmPfns.map { HMMPfn.pfn($0) }, (10..<14).map { head + UInt64($0) }, "7.2: head + 0…3")
        XCTAssertTrue(range.hmmPfns.allSatisfy { HMMPfn.isWrite($0) && HMMPfn.order($0) == 9 })
        env.finish([d0])
    }

    /// D18: a THP shared with a forked child, migrated by the parent with FAIL_ALLOC: the folio
    /// is collected whole, then split for the 512 small device pages; the child's PMD migration
    /// entry is split too, so both end with device-private PTEs of the new pages and read their
    /// data (7.2 leaves the child's PMD entry naming the split head).
    func testD18SplitOfACollectedTHPSplitsTheChildsPMDToo() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env, migrate: false)
        let child = try env.process.fork()
        var f = DmirrorCmd(addr: a, npages: DmirrorFlag.failAlloc)
        try d0.ioctl(.flags, &f)
        var cmd = DmirrorCmd(addr: a, npages: 512)
        try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: Int(pmdSize)))
        XCTAssertEqual(cmd.cpages, 512)
        for mm in [env.mm, child.mm] {
            let found = try XCTUnwrap(mm.mmapLock.withRead { mm.pageTable.lookup(a + 3 * pageSize, level: .pte) })
            XCTAssertEqual(found.level, .pte)
            let e = found.entry.load()
            XCTAssertTrue(e.isSwap && e.swapEntry.isDevicePrivate, "\(e)")
        }
        XCTAssertEqual(env.problems(), [])
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a + 3 * pageSize, as: UInt64.self), 3)
        try ccpu.store(a + 3 * pageSize, UInt64(33))
        XCTAssertEqual(try env.cpu.load(a + 3 * pageSize, as: UInt64.self), 3)
        XCTAssertEqual(try env.cpu.load(a + 400 * pageSize, as: UInt64.self), 400)
        ccpu.detach(); child.exit()
        env.finish([d0])
    }

    /// D19: six round trips of a 4 MiB THP buffer to a coherent device (which has only small
    /// pages: one chunk, laid out at first use) and back: every page moves each time.
    func testD19RoundTripsToACoherentDeviceMoveEveryPage() throws {
        let f = try Fixture(variant: .deviceCoherent)
        let size = UInt64(4 << 20), npages = size / pageSize
        let raw = try f.process.mmap(length: 2 * size, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) / pmdSize * pmdSize
        try f.process.madvise(a, length: size, advice: .hugePage)
        let b = Fixture.Buffer(ptr: a, size: Int(size))
        try f.fill(b, { Int32($0 & 0xff) })
        for round in 0..<6 {
            XCTAssertEqual(f.cmd(f.fd, .migrateToDevice, b, Int(npages)), 0, "round \(round) to the device")
            XCTAssertEqual(b.cpages, npages, "round \(round): pages on the device")
            XCTAssertEqual(f.cmd(f.fd, .migrateToSystem, b, Int(npages)), 0, "round \(round) back")
            XCTAssertEqual(b.cpages, npages, "round \(round): pages back")
        }
        try f.expectInts(try f.ints(f.cpu, a, count: Int(size) / 4), { Int32($0 & 0xff) }, "data after six round trips")
        try f.process.munmap(raw, length: 2 * size)
        try f.teardown()
    }

    /// D20: the CPU faults back one of two device-private pages; a device READ of both faults
    /// the first in again and reads the second — on the device — through its backing page
    /// (Linux 7.2.12's test_hmm copies from the device-private page itself and oopses).
    func testD20ADeviceReadOfItsOwnPageAfterAFaultBackReadsTheBackingPage() throws {
        let f = try Fixture(variant: .devicePrivate)
        let b = try f.anonBuffer(size: 2 * f.pageSize)
        try f.fill(b, { Int32($0) })
        try f.expectCommand(f.fd, .migrateToDevice, b, 2, "MIGRATE_TO_DEV")
        XCTAssertEqual(try f.cpu.load(b.ptr, as: Int32.self), 0, "the CPU faults page 0 back")
        XCTAssertEqual(try f.process.mm.pagemap(b.ptr, count: 2).map(\.isPresent), [true, false])
        try f.expectCommand(f.fd, .read, b, 2, "READ")
        XCTAssertEqual(b.faults, 1)
        try f.expectMirror(b, { Int32($0) })
        XCTAssertEqual(try f.process.mm.pagemap(b.ptr, count: 2).map(\.isPresent), [true, false], "page 1 stays on the device")
        try f.teardown()
    }

    /// D16: after the forked child is gone, a write to a shared page of a PTE-mapped THP is
    /// copied (7.2 would reuse it: every reference is a mapping in this mm).
    func testD16SharedPageOfAPTEMappedTHPIsCopied() throws {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
        let p = try MMCore.Process(machine: m)
        let raw = try p.mmap(length: 4 << 20, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) & pmdMask
        try p.madvise(a, length: pmdSize, advice: .hugePage)
        let cpu = p.makeCPU()
        try cpu.store(a, UInt64(1))
        let head = try p.mm.pagemap(a, count: 1)[0].pfn
        let child = try p.fork()
        child.exit()
        try p.mprotect(a + pmdSize / 2, length: pmdSize / 2, prot: .read)   // splits the PMD
        XCTAssertEqual(m.stats[.thpSplitPMD], 1)
        XCTAssertEqual(m.memory.page(head).refcount, 512, "every reference is one of this mm's PTEs")
        try cpu.store(a + 8, UInt64(2))
        XCTAssertEqual(m.stats[.faultCOWCopy], 1)
        XCTAssertNotEqual(try p.mm.pagemap(a, count: 1)[0].pfn, head, "copied, not reused")
        XCTAssertEqual(try cpu.load(a, as: UInt64.self), 1)
        XCTAssertEqual(m.checkInvariants(), [])
        cpu.detach()
        p.exit()
    }
}

/// D25 and D26: the ODP NIC (docs/linux-divergences.md), with ODPTests' environment.
extension ODPTests {
    /// D25: an implicit region's child that an invalidation emptied stays (with its notifier)
    /// until the region is deregistered; mlx5 frees it from a work queue.
    func testD25AnEmptiedImplicitChildStaysUntilDeregistration() throws {
        let env = try Env()
        let src = try env.region(env.a, env.cpuA, pages: 1, seed: 5)
        let dst = try env.region(env.b, env.cpuB, pages: 1, seed: 0)
        let mrA = try env.nic.register(env.a.mm, address: src, length: pageSize, access: .all)
        let mrB = try env.nic.register(env.b.mm, address: 0, length: .max, access: .all)
        try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: dst, length: 8)).wait()
        XCTAssertEqual(mrB.childCount, 1)
        XCTAssertEqual(mrB.mappedPages, 1)
        try env.b.munmap(dst, length: pageSize)
        XCTAssertEqual(mrB.mappedPages, 0)
        XCTAssertEqual(mrB.childCount, 1)
        XCTAssertEqual(env.b.mm.notifiers.intervalCount, 1)
        mrB.deregister()
        XCTAssertEqual(mrB.childCount, 0)
        XCTAssertEqual(env.b.mm.notifiers.intervalCount, 0)
        env.finish([mrA, mrB])
    }

    /// D26: a NIC's translation tables together are at most an eighth of the machine's memory
    /// (8 MiB here): a region whose table would pass it is ENOMEM and charges nothing; the
    /// table bytes are given back at deregistration.
    func testD26ANICsTranslationTablesHaveALimit() throws {
        let env = try Env()
        XCTAssertEqual(env.nic.tableBytesLimit, 8 << 20)
        let a = try env.region(env.a, env.cpuA, pages: 1, seed: 0)
        // 1 Mi pages (4 GiB of address space): exactly the limit; one page more is ENOMEM.
        let full = try env.nic.register(env.a.mm, address: a, length: 1 << 32, access: .all)
        XCTAssertEqual(env.nic.tableBytes.load(), 8 << 20)
        XCTAssertThrowsError(try env.nic.register(env.a.mm, address: a, length: pageSize, access: .all)) {
            XCTAssertEqual($0 as? Errno, .ENOMEM)
        }
        XCTAssertEqual(env.nic.tableBytes.load(), 8 << 20)
        full.deregister()
        XCTAssertEqual(env.nic.tableBytes.load(), 0)
        let one = try env.nic.register(env.a.mm, address: a, length: pageSize, access: .all)
        XCTAssertEqual(env.nic.tableBytes.load(), 8)
        env.finish([one])
    }
}
