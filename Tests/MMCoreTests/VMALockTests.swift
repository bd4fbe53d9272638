import XCTest
@testable import MMCore
import MMSync

/// Per-VMA locks (issue 11.4): CPU faults under the faulting VMA's lock, found through the
/// CPU's VMA cache, with the mmap lock as the fallback; writers lock the VMAs they change.
final class VMALockTests: XCTestCase {
    private func counters(_ m: Machine) -> [Int] {
        [m.stats[.vmaLockSuccess], m.stats[.vmaLockAbort], m.stats[.vmaLockRetry], m.stats[.vmaLockMiss]]
    }
    /// How much each per-VMA-lock counter (success, abort, retry, miss) moved since `before`.
    private func counters(_ m: Machine, since before: [Int]) -> [Int] { zip(counters(m), before).map { $0 - $1 } }

    /// The first fault in a VMA has no cached VMA and goes through the mmap lock (which also
    /// makes the anon_vma); every later one in that VMA runs under the VMA lock alone.
    func testFaultsAfterTheFirstRunUnderTheVMALock() throws {
        let env = try Env()
        let a = try env.anon(10)
        let before = counters(env.machine)
        try env.cpu.run { cpu in for i in 0..<10 { try cpu.store(a + UInt64(i) * pageSize, UInt64(i)) } }
        let d = counters(env.machine, since: before)
        XCTAssertEqual(d, [9, 1, 0, 0], "success, abort, retry, miss")
        XCTAssertEqual(env.machine.stats[.faultAnonNewPage], 10)
        try env.cpu.run { cpu in for i in 0..<10 { XCTAssertEqual(try cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) } }
        env.check()
        env.teardown()
    }

    /// A fault whose VMA has no anon_vma yet under the VMA lock takes the mmap lock for read
    /// with a trylock to make one (vmf_anon_prepare), and stays under the VMA lock.
    func testAnonVMAIsPreparedUnderTheVMALockWithATrylock() throws {
        let env = try Env()
        let a = try env.anon(4, prot: .read)
        // A read maps the zero page (no anon_vma) and caches the VMA.
        try env.cpu.run { cpu in _ = try cpu.load(a, as: UInt64.self) }
        try env.process.mprotect(a, length: 4 * pageSize, prot: .readWrite)
        let vma = try XCTUnwrap(env.mm.snapshotVMAs().first { $0.start <= a && a < $0.end })
        XCTAssertNil(vma.anonVMA)
        // mprotect changed the VMA, not its identity: the cached entry is still valid.
        let before = counters(env.machine)
        try env.cpu.run { cpu in try cpu.store(a + pageSize, UInt64(7)) }
        XCTAssertEqual(counters(env.machine, since: before), [1, 0, 0, 0])
        XCTAssertNotNil(vma.anonVMA)
        env.check()
        env.teardown()
    }

    /// While a writer holds a VMA write-locked, a fault in it cannot use the VMA lock: it
    /// counts an abort and waits for the mmap lock, then completes.
    func testFaultOnAWriteLockedVMAFallsBackToTheMmapLock() throws {
        let env = try Env(checkEveryOperation: false)
        let a = try env.anon(4)
        try env.cpu.run { cpu in try cpu.store(a, UInt64(1)) }
        let vma = try XCTUnwrap(env.mm.snapshotVMAs().first { $0.start <= a && a < $0.end })
        env.mm.mmapWriteLock()
        env.mm.vmaStartWrite(vma)
        XCTAssertTrue(vma.vmLock.isWriteLocked(env.mm.vmLockSeq))
        let aborts = env.machine.stats[.vmaLockAbort]
        let done = AtomicWord(0)
        // The test's CPU (its cache names the VMA), used from another thread meanwhile.
        let cpu = env.cpu
        let t = ModelThread.spawn(name: "faulter") {
            try? cpu.run { cpu in try cpu.store(a + pageSize, UInt64(2)) }
            done.store(1)
        }
        // The fault is blocked on the mmap lock behind us.
        var waited = 0
        while env.machine.stats[.vmaLockAbort] == aborts && waited < 5000 { syncSleep(nanoseconds: 1_000_000); waited += 1 }
        XCTAssertEqual(env.machine.stats[.vmaLockAbort], aborts + 1)
        syncSleep(nanoseconds: 20_000_000)
        XCTAssertEqual(done.load(), 0, "the fault finished while the mmap lock was held for write")
        env.mm.mmapWriteUnlock()
        t.join()
        XCTAssertEqual(done.load(), 1)
        XCTAssertFalse(vma.vmLock.isWriteLocked(env.mm.vmLockSeq), "the write lock ends with the mmap write lock")
        try env.cpu.run { cpu in XCTAssertEqual(try cpu.load(a + pageSize, as: UInt64.self), 2) }
        env.check()
        env.teardown()
    }

    /// vma_start_write waits for the faults inside the VMA to leave, and then no new one gets in.
    func testWriterWaitsForReadersToDrain() throws {
        let env = try Env(checkEveryOperation: false)
        let a = try env.anon(1)
        let vma = try XCTUnwrap(env.mm.snapshotVMAs().first { $0.start <= a && a < $0.end })
        XCTAssertTrue(vma.vmLock.tryLockRead(env.mm.vmLockSeq))
        XCTAssertEqual(vma.vmLock.readerCount, 1)
        let locked = AtomicWord(0)
        let writer = ModelThread.spawn(name: "writer") {
            env.mm.mmapWriteLock()
            env.mm.vmaStartWrite(vma)
            locked.store(1)
            env.mm.mmapWriteUnlock()
        }
        syncSleep(nanoseconds: 30_000_000)
        XCTAssertEqual(locked.load(), 0, "the writer got in while a reader was inside")
        vma.vmLock.unlockRead()
        writer.join()
        XCTAssertEqual(locked.load(), 1)
        XCTAssertEqual(vma.vmLock.readerCount, 0)
        // Write-locked in the current cycle: a reader is refused until the mmap write unlock.
        env.mm.mmapWriteLock()
        env.mm.vmaStartWrite(vma)
        XCTAssertFalse(vma.vmLock.tryLockRead(env.mm.vmLockSeq))
        env.mm.mmapWriteUnlock()
        XCTAssertTrue(vma.vmLock.tryLockRead(env.mm.vmLockSeq))
        vma.vmLock.unlockRead()
        env.teardown()
    }

    /// A VMA the CPU has cached is unmapped: the next access finds nothing under the VMA lock
    /// and gets SIGSEGV through the mmap lock; the detached VMA is freed once no CPU can be
    /// using its cache entry (here at once: the CPU is outside any lookup).
    func testUnmappedCachedVMAIsNotUsedAndIsFreed() throws {
        let env = try Env()
        let a = try env.anon(4)
        try env.cpu.run { cpu in try cpu.store(a, UInt64(1)); try cpu.store(a + pageSize, UInt64(1)) }
        weak var gone: VMA?
        do {
            let vma = try XCTUnwrap(env.mm.snapshotVMAs().first { $0.start <= a && a < $0.end })
            gone = vma
        }
        try env.process.munmap(a, length: 4 * pageSize)
        XCTAssertNil(gone, "the unmapped VMA is still alive")
        XCTAssertTrue(env.mm.detachedVMAs.isEmpty)
        let segv = env.machine.stats[.faultSIGSEGV]
        XCTAssertThrowsError(try env.cpu.run { cpu in try cpu.store(a + 2 * pageSize, UInt64(1)) }) { e in
            XCTAssertEqual(e as? AccessFault, .segv(address: a + 2 * pageSize))
        }
        XCTAssertEqual(env.machine.stats[.faultSIGSEGV], segv + 1)
        env.check()
        env.teardown()
    }

    /// A cached VMA is split (mprotect of its head): the first fault in the tail finds the
    /// stale entry, refreshes its bounds and takes the mmap lock, which caches the tail; the
    /// next ones run under the tail's VMA lock.
    func testASplitVMAIsRecachedAndItsTailFaultsUnderTheVMALock() throws {
        let env = try Env()
        let a = try env.anon(8)
        try env.cpu.run { cpu in try cpu.store(a, UInt64(1)) }
        try env.process.mprotect(a, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.mm.vmaCount, 2)
        let before = counters(env.machine)
        try env.cpu.run { cpu in
            for i in 4..<7 { try cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        }
        XCTAssertEqual(counters(env.machine, since: before), [2, 1, 0, 0], "success, abort, retry, miss")
        env.check()
        env.teardown()
    }

    /// A CPU detached by another thread (its process exited) stops using its VMA cache.
    func testADetachedCPUDoesNotUseItsCache() throws {
        let env = try Env(checkEveryOperation: false)
        let a = try env.anon(2)
        try env.cpu.run { cpu in try cpu.store(a, UInt64(1)) }
        env.cpu.detach()
        XCTAssertEqual(env.cpu.vmaCache.dead.load(), 1)
        let before = counters(env.machine)
        try env.cpu.run { cpu in try cpu.store(a + pageSize, UInt64(2)) }
        XCTAssertEqual(counters(env.machine, since: before), [0, 0, 0, 0], "a dead cache is not even looked at")
        env.process.exit()
    }

    /// A CPU inside a lookup keeps a detached VMA alive until it is out (the grace period).
    func testDetachedVMAWaitsForACPUInsideALookup() throws {
        let env = try Env(checkEveryOperation: false)
        let a = try env.anon(2)
        try env.cpu.run { cpu in try cpu.store(a, UInt64(1)) }
        env.cpu.vmaCache.active.store(1)   // as if the CPU were between its lookup and its lock
        try env.process.munmap(a, length: 2 * pageSize)
        XCTAssertEqual(env.mm.detachedVMAs.count, 1)
        env.cpu.vmaCache.active.store(0)
        _ = try env.anon(1)                // the next mmap write unlock reaps it
        XCTAssertEqual(env.mm.detachedVMAs.count, 0)
        env.teardown()
    }

    /// An mprotect to read-only write-locks the VMA and changes it; a CPU whose cache names it
    /// sees the new protection under the VMA lock and gets SIGSEGV on a write.
    func testMprotectIsSeenByTheNextFaultUnderTheVMALock() throws {
        let env = try Env()
        let a = try env.anon(4)
        try env.cpu.run { cpu in try cpu.store(a, UInt64(1)) }
        try env.process.mprotect(a, length: 4 * pageSize, prot: .read)
        let before = counters(env.machine)
        XCTAssertThrowsError(try env.cpu.run { cpu in try cpu.store(a + pageSize, UInt64(1)) })
        XCTAssertEqual(counters(env.machine, since: before), [1, 0, 0, 0], "refused under the VMA lock")
        env.check()
        env.teardown()
    }

    /// Eight CPU threads fault in two VMAs while another thread mprotects, splits, merges and
    /// unmaps around them; every store lands or faults, and the invariants hold.
    func testFaultsRaceWithVMAChanges() throws {
        let env = try Env(mib: 128, checkEveryOperation: false)
        let pages = 256
        let a = try env.anon(pages)
        let b = try env.anon(pages)
        let stop = AtomicWord(0)
        let stored = AtomicCounter(0)
        let threads = (0..<8).map { i in
            env.process.spawnThread { cpu in
                var rng = SeededRNG(seed: UInt64(i))
                while stop.load() == 0 {
                    let base = i % 2 == 0 ? a : b
                    let addr = base + (rng.next() % UInt64(pages)) * pageSize
                    if (try? cpu.run({ cpu in try cpu.store(addr, UInt64(i)) })) != nil { stored.add(1) }
                }
            }
        }
        for round in 0..<200 {
            let off = UInt64(round % pages) * pageSize
            try env.process.mprotect(a + off, length: pageSize, prot: round % 2 == 0 ? .read : .readWrite)
            try env.process.mprotect(a, length: UInt64(pages) * pageSize, prot: .readWrite)
            if round % 10 == 0 {
                try env.process.munmap(b + off, length: pageSize)
                _ = try env.process.mmap(address: b + off, length: pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
            }
        }
        stop.store(1)
        threads.forEach { $0.join() }
        XCTAssertGreaterThan(stored.load(), 0)
        // Each region holds only what its own threads wrote (even ids in a, odd in b) or zero.
        try env.cpu.run { cpu in
            for p in 0..<pages {
                let x = try cpu.load(a + UInt64(p) * pageSize, as: UInt64.self)
                XCTAssertTrue(x == 0 || (x < 8 && x % 2 == 0), "a page \(p) holds \(x)")
                let y = try cpu.load(b + UInt64(p) * pageSize, as: UInt64.self)
                XCTAssertTrue(y == 0 || (y < 8 && y % 2 == 1), "b page \(p) holds \(y)")
            }
        }
        XCTAssertGreaterThan(env.machine.stats[.vmaLockSuccess], 0)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        env.teardown()
    }
}
