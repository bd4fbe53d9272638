import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Devices and swap, as Linux 7.2 has them meet: `hmm_range_fault` reports a swapped page as 0
/// in a snapshot and faults it in when asked; `migrate_vma` passes swapped pages over; reclaim
/// takes a device-exclusive page only after the device lost its access (CLEAR invalidation);
/// device-private pages are never paged out.
final class SwapHMMTests: XCTestCase {
    private func pagedOut(_ env: HMMEnv, _ pages: Int) throws -> UInt64 {
        let a = try env.anon(pages)
        for i in 0..<pages { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(100 + i)) }
        try env.process.madvise(a, length: UInt64(pages) * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], pages)
        return a
    }

    func testRangeFaultReportsSwappedPagesAsEmptyAndFaultsThemInWhenAsked() throws {
        let env = try HMMEnv(swapPages: 16)
        let a = try pagedOut(env, 4)
        let sub = MMUIntervalNotifier(start: a, end: a + 4 * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        defer { env.mm.notifiers.remove(sub) }
        var snap = HMMRange(notifier: sub, notifierSeq: 0, start: a, end: a + 4 * pageSize)
        try HMMMirror.faultAndProgram(&snap, driverLock: Lock("test")) { (_: HMMRange) throws(Errno) in }
        XCTAssertEqual(snap.hmmPfns, [0, 0, 0, 0], "a snapshot does not swap in")
        XCTAssertEqual(env.machine.stats[.pswpin], 0)
        var fault = HMMRange(notifier: sub, notifierSeq: 0, start: a, end: a + 4 * pageSize, defaultFlags: HMMPfn.requestFault)
        try HMMMirror.faultAndProgram(&fault, driverLock: Lock("test")) { (_: HMMRange) throws(Errno) in }
        XCTAssertEqual(env.machine.stats[.pswpin], 4)
        let pfns = try env.mm.pagemap(a, count: 4).map(\.pfn)
        // Exclusive entries come back writable, so a read request sees write permission.
        XCTAssertEqual(fault.hmmPfns, pfns.map { $0 | HMMPfn.valid | HMMPfn.write | HMMPfn.requestFault })
        for i in 0..<4 { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(100 + i)) }
        env.finish([])
    }

    func testMigrateToDevicePassesSwappedPagesOverAndADeviceReadFaultsThemIn() throws {
        let env = try HMMEnv(swapPages: 16)
        let a = try pagedOut(env, 4)
        try env.cpu.store(a + 3 * pageSize, UInt64(103))   // page 3 is back, present
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var m = DmirrorCmd(addr: a, npages: 4)
        // migrate_vma_collect gives swap entries src 0: one page moves, and dmirror's read-back
        // of the range then finds three pages missing (ENOENT, as lib/test_hmm.c returns).
        XCTAssertThrowsError(try d0.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: 4 * Int(pageSize)))) {
            XCTAssertEqual($0 as? Errno, .ENOENT)
        }
        env.mm.mmapLock.lockRead()
        let kinds = (0..<4).map { i -> String in
            let v = env.mm.pageTable.lookup(a + UInt64(i) * pageSize, level: .pte)?.entry.load() ?? .none
            return v.swapEntry.isSwapSlot ? "swap" : v.swapEntry.isDevicePrivate ? "device" : "\(v)"
        }
        env.mm.mmapLock.unlockRead()
        XCTAssertEqual(kinds, ["swap", "swap", "swap", "device"])
        // MADV_PAGEOUT passes device-private entries over: nothing more is written.
        try env.process.madvise(a, length: 4 * pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 4)
        let buf = DmirrorBuffer(size: 4 * Int(pageSize))
        var r = DmirrorCmd(addr: a, npages: 4)
        try d0.ioctl(.read, &r, buffer: buf)
        XCTAssertEqual(r.cpages, 4)
        XCTAssertEqual(env.machine.stats[.pswpin], 4, "page 3 by the store above, pages 0-2 by the device fault")
        for i in 0..<4 { XCTAssertEqual(buf.bytes.load(fromByteOffset: i * Int(pageSize), as: UInt64.self), UInt64(100 + i)) }
        env.finish([d0])
    }

    /// `migrate_vma_pages` (7.2): a page in the swap cache moves to the device only if it can
    /// leave the cache (`folio_free_swap`: no swap entry names its slot any more).
    func testMigrateMovesASwapCachePageOnlyOnceItCanLeaveTheCache() throws {
        let env = try HMMEnv(swapPages: 16)
        let a = try pagedOut(env, 1)
        let child = try env.process.fork()
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 100, "swapped in; the child's entry keeps the page cached")
        let pfn = try XCTUnwrap(try env.mm.pagemap(a, count: 1).first?.pfn)
        let page = env.memory.page(pfn)
        XCTAssertTrue(page.test(.swapCache))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var m = DmirrorCmd(addr: a, npages: 1)
        XCTAssertThrowsError(try d0.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: Int(pageSize)))) {
            XCTAssertEqual($0 as? Errno, .ENOENT, "not moved: the read-back finds no device page")
        }
        XCTAssertEqual(try env.mm.pagemap(a, count: 1).first?.pfn, pfn, "restored where it was")
        XCTAssertTrue(page.test(.swapCache))
        child.exit()
        XCTAssertEqual(env.memory.swap.freeSlots, 15, "the child's exit leaves the mapped page cached")
        var m2 = DmirrorCmd(addr: a, npages: 1)
        try d0.ioctl(.migrateToDevice, &m2, buffer: DmirrorBuffer(size: Int(pageSize)))
        XCTAssertEqual(m2.cpages, 1)
        XCTAssertEqual(env.memory.swap.freeSlots, 16, "it left the swap cache on its way to the device")
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 100, "and comes back with its bytes")
        env.finish([d0])
    }

    func testReclaimOfADeviceExclusivePageRevokesTheDeviceFirst() throws {
        let env = try HMMEnv(swapPages: 16)
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(77))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var x = DmirrorCmd(addr: a, npages: 1)
        try d0.ioctl(.exclusive, &x, buffer: DmirrorBuffer(size: Int(pageSize)))
        XCTAssertEqual(d0.entry(at: a)?.tag, Dmirror.tagAtomic)
        // MADV_PAGEOUT passes a device-exclusive entry over (not present), as 7.2 does.
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        // Reclaim finds the page through the rmap (shrink_folio_list on an isolated page).
        let pfn = d0.entry(at: a)!.pfn
        let page = env.memory.page(pfn)
        XCTAssertTrue(env.memory.tryGet(page))
        let clears = env.machine.stats[.invalidateClear]
        XCTAssertTrue(env.machine.reclaimPage(page))
        XCTAssertEqual(env.machine.stats[.invalidateClear], clears + 1)
        XCTAssertNil(d0.entry(at: a), "the device dropped its atomic entry before the page went")
        XCTAssertEqual(env.machine.stats[.pswpout], 1)
        let e = try XCTUnwrap(env.mm.pagemap(a, count: 1).first)
        XCTAssertTrue(e.isSwap)
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 77)
        env.finish([d0])
    }

    func testDevicePrivatePagesAreNeverReclaimed() throws {
        let env = try HMMEnv(swapPages: 16)
        let (a, d0) = try env.migratedRegion(2)
        env.mm.mmapLock.lockRead()
        let entry = env.mm.pageTable.lookup(a, level: .pte)?.entry.load() ?? .none
        env.mm.mmapLock.unlockRead()
        XCTAssertTrue(entry.isSwap && entry.swapEntry.isDevicePrivate)
        let dev = env.memory.page(entry.swapEntry.pfn)
        XCTAssertTrue(dev.isDevicePrivate)
        env.memory.get(dev)
        XCTAssertFalse(env.machine.reclaimPage(dev))
        env.memory.put(dev)
        XCTAssertEqual(env.machine.stats[.pswpout], 0)
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 1)
        env.finish([d0])
    }
}
