import XCTest
@testable import MMCore
import MMSync

/// Swap-out through MADV_PAGEOUT and swap-in through faults, against Linux 7.2's
/// `shrink_folio_list`, `try_to_unmap_one`, `do_swap_page`, `copy_nonpresent_pte` and
/// `zap_nonpresent_ptes`, with every invariant (swap counts included) after every operation.
final class SwapTests: XCTestCase {
    /// The swap entry at `address`, if the PTE holds one.
    private func swapPTE(_ env: Env, _ address: UInt64) -> PTE? {
        env.mm.mmapLock.lockRead(); defer { env.mm.mmapLock.unlockRead() }
        guard let f = env.mm.pageTable.lookup(address, level: .pte), f.level == .pte else { return nil }
        let v = f.entry.load()
        return v.isSwap && v.swapEntry.isSwapSlot ? v : nil
    }
    /// One page holding `value` at its start, paged out (a machine with 8 swap slots).
    private func pagedOutPage(_ value: UInt64) throws -> (Env, UInt64) {
        let env = try Env(swapPages: 8)
        let a = try env.anon(1)
        try env.cpu.store(a, value)
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(env.memory.swap.freeSlots, 7)
        return (env, a)
    }
    private func pte(_ env: Env, _ address: UInt64) -> PTE {
        env.mm.mmapLock.lockRead(); defer { env.mm.mmapLock.unlockRead() }
        return env.mm.pageTable.lookup(address, level: .pte)?.entry.load() ?? .none
    }

    func testPageoutSwapsOutAndAReadMapsTheExclusivePageWritable() throws {
        let env = try Env(swapPages: 64)
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * pageSize)
        let used = env.machine.usedFrames
        try env.process.madvise(a, length: 4 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 4)
        XCTAssertEqual(env.machine.usedFrames, used - 4, "the four pages are freed")
        XCTAssertEqual(env.memory.swap.freeSlots, 60)
        let pm = try env.mm.pagemap(a, count: 4)
        var offsets: [UInt64] = []
        for (i, e) in pm.enumerated() {
            XCTAssertTrue(e.isSwap && !e.isPresent, "page \(i): \(e)")
            // PM_SWAP, frame = type | offset << 5, soft-dirty from the entry; never exclusive.
            XCTAssertEqual(e.raw & 0x1F, 0)
            XCTAssertEqual(e.raw & PagemapEntry.exclusiveBit, 0)
            offsets.append((e.raw & ((1 << 55) - 1)) >> 5)
            let v = try XCTUnwrap(swapPTE(env, a + UInt64(i) * pageSize))
            XCTAssertTrue(v.isSwapExclusive, "an exclusive page's entry carries the exclusive bit")
            XCTAssertEqual(env.memory.swap.area(0)!.count(v.swapEntry.offset), 1)
        }
        XCTAssertEqual(offsets, [1, 2, 3, 4])
        // A read of each page reads its slot (a major fault) and maps it writable: no further
        // fault for the write that follows.
        try checkIDX(env.cpu, a, bytes: 4 * pageSize)
        XCTAssertEqual(env.machine.stats[.pswpin], 4)
        XCTAssertEqual(env.machine.stats[.pgmajfault], 4)
        XCTAssertEqual(env.machine.stats[.workingsetRefaultAnon], 4)
        XCTAssertEqual(MMStats.Counter.workingsetRefaultAnon.name, "workingset_refault_anon")
        for i in 0..<4 {
            let v = pte(env, a + UInt64(i) * pageSize)
            XCTAssertTrue(v.isPresent && v.isWrite && !v.isDirty, "page \(i): \(v)")
        }
        XCTAssertEqual(env.memory.swap.freeSlots, 64, "the synchronous area drops each slot at swap-in")
        let cow = env.machine.stats[.faultCOWReuse] + env.machine.stats[.faultCOWCopy]
        try env.cpu.store(a, Int32(-1))
        XCTAssertEqual(env.machine.stats[.faultCOWReuse] + env.machine.stats[.faultCOWCopy], cow)
        env.check()
        env.teardown()
    }

    func testAWriteFaultSwapsInDirtyAndASecondPageoutWritesAgain() throws {
        let (env, a) = try pagedOutPage(UInt64(0x1234))
        try env.cpu.store(a + 8, UInt64(0x5678))
        let v = pte(env, a)
        XCTAssertTrue(v.isPresent && v.isWrite && v.isDirty)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0x1234)
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 2)
        XCTAssertEqual(try env.cpu.load(a + 8, as: UInt64.self), 0x5678)
        XCTAssertEqual(env.machine.stats[.pswpin], 2)
        env.check()
        env.teardown()
    }

    func testForkSharesTheSlotAndEachSideSwapsInOnce() throws {
        let (env, a) = try pagedOutPage(UInt64(41))
        let e = try XCTUnwrap(swapPTE(env, a)).swapEntry
        let child = try env.process.fork()
        let area = env.memory.swap.area(0)!
        XCTAssertEqual(area.count(e.offset), 2, "fork duplicates the entry")
        XCTAssertFalse(try XCTUnwrap(swapPTE(env, a)).isSwapExclusive, "the parent's entry is no longer exclusive")
        let childCPU = child.makeCPU()
        XCTAssertEqual(try childCPU.load(a, as: UInt64.self), 41)
        XCTAssertEqual(env.machine.stats[.pswpin], 1)
        XCTAssertEqual(area.count(e.offset), 1)
        XCTAssertEqual(env.memory.swap.freeSlots, 7, "the page stays in the swap cache while the parent's entry names it")
        XCTAssertFalse(pteOf(child, a).isWrite, "a shared page is mapped read-only")
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 41)
        XCTAssertEqual(env.machine.stats[.pswpin], 1, "the parent finds the page in the swap cache")
        XCTAssertEqual(env.memory.swap.freeSlots, 8)
        let page = env.memory.page(try XCTUnwrap(try env.pfn(a)))
        XCTAssertEqual(page.mapcount, 2)
        XCTAssertEqual(page.refcount, 2)
        try env.cpu.store(a, UInt64(42))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 1)
        XCTAssertEqual(try childCPU.load(a, as: UInt64.self), 41)
        env.check()
        childCPU.detach()
        child.exit()
        env.teardown()
    }

    private func pteOf(_ p: Process, _ address: UInt64) -> PTE {
        p.mm.mmapLock.lockRead(); defer { p.mm.mmapLock.unlockRead() }
        return p.mm.pageTable.lookup(address, level: .pte)?.entry.load() ?? .none
    }

    func testUnmapAndExitFreeTheSlots() throws {
        let env = try Env(swapPages: 8)
        let a = try env.anon(3)
        for i in 0..<3 { try env.cpu.store(a + UInt64(i) * pageSize, UInt8(i + 1)) }
        try env.process.madvise(a, length: 3 * pageSize, advice: .pageout)
        XCTAssertEqual(env.memory.swap.freeSlots, 5)
        try env.process.munmap(a, length: pageSize)
        XCTAssertEqual(env.memory.swap.freeSlots, 6)
        let child = try env.process.fork()
        child.exit()
        XCTAssertEqual(env.memory.swap.freeSlots, 6, "the child's exit gives back only its own counts")
        env.check()
        env.teardown()   // checks that every slot is free again
    }

    /// The last unmap of a page that stayed in the swap cache (the child's entry named the slot
    /// when the parent swapped it in) frees the page and its slot (`free_swap_cache` in
    /// `free_pages_and_swap_cache`), not just the mapping.
    func testTheLastUnmapOfASwapCachePageFreesPageAndSlot() throws {
        let env = try Env(swapPages: 8)
        let a = try env.anon(1)
        let used = env.machine.usedFrames
        try env.cpu.store(a, UInt64(7))
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        let child = try env.process.fork()
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 7)
        XCTAssertEqual(env.memory.swap.freeSlots, 7, "the child's entry keeps the page in the swap cache")
        child.exit()
        let page = env.memory.page(try XCTUnwrap(try env.pfn(a)))
        XCTAssertTrue(page.test(.swapCache), "still mapped by the parent: zap leaves it in the cache")
        XCTAssertEqual(env.memory.swap.freeSlots, 7)
        XCTAssertEqual(page.refcount, 2, "the parent's mapping and the swap cache")
        try env.process.munmap(a, length: pageSize)
        XCTAssertEqual(env.memory.swap.freeSlots, 8)
        XCTAssertEqual(env.machine.usedFrames, used, "the page (and the page tables) are freed, not left in the swap cache")
        env.check()
        env.teardown()
    }

    /// MADV_FREE puts swap entries and clears their PTEs (`madvise_free_pte_range`: dropping is
    /// cheaper than a swap-in), and marks a swap-cache page lazily freeable only once it could
    /// leave the swap cache (`folio_free_swap` under the page lock).
    func testMadvFreeDropsSwapEntriesAndFreesTheSwapCacheFirst() throws {
        let (env, a) = try pagedOutPage(UInt64(5))
        let child = try env.process.fork()
        let childCPU = child.makeCPU()
        XCTAssertEqual(try childCPU.load(a, as: UInt64.self), 5)
        let page = env.memory.page(try XCTUnwrap(pfnOf(child, a)))
        XCTAssertTrue(page.test(.swapCache))
        // The parent's entry still names the slot: the child's page stays cached and dirty.
        try child.madvise(a, length: pageSize, advice: .free)
        XCTAssertTrue(page.test(.swapCache) && !page.test(.lazyFree))
        XCTAssertEqual(env.memory.swap.freeSlots, 7)
        try env.process.madvise(a, length: pageSize, advice: .free)
        XCTAssertTrue(pte(env, a).isNone, "the parent's swap entry is cleared")
        XCTAssertEqual(env.memory.swap.freeSlots, 7, "the child still maps the cached page")
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0, "a later touch of the parent reads zeros")
        XCTAssertEqual(env.machine.stats[.pswpin], 1)
        try child.madvise(a, length: pageSize, advice: .free)
        XCTAssertTrue(!page.test(.swapCache) && page.test(.lazyFree) && !page.test(.dirty))
        XCTAssertEqual(env.memory.swap.freeSlots, 8)
        XCTAssertEqual(try childCPU.load(a, as: UInt64.self), 5, "until reclaim, the bytes stay")
        env.check()
        childCPU.detach()
        child.exit()
        env.teardown()
    }

    private func pfnOf(_ p: Process, _ address: UInt64) -> UInt64? {
        let v = pteOf(p, address)
        return v.isPresent ? v.pfn : nil
    }

    /// Shmem pages swap through their page cache (`shmem_writeout`, `shmem_swapin_folio`): a
    /// shared anonymous mapping's written pages are unmapped and become swap entries in the
    /// file; a never-written one (clean zeros) just leaves it; a fault (a major one), pread or
    /// pwrite reads them back; truncation frees the slots.
    func testShmemPagesSwapThroughThePageCache() throws {
        let env = try Env(swapPages: 16)
        let a = try env.anon(4, shared: true)
        try env.cpu.store(a, UInt64(11))
        try env.cpu.store(a + pageSize, UInt64(22))
        XCTAssertEqual(try env.cpu.load(a + 2 * pageSize, as: UInt64.self), 0, "read: a clean page in the cache")
        let file = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.vmaList.first { $0.start == a }?.file })
        let used = env.machine.usedFrames
        try env.process.madvise(a, length: 4 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 2, "the two written pages are written out")
        XCTAssertEqual(file.swappedPages, 2)
        XCTAssertEqual(file.cachedPages, 0, "the clean one is dropped")
        XCTAssertEqual(env.machine.usedFrames, used - 3)
        XCTAssertEqual(env.memory.swap.freeSlots, 14)
        env.check()
        XCTAssertTrue(pte(env, a).isNone, "unmapped: a shmem page's PTE is cleared, not a swap entry")
        let majors = env.machine.stats[.pgmajfault]
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 11, "a fault reads the page back into the cache")
        XCTAssertEqual(env.machine.stats[.pswpin], 1)
        XCTAssertEqual(env.machine.stats[.pgmajfault], majors + 1)
        XCTAssertEqual(file.swappedPages, 1)
        XCTAssertEqual(env.memory.swap.freeSlots, 15, "the slot goes at once")
        XCTAssertEqual(try file.pread(offset: pageSize, count: 8), [22, 0, 0, 0, 0, 0, 0, 0], "pread reads back the other one")
        XCTAssertEqual(env.machine.stats[.pswpin], 2)
        // Only the mapped page is paged out; a page read back is dirty (its slot was freed).
        try env.process.madvise(a, length: 4 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 3)
        XCTAssertEqual(file.swappedPages, 1)
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 22, "from the page cache")
        XCTAssertEqual(env.machine.stats[.pswpin], 2)
        try file.ftruncate(pageSize)
        XCTAssertEqual(file.cachedPages, 0, "truncation drops the cached page beyond the end")
        XCTAssertEqual(file.swappedPages, 1)
        try file.pwrite(offset: 16, bytes: [5])
        XCTAssertEqual(env.machine.stats[.pswpin], 3, "pwrite reads the page back before writing into it")
        XCTAssertEqual(try file.pread(offset: 0, count: 17), [11, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8) + [5])
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(file.swappedPages, 0, "not mapped any more by this process: MADV_PAGEOUT does not see it")
        try file.ftruncate(0)
        XCTAssertEqual(file.swappedPages, 0, "…and frees the swap entries")
        XCTAssertEqual(env.memory.swap.freeSlots, 16)
        env.check()
        env.teardown()
    }

    /// A partial truncation zeroes the rest of the last page even when that page is in swap:
    /// it is read back first (`shmem_get_partial_folio`), so the old bytes do not come back
    /// when the file grows again.
    func testPartialTruncationOfASwappedPageZeroesItsTail() throws {
        let env = try Env(swapPages: 8)
        let file = ShmemFile(machine: env.machine, size: pageSize)
        try file.pwrite(offset: 0, bytes: [UInt8](repeating: 0xAB, count: Int(pageSize)))
        let a = try env.process.mmap(length: pageSize, prot: .readWrite, flags: .shared, file: file)
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 0xAB)
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(file.swappedPages, 1)
        try file.ftruncate(100)
        XCTAssertEqual(env.machine.stats[.pswpin], 1, "read back to be zeroed")
        XCTAssertEqual(file.swappedPages, 0)
        try file.ftruncate(pageSize)
        XCTAssertEqual(try file.pread(offset: 0, count: Int(pageSize)), [UInt8](repeating: 0xAB, count: 100) + [UInt8](repeating: 0, count: Int(pageSize) - 100))
        XCTAssertEqual(try env.cpu.load(a + 200, as: UInt8.self), 0)
        try env.process.munmap(a, length: pageSize)
        try file.ftruncate(0)
        env.check()
        env.teardown()
    }

    func testAFullSwapAreaKeepsTheRestMapped() throws {
        let env = try Env(swapPages: 2)
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * pageSize)
        try env.process.madvise(a, length: 4 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 2)
        XCTAssertEqual(env.machine.stats[.pgactivate], 2)
        XCTAssertEqual(env.memory.swap.freeSlots, 0)
        let pm = try env.mm.pagemap(a, count: 4)
        XCTAssertEqual(pm.map(\.isSwap), [true, true, false, false])
        try checkIDX(env.cpu, a, bytes: 4 * pageSize)
        env.check()
        env.teardown()
    }

    func testPinnedAndSharedPagesAreNotPagedOut() throws {
        let env = try Env(swapPages: 8)
        let a = try env.anon(2)
        try env.cpu.store(a, UInt8(1)); try env.cpu.store(a + pageSize, UInt8(2))
        let pinned = try env.mm.getUserPages(a, count: 1, flags: [.write, .pin, .longterm])
        let child = try env.process.fork()   // the second page is now mapped twice
        try env.process.madvise(a, length: 2 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.machine.stats[.pgactivate], 1, "the pinned page goes back to the active list")
        XCTAssertEqual(try env.mm.pagemap(a, count: 2).map(\.isPresent), [true, true])
        XCTAssertEqual(env.memory.swap.freeSlots, 8)
        env.mm.unpinUserPages(pinned)
        child.exit()
        env.check()
        env.teardown()
    }

    func testACleanLazyFreePageIsDiscardedWithoutSwap() throws {
        let env = try Env(swapPages: 8)
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(5)); try env.cpu.store(a + pageSize, UInt64(6))
        try env.process.madvise(a, length: 2 * pageSize, advice: .free)
        try env.cpu.store(a + pageSize, UInt64(7))   // written again: swap-backed again, kept
        try env.process.madvise(a, length: 2 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pglazyfreed], 1)
        XCTAssertEqual(env.machine.stats[.pswpout], 0, "try_to_unmap backs out of a dirty lazily freed page")
        XCTAssertEqual(env.machine.stats[.pgactivate], 1)
        XCTAssertEqual(try env.mm.pagemap(a, count: 2).map(\.isPresent), [false, true])
        try env.process.madvise(a, length: 2 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 1, "now an ordinary anonymous page, it is swapped")
        XCTAssertEqual(try env.mm.pagemap(a, count: 2).map(\.isSwap), [false, true])
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0, "a discarded lazily freed page reads zero")
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 7)
        env.check()
        env.teardown()
    }

    func testColdClearsTheAccessedBitAndSwapsNothing() throws {
        let env = try Env(swapPages: 8)
        let a = try env.anon(1)
        try env.cpu.store(a, UInt8(3))
        XCTAssertTrue(pte(env, a).isAccessed)
        try env.process.madvise(a, length: pageSize, advice: .cold)
        XCTAssertFalse(pte(env, a).isAccessed)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try env.process.madvise(a, length: 2 * pageSize, advice: .pageout) }
        XCTAssertEqual(env.machine.stats[.pswpout], 1, "the mapped part is paged out before the hole fails the call")
        env.check()
        env.teardown()
    }
}

/// Reclaim from the LRU lists: an allocation that finds no free frame reclaims (direct
/// reclaim), kswapd keeps the free frames above the high watermark.
final class ReclaimTests: XCTestCase {
    /// A working set four times the machine's RAM, written and read back with the IDX
    /// pattern; a fork in the middle shares half of it. Every byte comes back, the invariants
    /// hold, and once both processes exit every frame and every slot is free again.
    func testAWorkingSetFourTimesRAMIsWrittenAndReadBack() throws {
        let env = try Env(mib: 16, swapPages: 20_000, checkEveryOperation: false)
        let bytes: UInt64 = 64 << 20
        let a = try env.process.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
        // The first 8 MiB fit; the fork shares them (its page tables need free frames: fork's
        // table allocations do not reclaim here), then the rest is written past RAM.
        try fillIDX(env.cpu, a, bytes: 8 << 20)
        let child = try env.process.fork()
        try fillIDX(env.cpu, a + (8 << 20), bytes: bytes - (8 << 20), plus: 7)
        XCTAssertGreaterThan(env.machine.stats[.pswpout], Int((bytes - (16 << 20)) / pageSize))
        XCTAssertGreaterThan(env.machine.stats[.allocstall], 0)
        XCTAssertGreaterThan(env.machine.stats[.pgstealDirect], 0)
        try checkIDX(env.cpu, a, bytes: 8 << 20)
        try checkIDX(env.cpu, a + (8 << 20), bytes: bytes - (8 << 20), plus: 7)
        let childCPU = child.makeCPU()
        try checkIDX(childCPU, a, bytes: 8 << 20)
        try childCPU.store(a, Int32(-5))   // the child's copy-on-write after a swap-in
        XCTAssertEqual(try env.cpu.load(a, as: Int32.self), 0)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        childCPU.detach()
        child.exit()
        env.teardown()
    }

    /// The working set (`mm/workingset.c`): reclaim's eviction leaves the LRU's non-resident
    /// age in the slot; a refault within the active list's size of evictions and activations
    /// since comes back active (`workingset_activate_anon`), a later one inactive; a page
    /// that had been deactivated (PG_workingset) is restored as such (`workingset_restore_anon`).
    func testARefaultWithinTheWorkingSetIsActivated() throws {
        let env = try Env(swapPages: 64)
        let lru = env.memory.lru
        func page(_ a: UInt64) throws -> Page { env.memory.page(try XCTUnwrap(env.pfn(a))) }
        // b: eight pages made active (used at the first scan and again before the second,
        // through a second CPU's TLB fill): move_folios_to_lru ages the non-resident set by 8.
        let b = try env.anon(8)
        try fillIDX(env.cpu, b, bytes: 8 * pageSize)
        lru.drainAll()
        XCTAssertEqual(env.machine.shrinkInactiveList(8, reclaimer: .direct).freed, 0)
        let cpu2 = env.process.makeCPU()
        for i in 0..<8 { _ = try cpu2.load(b + UInt64(i) * pageSize, as: UInt8.self) }
        XCTAssertEqual(env.machine.shrinkInactiveList(8, reclaimer: .direct).freed, 0)
        XCTAssertEqual(lru.count(.activeAnon), 8)
        XCTAssertEqual(lru.nonresidentAge.load(), 8)
        // a: four pages paged out at ages 8…11.
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * pageSize)
        try env.process.madvise(a, length: 4 * pageSize, advice: .pageout)
        XCTAssertEqual(lru.nonresidentAge.load(), 12)
        // a[3] comes back 1 eviction later (≤ 8 active pages): active.
        XCTAssertEqual(try env.cpu.load(a + 3 * pageSize, as: Int32.self), 3 * 1024)
        XCTAssertEqual(env.machine.stats[.workingsetRefaultAnon], 1)
        XCTAssertEqual(env.machine.stats[.workingsetActivateAnon], 1)
        XCTAssertEqual(lru.nonresidentAge.load(), 13, "the activation ages the set too")
        lru.drainAll()
        XCTAssertTrue(try page(a + 3 * pageSize).test(.active))
        XCTAssertEqual(lru.count(.activeAnon), 9)
        // Sixteen more evictions: a[0] (evicted at 8, now 29: 21 > 9) comes back inactive.
        let c = try env.anon(16)
        try fillIDX(env.cpu, c, bytes: 16 * pageSize)
        try env.process.madvise(c, length: 16 * pageSize, advice: .pageout)
        XCTAssertEqual(try env.cpu.load(a, as: Int32.self), 0)
        XCTAssertEqual(env.machine.stats[.workingsetRefaultAnon], 2)
        XCTAssertEqual(env.machine.stats[.workingsetActivateAnon], 1)
        lru.drainAll()
        XCTAssertFalse(try page(a).test(.active))
        // b deactivated (the oldest eight of the active list: PG_workingset), a[3] still
        // active; b[0] evicted and refaulted at once (distance 1 ≤ 1): activated and restored.
        env.machine.shrinkActiveList(8, reclaimer: .direct)
        XCTAssertEqual(lru.count(.activeAnon), 1)
        XCTAssertTrue(try page(b).test(.workingset))
        XCTAssertFalse(try page(a + 3 * pageSize).test(.workingset))
        try env.process.madvise(b, length: pageSize, advice: .pageout)
        XCTAssertEqual(try env.cpu.load(b, as: Int32.self), 0)
        XCTAssertEqual(env.machine.stats[.workingsetRefaultAnon], 3)
        XCTAssertEqual(env.machine.stats[.workingsetActivateAnon], 2)
        XCTAssertEqual(env.machine.stats[.workingsetRestoreAnon], 1)
        XCTAssertTrue(try page(b).test(.workingset))
        cpu2.detach()
        env.check()
        env.teardown()
    }

    /// Fork under memory pressure: with no frame free, the child's page tables and the copy a
    /// pinned page needs (`copy_present_page`) are allocated where reclaim may run (before the
    /// PTE lock, as copy_pte_range's `folio_prealloc` round), so fork succeeds by swapping.
    func testForkWithNoFreeFrameReclaimsForTablesAndAPinnedPagesCopy() throws {
        let env = try Env(mib: 16, swapPages: 8192, checkEveryOperation: false)
        // More pinned pages than one direct reclaim frees (32): copies made only from what
        // the table allocations' reclaim left would run out.
        let pins = 200
        let a = try env.anon(pins)
        try fillIDX(env.cpu, a, bytes: UInt64(pins) * pageSize, plus: 5)
        let pinned = try env.mm.getUserPages(a, count: pins, flags: [.write, .pin])
        let (b, n, ballast) = try env.fillHalfAndTakeTheRest()
        XCTAssertEqual(env.memory.freeFrames, 0)
        let child = try env.process.fork()
        XCTAssertGreaterThan(env.machine.stats[.pswpout], 0, "fork's allocations reclaimed")
        let childCPU = child.makeCPU()
        let mine = try env.mm.pagemap(a, count: pins).map(\.pfn), theirs = try child.mm.pagemap(a, count: pins)
        XCTAssertTrue(theirs.allSatisfy(\.isPresent))
        XCTAssertTrue(zip(mine, theirs).allSatisfy { $0 != $1.pfn }, "each pinned page stays the parent's; the child has copies")
        try checkIDX(childCPU, a, bytes: UInt64(pins) * pageSize, plus: 5)
        for p in ballast { env.memory.put(p) }
        try checkIDX(childCPU, b, bytes: UInt64(n) * pageSize)
        env.mm.unpinUserPages(pinned)
        childCPU.detach()
        child.exit()
        XCTAssertEqual(env.machine.checkInvariants(), [])
        env.teardown()
    }

    /// kswapd, once started, brings the free frames back above the high watermark after
    /// allocations took them below the low one.
    func testKswapdRestoresTheHighWatermark() throws {
        let env = try Env(mib: 16, swapPages: 8192, checkEveryOperation: false)
        env.machine.startKswapd()
        let wm = env.memory.watermarks
        XCTAssertEqual(wm, Watermarks(managedPages: Int(env.memory.systemFrames) - 1))
        XCTAssertEqual([wm.min, wm.low, wm.high], [127, 158, 189], "√(16 × 16,380 KiB) = 511 KiB; steps of 511 / 4 pages")
        let free = UInt64(env.memory.freeFrames)
        let a = try env.process.mmap(length: (free - UInt64(wm.min)) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try fillIDX(env.cpu, a, bytes: (free - UInt64(wm.min)) * pageSize)
        let deadline = Date().addingTimeInterval(20)
        while env.memory.freeFrames < wm.high && Date() < deadline { usleep(1000) }
        XCTAssertGreaterThanOrEqual(env.memory.freeFrames, wm.high)
        XCTAssertGreaterThan(env.machine.stats[.pgstealKswapd], 0)
        env.machine.stopKswapd()
        XCTAssertFalse(env.machine.kswapdRunning)
        try checkIDX(env.cpu, a, bytes: (free - UInt64(wm.min)) * pageSize)
        env.teardown()
    }
}
