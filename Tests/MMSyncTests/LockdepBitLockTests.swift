import XCTest
@testable import MMSync

/// Bit locks (the page lock) and seqcount writer sections (issue 11.1).
final class LockdepBitLockTests: LockdepTestCase {
    /// A page lock taken under a mutex in one place, and the mutex under a page lock in
    /// another: an AB-BA inversion between a bit lock and a mutex, with both sites.
    func testBitLockOrderInversionNamesBothSites() {
        let word = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { word.deallocate() }
        word.storeBytes(of: 0, as: UInt64.self)
        let w = AtomicU64Ref(word)
        let cls = Lockdep.LockClass(.bitlock, "test_bit")
        let m = Lock("test-bit-mutex")
        m.lock(); BitLock.lock(w, bit: 1, class: cls, line: 1001); BitLock.unlock(w, bit: 1, class: cls); m.unlock()
        let t = ModelThread.spawn(name: "other") {
            BitLock.lock(w, bit: 1, class: cls, line: 1002); m.lock(line: 1003); m.unlock(); BitLock.unlock(w, bit: 1, class: cls)
        }
        t.join()
        let inv = reports.filter { $0.kind == .orderInversion }
        XCTAssertEqual(inv.count, 1)
        XCTAssertTrue(inv.first?.sites.contains { $0.line == 1001 } ?? false, "\(inv)")
        XCTAssertTrue(inv.first?.sites.contains { $0.line == 1002 } ?? false, "\(inv)")
        XCTAssertTrue(inv.first?.sites.contains { $0.line == 1003 } ?? false, "\(inv)")
    }

    /// A page lock folded into its class's entry is still held (`holds`); taking a held page
    /// lock again is recursive locking, reported with both sites.
    func testFoldedBitLockIsHeldAndRetakingItIsReported() {
        let words = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
        defer { words.deallocate() }
        words.storeBytes(of: 0, as: UInt64.self); words.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
        let a = AtomicU64Ref(words), b = AtomicU64Ref(words + 8)
        let cls = Lockdep.LockClass(.bitlock, "test_fold")
        BitLock.lock(a, bit: 1, class: cls, line: 2001)
        BitLock.lock(b, bit: 1, class: cls, line: 2002)   // folded into a's entry
        XCTAssertTrue(Lockdep.holds(UnsafeRawPointer(words + 8)))
        XCTAssertEqual(Lockdep.heldClasses, [cls])
        // Another class's bit in the same word is another lock, not a recursion.
        BitLock.lock(b, bit: 2, class: Lockdep.LockClass(.bitlock, "test_fold_other"))
        BitLock.unlock(b, bit: 2, class: Lockdep.LockClass(.bitlock, "test_fold_other"))
        XCTAssertEqual(reports.map(\.kind), [])
        // Retaking a: its bit is set, so only lockdep's hook runs (the lock itself would spin
        // on its own bit); then release what the hook recorded.
        Lockdep.acquire(cls, UnsafeRawPointer(words), Lockdep.Site(#fileID, 2003))
        Lockdep.release(cls, UnsafeRawPointer(words), Lockdep.Site(#fileID, 2003))
        XCTAssertEqual(reports.map(\.kind), [.recursiveLocking])
        XCTAssertEqual(reports.first?.sites.map(\.line), [2003, 2001])
        BitLock.unlock(b, bit: 1, class: cls); BitLock.unlock(a, bit: 1, class: cls)
        XCTAssertFalse(Lockdep.holds(UnsafeRawPointer(words + 8)))
        XCTAssertEqual(Lockdep.heldClasses, [])
    }

    /// An rwsem read taken twice by one thread is reported (a writer queued in between would
    /// block the second read); a trylock is not.
    func testRecursiveReadIsReported() {
        let sem = RWSem("lockdep-recursive-read")
        sem.lockRead(line: 3001)
        XCTAssertTrue(sem.tryLockRead())
        sem.unlockRead()
        XCTAssertEqual(reports.map(\.kind), [])
        sem.lockRead(line: 3002)
        sem.unlockRead(); sem.unlockRead()
        XCTAssertEqual(reports.map(\.kind), [.recursiveLocking])
        XCTAssertEqual(reports.first?.sites.map(\.line), [3002, 3001])
    }

    /// Hundreds of page locks held at once (a migration batch) are one entry: no depth report,
    /// and releasing them in any order leaves nothing held.
    func testManyBitLocksOfOneClassAreOneEntry() {
        let words = UnsafeMutableRawPointer.allocate(byteCount: 8 * 600, alignment: 8)
        defer { words.deallocate() }
        for i in 0..<600 { words.storeBytes(of: 0, toByteOffset: 8 * i, as: UInt64.self) }
        let cls = Lockdep.LockClass(.bitlock, "test_bits")
        for i in 0..<600 { BitLock.lock(AtomicU64Ref(words + 8 * i), bit: 1, class: cls) }
        XCTAssertEqual(Lockdep.heldClasses, [cls])
        for i in stride(from: 0, to: 600, by: 2) { BitLock.unlock(AtomicU64Ref(words + 8 * i), bit: 1, class: cls) }
        for i in stride(from: 599, to: 0, by: -2) { BitLock.unlock(AtomicU64Ref(words + 8 * i), bit: 1, class: cls) }
        XCTAssertEqual(Lockdep.heldClasses, [])
        XCTAssertEqual(reports.map(\.kind), [])
    }

    /// A seqcount writer section is held like a lock; a reader that waits while holding a lock
    /// the writer section takes is an inversion.
    func testSeqCountReaderUnderALockTheWriterTakesIsAnInversion() {
        let sc = SeqCount("test_seq")
        let m = Lock("test-seq-mutex")
        sc.writeBegin(line: 2001); m.lock(line: 2002); m.unlock(); sc.writeEnd()
        XCTAssertEqual(Lockdep.heldClasses, [])
        m.lock(line: 2003)
        _ = sc.readBegin(line: 2004)
        m.unlock()
        let inv = reports.filter { $0.kind == .orderInversion }
        XCTAssertEqual(inv.count, 1, "\(reports)")
        XCTAssertTrue(inv.first?.sites.contains { $0.line == 2004 } ?? false, "\(inv)")
        XCTAssertTrue(inv.first?.sites.contains { $0.line == 2002 } ?? false, "\(inv)")
    }
}
