import XCTest
@testable import MMCore

struct CountingWalker: PageWalker {
    var present: [UInt64] = []
    var holes: [(UInt64, UInt64, PageTableLevel)] = []
    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        if pte.load().isPresent { present.append(addr) }
        return .next
    }
    mutating func hole(_ start: UInt64, _ end: UInt64, level: PageTableLevel) -> WalkStep {
        holes.append((start, end, level)); return .next
    }
}

struct StopAtSecond: PageWalker {
    var seen = 0
    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        seen += 1
        return seen == 2 ? .stop(.EBUSY) : .next
    }
}

final class PageTableTests: XCTestCase {
    func testWalkReportsEntriesAndHolesInOrder() throws {
        let env = try Env()
        let base = try env.process.mmap(address: 0x4000_0000, length: 1024 * pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        for pg: UInt64 in [1, 2, 600] { try env.cpu.store(base + pg * pageSize, UInt8(1)) }
        var w = CountingWalker()
        let err = env.mm.mmapLock.withRead { env.mm.pageTable.walk(base, base + 1024 * pageSize, &w) }
        XCTAssertNil(err)
        XCTAssertEqual(w.present, [base + 4096, base + 8192, base + 600 * 4096])
        // Holes: page 0, pages 3..511 (inside the first PTE table), 512..599, 601..1023.
        let holePages: [[UInt64]] = w.holes.map { [($0.0 - base) >> 12, ($0.1 - base) >> 12] }
        let expected: [[UInt64]] = [[0, 1], [3, 512], [512, 600], [601, 1024]]
        XCTAssertEqual(holePages, expected)
        XCTAssertTrue(w.holes.allSatisfy { $0.2 == .pte })
        var empty = CountingWalker()
        _ = env.mm.mmapLock.withRead { env.mm.pageTable.walk(0x10_0000_0000, 0x10_4000_0000, &empty) }
        XCTAssertEqual(empty.holes.count, 1)
        XCTAssertEqual(empty.holes[0].2, .pud) // the whole GiB is missing at the PUD level
        var stopper = StopAtSecond()
        XCTAssertEqual(env.mm.mmapLock.withRead { env.mm.pageTable.walk(base, base + 1024 * pageSize, &stopper) }, .EBUSY)
        XCTAssertEqual(stopper.seen, 2)
        env.teardown()
    }

    func testApplyToPfnRangeAllocatesOrSkips() throws {
        let env = try Env()
        let pt = env.mm.pageTable
        let tablesBefore = pt.tableFrames
        var visited = 0
        env.mm.mmapLock.lockWrite()
        XCTAssertNil(pt.applyToPfnRange(0x5000_0000, 0x5000_0000 + 4 * pageSize, allocate: false) { _, _ in visited += 1; return nil })
        XCTAssertEqual(visited, 0)
        XCTAssertEqual(pt.tableFrames, tablesBefore)
        XCTAssertNil(pt.applyToPfnRange(0x5000_0000, 0x5000_0000 + 4 * pageSize, allocate: true) { e, _ in
            visited += 1; XCTAssertTrue(e.load().isNone); return nil })
        XCTAssertEqual(visited, 4)
        XCTAssertEqual(pt.tableFrames, tablesBefore + 3) // pud, pmd, pte tables
        // apply_to_existing_page_range: the empty PTEs of the existing table are skipped.
        XCTAssertNil(pt.applyToPfnRange(0x5000_0000, 0x5000_0000 + 4 * pageSize, allocate: false) { _, _ in visited += 1; return nil })
        XCTAssertEqual(visited, 4)
        pt.entry(inTable: try XCTUnwrap(pt.lookup(0x5000_1000, level: .pte)).table.pfn, index: 1).store(.page(7, write: false))
        var seen: [UInt64] = []
        XCTAssertNil(pt.applyToPfnRange(0x5000_0000, 0x5000_0000 + 4 * pageSize, allocate: false) { _, a in seen.append(a); return nil })
        XCTAssertEqual(seen, [0x5000_1000])
        XCTAssertEqual(pt.applyToPfnRange(0x5000_0000, 0x5000_0000 + 4 * pageSize, allocate: true) { _, a in
            a == 0x5000_1000 ? .EPERM : nil }, .EPERM)
        pt.entry(inTable: try XCTUnwrap(pt.lookup(0x5000_1000, level: .pte)).table.pfn, index: 1).store(.none)
        XCTAssertEqual(pt.applyToPfnRange(0x5000_0000, 0x5000_0000, allocate: false) { _, _ in nil }, .EINVAL)
        // A huge leaf in the range is an error in both modes, not skipped.
        let pmd = try XCTUnwrap(pt.lookup(0x4000_0000, level: .pmd))
        let saved = pmd.entry.load()
        XCTAssertTrue(saved.isNone)
        pmd.entry.store(.page(512, write: true, huge: true))
        for allocate in [false, true] {
            var calls = 0
            XCTAssertEqual(pt.applyToPfnRange(0x4000_0000, 0x4000_0000 + 2 * pageSize, allocate: allocate) { _, _ in calls += 1; return nil }, .EINVAL)
            XCTAssertEqual(calls, 0)
        }
        pmd.entry.store(saved)
        env.mm.freePageTables(0x5000_0000, 0x5000_4000, floor: 0, ceiling: taskSize)
        XCTAssertEqual(pt.tableFrames, tablesBefore)
        env.mm.mmapLock.unlockWrite()
        env.teardown()
    }

    func testPageTablesAreFreedOnlyWhereNoVMARemains() throws {
        let env = try Env()
        let a = try env.process.mmap(address: 0x6000_0000, length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        let b = try env.process.mmap(address: 0x6000_2000, length: pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        try env.cpu.store(a, UInt8(1)); try env.cpu.store(b, UInt8(2))
        let tables = env.mm.pageTable.tableFrames
        try env.process.munmap(a, length: 2 * pageSize) // shares its PTE table with b
        XCTAssertEqual(env.mm.pageTable.tableFrames, tables)
        try env.process.munmap(b, length: pageSize)
        XCTAssertEqual(env.mm.pageTable.tableFrames, 1) // only the pgd is left
        env.teardown()
    }

    func testStaleTLBEntryIsCaughtByTheChecker() throws {
        let env = try Env()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt8(1))
        env.check()
        // Clear the PTE behind the model's back, without a shootdown.
        let f = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pte) })
        let old = f.entry.exchange(.none)
        XCTAssertTrue(env.machine.checkInvariants().contains { $0.contains("stale TLB entry") })
        f.entry.store(old)
        env.check()
        env.teardown()
    }
}
