import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

final class RangeFaultTests: XCTestCase {
    func snapshotRange(_ env: HMMEnv, _ start: UInt64, _ pages: Int, flags: UInt64 = 0, owner: AnyObject? = nil) throws(Errno) -> [UInt64] {
        let sub = MMUIntervalNotifier(start: start, end: start + UInt64(pages) * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        defer { env.mm.notifiers.remove(sub) }
        var range = HMMRange(notifier: sub, notifierSeq: 0, start: start, end: start + UInt64(pages) * pageSize,
                             defaultFlags: flags, devPrivateOwner: owner)
        // The canonical loop: a fault that migrates pages back invalidates the range, so the
        // first pass may end in EBUSY and start again from readBegin.
        var out: [UInt64] = []
        try HMMMirror.faultAndProgram(&range, driverLock: Lock("test")) { (r: HMMRange) throws(Errno) in out = r.hmmPfns }
        return out
    }

    func testSnapshotReportsEveryKindOfEntry() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        try env.cpu.store(a, UInt8(1))                    // page 0: writable anon
        _ = try env.cpu.load(a + pageSize, as: UInt8.self) // page 1: zero page
        let ro = try env.anon(1, prot: .read)
        let none = try env.anon(1, prot: .none)
        let out = try snapshotRange(env, a, 4)
        let pfn0 = try XCTUnwrap(env.mm.pagemap(a, count: 1).first?.pfn)
        XCTAssertEqual(out, [pfn0 | HMMPfn.valid | HMMPfn.write, HMMPfn.valid, 0, 0])
        XCTAssertEqual(try snapshotRange(env, ro, 1), [0])
        XCTAssertEqual(try snapshotRange(env, none, 1), [HMMPfn.error])  // unreadable VMA
        XCTAssertEqual(try snapshotRange(env, 0x1000_0000, 2), [HMMPfn.error, HMMPfn.error]) // hole
        env.finish([])
    }

    /// The snapshot's loop over plain entries goes eight at a time and falls back to one by
    /// one at any other entry: zero-page and empty entries at a block's first, last and middle
    /// places, a read-only block, a read-only page inside a writable block (all in one VMA), a
    /// tail shorter than a block; every driver in/out flag survives. Each output as
    /// hmm_vma_handle_pte gives it.
    func testSnapshotOfMixedEntriesInEveryPlaceOfABlock() throws {
        let env = try HMMEnv()
        let pages = 61
        let a = try env.anon(pages)
        let zero: Set = [0, 8, 13, 15, 60], holes: Set = [7, 30, 31], readOnly = Set(16..<24).union([41])
        for i in 0..<pages where !holes.contains(i) {
            let addr = a + UInt64(i) * pageSize
            if zero.contains(i) { _ = try env.cpu.load(addr, as: UInt8.self) } else { try env.cpu.store(addr, UInt8(i)) }
        }
        // Read-only PTEs in one VMA (an mprotect would split it, and the walk goes VMA by VMA):
        // a fork makes every private PTE read-only; the parent's writes then make all but the
        // chosen pages writable again.
        let child = try env.process.fork()
        for i in 0..<pages where !holes.contains(i) && !zero.contains(i) && !readOnly.contains(i) {
            try env.cpu.store(a + UInt64(i) * pageSize, UInt8(i))
        }
        let pfns = try env.mm.pagemap(a, count: pages).map(\.pfn)
        let sub = MMUIntervalNotifier(start: a, end: a + UInt64(pages) * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        defer { env.mm.notifiers.remove(sub) }
        var range = HMMRange(notifier: sub, notifierSeq: 0, start: a, end: a + UInt64(pages) * pageSize)
        for i in stride(from: 0, to: pages, by: 3) { range.hmmPfns[i] = HMMPfn.dmaMapped }
        range.hmmPfns[5] |= HMMPfn.p2pdma | HMMPfn.p2pdmaBus
        var out: [UInt64] = []
        try HMMMirror.faultAndProgram(&range, driverLock: Lock("test")) { (r: HMMRange) throws(Errno) in out = r.hmmPfns }
        let want = (0..<pages).map { i -> UInt64 in
            var sticky: UInt64 = i % 3 == 0 ? HMMPfn.dmaMapped : 0
            if i == 5 { sticky |= HMMPfn.p2pdma | HMMPfn.p2pdmaBus }
            if holes.contains(i) { return sticky }
            if zero.contains(i) { return sticky | HMMPfn.valid }
            return sticky | pfns[i] | HMMPfn.valid | (readOnly.contains(i) ? 0 : HMMPfn.write)
        }
        XCTAssertEqual(out.count, pages)
        for i in 0..<pages { XCTAssertEqual(out[i], want[i], "page \(i)") }
        XCTAssertEqual(Set(pfns.enumerated().filter { !zero.contains($0.offset) && !holes.contains($0.offset) }.map(\.element)).count,
                       pages - zero.count - holes.count)
        child.exit()
        env.finish([])
    }

    func testFaultRequestsAndErrors() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        let out = try snapshotRange(env, a, 2, flags: HMMPfn.requestFault)
        XCTAssertEqual(out.map { $0 & HMMPfn.flags }, [HMMPfn.valid, HMMPfn.valid])
        XCTAssertEqual(HMMPfn.pfn(out[0]), 0) // read faults map the zero page
        let w = try snapshotRange(env, a, 2, flags: HMMPfn.requestFault | HMMPfn.requestWrite)
        XCTAssertTrue(w.allSatisfy { HMMPfn.isWrite($0) && HMMPfn.pfn($0) != 0 })
        let ro = try env.anon(1, prot: .read)
        XCTAssertThrowsError(try snapshotRange(env, ro, 1, flags: HMMPfn.requestFault | HMMPfn.requestWrite)) {
            XCTAssertEqual($0 as? Errno, .EPERM)
        }
        let none = try env.anon(1, prot: .none)
        XCTAssertThrowsError(try snapshotRange(env, none, 1, flags: HMMPfn.requestFault)) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        XCTAssertThrowsError(try snapshotRange(env, 0x1000_0000, 1, flags: HMMPfn.requestFault)) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        env.finish([])
    }

    /// After fork every private page is read-only. A per-page write request (under
    /// `pfnFlagsMask`) on page 1 faults, and as in hmm.c (`hmm_vma_fault(addr, end, …)` from
    /// `hmm_vma_handle_pte`) the write fault covers the rest of the PMD span from page 1: pages
    /// 1 and 2 come back writable at new pfns; page 0, before it, stays read-only at its old
    /// pfn; the sticky in/out flag on page 2 survives; the child keeps the old pages.
    func testPerPageWriteRequestOnReadOnlyEntryFaultsOnlyThatPage() throws {
        let env = try HMMEnv()
        let a = try env.anon(3)
        for i in 0..<3 { try env.cpu.store(a + UInt64(i) * pageSize, UInt8(i + 1)) }
        let before = try env.mm.pagemap(a, count: 3).map(\.pfn)
        let child = try env.process.fork()
        let sub = MMUIntervalNotifier(start: a, end: a + 3 * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        var range = HMMRange(notifier: sub, notifierSeq: 0, start: a, end: a + 3 * pageSize, pfnFlagsMask: HMMPfn.requestFault | HMMPfn.requestWrite)
        range.hmmPfns = [0, HMMPfn.requestFault | HMMPfn.requestWrite, HMMPfn.dmaMapped]
        var out: [UInt64] = []
        try HMMMirror.faultAndProgram(&range, driverLock: Lock("test")) { (r: HMMRange) throws(Errno) in out = r.hmmPfns }
        env.mm.notifiers.remove(sub)
        XCTAssertEqual(out[0], before[0] | HMMPfn.valid)
        XCTAssertEqual(out[1] & HMMPfn.flags, HMMPfn.valid | HMMPfn.write)
        XCTAssertNotEqual(HMMPfn.pfn(out[1]), before[1])
        XCTAssertEqual(out[2] & HMMPfn.flags, HMMPfn.valid | HMMPfn.write | HMMPfn.dmaMapped)
        XCTAssertNotEqual(HMMPfn.pfn(out[2]), before[2])
        XCTAssertEqual(try child.mm.pagemap(a, count: 3).map(\.pfn), before)
        child.exit()
        env.finish([])
    }

    func testStaleSequenceIsEBUSY() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        let sub = MMUIntervalNotifier(start: a, end: a + pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        var range = HMMRange(notifier: sub, notifierSeq: sub.readBegin(), start: a, end: a + pageSize, defaultFlags: HMMPfn.requestFault)
        try env.process.mprotect(a, length: pageSize, prot: .read) // an invalidation after readBegin
        env.mm.mmapLock.lockRead()
        XCTAssertThrowsError(try env.mm.hmmRangeFault(&range)) { XCTAssertEqual($0 as? Errno, .EBUSY) }
        range.notifierSeq = sub.readBegin()
        XCTAssertNoThrow(try env.mm.hmmRangeFault(&range))
        env.mm.mmapLock.unlockRead()
        env.mm.notifiers.remove(sub)
        env.finish([])
    }

    func testOwnDevicePrivatePagesAreReportedOthersFaulted() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(5)); try env.cpu.store(a + pageSize, UInt64(6))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var cmd = DmirrorCmd(addr: a, npages: 2)
        try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: 2 * Int(pageSize)))
        XCTAssertEqual(cmd.cpages, 2)
        let dev0 = env.module.devices[0]
        let own = try snapshotRange(env, a, 2, owner: dev0)
        XCTAssertTrue(own.allSatisfy { HMMPfn.isValid($0) && HMMPfn.isWrite($0) && env.memory.page(HMMPfn.pfn($0)).isDevicePrivate })
        XCTAssertEqual(try snapshotRange(env, a, 2, owner: env.module.devices[1]), [0, 0]) // not faulted
        let faulted = try snapshotRange(env, a, 2, flags: HMMPfn.requestFault, owner: env.module.devices[1])
        XCTAssertTrue(faulted.allSatisfy { !env.memory.page(HMMPfn.pfn($0)).isZoneDevice })
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 6)
        XCTAssertEqual(dev0.pagesInUse, 0)
        env.finish([d0])
    }

    /// hugetlb (hmm_vma_walk_hugetlb_entry): every page of a huge page reports its own frame
    /// and the leaf's order (9 for 2 MiB, 18 for 1 GiB), even an empty entry (not valid then);
    /// only the first page's request decides whether the huge page faults.
    func testHugetlbPagesReportTheirOrder() throws {
        let env = try HMMEnv(mib: 3 << 10)
        let pools = env.memory.hugetlb
        pools.setPoolSize(pools.defaultHState, 2)
        pools.setPoolSize(pools.hstates[1], 1)
        let h2 = try env.process.mmap(length: 4 << 20, prot: .readWrite, flags: [.private, .anonymous, .hugetlb])
        try env.cpu.store(h2 + 8, UInt8(1))
        let head = try XCTUnwrap(env.mm.pagemap(h2, count: 1).first?.pfn)
        let order9 = UInt64(9) << HMMPfn.orderShift
        let out = try snapshotRange(env, h2, 1024)
        XCTAssertEqual(Array(out[0..<3]), (0..<3).map { (head + $0) | HMMPfn.valid | HMMPfn.write | order9 })
        // The second huge page is not faulted; its PMD entry exists in the table, empty.
        XCTAssertEqual(Array(out[512..<515]), [0 | order9, 1 | order9, 2 | order9])
        // A fault request on a later page of an empty huge page alone does not fault it.
        let sub = MMUIntervalNotifier(start: h2 + (2 << 20), end: h2 + (4 << 20)) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        var range = HMMRange(notifier: sub, notifierSeq: sub.readBegin(), start: h2 + (2 << 20), end: h2 + (4 << 20), pfnFlagsMask: HMMPfn.requestFault)
        range.hmmPfns[1] = HMMPfn.requestFault
        env.mm.mmapLock.lockRead()
        let r = Result { () throws(Errno) in try env.mm.hmmRangeFault(&range) }
        env.mm.mmapLock.unlockRead()
        XCTAssertNoThrow(try r.get())
        XCTAssertEqual(range.hmmPfns[1], 1 | order9)
        XCTAssertEqual(try env.mm.pagemap(h2 + (2 << 20), count: 1).first?.isPresent, false)
        env.mm.notifiers.remove(sub)
        // 1 GiB: PUD order.
        let h1 = try env.process.mmap(length: 1 << 30, prot: .readWrite, flags: [.private, .anonymous, .hugetlb, .huge1GB])
        let g = try snapshotRange(env, h1 + (5 << 20), 2, flags: HMMPfn.requestFault)
        let gHead = try XCTUnwrap(env.mm.pagemap(h1, count: 1).first?.pfn)
        XCTAssertEqual(g, [(gHead + 1280) | HMMPfn.valid | (18 << HMMPfn.orderShift), (gHead + 1281) | HMMPfn.valid | (18 << HMMPfn.orderShift)])
        XCTAssertEqual(env.problems(), [])
        try env.process.munmap(h1, length: 1 << 30)
        try env.process.munmap(h2, length: 4 << 20)
        pools.setPoolSize(pools.defaultHState, 0)
        pools.setPoolSize(pools.hstates[1], 0)
        env.finish([])
    }
}
