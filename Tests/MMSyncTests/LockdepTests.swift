import XCTest
@testable import MMSync

/// Lockdep: each kind of report, seeded on purpose, names every acquisition site involved.
final class LockdepTests: LockdepTestCase {
    func sites(_ r: Lockdep.Report) -> [UInt] { r.sites.map(\.line) }

    /// A then B on one thread, B then A on another: the second order is reported with the two
    /// sites of this acquisition and the two that recorded A → B.
    func testABBAInversionAcrossTwoThreads() {
        let a = Lock("lockdep-test-A"), b = Lock("lockdep-test-B")
        var aFirst: UInt = 0, bSecond: UInt = 0, bFirst: UInt = 0, aSecond: UInt = 0
        let t1 = ModelThread.spawn(name: "ab") {
            aFirst = #line; a.lock()
            bSecond = #line; b.lock()
            b.unlock(); a.unlock()
        }
        t1.join()
        XCTAssertTrue(reports.isEmpty, "\(reports)")
        let t2 = ModelThread.spawn(name: "ba") {
            bFirst = #line; b.lock()
            aSecond = #line; a.lock()
            a.unlock(); b.unlock()
        }
        t2.join()
        XCTAssertEqual(reports.count, 1, "\(reports)")
        guard let r = reports.first else { return }
        XCTAssertEqual(r.kind, .orderInversion)
        XCTAssertEqual(sites(r), [bFirst, aSecond, aFirst, bSecond])
        XCTAssertTrue(r.message.contains("mutex lockdep-test-A") && r.message.contains("mutex lockdep-test-B"), r.message)
        XCTAssertTrue(r.sites.allSatisfy { $0.file.hasSuffix("LockdepTests.swift") }, "\(r.sites)")
    }

    /// Each thread caches the orders it has already recorded; forgetting the graph
    /// (`enable`) must empty those caches too: after it, B then A is a fresh order, and A then
    /// B the inversion (a stale cache entry A → B would hide it). The same thread throughout.
    func testForgettingTheGraphEmptiesEachThreadsCache() {
        let a = Lock("lockdep-cache-A"), b = Lock("lockdep-cache-B")
        a.lock(); b.lock(); b.unlock(); a.unlock()
        a.lock(); b.lock(); b.unlock(); a.unlock() // known: from the cache
        XCTAssertTrue(reports.isEmpty, "\(reports)")
        Lockdep.enable()
        b.lock(); a.lock(); a.unlock(); b.unlock()
        XCTAssertTrue(reports.isEmpty, "B → A is new after the graph was forgotten: \(reports)")
        a.lock(); b.lock(); b.unlock(); a.unlock()
        XCTAssertEqual(reports.map(\.kind), [.orderInversion])
    }

    /// Classes compare by their number: two locks of one name are one class, whatever
    /// instance made it; another kind or name is another class.
    func testLockClassesAreInternedByKindAndName() {
        XCTAssertEqual(Lock("lockdep-intern").lockClass, Lock("lockdep-intern").lockClass)
        XCTAssertNotEqual(Lock("lockdep-intern").lockClass, RWSem("lockdep-intern").lockClass)
        XCTAssertNotEqual(Lock("lockdep-intern").lockClass, Lock("lockdep-intern-2").lockClass)
        XCTAssertEqual(Lock("lockdep-intern").lockClass.description, "mutex lockdep-intern")
    }

    /// A → B and B → C known; C then A closes a cycle through B.
    func testTransitiveCycle() {
        let a = Lock("lockdep-cyc-A"), b = Lock("lockdep-cyc-B"), c = Lock("lockdep-cyc-C")
        a.lock(); b.lock(); b.unlock(); a.unlock()
        b.lock(); c.lock(); c.unlock(); b.unlock()
        XCTAssertTrue(reports.isEmpty)
        c.lock(); a.lock(); a.unlock(); c.unlock()
        XCTAssertEqual(reports.map(\.kind), [.orderInversion])
        XCTAssertTrue(reports.first?.message.contains("lockdep-cyc-B") ?? false, "\(reports)")
    }

    /// Read and write acquisitions of an rwsem order like any other.
    func testRWSemOrder() {
        let sem = RWSem("lockdep-sem"), l = Lock("lockdep-after-sem")
        sem.lockRead(); l.lock(); l.unlock(); sem.unlockRead()
        l.lock(); sem.lockWrite(); sem.unlockWrite(); l.unlock()
        XCTAssertEqual(reports.map(\.kind), [.orderInversion])
    }

    func testWaitUnderSpinLock() {
        let word = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { word.deallocate() }
        word.storeBytes(of: UInt64(0), as: UInt64.self)
        let ptl = SpinLockRef(word)
        let takeLine = #line; ptl.lock()
        let waitLine = #line; _ = WaitQueue().wait(timeoutNanoseconds: 1_000) { false }
        ptl.unlock()
        XCTAssertEqual(reports.map(\.kind), [.waitUnderSpinLock])
        XCTAssertEqual(reports.first.map(sites), [UInt(waitLine), UInt(takeLine)])
        // A sleeping lock may be held across a wait.
        reports = []
        let m = Lock("lockdep-sleeping")
        m.lock(); syncSleep(nanoseconds: 1_000); m.unlock()
        XCTAssertTrue(reports.isEmpty, "\(reports)")
    }

    func testUnlockByAThreadThatDoesNotHoldIt() {
        let l = Lock("lockdep-foreign")
        l.lock()
        var line: UInt = 0
        let t = ModelThread.spawn(name: "foreign") { line = #line; l.unlock() }
        t.join()
        XCTAssertEqual(reports.map(\.kind), [.foreignUnlock])
        XCTAssertEqual(reports.first.map(sites), [line])
        l.unlock()   // the owner's own release is fine
        XCTAssertEqual(reports.count, 1)
    }

    func testNestingDeeperThanTheBound() {
        let locks = (0...Lockdep.maxDepth).map { _ in Lock("lockdep-deep") }
        for l in locks { l.lock() }
        for l in locks.reversed() { l.unlock() }
        XCTAssertEqual(reports.map(\.kind), [.tooDeep])
    }

    func testHeldClassesFollowAcquisitions() {
        let a = Lock("lockdep-held-A"), sem = RWSem("lockdep-held-sem")
        a.lock(); sem.lockRead()
        XCTAssertEqual(Lockdep.heldClasses.map(\.description), ["mutex lockdep-held-A", "rwsem lockdep-held-sem"])
        sem.unlockRead(); a.unlock()
        XCTAssertEqual(Lockdep.heldClasses, [])
        XCTAssertTrue(reports.isEmpty)
    }
}
