import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Issue 9: each point where swift-hmm now does what Linux 7.2 does, with the exact values 7.2
/// gives.
final class LinuxFidelityTests: XCTestCase {
    func exclusive(_ d: Dmirror, _ a: UInt64, _ n: Int) throws(Errno) {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        try d.ioctl(.exclusive, &cmd, buffer: DmirrorBuffer(size: n * Int(pageSize)))
    }
    func checkExclusive(_ d: Dmirror, _ a: UInt64, _ n: Int) -> Errno? {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        do { try d.ioctl(.checkExclusive, &cmd); return nil } catch { return error }
    }
    func snapshot(_ d: Dmirror, _ a: UInt64, _ n: Int) throws -> [UInt8] {
        let buf = DmirrorBuffer(size: n)
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        try d.ioctl(.snapshot, &cmd, buffer: buf)
        return (0..<n).map { buf[byte: $0] }
    }
    func pte(_ mm: AddressSpace, _ a: UInt64) -> PTE? {
        mm.mmapLock.withRead { mm.pageTable.lookup(a, level: .pte).flatMap { $0.level == .pte ? $0.entry.load() : nil } }
    }

    // MARK: 1. fork of device-exclusive entries

    /// copy_nonpresent_pte: the parent's device-exclusive entry is restored (no invalidation of
    /// its own; the fork's PROTECTION_PAGE covers it) and copied as a present COW PTE. Parent:
    /// SNAPSHOT 0x01, pagemap present and no longer exclusive; child: no device-exclusive entry.
    /// A fork that meets the page locked fails with ENOMEM and changes nothing.
    func testForkRestoresTheDeviceExclusiveEntryAndCopiesItCopyOnWrite() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(10))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 1)
        let entry = try XCTUnwrap(pte(env.mm, a))
        XCTAssertEqual(entry.swapEntry.type, SwapEntry.deviceExclusive)

        // The page lock taken by another thread (a device programming it):
        // try_restore_exclusive_pte fails.
        let page = env.memory.page(entry.swapEntry.pfn)
        let locked = AtomicWord(0), done = AtomicWord(0)
        let device = ModelThread.spawn(name: "device") {
            page.lock()
            locked.store(1)
            while done.load() == 0 { syncSleep(nanoseconds: 100_000) }
            page.unlock()
        }
        while locked.load() == 0 { syncSleep(nanoseconds: 100_000) }
        XCTAssertThrowsError(try env.mm.fork()) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        done.store(1)
        device.join()
        XCTAssertEqual(pte(env.mm, a), entry)               // the entry is still there…
        XCTAssertEqual(checkExclusive(d0, a, 1), nil)      // …but the fork's PROTECTION_PAGE
        try exclusive(d0, a, 1)                            // invalidation reached the device
        XCTAssertEqual(checkExclusive(d0, a, 1), .EPERM)

        let rec = try EventRecorder(env.mm)
        let child = try env.process.fork()
        XCTAssertEqual(rec.take(), ["PROTECTION_PAGE"])
        XCTAssertEqual(try snapshot(d0, a, 1), [0x01])                 // read, COW-shared
        let p = try XCTUnwrap(env.mm.pagemap(a, count: 1).first)
        XCTAssertTrue(p.isPresent)
        XCTAssertFalse(p.isExclusive)                                    // mapped by both now
        let c = try XCTUnwrap(pte(child.mm, a))
        XCTAssertTrue(c.isPresent)
        XCTAssertFalse(c.isWrite)
        XCTAssertEqual(c.pfn, entry.swapEntry.pfn)
        XCTAssertEqual(checkExclusive(d0, a, 1), nil)                   // the device lost it
        XCTAssertEqual(env.problems(), [])
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 10)
        try ccpu.store(a, UInt64(20))
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 10)
        ccpu.detach(); child.exit()
        env.mm.notifiers.remove(rec.sub)
        env.finish([d0])
    }

    // MARK: 2. device-exclusive entries since the 2025 rework

    /// mprotect leaves the entry alone (one entry type, no read form); the CPU fault restores it
    /// with a CLEAR invalidation, writable when the VMA allows writing and the page is
    /// anon-exclusive, read-only otherwise.
    func testMprotectLeavesDeviceExclusiveAndTheRestoreFollowsTheVMA() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(1)); try env.cpu.store(a + pageSize, UInt64(2))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 2)
        let before = [try XCTUnwrap(pte(env.mm, a)), try XCTUnwrap(pte(env.mm, a + pageSize))]
        try env.process.mprotect(a, length: 2 * pageSize, prot: .read)
        XCTAssertEqual([pte(env.mm, a), pte(env.mm, a + pageSize)], before)   // untouched
        XCTAssertEqual(env.problems(), [])
        try env.process.mprotect(a, length: pageSize, prot: .readWrite)
        XCTAssertEqual([pte(env.mm, a), pte(env.mm, a + pageSize)], before)

        let rec = try EventRecorder(env.mm)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 1)        // read fault restores…
        XCTAssertEqual(rec.take(), ["CLEAR"])
        let w = try XCTUnwrap(pte(env.mm, a))
        XCTAssertTrue(w.isPresent && w.isWrite && w.isDirty)           // …writable (and dirty)
        XCTAssertEqual(try snapshot(d0, a, 1), [0x02])
        let faults = env.machine.stats[.faultCOWReuse] + env.machine.stats[.faultCOWCopy]
        try env.cpu.store(a, UInt64(3))
        XCTAssertEqual(env.machine.stats[.faultCOWReuse] + env.machine.stats[.faultCOWCopy], faults)

        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 2)   // read-only VMA
        let r = try XCTUnwrap(pte(env.mm, a + pageSize))
        XCTAssertTrue(r.isPresent && !r.isWrite && !r.isDirty)
        XCTAssertEqual(try snapshot(d0, a + pageSize, 1), [0x01])
        XCTAssertEqual(checkExclusive(d0, a, 2), nil)
        env.mm.notifiers.remove(rec.sub)
        env.finish([d0])
    }

    /// make_device_exclusive accepts device-coherent pages (anonymous) and rejects shmem with
    /// EOPNOTSUPP; the dmirror command passes the error on and leaves the command untouched.
    func testMakeDeviceExclusiveAcceptsCoherentPagesAndRejectsShmem() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(7))
        let d2 = try env.module.open(minor: 2, mm: env.mm)
        var m = DmirrorCmd(addr: a, npages: 1)
        try d2.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: Int(pageSize)))
        let coherent = try XCTUnwrap(pte(env.mm, a))
        XCTAssertTrue(env.memory.page(coherent.pfn).isZoneDevice)
        try exclusive(d2, a, 1)
        let e = try XCTUnwrap(pte(env.mm, a))
        XCTAssertEqual(e.swapEntry, SwapEntry.deviceExclusive(pfn: coherent.pfn))
        XCTAssertEqual(checkExclusive(d2, a, 1), .EPERM)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 7)
        XCTAssertEqual(checkExclusive(d2, a, 1), nil)

        let s = try env.anon(1, prot: .readWrite)
        try env.process.munmap(s, length: pageSize)
        let shared = try env.process.mmap(length: pageSize, prot: .readWrite, flags: [.shared, .anonymous])
        try env.cpu.store(shared, UInt64(1))
        var cmd = DmirrorCmd(addr: shared, npages: 1)
        cmd.cpages = 99
        XCTAssertThrowsError(try d2.ioctl(.exclusive, &cmd, buffer: DmirrorBuffer(size: Int(pageSize)))) {
            XCTAssertEqual($0 as? Errno, .EOPNOTSUPP)
        }
        XCTAssertEqual(cmd.cpages, 99)
        XCTAssertTrue(try XCTUnwrap(pte(env.mm, shared)).isPresent)
        env.finish([d2])
    }

    // MARK: 3. mprotect upgrading to writable

    /// MM_CP_TRY_CHANGE_WRITABLE: an exclusive anonymous page becomes writable again when the
    /// VMA does (SNAPSHOT 0x02, no fault on the next store); the zero page and a page shared
    /// with a child by fork stay read-only (0x11, 0x01); shared mappings are writable through
    /// their vm_page_prot.
    func testMprotectBackToWritableUpgradesExclusiveAnonymousPages() throws {
        let env = try HMMEnv()
        let a = try env.anon(3)
        let b = try env.anon(1)
        try env.cpu.store(b, UInt64(5))
        let child = try env.process.fork()                    // b's page now shared COW
        try env.cpu.store(a, UInt64(1))                      // exclusive anon page
        _ = try env.cpu.load(a + pageSize, as: UInt64.self)   // zero page
        let sh = try env.process.mmap(length: pageSize, prot: .readWrite, flags: [.shared, .anonymous])
        try env.cpu.store(sh, UInt64(9))
        let d0 = try env.module.open(minor: 0, mm: env.mm)

        for (addr, len) in [(a, 3 * pageSize), (b, pageSize), (sh, pageSize)] {
            try env.process.mprotect(addr, length: len, prot: .read)
        }
        XCTAssertEqual(try snapshot(d0, a, 2), [0x01, 0x11])
        XCTAssertEqual(try snapshot(d0, sh, 1), [0x01])
        for (addr, len) in [(a, 3 * pageSize), (b, pageSize), (sh, pageSize)] {
            try env.process.mprotect(addr, length: len, prot: .readWrite)
        }
        XCTAssertEqual(try snapshot(d0, a, 3), [0x02, 0x11, 0x00])
        XCTAssertEqual(try snapshot(d0, b, 1), [0x01])
        XCTAssertEqual(try snapshot(d0, sh, 1), [0x02])
        let reuse = env.machine.stats[.faultCOWReuse], copy = env.machine.stats[.faultCOWCopy]
        try env.cpu.store(a, UInt64(2))
        try env.cpu.store(sh, UInt64(10))
        XCTAssertEqual(env.machine.stats[.faultCOWReuse], reuse)
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], copy)
        try env.cpu.store(b, UInt64(6))                        // shared with the child: a copy
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], copy + 1)
        child.exit()
        env.finish([d0])
    }

    // MARK: 4. interval insertion during an invalidation

    /// An interval inserted while an invalidation that hit no interval runs gets the odd
    /// sequence (the subscriptions' becomes odd), so readBegin waits for that invalidation.
    func testIntervalInsertedDuringAnInvalidationStartsOdd() throws {
        let env = try HMMEnv()
        let subs = env.mm.notifiers
        XCTAssertEqual(subs.currentSeq, 2)
        let range = MMUNotifierRange(start: 0x1000, end: 0x2000, event: .clear)
        subs.invalidateRangeStart(range)
        XCTAssertEqual(subs.currentSeq, 2)                  // no interval hit: stays even
        let sub = MMUIntervalNotifier(start: 0, end: taskSize) { s, _, seq in s.setSeq(seq); return true }
        try subs.insert(sub)
        XCTAssertEqual(subs.currentSeq, 3)
        XCTAssertEqual(sub.invalidateSeq.load(), 3)         // "invalidating": readBegin waits
        let began = AtomicCounter(0)
        let t = ModelThread.spawn { began.store(Int(sub.readBegin())) }
        syncSleep(nanoseconds: 20_000_000)
        XCTAssertEqual(began.load(), 0)
        subs.invalidateRangeEnd(range)
        t.join()
        XCTAssertEqual(began.load(), 3)
        XCTAssertEqual(subs.currentSeq, 4)
        let driverLock = Lock("test-driver")   // readRetry is asked under the driver's lock
        XCTAssertFalse(driverLock.withLock { sub.readRetry(3) })
        // Idle: the new interval gets seq - 1 and readBegin returns at once.
        let idle = MMUIntervalNotifier(start: 0, end: taskSize) { s, _, seq in s.setSeq(seq); return true }
        try subs.insert(idle)
        XCTAssertEqual(idle.readBegin(), 3)
        subs.remove(sub); subs.remove(idle)
        env.finish([])
    }

    /// The race itself: a page migration (CLEAR, no mmap lock) has started and is about to
    /// unmap the page when a driver inserts its interval and snapshots the range. The snapshot
    /// must not come back valid with the page that is leaving. Before the fix the interval got an
    /// even sequence, readBegin did not wait, and readRetry accepted the stale pfn.
    func testSnapshotDuringAnInvalidationThatFoundNoIntervalIsNotStale() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(42))
        let oldPfn = try XCTUnwrap(env.mm.pagemap(a, count: 1).first?.pfn)
        let driverLock = Lock("driver")
        let sub = MMUIntervalNotifier(start: a, end: a + pageSize) { s, _, seq in
            driverLock.withLock { s.setSeq(seq) }; return true
        }
        let programmed = AtomicCounter(-1)     // the pfn the "device" mapped with a valid sequence
        let done = AtomicCounter(0)
        var driver: ModelThread?
        env.mm.notifiers.afterRangeActivated = { range in
            guard range.event == .clear, driver == nil else { return }
            try? env.mm.notifiers.insert(sub)
            driver = ModelThread.spawn {
                while true {
                    let seq = sub.readBegin()
                    var r = HMMRange(notifier: sub, notifierSeq: seq, start: a, end: a + pageSize)
                    let ok: Bool = env.mm.mmapLock.withRead { (try? env.mm.hmmRangeFault(&r)) != nil }
                    if !ok { continue }
                    let accepted = driverLock.withLock { !sub.readRetry(seq) }
                    if accepted {
                        programmed.store(HMMPfn.isValid(r.hmmPfns[0]) ? Int(HMMPfn.pfn(r.hmmPfns[0])) : 0)
                        break
                    }
                }
                done.store(1)
            }
            // Give the driver every chance to finish inside the window.
            let deadline = monotonicNanoseconds() + 200_000_000
            while done.load() == 0 && monotonicNanoseconds() < deadline { syncSleep(nanoseconds: 1_000_000) }
        }
        let r = env.machine.migratePages([oldPfn])
        env.mm.notifiers.afterRangeActivated = nil
        driver?.join()
        XCTAssertEqual(r.migrated.count, 1)
        XCTAssertEqual(done.load(), 1)
        XCTAssertNotEqual(programmed.load(), Int(oldPfn), "the device mapped the page being migrated away")
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 42)
        env.mm.notifiers.remove(sub)
        env.finish([])
    }

    /// Removal during an invalidation is deferred: the interval still sees the epoch's
    /// callbacks and is gone once the last invalidation ends; an insert during an odd epoch is
    /// deferred to its end.
    func testInsertAndRemoveDuringAnOddEpochAreDeferred() throws {
        let env = try HMMEnv()
        let subs = env.mm.notifiers
        let rec = try EventRecorder(env.mm)
        let range = MMUNotifierRange(start: 0x1000, end: 0x2000, event: .clear)
        subs.invalidateRangeStart(range)
        XCTAssertEqual(subs.currentSeq, 3)
        let late = MMUIntervalNotifier(start: 0, end: taskSize) { s, _, seq in s.setSeq(seq); return true }
        try subs.insert(late)
        XCTAssertEqual(subs.intervalCount, 1)              // deferred
        XCTAssertEqual(late.invalidateSeq.load(), 3)
        let removed = AtomicCounter(0)
        let t = ModelThread.spawn { subs.remove(rec.sub); removed.store(1) }
        syncSleep(nanoseconds: 20_000_000)
        XCTAssertEqual(removed.load(), 0)                  // waits for the epoch to end
        subs.invalidateRangeEnd(range)
        t.join()
        XCTAssertEqual(subs.intervalCount, 1)              // `late` in, `rec` out
        XCTAssertEqual(subs.currentSeq, 4)
        XCTAssertEqual(rec.take(), ["CLEAR"])
        subs.remove(late)
        XCTAssertEqual(subs.intervalCount, 0)
        env.finish([])
    }

    // MARK: 5. notifier details

    /// Non-blocking ranges: the first interval that would block stops the walk (later ones and
    /// the subscribers are not called) and the core ends the epoch itself; a subscriber that
    /// would block makes the core call every subscriber's start and then every end.
    func testNonBlockingInvalidationsStopAndTheCoreEndsWhatItStarted() throws {
        let env = try HMMEnv()
        let subs = env.mm.notifiers
        var seen: [String] = []
        let l = Lock("seen")
        let i1 = MMUIntervalNotifier(start: 0x10000, end: 0x20000) { s, r, seq in
            l.withLock { seen.append("i1") }; if !r.blockable { return false }; s.setSeq(seq); return true
        }
        let i2 = MMUIntervalNotifier(start: 0x18000, end: 0x30000) { s, _, seq in
            l.withLock { seen.append("i2") }; s.setSeq(seq); return true
        }
        try subs.insert(i2); try subs.insert(i1)
        let s1 = RecordingSubscriber("s1"), s2 = RecordingSubscriber("s2", failNonBlocking: true), s3 = RecordingSubscriber("s3")
        [s1, s2, s3].forEach { subs.register($0) }
        let nb = MMUNotifierRange(start: 0x10000, end: 0x30000, event: .clear, blockable: false)
        XCTAssertFalse(subs.invalidateRangeStart(nb))
        XCTAssertEqual(seen, ["i1"])                       // the lowest interval first, then stop
        XCTAssertEqual(s1.take() + s2.take() + s3.take(), [])
        XCTAssertEqual(subs.currentSeq, 4)                 // odd during, even again: ended
        XCTAssertEqual(subs.lock.withLock { subs.activeInvalidateRanges }, 0)

        let nb2 = MMUNotifierRange(start: 0x40000, end: 0x50000, event: .clear, blockable: false)
        XCTAssertFalse(subs.invalidateRangeStart(nb2))     // no interval hit; s2 would block
        XCTAssertEqual(s1.take(), ["s1 start CLEAR", "s1 end CLEAR"])
        XCTAssertEqual(s2.take(), ["s2 start CLEAR", "s2 end CLEAR"])
        XCTAssertEqual(s3.take(), ["s3 start CLEAR", "s3 end CLEAR"])
        XCTAssertEqual(subs.lock.withLock { subs.activeInvalidateRanges }, 0)
        XCTAssertEqual(subs.currentSeq, 4)
        // `invalidating` runs its body but ends nothing a second time after a failed start.
        var ran = false
        subs.invalidating(nb2) { ran = true }
        XCTAssertTrue(ran)
        XCTAssertEqual(subs.lock.withLock { subs.activeInvalidateRanges }, 0)
        [s1, s2, s3].forEach { subs.unregister($0) }
        subs.remove(i1); subs.remove(i2)
        env.finish([])
    }

    /// A MREMAP_FIXED move that also shrinks may drop a tail spanning other VMAs: only the kept
    /// part must lie in one VMA (check_prep_vma), as for a shrink in place.
    func testFixedShrinkingMremapMayCrossVMAsInTheDroppedTail() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        for i in 0..<4 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i + 1)) }
        try env.process.mprotect(a + 2 * pageSize, length: 2 * pageSize, prot: .read)   // [a,a+2) rw, [a+2,a+4) r
        let t = try env.anon(8)
        try env.process.munmap(t, length: 8 * pageSize)
        XCTAssertEqual(try env.process.mremap(a, oldLength: 4 * pageSize, newLength: 2 * pageSize,
                                              flags: [.mayMove, .fixed], newAddress: t), t)
        XCTAssertEqual(try env.cpu.load(t + pageSize, as: UInt64.self), 2)
        XCTAssertThrowsError(try env.cpu.load(a + 3 * pageSize, as: UInt64.self))         // the tail is gone
        XCTAssertThrowsError(try env.process.mremap(t, oldLength: 4 * pageSize, newLength: 4 * pageSize,
                                                    flags: [.mayMove, .fixed], newAddress: a)) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        env.finish([])
    }

    /// Events: exit is RELEASE then one UNMAP of everything for intervals, only `release` for
    /// whole-mm subscribers; truncation is CLEAR; munmap across two VMAs is one UNMAP.
    func testExitTruncationAndMunmapEvents() throws {
        let env = try HMMEnv()
        let rec = try EventRecorder(env.mm)
        let a = try env.anon(4)
        try env.cpu.store(a, UInt64(1)); try env.cpu.store(a + 3 * pageSize, UInt64(1))
        try env.process.mprotect(a, length: pageSize, prot: .read)          // two VMAs now
        _ = rec.take()
        try env.process.munmap(a, length: 4 * pageSize)
        XCTAssertEqual(rec.take(), ["UNMAP"])

        let f = ShmemFile(machine: env.machine, size: 2 * pageSize)
        let m = try env.process.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.shared], file: f, offset: 0)
        try env.cpu.store(m + pageSize, UInt64(3))
        _ = rec.take()
        try f.ftruncate(pageSize)
        XCTAssertEqual(rec.take(), ["CLEAR", "CLEAR"])      // shmem_setattr unmaps before and after

        let whole = RecordingSubscriber("mm")
        env.mm.notifiers.register(whole)
        try env.process.munmap(m, length: 2 * pageSize)
        XCTAssertEqual(whole.take(), ["mm start UNMAP", "mm end UNMAP"])
        _ = rec.take()
        let kept = try env.anon(1)
        try env.cpu.store(kept, UInt64(1))
        env.cpu.detach()
        env.process.exit()
        XCTAssertEqual(rec.take(), ["RELEASE", "UNMAP"])
        XCTAssertEqual(whole.take(), ["mm release"])        // unlinked before the exit's unmap
        // With no VMA left, exit_mmap unmaps nothing: RELEASE alone.
        let p2 = try MMCore.Process(machine: env.machine)
        let rec2 = try EventRecorder(p2.mm)
        p2.exit()
        XCTAssertEqual(rec2.take(), ["RELEASE"])
        XCTAssertEqual(env.problems(), [])
    }

    /// dmirror READ and WRITE on an exited mm: EFAULT (7.2's dmirror_fault), the command
    /// untouched; SNAPSHOT and MIGRATE check the mm first: EINVAL.
    func testDeviceCommandsOnAnExitedAddressSpace() throws {
        let env = try HMMEnv()
        let p = try MMCore.Process(machine: env.machine)
        let cpu = p.makeCPU()
        let a = try p.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.store(a, UInt64(1))
        let d = try env.module.open(minor: 0, mm: p.mm)
        cpu.detach(); p.exit()
        for c in [DmirrorCommand.read, .write] {
            var cmd = DmirrorCmd(addr: a, npages: 2)
            cmd.cpages = 7
            XCTAssertThrowsError(try d.ioctl(c, &cmd, buffer: DmirrorBuffer(size: 2 * Int(pageSize)))) { XCTAssertEqual($0 as? Errno, .EFAULT) }
            XCTAssertEqual(cmd.cpages, 7)
        }
        for c in [DmirrorCommand.snapshot, .migrateToDevice] {
            var cmd = DmirrorCmd(addr: a, npages: 2)
            XCTAssertThrowsError(try d.ioctl(c, &cmd, buffer: DmirrorBuffer(size: 2 * Int(pageSize)))) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        }
        d.close()
        env.finish([])
    }

    // MARK: 6. hmm_pfns and RELEASE

    /// Linux 7.2's hmm_pfns: VALID 63, WRITE 62, ERROR 61, DMA_MAPPED 60, P2PDMA 59,
    /// P2PDMA_BUS 58, order in 57…53; the in/out flags survive the walk.
    func testHMMPfnsLayoutIsLinux72s() throws {
        XCTAssertEqual(HMMPfn.valid, 1 << 63)
        XCTAssertEqual(HMMPfn.write, 1 << 62)
        XCTAssertEqual(HMMPfn.error, 1 << 61)
        XCTAssertEqual(HMMPfn.dmaMapped, 1 << 60)
        XCTAssertEqual(HMMPfn.p2pdma, 1 << 59)
        XCTAssertEqual(HMMPfn.p2pdmaBus, 1 << 58)
        XCTAssertEqual(HMMPfn.orderShift, 53)
        XCTAssertEqual(HMMPfn.flags, 0xFFE0_0000_0000_0000)
        XCTAssertEqual(HMMPfn.order(9 << 53 | 5), 9)
        XCTAssertEqual(HMMPfn.pfn(HMMPfn.valid | 9 << 53 | 5), 5)

        let env = try HMMEnv()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(1))
        let sub = MMUIntervalNotifier(start: a, end: a + 2 * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        var r = HMMRange(notifier: sub, notifierSeq: sub.readBegin(), start: a, end: a + 2 * pageSize)
        r.hmmPfns = [HMMPfn.dmaMapped | HMMPfn.p2pdma, HMMPfn.p2pdmaBus]
        do {
            env.mm.mmapLock.lockRead()
            defer { env.mm.mmapLock.unlockRead() }
            try env.mm.hmmRangeFault(&r)
        }
        let pfn = try XCTUnwrap(env.mm.pagemap(a, count: 1).first?.pfn)
        XCTAssertEqual(r.hmmPfns, [HMMPfn.dmaMapped | HMMPfn.p2pdma | HMMPfn.valid | HMMPfn.write | pfn, HMMPfn.p2pdmaBus])
        env.mm.notifiers.remove(sub)
        env.finish([])
    }

    /// RELEASE does not fail when system memory is short: it waits for memory (the kernel's
    /// __GFP_NOFAIL) and evicts once another thread frees some. Before, it returned EBUSY.
    func testReleaseWaitsForMemoryInsteadOfFailing() throws {
        let env = try HMMEnv(mib: 16)
        let pages = 256
        let (a, d0) = try env.migratedRegion(pages)
        let hog = try env.exhaustSystemMemory()    // no page is left for the eviction
        let freer = ModelThread.spawn {
            syncSleep(nanoseconds: 50_000_000)
            try? env.process.munmap(hog, length: 64 << 20)
        }
        var cmd = DmirrorCmd(addr: a, npages: 1)
        try d0.ioctl(.release, &cmd)
        freer.join()
        for i in 0..<pages { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        XCTAssertEqual(try env.mm.pagemap(a, count: pages).filter(\.isPresent).count, pages)
        env.finish([d0])
    }
}
