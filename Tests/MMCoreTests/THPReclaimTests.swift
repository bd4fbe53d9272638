import XCTest
@testable import MMCore
import MMSync

/// Anonymous THPs under reclaim (Linux 7.2's `shrink_folio_list` without a 512-slot swap
/// cluster: `split_folio_to_list`, `thp_swpout_fallback`), MADV_PAGEOUT and MADV_COLD on a
/// PMD-mapped THP (`madvise_cold_or_pageout_pte_range`), and THPs on the LRU lists.
final class THPReclaimTests: XCTestCase {
    let twoMiB: UInt64 = 2 << 20

    /// A 2 MiB-aligned range of `huge` huge pages, THP-eligible through MADV_HUGEPAGE.
    private func hugeRange(_ env: Env, huge: UInt64 = 1) throws -> UInt64 {
        env.memory.thp.mode = .madvise
        let raw = try env.process.mmap(length: (huge + 1) * twoMiB, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + twoMiB - 1) & ~(twoMiB - 1)
        try env.process.madvise(a, length: huge * twoMiB, advice: .hugePage)
        return a
    }

    /// `huge` THPs holding IDX, each mapped by 512 PTEs: its PMD split by an mprotect of one
    /// page and back (one VMA again). Return: the first one's address.
    private func pteMappedTHPs(_ env: Env, huge: UInt64) throws -> UInt64 {
        let a = try hugeRange(env, huge: huge)
        try fillIDX(env.cpu, a, bytes: huge * twoMiB)
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], Int(huge))
        for k in 0..<huge {
            let b = a + k * twoMiB
            try env.process.mprotect(b, length: pageSize, prot: .read)
            try env.process.mprotect(b, length: pageSize, prot: .readWrite)
            XCTAssertNil(pmdLeaf(env, b), "mapped by PTEs now")
        }
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], Int(huge))
        return a
    }

    private func pmdLeaf(_ env: Env, _ a: UInt64) -> PTE? {
        env.mm.mmapLock.lockRead(); defer { env.mm.mmapLock.unlockRead() }
        guard let f = env.mm.pageTable.lookup(a, level: .pte), f.level == .pmd else { return nil }
        return f.entry.load()
    }

    func testANewTHPIsOnTheInactiveListCountingItsPages() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try env.cpu.store(a, UInt64(1))
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        let head = env.memory.page(try XCTUnwrap(pmdLeaf(env, a)).pfn)
        XCTAssertTrue(head.test(.lruBatched) || head.test(.lru))
        env.memory.lru.drainAll()
        XCTAssertTrue(head.test(.lru) && !head.test(.active))
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon), 512, "a THP counts its 512 pages (lru_zone_size)")
        env.check()
        env.teardown()
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon), 0)
    }

    func testPageoutOfAWholeTHPSplitsItAndSwapsEveryPage() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        let used = env.machine.usedFrames
        try env.process.madvise(a, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.machine.stats[.thpSwpoutFallback], 1)
        XCTAssertEqual(env.machine.stats[.pswpout], 512)
        XCTAssertEqual(env.machine.usedFrames, used - 512, "every page of the folio is freed; the deposited table maps the entries")
        XCTAssertEqual(env.memory.swap.freeSlots, 512)
        XCTAssertNil(pmdLeaf(env, a))
        let pm = try env.mm.pagemap(a, count: 512)
        XCTAssertEqual(pm.filter { $0.isSwap && !$0.isPresent }.count, 512)
        env.check()
        try checkIDX(env.cpu, a, bytes: twoMiB)
        XCTAssertEqual(env.machine.stats[.pswpin], 512)
        XCTAssertEqual(env.machine.stats[.pgmajfault], 512)
        env.check()
        env.teardown()
    }

    func testPageoutOfPartOfATHPSplitsItAndSwapsOnlyThatPart() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        try env.process.madvise(a + twoMiB / 2, length: twoMiB / 4, advice: .pageout)
        // split_folio in the madvise walk itself, then 128 small pages reclaimed.
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.machine.stats[.thpSwpoutFallback], 0)
        XCTAssertEqual(env.machine.stats[.pswpout], 128)
        let pm = try env.mm.pagemap(a, count: 512)
        XCTAssertEqual(pm.indices.filter { pm[$0].isSwap }, Array(256..<384))
        XCTAssertEqual(pm.filter(\.isPresent).count, 384)
        env.check()
        try checkIDX(env.cpu, a, bytes: twoMiB)
        XCTAssertEqual(env.machine.stats[.pswpin], 128)
        env.check()
        env.teardown()
    }

    /// A THP whose PMD was split (mprotect of one page, then back: one VMA again) is mapped by
    /// 512 PTEs: PAGEOUT of all of it takes the folio whole for reclaim, which splits it;
    /// PAGEOUT of part of another splits that folio in the walk first.
    func testPageoutOfAPTEMappedTHP() throws {
        let env = try Env(swapPages: 2048)
        let a = try pteMappedTHPs(env, huge: 2)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        XCTAssertNil(pmdLeaf(env, a))
        try env.process.madvise(a, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.thpSwpoutFallback], 1, "taken whole, split by reclaim")
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.machine.stats[.pswpout], 512)
        try env.process.madvise(a + twoMiB, length: 8 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.thpSwpoutFallback], 1, "split in the walk")
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 2)
        XCTAssertEqual(env.machine.stats[.pswpout], 520)
        env.check()
        try checkIDX(env.cpu, a, bytes: 2 * twoMiB)
        XCTAssertEqual(env.machine.stats[.pswpin], 520)
        env.check()
        env.teardown()
    }

    /// A lazily freed THP (MADV_FREE, clean since) mapped by its PMD alone, that reclaim
    /// takes, is discarded whole, unsplit, with its deposited table (7.2's
    /// `__discard_anon_folio_pmd_locked`); one written to since is swapped.
    func testALazilyFreedTHPIsDiscardedNotSwapped() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        try env.process.madvise(a, length: twoMiB, advice: .free)
        let used = env.machine.usedFrames
        try env.process.madvise(a, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pglazyfreed], 512)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.machine.stats[.thpSwpoutFallback], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        XCTAssertEqual(env.machine.usedFrames, used - 513, "the folio and its deposited table")
        XCTAssertEqual(env.memory.swap.freeSlots, 1024)
        XCTAssertEqual(try env.cpu.load(a + twoMiB - 8, as: UInt64.self), 0, "discarded: a fresh zero page")
        env.check()
        // Written to after MADV_FREE: the leaf is dirty, so the folio is swap-backed again and
        // stays (walk_abort: activated); the next pageout swaps it (split, D24).
        let b = a
        try fillIDX(env.cpu, b, bytes: twoMiB)
        try env.process.madvise(b, length: twoMiB, advice: .free)
        try env.cpu.store(b + 8, Int32(-1))
        try env.process.madvise(b, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pglazyfreed], 512)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        let leaf = try XCTUnwrap(pmdLeaf(env, b), "restored whole")
        XCTAssertTrue(leaf.isDirty)
        XCTAssertFalse(env.memory.page(leaf.pfn).test(.lazyFree))
        try env.process.madvise(b, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pglazyfreed], 512)
        XCTAssertEqual(env.machine.stats[.pswpout], 512)
        XCTAssertEqual(try env.cpu.load(b + 8, as: Int32.self), -1)
        XCTAssertEqual(try env.cpu.load(b + twoMiB - 4, as: Int32.self), Int32(twoMiB / 4 - 1))
        env.check()
        env.teardown()
    }

    /// Reclaim from the LRU that discards a lazily freed THP whole counts all of its pages as
    /// reclaimed (`nr_reclaimed += nr_pages`: `pgsteal_direct` 512, not 1).
    func testALazilyFreedTHPDiscardedByLRUReclaimCountsItsPages() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        try env.process.madvise(a, length: twoMiB, advice: .free)
        env.memory.lru.drainAll()
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon), 512)
        let r = env.machine.shrinkInactiveList(32, reclaimer: .direct)
        XCTAssertEqual(r.scanned, 512)
        XCTAssertEqual(r.freed, 512)
        XCTAssertEqual(env.machine.stats[.pglazyfreed], 512)
        XCTAssertEqual(env.machine.stats[.pgstealDirect], 512)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon), 0)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0, "discarded: a fresh zero page")
        env.check()
        env.teardown()
    }

    /// A lazily freed THP mapped by PTEs (its PMD split by an mprotect): clean since, reclaim
    /// splits it and its pages come back as clean and old as MADV_FREE left their PTEs (the
    /// split's migration entries keep the bits), so every one is discarded and none swapped;
    /// written to since (one PTE dirty), it is swap-backed again and stays whole, as 7.2's
    /// try_to_unmap of the folio aborts at the dirty PTE.
    func testALazilyFreedPTEMappedTHPIsDiscardedCleanAndKeptDirty() throws {
        let env = try Env(swapPages: 1024)
        let a = try pteMappedTHPs(env, huge: 2)
        try env.process.madvise(a, length: 2 * twoMiB, advice: .free)
        let written = a + twoMiB + 5 * pageSize
        try env.cpu.store(written, Int32(-5))
        let kept = try XCTUnwrap(try env.pfn(a + twoMiB))
        try env.process.madvise(a, length: 2 * twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1, "only the clean folio")
        XCTAssertEqual(env.machine.stats[.pglazyfreed], 512)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.memory.swap.freeSlots, 1024)
        let head = env.memory.page(kept)
        XCTAssertTrue(head.test(.head), "the written folio stays whole")
        XCTAssertFalse(head.test(.lazyFree), "swap-backed again")
        XCTAssertEqual(try env.pfn(a + twoMiB), kept)
        XCTAssertEqual(try env.cpu.load(written, as: Int32.self), -5)
        XCTAssertEqual(try env.cpu.load(a + twoMiB + 6 * pageSize, as: Int32.self), Int32((twoMiB + 6 * pageSize) / 4))
        XCTAssertEqual(try env.cpu.load(a + 6 * pageSize, as: Int32.self), 0, "discarded: a fresh zero page")
        env.check()
        // Swap-backed now: the next pageout swaps it (split, D24).
        try env.process.madvise(a + twoMiB, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 512)
        XCTAssertEqual(try env.cpu.load(written, as: Int32.self), -5)
        env.check()
        env.teardown()
    }

    /// Migration of a PTE-mapped THP whole (migrate_pages): each page's PTE comes back as
    /// clean or dirty as it was, the tails' too — the dirty flag is the folio's (its head's),
    /// as 7.2's `folio_test_dirty` in remove_migration_pte.
    func testMigratingAPTEMappedTHPKeepsEachPTEsDirtyBit() throws {
        let env = try Env(swapPages: 1024)
        let a = try pteMappedTHPs(env, huge: 1)
        // MADV_FREE leaves every PTE clean and old; then page 5 is written again.
        try env.process.madvise(a, length: twoMiB, advice: .free)
        try env.cpu.store(a + 5 * pageSize, Int32(-5))
        func pte(_ i: UInt64) throws -> PTE {
            try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a + i * pageSize, level: .pte) }).entry.load()
        }
        XCTAssertTrue(try pte(5).isDirty)
        XCTAssertFalse(try pte(6).isDirty)
        let head = try XCTUnwrap(try env.pfn(a))
        let r = env.machine.migratePages([head])
        XCTAssertEqual(r.failed, [:])
        let moved = try XCTUnwrap(r.migrated[head])
        XCTAssertEqual(try env.pfn(a), moved)
        XCTAssertTrue(env.memory.page(moved).test(.head), "moved whole")
        XCTAssertTrue(try pte(5).isDirty, "a tail's dirty PTE comes back dirty")
        XCTAssertFalse(try pte(6).isDirty)
        XCTAssertFalse(try pte(0).isDirty)
        XCTAssertEqual(try env.cpu.load(a + 5 * pageSize, as: Int32.self), -5)
        XCTAssertEqual(try env.cpu.load(a + 6 * pageSize, as: Int32.self), Int32(6 * pageSize / 4))
        env.check()
        env.teardown()
    }

    /// Fork of a pinned PMD-mapped THP with no frame free: the parent's PMD is split and the
    /// child's 512 copies are allocated where reclaim may run (copy_huge_pmd's -EAGAIN, then
    /// the PTE table's prealloc round), so fork succeeds by swapping other pages.
    func testForkOfAPinnedTHPWithNoFreeFrameReclaims() throws {
        let env = try Env(mib: 16, swapPages: 8192, checkEveryOperation: false)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB, plus: 3)
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        let pinned = try env.mm.getUserPages(a, count: 1, flags: [.write, .pin])
        let (b, n, ballast) = try env.fillHalfAndTakeTheRest()
        XCTAssertEqual(env.memory.freeFrames, 0)
        let child = try env.process.fork()
        XCTAssertGreaterThan(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
        for p in ballast { env.memory.put(p) }
        let childCPU = child.makeCPU()
        try checkIDX(childCPU, a, bytes: twoMiB, plus: 3)
        try checkIDX(childCPU, b, bytes: UInt64(n) * pageSize)
        let mine = try env.mm.pagemap(a, count: 512).map(\.pfn), theirs = try child.mm.pagemap(a, count: 512)
        XCTAssertTrue(zip(mine, theirs).allSatisfy { $0 != $1.pfn }, "the pinned folio stays the parent's; the child has 512 copies")
        env.mm.unpinUserPages(pinned)
        childCPU.detach()
        child.exit()
        XCTAssertEqual(env.machine.checkInvariants(), [])
        env.teardown()
    }

    /// PAGEOUT of part of a PTE-mapped THP whose split fails (a pinned page: EAGAIN) takes
    /// nothing: the walk passes over a folio the range does not cover whole.
    func testPageoutOfPartOfAPinnedPTEMappedTHPTakesNothing() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        try env.process.mprotect(a, length: pageSize, prot: .read)
        try env.process.mprotect(a, length: pageSize, prot: .readWrite)
        let pinned = try env.mm.getUserPages(a + twoMiB - pageSize, count: 1, flags: [.write, .pin])
        try env.process.madvise(a, length: 8 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPageFailed], 1)
        XCTAssertTrue(try env.mm.pagemap(a, count: 512).allSatisfy(\.isPresent))
        env.mm.unpinUserPages(pinned)
        env.check()
        try checkIDX(env.cpu, a, bytes: twoMiB)
        env.teardown()
    }

    /// New THPs are split (partial MADV_PAGEOUT) while another thread drains the LRU add
    /// batches: the head becomes small under its batch's lock or the LRU lock, so the lists'
    /// page counts stay exact whichever wins.
    func testSplittingBatchedTHPsWhileBatchesDrain() throws {
        let env = try Env(mib: 128, swapPages: 32_768, checkEveryOperation: false)
        env.memory.thp.mode = .always
        let rounds = 60
        let raw = try env.process.mmap(length: UInt64(rounds + 1) * twoMiB, prot: .readWrite, flags: [.private, .anonymous])
        let base = (raw + twoMiB - 1) & ~(twoMiB - 1)
        let stop = AtomicWord(0)
        let drainer = ModelThread.spawn(name: "drainer") {
            while stop.load() == 0 { env.memory.lru.drainAll() }
        }
        for r in 0..<rounds {
            let a = base + UInt64(r) * twoMiB
            try env.cpu.store(a, UInt64(r))
            try env.process.madvise(a + twoMiB / 2, length: pageSize, advice: .pageout)
        }
        stop.store(1)
        drainer.join()
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], rounds)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], rounds)
        env.memory.lru.drainAll()
        XCTAssertEqual(env.memory.lru.count(.inactiveAnon) + env.memory.lru.count(.activeAnon), rounds * 511)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        for r in 0..<rounds { XCTAssertEqual(try env.cpu.load(base + UInt64(r) * twoMiB, as: UInt64.self), UInt64(r)) }
        env.teardown()
    }

    func testColdMakesTheHugeLeafOldAndSwapsNothing() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try env.cpu.store(a, UInt64(7))
        XCTAssertTrue(try XCTUnwrap(pmdLeaf(env, a)).isAccessed)
        try env.process.madvise(a, length: twoMiB, advice: .cold)
        let leaf = try XCTUnwrap(pmdLeaf(env, a), "COLD keeps the folio whole")
        XCTAssertFalse(leaf.isAccessed)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 7)
        env.check()
        env.teardown()
    }

    func testAPinnedTHPIsNotPagedOut() throws {
        let env = try Env(swapPages: 1024)
        let a = try hugeRange(env)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let pinned = try env.mm.getUserPages(a, count: 1, flags: [.write, .pin])
        try env.process.madvise(a, length: twoMiB, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        XCTAssertNotNil(pmdLeaf(env, a))
        env.mm.unpinUserPages(pinned)
        env.check()
        env.teardown()
    }

    /// With THP `always`, a working set twice RAM is written in THPs until no order-9 block
    /// is left, then in small pages; reclaim has to split and swap the THPs to go on (THPs
    /// reclaim could not take would fill RAM). A fork shares the first THPs: their split and
    /// swap-out reach both processes' PMDs; both read everything back.
    func testReclaimSplitsAndSwapsTHPsUnderPressure() throws {
        let env = try Env(mib: 16, swapPages: 16_384, checkEveryOperation: false)
        env.memory.thp.mode = .always
        let bytes: UInt64 = 32 << 20
        let raw = try env.process.mmap(length: bytes + twoMiB, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + twoMiB - 1) & ~(twoMiB - 1)
        try fillIDX(env.cpu, a, bytes: 4 << 20)
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 2)
        let child = try env.process.fork()
        try fillIDX(env.cpu, a + (4 << 20), bytes: bytes - (4 << 20), plus: 3)
        XCTAssertGreaterThan(env.machine.stats[.thpSwpoutFallback], 0)
        XCTAssertGreaterThan(env.machine.stats[.pswpout], Int((bytes - (16 << 20)) / pageSize))
        try checkIDX(env.cpu, a, bytes: 4 << 20)
        try checkIDX(env.cpu, a + (4 << 20), bytes: bytes - (4 << 20), plus: 3)
        let childCPU = child.makeCPU()
        try checkIDX(childCPU, a, bytes: 4 << 20)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        childCPU.detach()
        child.exit()
        env.teardown()
    }
}
