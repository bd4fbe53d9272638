import XCTest
@testable import MMCore
import MMSync

/// hugetlb: pools, MAP_HUGETLB, reservations, faults, COW, fork, mprotect, munmap, mremap,
/// madvise, GUP and pagemap, with the values Linux 7.2 gives (`mm/hugetlb.c`).
final class HugetlbTests: XCTestCase {
    let twoMiB: UInt64 = 2 << 20
    let hugeFlags: MapFlags = [.private, .anonymous, .hugetlb]

    func pool(_ env: Env) -> (HugeTLB, HState) { (env.memory.hugetlb, env.memory.hugetlb.defaultHState) }

    /// A machine whose default (2 MiB) pool has exactly `pages` free pages.
    func envWithPool(_ pages: Int, file: StaticString = #filePath, line: UInt = #line) throws -> (Env, HugeTLB, HState) {
        let env = try Env()
        let (pools, h) = pool(env)
        XCTAssertEqual(pools.setPoolSize(h, pages), pages, file: file, line: line)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: pages, free: pages, reserved: 0, surplus: 0), file: file, line: line)
        return (env, pools, h)
    }

    func testPoolSizeAndMeminfo() throws {
        let env = try Env()
        let (pools, h) = pool(env)
        let used = env.machine.usedFrames
        XCTAssertEqual(h.size, twoMiB)
        XCTAssertEqual(pools.setPoolSize(h, 4), 4)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 4, free: 4, reserved: 0, surplus: 0))
        XCTAssertEqual(env.machine.usedFrames - used, 4 * 512, "the pool holds its pages")
        XCTAssertEqual(pools.meminfo().map { "\($0.0) \($0.1)" },
                       ["HugePages_Total 4", "HugePages_Free 4", "HugePages_Rsvd 0", "HugePages_Surp 0", "Hugepagesize 2048", "Hugetlb 8192"])
        XCTAssertEqual(pools.setPoolSize(h, 1), 1)
        XCTAssertEqual(env.machine.usedFrames - used, 512)
        // A 64 MiB machine has no free, aligned gigantic range: the 1 GiB pool stays empty.
        XCTAssertEqual(pools.setPoolSize(pools.hstates[1], 1), 0)
        XCTAssertEqual(pools.setPoolSize(h, 0), 0)
        XCTAssertEqual(env.machine.usedFrames, used)
        env.teardown()
    }

    func testMmapReservesAndFaultsConsume() throws {
        let (env, pools, h) = try envWithPool(2)
        let a = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: hugeFlags)
        XCTAssertEqual(a & (twoMiB - 1), 0, "huge-page aligned")
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 2, surplus: 0))
        // Both pages are promised: a third mapping cannot reserve (hugetlb_acct_memory).
        XCTAssertThrowsError(try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        // MAP_NORESERVE reserves nothing.
        let nr = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags.union(.noReserve))
        XCTAssertEqual(pools.counters(h).reserved, 2)
        // A read fault maps the page read-only at PMD level and consumes a reservation.
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt64.self), 0)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 1, reserved: 1, surplus: 0))
        let leaf = try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte))
        XCTAssertEqual(leaf.level, .pmd)
        XCTAssertTrue(leaf.entry.load().isHuge)
        XCTAssertFalse(leaf.entry.load().isWrite)
        // The write reuses the exclusive page (hugetlb_wp).
        try env.cpu.store(a + twoMiB - 8, UInt64(42))
        XCTAssertEqual(env.machine.stats[.hugetlbFaultCOWReuse], 1)
        XCTAssertTrue(leaf.entry.load().isWrite)
        XCTAssertEqual(env.machine.stats[.hugetlbFaultNewPage], 1)
        // The unreserved mapping's fault takes the last free page nobody reserved? None is:
        // the second page is reserved for `a`, so the MAP_NORESERVE fault gets SIGBUS.
        XCTAssertThrowsError(try env.cpu.store(nr, UInt8(1))) { XCTAssertEqual($0 as? AccessFault, .bus(address: nr)) }
        try env.cpu.store(a + twoMiB, UInt8(1))
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 0, reserved: 0, surplus: 0))
        env.check()
        try env.process.munmap(a, length: 2 * twoMiB)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 0, surplus: 0))
        XCTAssertEqual(try env.cpu.load(nr, as: UInt8.self), 0, "now a free page is unreserved")
        env.check()
        try env.process.munmap(nr, length: twoMiB)
        pools.setPoolSize(h, 0)
        env.teardown()
    }

    func testUnmappedReservationsGoBackAndLengthsRoundUp() throws {
        let (env, pools, h) = try envWithPool(3)
        // One byte maps a whole huge page.
        let a = try env.process.mmap(length: 1, prot: .readWrite, flags: hugeFlags)
        XCTAssertEqual(env.mm.mmapLock.withRead { env.mm.vmaLookup(a)?.length }, twoMiB)
        XCTAssertEqual(pools.counters(h).reserved, 1)
        let b = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: hugeFlags)
        try env.cpu.store(b, UInt8(7))
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 3, free: 2, reserved: 2, surplus: 0))
        // Unmapping the unfaulted half gives its reservation back (hugetlb_vm_op_close).
        try env.process.munmap(b + twoMiB, length: twoMiB)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 3, free: 2, reserved: 1, surplus: 0))
        env.check()
        // Splits happen only at huge page boundaries.
        XCTAssertThrowsError(try env.process.munmap(b + 4096, length: 4096)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try env.process.mprotect(b + 4096, length: 4096, prot: .read)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        // … unless nothing changes: mprotect_fixup returns before splitting.
        XCTAssertNoThrow(try env.process.mprotect(b + 4096, length: 4096, prot: .readWrite))
        XCTAssertEqual(try env.cpu.load(b, as: UInt8.self), 7)
        // Sizes and addresses.
        XCTAssertThrowsError(try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags.union(MapFlags(rawValue: 16 << 26)))) {
            XCTAssertEqual($0 as? Errno, .EINVAL, "no 64 KiB pool")
        }
        XCTAssertThrowsError(try env.process.mmap(address: 0x4000_1000, length: twoMiB, prot: .readWrite, flags: hugeFlags.union(.fixed))) {
            XCTAssertEqual($0 as? Errno, .EINVAL, "unaligned MAP_FIXED")
        }
        let hinted = try env.process.mmap(address: 0x4000_1000, length: twoMiB, prot: .readWrite, flags: hugeFlags)
        XCTAssertEqual(hinted, 0x4020_0000, "the hint rounds up to a huge page")
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 3, free: 2, reserved: 2, surplus: 0))
        env.check()
        env.teardown(stillHeld: 3 * 512)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 3, free: 3, reserved: 0, surplus: 0))
    }

    func testForkSharesCopyOnWriteAndTheChildCopies() throws {
        let (env, pools, h) = try envWithPool(2)
        let a = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        let head = try XCTUnwrap(try env.pfn(a))
        XCTAssertEqual(try env.pfn(a + 5 * pageSize), head + 5, "pagemap: the base page inside the huge page")
        XCTAssertTrue(try env.mm.pagemap(a, count: 1)[0].isExclusive)
        let child = try env.process.fork()
        env.check()
        let folio = env.memory.page(head)
        XCTAssertEqual(folio.mapcount, 2)
        XCTAssertEqual(folio.refcount, 2)
        XCTAssertFalse(folio.test(.anonExclusive))
        XCTAssertFalse(try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte)).entry.load().isWrite)
        XCTAssertFalse(try env.mm.pagemap(a, count: 1)[0].isExclusive)
        // The child's write copies the 2 MiB into the free page nobody reserved (a child owns
        // no reservation).
        let ccpu = child.makeCPU()
        try ccpu.store(a + 8, Int32(-1))
        XCTAssertEqual(env.machine.stats[.hugetlbFaultCOWCopy], 1)
        XCTAssertEqual(env.machine.stats[.bytesCopied], Int(twoMiB))
        XCTAssertEqual(try ccpu.load(a + 4, as: Int32.self), 1)
        XCTAssertEqual(try ccpu.load(a + 8, as: Int32.self), -1)
        XCTAssertEqual(try env.cpu.load(a + 8, as: Int32.self), 2)
        XCTAssertEqual(folio.mapcount, 1)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 0, reserved: 0, surplus: 0))
        // The parent is the only mapper again: its write reuses the page.
        try env.cpu.store(a, Int32(9))
        XCTAssertEqual(env.machine.stats[.hugetlbFaultCOWReuse], 1)
        XCTAssertEqual(try env.pfn(a), head)
        env.check()
        ccpu.detach(); child.exit()
        XCTAssertEqual(pools.counters(h).free, 1)
        try checkIDX(env.cpu, a + 12, bytes: twoMiB - 12, plus: 3)
        env.teardown(stillHeld: 2 * 512)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 0, surplus: 0))
    }

    func testPinnedPageIsCopiedAtForkAndGUPReturnsTheBasePage() throws {
        let (env, pools, h) = try envWithPool(2)
        let a = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags)
        try env.cpu.store(a + 5 * pageSize, UInt32(0xabcd))
        let head = try XCTUnwrap(try env.pfn(a))
        let pinned = try env.mm.getUserPages(a + 5 * pageSize, count: 2, flags: [.write, .pin])
        XCTAssertEqual(pinned.map(\.pfn), [head + 5, head + 6])
        let folio = env.memory.page(head)
        XCTAssertEqual(folio.pincount, 2)
        XCTAssertEqual(folio.refcount, 3)
        // copy_hugetlb_page_range: a maybe-pinned exclusive page is copied for the child now.
        let child = try env.process.fork()
        XCTAssertEqual(env.machine.stats[.bytesCopied], Int(twoMiB))
        let childHead = try XCTUnwrap(try child.mm.pagemap(a, count: 1)[0].pfn)
        XCTAssertNotEqual(childHead, head)
        XCTAssertTrue(try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte)).entry.load().isWrite, "the parent keeps its writable page")
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a + 5 * pageSize, as: UInt32.self), 0xabcd)
        env.check()
        env.mm.unpinUserPages(pinned)
        XCTAssertEqual(folio.pincount, 0)
        XCTAssertEqual(folio.refcount, 1)
        ccpu.detach(); child.exit()
        env.teardown(stillHeld: 2 * 512)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 0, surplus: 0))
    }

    func testDontneedGivesTheReservationBack() throws {
        let (env, pools, h) = try envWithPool(1)
        let a = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags)
        try env.cpu.store(a, UInt8(1))
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 1, free: 0, reserved: 0, surplus: 0))
        XCTAssertThrowsError(try env.process.madvise(a + 4096, length: 4096, advice: .dontNeed)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try env.process.madvise(a, length: twoMiB, advice: .free)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        // The end rounds down: less than a huge page zaps nothing.
        try env.process.madvise(a, length: twoMiB - 4096, advice: .dontNeed)
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 1)
        try env.process.madvise(a, length: twoMiB, advice: .dontNeed)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 1, free: 1, reserved: 1, surplus: 0), "the owner holds its reservation again")
        env.check()
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 0, "a new zeroed page, from the reservation")
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 1, free: 0, reserved: 0, surplus: 0))
        env.teardown(stillHeld: 512)
    }

    func testMremapMovesHugeLeaves() throws {
        let (env, pools, h) = try envWithPool(3)
        let a = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: hugeFlags)
        try fillIDX(env.cpu, a, bytes: twoMiB)
        XCTAssertThrowsError(try env.process.mremap(a, oldLength: 2 * twoMiB, newLength: 3 * twoMiB, flags: .mayMove)) { XCTAssertEqual($0 as? Errno, .EINVAL, "growing") }
        XCTAssertThrowsError(try env.process.mremap(a + 4096, oldLength: twoMiB, newLength: twoMiB, flags: .mayMove)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try env.process.mremap(a, oldLength: twoMiB, newLength: twoMiB, flags: [.mayMove, .dontUnmap])) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        let target: UInt64 = 0x5000_0000
        let b = try env.process.mremap(a, oldLength: 2 * twoMiB, newLength: 2 * twoMiB, flags: [.mayMove, .fixed], newAddress: target)
        XCTAssertEqual(b, target)
        try checkIDX(env.cpu, b, bytes: twoMiB)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 3, free: 2, reserved: 1, surplus: 0), "the unfaulted page's reservation moved along")
        env.check()
        // Shrinking unmaps the tail (lengths round up to huge pages).
        XCTAssertEqual(try env.process.mremap(b, oldLength: 2 * twoMiB, newLength: 1, flags: []), b)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 3, free: 2, reserved: 0, surplus: 0))
        try checkIDX(env.cpu, b, bytes: twoMiB)
        env.teardown(stillHeld: 3 * 512)
        XCTAssertEqual(pools.counters(h).free, 3)
    }

    func testShrinkingBelowUseMakesSurplusPages() throws {
        let (env, pools, h) = try envWithPool(3)
        let a = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: hugeFlags)
        try env.cpu.store(a, UInt8(1))
        let used = env.machine.usedFrames, tables = env.mm.pageTable.tableFrames
        // In use 1, reserved 1: only the third page is freed; asked for 0, the two left become
        // surplus (set_max_huge_pages, adjust_pool_surplus).
        XCTAssertEqual(pools.setPoolSize(h, 0), 0)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 1, reserved: 1, surplus: 2))
        XCTAssertEqual(used - env.machine.usedFrames, 512)
        env.check()
        try env.process.munmap(a, length: 2 * twoMiB)
        // The page in use went to the buddy allocator when freed, the reserved one when its
        // reservation went (return_unused_surplus_pages).
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 0, free: 0, reserved: 0, surplus: 0))
        XCTAssertEqual(used - env.machine.usedFrames - (tables - env.mm.pageTable.tableFrames), 3 * 512)
        env.teardown()
    }

    func testOneGiBPagesAreMappedByPUDLeaves() throws {
        let env = try Env(mib: 3 << 10)
        let pools = env.memory.hugetlb, g = pools.hstates[1]
        XCTAssertEqual(g.size, 1 << 30)
        XCTAssertEqual(pools.setPoolSize(g, 1), 1)
        let a = try env.process.mmap(length: 1 << 30, prot: .readWrite, flags: hugeFlags.union(.huge1GB))
        XCTAssertEqual(a & ((1 << 30) - 1), 0)
        try env.cpu.store(a + (123 << 20), UInt64(0x1122_3344))
        let leaf = try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte))
        XCTAssertEqual(leaf.level, .pud)
        XCTAssertTrue(leaf.entry.load().isHuge && leaf.entry.load().isWrite)
        let head = leaf.entry.load().pfn
        XCTAssertEqual(head & ((1 << 18) - 1), 0)
        XCTAssertEqual(try env.pfn(a + (123 << 20)), head + (123 << 8))
        XCTAssertEqual(try env.cpu.load(a + (123 << 20), as: UInt64.self), 0x1122_3344)
        try env.process.mprotect(a, length: 1 << 30, prot: .read)
        XCTAssertFalse(leaf.entry.load().isWrite)
        env.check()
        try env.process.munmap(a, length: 1 << 30)
        XCTAssertEqual(pools.counters(g), HugePoolCounters(total: 1, free: 1, reserved: 0, surplus: 0))
        XCTAssertEqual(pools.setPoolSize(g, 0), 0)
        env.teardown()
    }

    func testSharedMappingIsOnePageCacheAcrossFork() throws {
        let (env, pools, h) = try envWithPool(2)
        let shared: MapFlags = [.shared, .anonymous, .hugetlb]
        let a = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: shared)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 1, surplus: 0), "the file's reservation")
        // A read fault of a shared writable mapping maps the page writable (make_huge_pte).
        XCTAssertEqual(try env.cpu.load(a, as: UInt32.self), 0)
        XCTAssertTrue(try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte)).entry.load().isWrite)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 1, reserved: 0, surplus: 0))
        try env.cpu.store(a + 64, UInt32(0x5eed))
        let head = try XCTUnwrap(try env.pfn(a))
        let entry = try env.mm.pagemap(a, count: 1)[0]
        XCTAssertTrue(entry.isFileOrSharedAnon)
        XCTAssertEqual(env.memory.page(head).refcount, 2, "the mapping and the file's cache")
        // Fork copies no entry of a shared mapping: the child faults the file's page in.
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a + 64, as: UInt32.self), 0x5eed)
        try ccpu.store(a + 128, UInt32(0xc41d))
        XCTAssertEqual(try env.cpu.load(a + 128, as: UInt32.self), 0xc41d, "one page for both")
        XCTAssertEqual(try child.mm.pagemap(a, count: 1)[0].pfn, head)
        XCTAssertEqual(env.memory.page(head).mapcount, 2)
        XCTAssertEqual(env.machine.stats[.hugetlbFaultNewPage], 1)
        XCTAssertEqual(env.machine.stats[.hugetlbFaultCOWCopy], 0)
        env.check()
        // The parent's unmap leaves the file (and its page) to the child's mapping.
        try env.process.munmap(a, length: twoMiB)
        XCTAssertEqual(pools.counters(h).free, 1)
        XCTAssertEqual(try ccpu.load(a + 64, as: UInt32.self), 0x5eed)
        env.check()
        // The last mapping's exit drops the file: its page goes back to the pool.
        ccpu.detach(); child.exit()
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 0, surplus: 0))
        // Unfaulted reservations go with the file too; MAP_NORESERVE makes none.
        let b = try env.process.mmap(length: 2 * twoMiB, prot: .readWrite, flags: shared)
        XCTAssertEqual(pools.counters(h).reserved, 2)
        XCTAssertThrowsError(try env.process.mmap(length: twoMiB, prot: .readWrite, flags: shared)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        let c = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: shared.union(.noReserve))
        XCTAssertThrowsError(try env.cpu.store(c, UInt8(1))) { XCTAssertEqual($0 as? AccessFault, .bus(address: c)) }
        try env.cpu.store(b + twoMiB, UInt8(1))
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 1, reserved: 1, surplus: 0))
        env.check()
        try env.process.munmap(b, length: 2 * twoMiB)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 0, surplus: 0))
        try env.process.munmap(c, length: twoMiB)
        env.teardown(stillHeld: 2 * 512)
    }

    /// A zap gives the owner its reservation back, but the pool gets it only when the page is
    /// freed: while a GUP reference holds the page, `resv` runs behind (as the kernel's counter
    /// wraps), and nothing traps or is counted twice.
    func testReservationComingBackWhileThePageIsHeld() throws {
        let (env, pools, h) = try envWithPool(2)
        let a = try env.process.mmap(length: twoMiB, prot: .readWrite, flags: hugeFlags)
        try env.cpu.store(a, UInt8(1))
        let held = try env.mm.getUserPages(a, count: 1, flags: [])
        try env.process.madvise(a, length: twoMiB, advice: .dontNeed)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 1, reserved: 0, surplus: 0), "the reservation waits for the page")
        env.check()
        // The refault uses the mapping's restored reservation (the pool's counter runs behind).
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 0)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 0, reserved: 0, surplus: 0))
        env.check()
        // No free page: a fork's COW copy gets SIGBUS, not a crash.
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        XCTAssertThrowsError(try ccpu.store(a, UInt8(2))) { XCTAssertEqual($0 as? AccessFault, .bus(address: a)) }
        ccpu.detach(); child.exit()
        // Unmapping first, then dropping the held page, brings every counter back.
        try env.process.munmap(a, length: twoMiB)
        env.check()
        env.mm.putUserPages(held)
        XCTAssertEqual(pools.counters(h), HugePoolCounters(total: 2, free: 2, reserved: 0, surplus: 0))
        env.teardown(stillHeld: 2 * 512)
    }
}
