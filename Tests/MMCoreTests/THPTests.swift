import XCTest
@testable import MMCore
import MMSync

/// Transparent huge pages, anonymous: PMD faults, the huge zero folio, fallback, PMD splits on
/// partial munmap / mprotect / mremap, fork and COW, folio splits for migration and pins,
/// with the counts Linux 7.2 gives (`mm/huge_memory.c`).
final class THPTests: XCTestCase {
    let twoMiB: UInt64 = 2 << 20

    /// A machine with THP enabled as `mode` and a 2 MiB-aligned THP-eligible range of
    /// `huge` huge pages inside a larger anonymous mapping (MADV_HUGEPAGE on it).
    func setUpTHP(mode: THPMode = .madvise, huge: UInt64 = 1, file: StaticString = #filePath, line: UInt = #line) throws -> (Env, UInt64) {
        let env = try Env()
        env.memory.thp.mode = mode
        let raw = try env.process.mmap(length: (huge + 1) * twoMiB, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + twoMiB - 1) & ~(twoMiB - 1)
        try env.process.madvise(a, length: huge * twoMiB, advice: .hugePage)
        return (env, a)
    }

    func leaf(_ env: Env, _ a: UInt64, in mm: AddressSpace? = nil) throws -> (level: PageTableLevel, entry: PTE) {
        let found = try XCTUnwrap((mm ?? env.mm).pageTable.lookup(a, level: .pte))
        return (found.level, found.entry.load())
    }

    func testWriteFaultMapsOneFolioByPMD() throws {
        let (env, a) = try setUpTHP()
        let used = env.machine.usedFrames, tables = env.mm.pageTable.tableFrames
        try env.cpu.store(a + 4096 * 7 + 8, UInt64(0xfeed))
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        XCTAssertEqual(env.machine.stats[.faultAnonNewPage], 0)
        let (level, pmd) = try leaf(env, a)
        XCTAssertEqual(level, .pmd)
        XCTAssertTrue(pmd.isHuge && pmd.isWrite && pmd.isDirty)
        let folio = env.memory.page(pmd.pfn)
        XCTAssertEqual(folio.order, 9)
        XCTAssertEqual(folio.entireMapcount, 1)
        XCTAssertEqual(folio.folioMapcount, 1, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 1)
        XCTAssertTrue(folio.test(.anonExclusive))
        // 512 frames for the folio; the tables the walk made down to the PMD, plus the
        // deposited PTE table (and no PTE table in use).
        XCTAssertEqual(env.machine.usedFrames - used, 512 + (env.mm.pageTable.tableFrames - tables))
        XCTAssertEqual(env.mm.pageTable.tableFrames - tables, 3, "PUD and PMD tables, one deposited PTE table")
        // Every page of the 2 MiB is there, zeroed but for the write; no further fault.
        XCTAssertEqual(try env.cpu.load(a + 4096 * 7 + 8, as: UInt64.self), 0xfeed)
        XCTAssertEqual(try env.cpu.load(a + twoMiB - 8, as: UInt64.self), 0)
        try env.cpu.store(a + twoMiB - 8, UInt64(1))
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        // Outside the madvised 2 MiB: ordinary 4 KiB pages.
        try env.cpu.store(a + twoMiB, UInt64(2))
        XCTAssertEqual(env.machine.stats[.faultAnonNewPage], 1)
        let e = try env.mm.pagemap(a + 4096 * 3, count: 1)[0]
        XCTAssertTrue(e.isPresent)
        XCTAssertEqual(e.pfn, pmd.pfn + 3)
        env.check()
        env.teardown()
    }

    /// `folio_zero_user` over frames full of old bytes: whichever page of the 2 MiB faults
    /// (the first, one inside the first neighbourhood, the middle, the last), every byte of
    /// the new THP is zero but the faulting store.
    func testTHPFaultZeroesEveryPageOfOldBytesWhereverItFaults() throws {
        for faultPage: UInt64 in [0, 1, 256, 511] {
            let (env, a) = try setUpTHP()
            // A dirty order-9 block, freed: the fault's allocation takes it again.
            let block = try XCTUnwrap(env.memory.allocate(order: 9))
            env.memory.frame(block.pfn).initializeMemory(as: UInt8.self, repeating: 0xA5, count: Int(twoMiB))
            env.memory.put(block)
            let at = a + faultPage * 4096 + 40
            try env.cpu.store(at, UInt64(0xfeed))
            let (level, pmd) = try leaf(env, a)
            XCTAssertEqual(level, .pmd)
            XCTAssertEqual(pmd.pfn, block.pfn, "the fault reused the dirty block (else this test shows nothing)")
            let bytes = UnsafeRawBufferPointer(start: env.memory.frame(pmd.pfn), count: Int(twoMiB))
            let nonzero = bytes.indices.filter { bytes[$0] != 0 }
            let word = Int(faultPage * 4096 + 40)
            XCTAssertEqual(nonzero.count, 2, "fault at page \(faultPage): only the stored 0xfeed is not zero; first others \(nonzero.filter { $0 != word && $0 != word + 1 }.prefix(4))")
            XCTAssertEqual(Array(nonzero.prefix(2)), [word, word + 1], "fault at page \(faultPage)")
            env.check()
            env.teardown()
        }
    }

    func testReadFaultMapsHugeZeroFolioAndWriteReplacesIt() throws {
        let (env, a) = try setUpTHP()
        XCTAssertEqual(try env.cpu.load(a + 12345 * 8, as: UInt64.self), 0)
        XCTAssertEqual(env.machine.stats[.thpZeroPageAlloc], 1)
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 0)
        let (level, pmd) = try leaf(env, a)
        XCTAssertEqual(level, .pmd)
        XCTAssertTrue(pmd.isSpecial && !pmd.isWrite)
        XCTAssertEqual(pmd.pfn, env.memory.thp.hugeZeroPfn)
        XCTAssertFalse(try env.mm.pagemap(a, count: 1)[0].isPresent == false)
        // The write: do_huge_zero_wp_pmd maps a new THP in its place.
        try env.cpu.store(a + 64, UInt32(7))
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 1)
        let (_, now) = try leaf(env, a)
        XCTAssertTrue(now.isHuge && now.isWrite && !now.isSpecial)
        XCTAssertEqual(try env.cpu.load(a + 64, as: UInt32.self), 7)
        XCTAssertEqual(try env.cpu.load(a + 12345 * 8, as: UInt64.self), 0)
        env.check()
        env.teardown()
        XCTAssertEqual(env.memory.thp.hugeZeroPfn, 0, "the last user's exit freed the huge zero folio")
    }

    func testModesAndNoHugePage() throws {
        for (mode, advice, expectTHP) in [(THPMode.never, MadviseAdvice.hugePage, false), (.always, .noHugePage, false),
                                          (.always, .normal, true), (.madvise, .normal, false)] {
            let env = try Env()
            env.memory.thp.mode = mode
            let raw = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: [.private, .anonymous])
            let a = (raw + twoMiB - 1) & ~(twoMiB - 1)
            if advice != .normal { try env.process.madvise(a, length: twoMiB, advice: advice) }
            try env.cpu.store(a, UInt8(1))
            XCTAssertEqual(env.machine.stats[.thpFaultAlloc], expectTHP ? 1 : 0, "\(mode) \(advice)")
            XCTAssertEqual(try leaf(env, a).level, expectTHP ? .pmd : .pte, "\(mode) \(advice)")
            env.teardown()
        }
    }

    func testFallbackWhenNoOrder9BlockIsFree() throws {
        let (env, a) = try setUpTHP()
        var held: [Page] = []
        while let p = env.memory.allocate(order: 9) { held.append(p) }
        try env.cpu.store(a, UInt64(5))
        XCTAssertEqual(env.machine.stats[.thpFaultFallback], 1)
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 0)
        XCTAssertEqual(env.machine.stats[.faultAnonNewPage], 1)
        XCTAssertEqual(try leaf(env, a).level, .pte)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 5)
        for p in held { env.memory.put(p) }
        env.teardown()
    }

    /// A partial munmap splits the PMD (`thp_split_pmd`); the folio stays whole and mapped
    /// by the PTEs left, each holding a reference; its bytes are kept.
    func testPartialMunmapSplitsThePMD() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        try env.process.munmap(a + 4096 * 10, length: 4096)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
        XCTAssertEqual(try leaf(env, a).level, .pte)
        let folio = env.memory.page(head)
        XCTAssertEqual(folio.order, 9, "the folio is not split (deferred, as Linux)")
        XCTAssertEqual(folio.entireMapcount, 0)
        XCTAssertEqual(folio.folioMapcount, 511, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 511)
        XCTAssertEqual(env.memory.page(head + 10).mapcount, 0)
        XCTAssertEqual(env.memory.page(head + 11).mapcount, 1)
        XCTAssertTrue(env.memory.page(head + 11).test(.anonExclusive), "exclusivity carries to the PTEs")
        XCTAssertEqual(try env.pfn(a + 4096 * 11), head + 11)
        // The bytes stay; a write to a PTE-mapped page of the folio reuses it (exclusive).
        try checkIDX(env.cpu, a, bytes: 4096 * 10)
        try checkIDX(env.cpu, a + 4096 * 11, bytes: twoMiB - 4096 * 11, plus: 4096 * 11 / 4)
        try env.cpu.store(a + 4096 * 11, UInt32(99))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 0)
        env.check()
        // Unmapping the rest frees the whole folio.
        let used = env.machine.usedFrames
        try env.process.munmap(a, length: twoMiB)
        XCTAssertLessThanOrEqual(env.machine.usedFrames, used - 512)
        env.teardown()
    }

    func testMprotectWholeKeepsThePMDAndPartialSplitsIt() throws {
        let (env, a) = try setUpTHP(huge: 2)
        try env.cpu.store(a, UInt64(1))
        try env.cpu.store(a + twoMiB, UInt64(2))
        try env.process.mprotect(a, length: twoMiB, prot: .read)
        let (level, pmd) = try leaf(env, a)
        XCTAssertEqual(level, .pmd)
        XCTAssertFalse(pmd.isWrite)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 0)
        // Back to read/write: the exclusive folio is writable again at once (no fault).
        try env.process.mprotect(a, length: twoMiB, prot: .readWrite)
        XCTAssertTrue(try leaf(env, a).entry.isWrite)
        // Half of the second huge page: the VMA split at 3 MiB splits that PMD.
        try env.process.mprotect(a + twoMiB, length: twoMiB / 2, prot: .read)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
        XCTAssertEqual(try leaf(env, a + twoMiB).level, .pte)
        XCTAssertFalse(try leaf(env, a + twoMiB).entry.isWrite)
        XCTAssertTrue(try leaf(env, a + twoMiB + twoMiB / 2).entry.isWrite)
        XCTAssertEqual(try env.cpu.load(a + twoMiB, as: UInt64.self), 2)
        env.check()
        env.teardown()
    }

    /// fork shares the PMD copy-on-write; a write in either splits its PMD and copies one
    /// 4 KiB page (Linux since 5.8 does not copy 2 MiB on a COW fault).
    func testForkSharesThePMDAndCOWSplits() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        let folio = env.memory.page(head)
        XCTAssertEqual(folio.entireMapcount, 2)
        XCTAssertEqual(folio.folioMapcount, 2, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 2)
        XCTAssertFalse(folio.test(.anonExclusive))
        XCTAssertEqual(try leaf(env, a, in: child.mm).level, .pmd)
        XCTAssertFalse(try leaf(env, a).entry.isWrite)
        XCTAssertFalse(try leaf(env, a, in: child.mm).entry.isWrite)
        env.check()
        try ccpu.store(a + 4096 * 5, Int32(-1))
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 1)
        XCTAssertEqual(try leaf(env, a, in: child.mm).level, .pte)
        XCTAssertEqual(try leaf(env, a).level, .pmd, "the parent keeps its PMD")
        XCTAssertNotEqual(try child.mm.pagemap(a + 4096 * 5, count: 1)[0].pfn, head + 5)
        XCTAssertEqual(try child.mm.pagemap(a + 4096 * 6, count: 1)[0].pfn, head + 6)
        // The parent's write: shared with the child's PTEs, so split and copy too.
        try env.cpu.store(a + 4096 * 6, Int32(-2))
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 2)
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 2)
        XCTAssertEqual(try ccpu.load(a + 4096 * 6, as: Int32.self), Int32(4096 * 6 / 4))
        XCTAssertEqual(try env.cpu.load(a + 4096 * 5, as: Int32.self), Int32(4096 * 5 / 4))
        XCTAssertEqual(try ccpu.load(a + 4096 * 5, as: Int32.self), -1)
        XCTAssertEqual(try env.cpu.load(a + 4096 * 6, as: Int32.self), -2)
        // The first tail page too (its metadata word next to the folio's PMD mapcount).
        try ccpu.store(a + 4096, Int32(-3))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 3)
        XCTAssertEqual(try env.cpu.load(a + 4096, as: Int32.self), 1024)
        env.check()
        ccpu.detach(); child.exit()
        env.check()
        env.teardown()
    }

    /// mremap of a whole, aligned THP to an aligned address moves the PMD (`move_huge_pmd`);
    /// to an unaligned one it splits it first.
    func testMremapMovesOrSplitsThePMD() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        let dst = try env.process.mmap(length: 4 * twoMiB, prot: .none, flags: [.private, .anonymous])
        let target = (dst + twoMiB - 1) & ~(twoMiB - 1)
        let b = try env.process.mremap(a, oldLength: twoMiB, newLength: twoMiB, flags: [.mayMove, .fixed], newAddress: target)
        XCTAssertEqual(b, target)
        XCTAssertEqual(try leaf(env, b).level, .pmd)
        XCTAssertEqual(try leaf(env, b).entry.pfn, head)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 0)
        try checkIDX(env.cpu, b, bytes: twoMiB)
        env.check()
        let c = try env.process.mremap(b, oldLength: twoMiB, newLength: twoMiB, flags: [.mayMove, .fixed], newAddress: target + twoMiB + 4096)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
        XCTAssertEqual(try leaf(env, c).level, .pte)
        XCTAssertEqual(try env.pfn(c + 4096), head + 1)
        try checkIDX(env.cpu, c, bytes: twoMiB)
        env.check()
        env.teardown()
    }

    /// Migrating a page of a PMD-mapped THP that a fork shares moves the folio whole: both
    /// PMDs become migration entries and then leaves of the new folio (`thp_migration_success`,
    /// 512 pages counted), nothing is split, the old folio is freed.
    func testMigratePagesMovesATHPWhole() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        let used = env.machine.usedFrames
        let r = env.machine.migratePages([head + 3])
        XCTAssertEqual(r.failed, [:])
        let new = try XCTUnwrap(r.migrated[head + 3]) - 3
        XCTAssertNotEqual(new, head)
        XCTAssertEqual(env.machine.stats[.thpMigrationSuccess], 1)
        XCTAssertEqual(env.machine.stats[.thpMigrationSplit], 0)
        XCTAssertEqual(env.machine.stats[.thpMigrationFail], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 0)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        XCTAssertEqual(env.machine.stats[.pagesMigrated], 512)
        XCTAssertEqual(env.machine.usedFrames, used, "the old folio is freed")
        for mm in [env.mm, child.mm] {
            let (level, pmd) = try leaf(env, a, in: mm)
            XCTAssertEqual(level, .pmd)
            XCTAssertEqual(pmd.pfn, new)
            XCTAssertFalse(pmd.isWrite, "shared copy-on-write: read-only in both")
        }
        let folio = env.memory.page(new)
        XCTAssertEqual(folio.order, 9)
        XCTAssertEqual(folio.entireMapcount, 2)
        XCTAssertEqual(folio.folioMapcount, 2, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 2)
        XCTAssertFalse(folio.test(.anonExclusive))
        XCTAssertTrue(env.memory.page(head).isFreeFrame)
        try checkIDX(env.cpu, a, bytes: twoMiB)
        try checkIDX(ccpu, a, bytes: twoMiB)
        try ccpu.store(a, Int32(-1))
        XCTAssertEqual(try env.cpu.load(a, as: Int32.self), 0)
        env.check()
        ccpu.detach(); child.exit()
        env.check()
        env.teardown()
    }

    /// A THP mapped by PTEs in two VMAs (an mprotect of its first page split the PMD and the
    /// VMA) moves whole too: every PTE of every page becomes a migration entry and then a
    /// mapping of the same page of the new folio, each with its own protection.
    func testMigratePagesMovesAPTEMappedTHPWhole() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        try env.process.mprotect(a, length: 4096, prot: .read)
        XCTAssertEqual(try leaf(env, a).level, .pte)
        let r = env.machine.migratePages([head + 511])
        XCTAssertEqual(r.failed, [:])
        let new = try XCTUnwrap(r.migrated[head + 511]) - 511
        XCTAssertEqual(env.machine.stats[.thpMigrationSuccess], 1)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        for i: UInt64 in [0, 1, 2, 300, 511] { XCTAssertEqual(try env.pfn(a + 4096 * i), new + i) }
        let folio = env.memory.page(new)
        XCTAssertEqual(folio.order, 9)
        XCTAssertEqual(folio.entireMapcount, 0)
        XCTAssertEqual(folio.folioMapcount, 512, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 512)
        XCTAssertEqual(env.memory.page(new + 7).mapcount, 1)
        XCTAssertTrue(env.memory.page(new + 7).test(.anonExclusive), "exclusive through its migration entry")
        XCTAssertFalse(try leaf(env, a).entry.isWrite, "the read-only page stays read-only")
        XCTAssertTrue(try leaf(env, a + 4096).entry.isWrite)
        try checkIDX(env.cpu, a, bytes: twoMiB)
        XCTAssertThrowsError(try env.cpu.store(a, Int32(1)))
        try env.cpu.store(a + 4096, Int32(-1))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 0)
        env.check()
        env.teardown()
    }

    /// No order-9 block for the new folio: 7.2 counts the THP as failed, splits it and
    /// migrates its 512 pages as base pages (`thp_migration_fail`, `thp_migration_split`).
    func testTHPMigrationWithoutAnOrder9BlockSplitsAndMovesEveryPage() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        FaultInjection.arm(.frameAllocation, count: 1)
        defer { FaultInjection.disarmAll() }
        let r = env.machine.migratePages([head + 3])
        XCTAssertEqual(r.failed, [:])
        XCTAssertEqual(env.machine.stats[.thpMigrationSuccess], 0)
        XCTAssertEqual(env.machine.stats[.thpMigrationFail], 1)
        XCTAssertEqual(env.machine.stats[.thpMigrationSplit], 1)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.machine.stats[.pagesMigrated], 512)
        XCTAssertEqual(try env.pfn(a + 4096 * 3), r.migrated[head + 3])
        for i: UInt64 in [0, 4, 511] {
            let pfn = try XCTUnwrap(try env.pfn(a + 4096 * i))
            XCTAssertNotEqual(pfn, head + i)
            XCTAssertEqual(env.memory.page(pfn).order, 0)
        }
        try checkIDX(env.cpu, a, bytes: twoMiB)
        env.check()
        env.teardown()
    }

    /// PMD migration entries, held by hand (the folio locked, as migration holds it): pagemap
    /// reports swap entries; mprotect makes the write entry read-exclusive; fork copies it as
    /// plain read into both; a partial munmap splits the child's into 512 PTE migration
    /// entries and zaps one; a fault waits for the unlock; the restore walk finds the parent's
    /// PMD entry and the child's PTE entries.
    func testPMDMigrationEntries() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        let folio = env.memory.page(head)
        env.memory.get(folio)
        folio.lock()
        let av = try XCTUnwrap(folio.anonVMA)
        XCTAssertEqual(env.machine.tryToMigratePMDs(folio, av: av, index: folio.index), 1)
        XCTAssertEqual(folio.entireMapcount, 0)
        XCTAssertEqual(folio.folioMapcount, 0, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 1)
        XCTAssertFalse(folio.test(.anonExclusive), "the exclusive bit moved into the entry")
        let (level, e) = try leaf(env, a)
        XCTAssertEqual(level, .pmd)
        XCTAssertEqual(e.swapEntry.type, SwapEntry.migrationWrite)
        XCTAssertTrue(e.swapEntry.isMigrationYoung && e.swapEntry.isMigrationDirty, "the written leaf's bits")
        XCTAssertTrue(PageTable.isTHPMigration(e))
        // The system calls run on another thread: this one holds the folio lock, as a
        // migration does, and must not take an mmap lock under it (lockdep would see the
        // inversion with the fault path's mmap lock → folio lock).
        var childOut: MMCore.Process?
        try onAnotherThread { [self] in
            let pm = try env.mm.pagemap(a + 4096 * 5, count: 1)[0]
            XCTAssertFalse(pm.isPresent)
            XCTAssertTrue(pm.isSwap)
            env.check()
            try env.process.mprotect(a, length: twoMiB, prot: .read)
            XCTAssertEqual(try leaf(env, a).entry.swapEntry.type, SwapEntry.migrationReadExclusive)
            try env.process.mprotect(a, length: twoMiB, prot: .readWrite)
            XCTAssertEqual(try leaf(env, a).entry.swapEntry.type, SwapEntry.migrationReadExclusive)
            let child = try env.process.fork()
            childOut = child
            XCTAssertEqual(try leaf(env, a).entry.swapEntry.type, SwapEntry.migrationRead)
            XCTAssertEqual(try leaf(env, a, in: child.mm).entry.swapEntry.type, SwapEntry.migrationRead)
            XCTAssertTrue(try leaf(env, a, in: child.mm).entry.isHuge)
            try child.munmap(a, length: 4096)
            XCTAssertEqual(env.machine.stats[.thpSplitPMD], 1)
            XCTAssertEqual(try leaf(env, a + 4096, in: child.mm).level, .pte)
            // The split keeps the leaf's young and dirty bits in every PTE entry (7.2's
            // __split_huge_pmd_locked on a migration entry).
            XCTAssertEqual(try leaf(env, a + 4096, in: child.mm).entry.swapEntry,
                           SwapEntry.migration(pfn: head + 1, write: false).carrying(young: true, dirty: true))
            env.check()
        }
        let child = try XCTUnwrap(childOut)

        // A CPU access waits for the unlock (holding its mmap or VMA lock: no mmap writer now).
        let done = AtomicCounter(0)
        let reader = env.process.spawnThread(name: "reader") { cpu in
            if (try? cpu.load(a + 8, as: Int32.self)) == 2 { done.add(1) }
        }
        syncSleep(nanoseconds: 20_000_000)
        XCTAssertEqual(done.load(), 0, "the access waits while the folio is locked")
        env.machine.removeFolioMigrationEntries(from: folio, to: folio, av: av, index: folio.index)
        XCTAssertEqual(folio.entireMapcount, 1)
        XCTAssertEqual(folio.folioMapcount, 512, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(env.memory.page(head + 1).mapcount, 1)
        XCTAssertEqual(env.memory.page(head).mapcount, 0)
        XCTAssertEqual(folio.refcount, 1 + 1 + 511)
        XCTAssertFalse(try leaf(env, a).entry.isWrite)
        folio.unlock()
        env.memory.put(folio)
        reader.join()
        XCTAssertEqual(done.load(), 1)
        XCTAssertEqual(env.machine.stats[.faultMigrationWait], 1)
        let ccpu = child.makeCPU()
        try checkIDX(ccpu, a + 4096, bytes: twoMiB - 4096, plus: 1024)
        try env.cpu.store(a, Int32(-1))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 1, "not exclusive after the fork: copied")
        try checkIDX(env.cpu, a + 4096, bytes: twoMiB - 4096, plus: 1024)
        env.check()
        ccpu.detach(); child.exit()
        env.teardown()
    }

    /// MADV_COLLAPSE (even with THP `never`) turns 2 MiB of 4 KiB pages, empty entries and
    /// zero-page entries into one PMD-mapped THP: the bytes copied, the rest zero, the old
    /// pages freed, the emptied PTE table deposited (`thp_collapse_alloc`). A child that shares
    /// some of the pages keeps them.
    func testMadvCollapseMakesATHP() throws {
        let (env, a) = try setUpTHP(mode: .never)
        for i: UInt64 in stride(from: 0, to: 300, by: 1) { try env.cpu.store(a + i * 4096 + 8, i + 1) }
        for i: UInt64 in 300..<310 { XCTAssertEqual(try env.cpu.load(a + i * 4096, as: UInt64.self), 0) }   // zero-page entries
        XCTAssertEqual(try leaf(env, a).level, .pte)
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        let shared = try XCTUnwrap(try env.pfn(a + 5 * 4096))
        let used = env.machine.usedFrames, tables = env.mm.pageTable.tableFrames
        try env.process.madvise(a, length: twoMiB, advice: .collapse)
        XCTAssertEqual(env.machine.stats[.thpCollapseAlloc], 1)
        let (level, pmd) = try leaf(env, a)
        XCTAssertEqual(level, .pmd)
        XCTAssertTrue(pmd.isWrite && pmd.isDirty)
        let folio = env.memory.page(pmd.pfn)
        XCTAssertEqual(folio.order, 9)
        XCTAssertEqual(folio.entireMapcount, 1)
        XCTAssertEqual(folio.refcount, 1)
        XCTAssertTrue(folio.test(.anonExclusive))
        XCTAssertEqual(env.mm.pageTable.tableFrames, tables, "the PTE table is deposited, not freed")
        // The 300 pages were shared with the child: none is freed; the THP is new.
        XCTAssertEqual(env.machine.usedFrames - used, 512)
        for i: UInt64 in [0, 5, 299] { XCTAssertEqual(try env.cpu.load(a + i * 4096 + 8, as: UInt64.self), i + 1) }
        for i: UInt64 in [300, 305, 511] { XCTAssertEqual(try env.cpu.load(a + i * 4096 + 8, as: UInt64.self), 0) }
        XCTAssertEqual(try child.mm.pagemap(a + 5 * 4096, count: 1)[0].pfn, shared, "the child keeps its page")
        XCTAssertEqual(env.memory.page(shared).mapcount, 1)
        try env.cpu.store(a + 5 * 4096 + 8, UInt64(0xAB))
        XCTAssertEqual(try ccpu.load(a + 5 * 4096 + 8, as: UInt64.self), 6)
        env.check()
        ccpu.detach(); child.exit()
        // Once the child is gone, collapsing again is a no-op: the 2 MiB is a THP already.
        let before = env.machine.usedFrames
        try env.process.madvise(a, length: twoMiB, advice: .collapse)
        XCTAssertEqual(env.machine.stats[.thpCollapseAlloc], 1)
        XCTAssertEqual(env.machine.usedFrames, before)
        env.check()
        env.teardown()
    }

    /// MADV_COLLAPSE's errors, as `madvise_collapse_errno` gives them: EINVAL for a VMA never
    /// written (no anon_vma), a range never touched (no PTE table) or a MADV_NOHUGEPAGE VMA,
    /// EAGAIN for a pinned page
    /// (references beyond its mappings; nothing changes), ENOMEM without an order-9 block;
    /// a range with no whole aligned 2 MiB is left alone (0).
    func testMadvCollapseErrors() throws {
        let (env, a) = try setUpTHP(mode: .never, huge: 2)
        let b = a + twoMiB
        // Never written: no anon_vma yet, EINVAL whatever the range (collapse_possible).
        XCTAssertThrowsError(try env.process.madvise(a, length: twoMiB, advice: .collapse)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try env.process.madvise(a, length: twoMiB - 4096, advice: .collapse)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        try env.cpu.store(b, UInt64(1))
        // Written elsewhere in the VMA, but this 2 MiB has no PTE table: EINVAL (SCAN_NO_PTE_TABLE).
        XCTAssertThrowsError(try env.process.madvise(a, length: twoMiB, advice: .collapse)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        try env.process.madvise(a, length: twoMiB - 4096, advice: .collapse)   // no whole aligned 2 MiB: 0
        try fillIDX(env.cpu, a, bytes: 2 * twoMiB)
        let pinned = try env.mm.getUserPages(a + 4096, count: 1, flags: [.pin, .write])
        XCTAssertThrowsError(try env.process.madvise(a, length: twoMiB, advice: .collapse)) { XCTAssertEqual($0 as? Errno, .EAGAIN) }
        XCTAssertEqual(try leaf(env, a).level, .pte)
        XCTAssertEqual(try env.pfn(a + 4096), pinned[0].pfn, "the table went back unchanged")
        env.mm.unpinUserPages(pinned)
        FaultInjection.arm(.frameAllocation, count: 1)
        XCTAssertThrowsError(try env.process.madvise(a, length: twoMiB, advice: .collapse)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        FaultInjection.disarmAll()
        XCTAssertEqual(env.machine.stats[.thpCollapseAllocFailed], 1)
        try env.process.madvise(b, length: twoMiB, advice: .noHugePage)
        XCTAssertThrowsError(try env.process.madvise(b, length: twoMiB, advice: .collapse)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        try env.process.madvise(a, length: twoMiB, advice: .collapse)
        XCTAssertEqual(try leaf(env, a).level, .pmd)
        XCTAssertEqual(env.machine.stats[.thpCollapseAlloc], 1)
        try checkIDX(env.cpu, a, bytes: 2 * twoMiB)
        env.check()
        env.teardown()
    }

    /// A pinned THP is not split (EAGAIN before anything is unmapped); fork gives the child copies of
    /// its pages rather than sharing it.
    func testPinnedFolioIsNotSplitAndForkCopies() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        let pinned = try env.mm.getUserPages(a + 4096, count: 1, flags: [.pin, .write])
        XCTAssertEqual(pinned[0].pfn, head + 1)
        let folio = env.memory.page(head)
        XCTAssertEqual(folio.pincount, 1)
        XCTAssertEqual(folio.refcount, 2)
        folio.lock()
        memory(env).get(folio)
        XCTAssertEqual(env.machine.splitFolio(folio), .EAGAIN)
        memory(env).put(folio)
        folio.unlock()
        XCTAssertEqual(env.machine.stats[.thpSplitPageFailed], 1)
        XCTAssertEqual(try leaf(env, a).level, .pmd, "can_split_folio fails first: the PMD stays")
        XCTAssertEqual(env.machine.stats[.thpSplitPMD], 0)
        XCTAssertEqual(folio.order, 9)
        env.check()
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        XCTAssertNotEqual(try child.mm.pagemap(a + 4096, count: 1)[0].pfn, head + 1, "a pinned folio's pages are copied")
        try checkIDX(ccpu, a, bytes: twoMiB)
        env.check()
        ccpu.detach(); child.exit()
        env.mm.unpinUserPages(pinned)
        env.check()
        env.teardown()
    }

    private func memory(_ env: Env) -> PhysicalMemory { env.memory }

    /// Runs `body` on a new thread and waits for it; its error is rethrown here.
    private func onAnotherThread(_ body: @escaping () throws -> Void) throws {
        var failure: Error?
        ModelThread.spawn(name: "syscalls") { do { try body() } catch { failure = error } }.join()
        if let failure { throw failure }
    }

    /// MADV_FREE of a whole THP makes it clean, old and lazily freeable at the PMD; of part
    /// of one, splits the folio and marks only those pages (`madvise_free_huge_pmd`).
    func testMadvFreeWholeAndPartTHP() throws {
        let (env, a) = try setUpTHP(huge: 2)
        try fillIDX(env.cpu, a, bytes: 2 * twoMiB)
        let h0 = try XCTUnwrap(try env.pfn(a)), h1 = try XCTUnwrap(try env.pfn(a + twoMiB))
        try env.process.madvise(a, length: twoMiB, advice: .free)
        let (level, pmd) = try leaf(env, a)
        XCTAssertEqual(level, .pmd)
        XCTAssertFalse(pmd.isDirty || pmd.isAccessed)
        XCTAssertTrue(env.memory.page(h0).test(.lazyFree))
        XCTAssertFalse(env.memory.page(h0).test(.dirty))
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        try env.process.madvise(a + twoMiB, length: 4096 * 4, advice: .free)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(try leaf(env, a + twoMiB).level, .pte)
        XCTAssertEqual(env.memory.page(h1).order, 0)
        XCTAssertTrue(env.memory.page(h1 + 3).test(.lazyFree))
        XCTAssertFalse(env.memory.page(h1 + 4).test(.lazyFree))
        try checkIDX(env.cpu, a, bytes: 2 * twoMiB)   // nothing is reclaimed yet: the bytes stay
        env.check()
        env.teardown()
    }

    /// MADV_FREE of a PTE-mapped THP (`madvise_free_pte_range`): a range covering part of the
    /// folio splits it and marks those pages; one covering all of it keeps it large, clean,
    /// old and lazily freeable; a folio shared with a fork is left alone.
    func testMadvFreeOfAPTEMappedTHP() throws {
        let (env, a) = try setUpTHP(huge: 2)
        try fillIDX(env.cpu, a, bytes: 2 * twoMiB)
        let h0 = try XCTUnwrap(try env.pfn(a)), h1 = try XCTUnwrap(try env.pfn(a + twoMiB))
        // Split both PMDs (the folios stay large, mapped by PTEs).
        try env.process.mprotect(a + twoMiB - 4096, length: 8192, prot: .read)
        try env.process.mprotect(a + twoMiB - 4096, length: 8192, prot: .readWrite)
        XCTAssertEqual(try leaf(env, a).level, .pte)
        XCTAssertEqual(env.memory.page(h0).order, 9)
        try env.process.madvise(a, length: twoMiB, advice: .free)          // all of folio 0
        XCTAssertEqual(env.memory.page(h0).order, 9)
        XCTAssertTrue(env.memory.page(h0).test(.lazyFree))
        XCTAssertFalse(env.memory.page(h0).test(.dirty))
        XCTAssertFalse(try leaf(env, a + 4096 * 100).entry.isDirty)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 0)
        try env.process.madvise(a + twoMiB + 4096 * 8, length: 4096 * 2, advice: .free)   // part of folio 1
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.memory.page(h1).order, 0)
        XCTAssertTrue(env.memory.page(h1 + 8).test(.lazyFree))
        XCTAssertFalse(env.memory.page(h1 + 10).test(.lazyFree))
        try checkIDX(env.cpu, a, bytes: 2 * twoMiB)
        env.check()
        env.teardown()
    }

    /// A pin of a page of a PTE-mapped THP is the folio's (its head's pin count), and fork
    /// copies that page rather than sharing it; unpinning leaves every count as it was.
    func testPinOfAPTEMappedTHPPageIsTheFolios() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        try env.process.mprotect(a + twoMiB / 2, length: twoMiB / 2, prot: .read)   // split the PMD
        XCTAssertEqual(try leaf(env, a).level, .pte)
        let folio = env.memory.page(head)
        let pinned = try env.mm.getUserPages(a + 4096 * 3, count: 1, flags: [.pin, .write])
        XCTAssertEqual(pinned[0].pfn, head + 3)
        XCTAssertEqual(folio.pincount, 1)
        XCTAssertEqual(folio.refcount, 513)
        XCTAssertEqual(folio.entireMapcount, 0)
        XCTAssertEqual(env.memory.page(head + 3).pincount, 0)
        let child = try env.process.fork()
        XCTAssertNotEqual(try child.mm.pagemap(a + 4096 * 3, count: 1)[0].pfn, head + 3, "a pinned folio's page is copied")
        child.exit()
        env.mm.unpinUserPages(pinned)
        XCTAssertEqual(folio.pincount, 0)
        XCTAssertEqual(folio.refcount, 512)
        env.check()
        env.teardown()
    }

    /// An unaligned MREMAP_DONTUNMAP source inside a THP: the leaf is split, nothing traps.
    func testMremapDontUnmapOfAPageInsideATHP() throws {
        let (env, a) = try setUpTHP()
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let b = try env.process.mremap(a + 4096, oldLength: 4096, newLength: 4096, flags: [.mayMove, .dontUnmap])
        XCTAssertEqual(try env.cpu.load(b, as: Int32.self), 1024)
        XCTAssertEqual(try env.cpu.load(a + 4096, as: Int32.self), 0, "DONTUNMAP leaves the source empty")
        try checkIDX(env.cpu, a + 8192, bytes: 4096, plus: 2048)
        env.check()
        env.teardown()
    }

    func testVmstatNames() {
        XCTAssertEqual(MMStats.Counter.thpFaultAlloc.name, "thp_fault_alloc")
        XCTAssertEqual(MMStats.Counter.thpSplitPMD.name, "thp_split_pmd")
        XCTAssertEqual(MMStats.Counter.thpZeroPageAlloc.name, "thp_zero_page_alloc")
        XCTAssertEqual(MMStats.Counter.faultCOWCopy.name, "faultCOWCopy")
    }
}
