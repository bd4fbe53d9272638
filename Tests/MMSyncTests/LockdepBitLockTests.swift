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
