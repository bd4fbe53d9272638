import XCTest
@testable import MMCore
import MMSync

/// A swap area on a host file: no `SWP_SYNCHRONOUS_IO`, so Linux 7.2's `do_swap_page` reads
/// ahead (`swap_vma_readahead`, `__swapin_nr_pages`) and keeps the swap cache after a swap-in
/// (`should_try_to_free_swap`), and reclaim drops a clean cached page without writing it
/// again (`shrink_folio_list`: no `pageout` for a clean folio). Every invariant after every
/// operation.
final class SwapFileTests: XCTestCase {
    private func pte(_ env: Env, _ address: UInt64) -> PTE {
        env.mm.mmapLock.lockRead(); defer { env.mm.mmapLock.unlockRead() }
        return env.mm.pageTable.lookup(address, level: .pte)?.entry.load() ?? .none
    }
    private func cached(_ env: Env, _ address: UInt64) throws -> Bool {
        env.memory.page(try XCTUnwrap(try env.pfn(address))).test(.swapCache)
    }
    /// `pages` pages of IDX at the start of a 2 MiB-aligned range (so readahead windows, which
    /// stay inside the fault's page table, are not cut by where the mapping happens to fall),
    /// paged out to a swap file of `slots` slots.
    private func pagedOut(_ pages: Int, slots: UInt64 = 64) throws -> (Env, UInt64) {
        let env = try Env(swapPages: slots, swapFile: true)
        XCTAssertEqual(env.memory.swap.area(0)?.synchronous, false)
        XCTAssertNotEqual(env.memory.swap.area(0)?.backing, .memory)
        let raw = try env.process.mmap(length: 2 * pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) & ~(pmdSize - 1)
        try fillIDX(env.cpu, a, bytes: UInt64(pages) * pageSize)
        try env.process.madvise(a, length: UInt64(pages) * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], pages)
        XCTAssertEqual(env.memory.swap.freeSlots, Int(slots) - pages)
        return (env, a)
    }

    /// Sixteen pages read back in order. The VMA's first swap fault starts with 7.2's initial 4
    /// hits (`GET_SWAP_RA_VAL`): a window of 8 around page 0, cut at the page table's start
    /// (pages 1–4 ahead); four hits later the fault at page 5 follows page 4, so its window of 8
    /// runs ahead (pages 6–12); the fault at page 13 reads 14 and 15 (nothing is swapped past
    /// them): 3 major faults, 13 pages read ahead, 13 hits. Every page stays in the swap cache, mapped writable and clean.
    func testSequentialSwapInsReadAheadInGrowingWindowsAndKeepTheCache() throws {
        let (env, a) = try pagedOut(16)
        XCTAssertEqual(env.memory.swap.pageCluster, 3)
        for i in 0..<16 {
            XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt32.self), UInt32(i * 1024), "page \(i)")
        }
        XCTAssertEqual(env.machine.stats[.pswpin], 16)
        XCTAssertEqual(env.machine.stats[.pgmajfault], 3)
        XCTAssertEqual(env.machine.stats[.swapRa], 13)
        XCTAssertEqual(env.machine.stats[.swapRaHit], 13)
        XCTAssertEqual(MMStats.Counter.swapRaHit.name, "swap_ra_hit")
        XCTAssertEqual(MMStats.Counter.swapRa.name, "swap_ra")
        XCTAssertEqual(env.memory.swap.freeSlots, 48, "the swap cache keeps every slot")
        for i in 0..<16 {
            let v = pte(env, a + UInt64(i) * pageSize)
            XCTAssertTrue(v.isPresent && v.isWrite && !v.isDirty, "page \(i): \(v)")
            XCTAssertTrue(try cached(env, a + UInt64(i) * pageSize), "page \(i) left the swap cache")
        }
        try checkIDX(env.cpu, a, bytes: 16 * pageSize)
        env.check()
        env.teardown()
    }

    /// Clean pages still in the swap cache go again without a write; a page written since
    /// (its PTE dirty) is written to its old slot; both read back right.
    func testACleanCachedPageIsReclaimedWithoutAWriteAndADirtyOneIsWrittenAgain() throws {
        let (env, a) = try pagedOut(16)
        try checkIDX(env.cpu, a, bytes: 16 * pageSize)
        let slot3 = try XCTUnwrap(env.memory.swap.entry(of: env.memory.page(try XCTUnwrap(try env.pfn(a + 3 * pageSize)))))
        try env.cpu.store(a + 3 * pageSize + 8, UInt32(0xBEEF))
        XCTAssertTrue(pte(env, a + 3 * pageSize).isDirty)
        let used = env.machine.usedFrames
        try env.process.madvise(a, length: 16 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 17, "only the written page is written again")
        XCTAssertEqual(env.machine.usedFrames, used - 16)
        XCTAssertEqual(env.memory.swap.freeSlots, 48)
        let again = pte(env, a + 3 * pageSize)
        XCTAssertTrue(again.isSwap && again.swapEntry == slot3, "the same slot: \(again)")
        XCTAssertEqual(try env.cpu.load(a + 3 * pageSize + 8, as: UInt32.self), 0xBEEF)
        try env.cpu.store(a + 3 * pageSize + 8, UInt32(3 * 1024 + 2))
        try checkIDX(env.cpu, a, bytes: 16 * pageSize)
        XCTAssertEqual(env.machine.stats[.pswpin], 32)
        env.check()
        env.teardown()
    }

    /// A write fault on an exclusive swap entry maps the page writable and dirty, and the
    /// write is then done: the cache keeps the page (7.2 clears FAULT_FLAG_WRITE before
    /// `should_try_to_free_swap`), and reclaim writes it to the same slot.
    func testAWriteFaultKeepsTheCacheAndTheNextPageoutWritesTheSameSlot() throws {
        let (env, a) = try pagedOut(1, slots: 8)
        let e = pte(env, a).swapEntry
        try env.cpu.store(a + 4, UInt32(77))
        let v = pte(env, a)
        XCTAssertTrue(v.isPresent && v.isWrite && v.isDirty)
        XCTAssertTrue(try cached(env, a))
        XCTAssertEqual(env.memory.swap.freeSlots, 7)
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 2)
        XCTAssertEqual(pte(env, a).swapEntry, e)
        XCTAssertEqual(try env.cpu.load(a + 4, as: UInt32.self), 77)
        XCTAssertEqual(try env.cpu.load(a, as: UInt32.self), 0)
        env.check()
        env.teardown()
    }

    /// `vm_swap_full`: with fewer than half the slots free, a swap-in gives its slot up.
    func testASwapInFreesTheSlotWhenSwapIsHalfFull() throws {
        let (env, a) = try pagedOut(6, slots: 8)
        XCTAssertEqual(env.memory.swap.freeSlots, 2)
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt32.self), 1024)
        XCTAssertFalse(try cached(env, a + pageSize))
        XCTAssertEqual(env.memory.swap.freeSlots, 3)
        try checkIDX(env.cpu, a, bytes: 6 * pageSize)
        env.check()
        env.teardown()
    }

    /// `vm.page-cluster` 0 turns readahead off; the sysctl's range is 0...31; a machine under
    /// 16 MiB of usable RAM starts at 2 (`swap_setup`). Pages read ahead and never touched are freed, with
    /// their slots, when the process exits.
    func testPageClusterBoundsReadaheadAndUntouchedPagesGoAtExit() throws {
        let (env, a) = try pagedOut(8)
        XCTAssertThrowsError(try env.memory.swap.setPageCluster(32)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try env.memory.swap.setPageCluster(-1)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        try env.memory.swap.setPageCluster(0)
        for i in 0..<4 { _ = try env.cpu.load(a + UInt64(i) * pageSize, as: UInt8.self) }
        XCTAssertEqual(env.machine.stats[.pgmajfault], 4)
        XCTAssertEqual(env.machine.stats[.swapRa], 0)
        try env.memory.swap.setPageCluster(3)
        // With readahead off no fault was recorded (`swap_vma_ra_win` returns first), so the
        // fault at page 4 starts with the initial 4 hits: a window of 8 around it, pages 1–7,
        // of which 1–3 are mapped: pages 5–7 are read ahead and never touched.
        _ = try env.cpu.load(a + 4 * pageSize, as: UInt8.self)
        XCTAssertEqual(env.machine.stats[.swapRa], 3)
        XCTAssertEqual(env.machine.stats[.pswpin], 8)
        XCTAssertEqual(env.machine.stats[.pgmajfault], 5)
        for i in 5..<8 { XCTAssertTrue(pte(env, a + UInt64(i) * pageSize).isSwap, "page \(i): read ahead, not mapped") }
        env.check()
        env.teardown()   // every frame and slot back
        let small = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        XCTAssertEqual(small.memory.swap.pageCluster, 2, "16 MiB less the reserved page is under 16 MiB")
        XCTAssertEqual(try Machine(memoryBytes: 17 << 20, devicePfnSpaceBytes: 0).memory.swap.pageCluster, 3)
    }

    /// `swapon` of a bad file: a missing directory is ENOENT, a directory EISDIR (its open), a
    /// character device EINVAL (no swap header to read), a size under two pages EINVAL, a file
    /// an area already uses EBUSY; nothing is added by a failure, and the next area still
    /// gets type 0.
    func testSwapOnOfABadFileFailsAndAddsNothing() throws {
        let m = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        let swap = m.memory.swap
        XCTAssertThrowsError(try swap.swapOn(bytes: 1 << 20, backing: .file("/nonexistent-swift-hmm-dir/swap"))) { XCTAssertEqual($0 as? Errno, .ENOENT) }
        XCTAssertThrowsError(try swap.swapOn(bytes: 1 << 20, backing: .file(NSTemporaryDirectory()))) { XCTAssertEqual($0 as? Errno, .EISDIR) }
        XCTAssertThrowsError(try swap.swapOn(bytes: 1 << 20, backing: .file("/dev/null"))) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try swap.swapOn(bytes: 1 << 20, backing: .file(""))) { XCTAssertEqual($0 as? Errno, .ENOENT) }
        let path = NSTemporaryDirectory() + "swift-hmm-swap-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(path) }
        XCTAssertThrowsError(try swap.swapOn(bytes: pageSize, backing: .file(path))) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertEqual(swap.allAreas.count, 0)
        let area = try swap.swapOn(bytes: 1 << 20, backing: .file(path))
        XCTAssertEqual(area.type, 0)
        XCTAssertEqual(area.totalSlots, 255)
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_size, 1 << 20, "the file is sized to the area")
        XCTAssertEqual(Int(st.st_blocks) * 512, 1 << 20, "and allocated (a swap file has no holes)")
        XCTAssertThrowsError(try swap.swapOn(bytes: 1 << 20, backing: .file(path))) { XCTAssertEqual($0 as? Errno, .EBUSY) }
        let other = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        XCTAssertThrowsError(try other.memory.swap.swapOn(bytes: 1 << 20, backing: .file(path))) { XCTAssertEqual($0 as? Errno, .EBUSY) }
        XCTAssertEqual(swap.allAreas.count, 1)
    }

    /// An area filled while swap is half full gives back the slots only the swap cache holds
    /// (7.2's `swap_range_alloc` schedules `swap_reclaim_full_clusters(si, true)`, which calls
    /// `__try_to_reclaim_swap`; the model runs it at once, D21): 24 pages paged out and read
    /// back keep their slots (count 0, cached: swap was not half full); 48 more paged out take
    /// the 40 free slots, the 40th fills the area, so the 24 cached ones come back (their pages
    /// stay mapped, leave the cache and are dirty now) and the last 8 take them. (In 7.2 those
    /// 8 go only once the worker has run; until then their page-outs fail.)
    func testAFullAreaGivesBackSlotsOnlyTheSwapCacheHolds() throws {
        let (env, a) = try pagedOut(24)
        try checkIDX(env.cpu, a, bytes: 24 * pageSize)
        XCTAssertEqual(env.machine.stats[.pswpin], 24)
        XCTAssertEqual(env.memory.swap.freeSlots, 40, "read back, the pages keep their slots")
        for i in 0..<24 { XCTAssertTrue(try cached(env, a + UInt64(i) * pageSize), "page \(i)") }
        let rawB = try env.process.mmap(length: 2 * pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let b = (rawB + pmdSize - 1) & ~(pmdSize - 1)
        for i in 0..<48 { try env.cpu.store(b + UInt64(i) * pageSize + 8, UInt32(0xB000 + i)) }
        try env.process.madvise(b, length: 48 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 24 + 48, "every page of the second region went")
        XCTAssertEqual(env.memory.swap.freeSlots, 16)
        for i in 0..<48 { XCTAssertTrue(pte(env, b + UInt64(i) * pageSize).isSwap, "page \(i) of the second region") }
        for i in 0..<24 {
            let page = env.memory.page(try XCTUnwrap(try env.pfn(a + UInt64(i) * pageSize)))
            XCTAssertFalse(page.test(.swapCache), "page \(i) kept its slot")
            XCTAssertTrue(page.test(.dirty), "page \(i): its only copy is in memory now")
        }
        env.check()
        try checkIDX(env.cpu, a, bytes: 24 * pageSize)
        for i in 0..<48 { XCTAssertEqual(try env.cpu.load(b + UInt64(i) * pageSize + 8, as: UInt32.self), UInt32(0xB000 + i)) }
        XCTAssertEqual(env.machine.stats[.pswpin], 24 + 48)
        env.check()
        env.teardown()
    }

    /// Filling an area does not give its cached slots back while swap as a whole is not half
    /// full (`vm_swap_full`), and a full area is passed over (7.2 takes it off the list
    /// allocations look at): 8 pages read back keep their slots in area 0 (16 slots); 10 more
    /// paged out fill area 0 (the 8th fills it: 16 of 80 slots in use, not half) and the last
    /// 2 go to area 1.
    func testAFullAreaKeepsItsCachedSlotsUnlessSwapIsHalfFullAndIsPassedOver() throws {
        let (env, a) = try pagedOut(8, slots: 16)
        let second = try env.memory.swap.swapOn(bytes: 65 * pageSize, backing: .temporaryFile())
        try checkIDX(env.cpu, a, bytes: 8 * pageSize)
        let rawB = try env.process.mmap(length: 2 * pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let b = (rawB + pmdSize - 1) & ~(pmdSize - 1)
        for i in 0..<10 { try env.cpu.store(b + UInt64(i) * pageSize + 8, UInt32(0xB000 + i)) }
        try env.process.madvise(b, length: 10 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 8 + 10)
        XCTAssertEqual(env.memory.swap.area(0)?.freeSlots, 0)
        XCTAssertEqual(second.freeSlots, 62)
        for i in 0..<8 { XCTAssertTrue(try cached(env, a + UInt64(i) * pageSize), "page \(i) lost its slot") }
        for i in 0..<10 {
            let v = pte(env, b + UInt64(i) * pageSize)
            XCTAssertTrue(v.isSwap && v.swapEntry.type == (i < 8 ? 0 : 1), "page \(i): \(v)")
        }
        env.check()
        for i in 0..<10 { XCTAssertEqual(try env.cpu.load(b + UInt64(i) * pageSize + 8, as: UInt32.self), UInt32(0xB000 + i)) }
        env.check()
        env.teardown()
    }

    /// A shmem swap-in from a swap file reads the slots around its own first (7.2's
    /// `shmem_swapin_folio` → `shmem_swapin_cluster` → `swap_cluster_readahead`): an aligned
    /// block of up to 8 slots (`vm.page-cluster` 3), as many as `swapin_nr_pages` allows from
    /// the machine-wide hits (4 before the first read). Sixteen pages of a shared mapping in
    /// slots 1–16, read in order: the read of slot 1 reads 2–7 ahead (the block 0–7 but the
    /// header); six hits; slot 8 reads 9–15; seven hits; slot 16 reads nothing more (17–23 are
    /// free): 3 major faults, 13 pages read ahead, 13 hits. Shmem frees a slot as its page
    /// comes back into the file, so every slot is free at the end.
    func testShmemSwapInsReadTheAlignedSlotClusterAround() throws {
        let env = try Env(swapPages: 64, swapFile: true)
        let a = try env.anon(16, shared: true)
        try fillIDX(env.cpu, a, bytes: 16 * pageSize)
        do {   // the mapping's file, held only here: it goes with the process at teardown
            let file = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.vmaList.first { $0.start == a }?.file })
            try env.process.madvise(a, length: 16 * pageSize, advice: .pageout)
            XCTAssertEqual(env.machine.stats[.pswpout], 16)
            XCTAssertEqual(file.cacheLock.withLock { (0..<16).map { file.swapped[UInt64($0)]?.offset ?? 0 } }, Array(1...16),
                           "page i in slot i + 1")
            try checkIDX(env.cpu, a, bytes: 16 * pageSize)
            XCTAssertEqual(file.swappedPages, 0)
        }
        XCTAssertEqual(env.machine.stats[.pswpin], 16)
        XCTAssertEqual(env.machine.stats[.pgmajfault], 3)
        XCTAssertEqual(env.machine.stats[.swapRa], 13)
        XCTAssertEqual(env.machine.stats[.swapRaHit], 13)
        XCTAssertEqual(env.memory.swap.freeSlots, 64)
        env.check()
        env.teardown()
    }

    /// `SwapBacking.temporaryFile`: the file is made in the directory and unlinked at once (the
    /// area keeps it open: its slots still work); a missing directory is ENOENT.
    func testATemporarySwapFileLeavesNothingBehind() throws {
        var template = Array((NSTemporaryDirectory() + "swift-hmm-swapdir-XXXXXX").utf8CString)
        let dir = String(cString: try XCTUnwrap(mkdtemp(&template)))
        defer { rmdir(dir) }
        let m = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        XCTAssertThrowsError(try m.memory.swap.swapOn(bytes: 1 << 20, backing: .temporaryFile(directory: dir + "/missing"))) {
            XCTAssertEqual($0 as? Errno, .ENOENT)
        }
        let area = try m.memory.swap.swapOn(bytes: 1 << 20, backing: .temporaryFile(directory: dir))
        XCTAssertFalse(area.synchronous)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        let p = try Process(machine: m)
        let cpu = p.makeCPU()
        let a = try p.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.store(a + pageSize, UInt64(99))
        try p.madvise(a, length: 2 * pageSize, advice: .pageout)
        XCTAssertEqual(m.stats[.pswpout], 1)
        XCTAssertEqual(try cpu.load(a + pageSize, as: UInt64.self), 99)
        cpu.detach()
        p.exit()
        XCTAssertEqual(area.freeSlots, 255)
    }
}
