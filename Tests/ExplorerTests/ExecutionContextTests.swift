import XCTest
import Explorer
import MMSync

/// A counter whose property keeps Swift's dynamic exclusivity checks.
final class CheckedCounter: @unchecked Sendable {
    var n = 0
}

/// Adds one to `x` after `during` ran: an access to `x` that lasts across whatever `during` does.
func increment(_ x: inout Int, after during: () -> Void) {
    during()
    x += 1
}

/// The explorer's model threads are execution contexts on one OS thread (the carrier): what a
/// thread takes to be its own must still be its own (issue 13).
final class ExecutionContextTests: XCTestCase {
    /// Each model thread has its own `currentThreadID()` (lock owners), and its own lockdep
    /// stack: while thread A holds `L` across a switch, thread B does not hold it by either
    /// account. The carrier's identity is its OS thread's, before and after.
    func testEachModelThreadHasItsOwnIdentityLockOwnershipAndLockdepStack() throws {
        let carrierID = currentThreadID()
        let ids = Shared([UInt64](repeating: 0, count: 2))
        let aLocked = Shared(false), bChecked = Shared(false)
        let bSaw = Shared<(held: Bool, classes: Int)>((true, -1))
        let aSaw = Shared<(held: Bool, classes: Int, sameID: Bool)>((false, -1, false))
        for strategy in [Strategy.roundRobin, .random, .pct(depth: 2)] {
            aLocked.value = false; bChecked.value = false
            let e = Explorer.run(strategy: strategy, seed: 5) {
                let l = Lock("ctx-L")
                let a = ModelThread.spawn(name: "a") {
                    l.lock()
                    ids.value[0] = currentThreadID()
                    aLocked.value = true
                    while !bChecked.value { Sync.yieldPoint() }
                    aSaw.value = (l.isHeldByCurrentThread, Lockdep.heldClasses.count, ids.value[0] == currentThreadID())
                    l.unlock()
                }
                let b = ModelThread.spawn(name: "b") {
                    while !aLocked.value { Sync.yieldPoint() }
                    ids.value[1] = currentThreadID()
                    bSaw.value = (l.isHeldByCurrentThread, Lockdep.heldClasses.count)
                    bChecked.value = true
                }
                a.join(); b.join()
            }
            XCTAssertNil(e.failure, "\(strategy)")
            XCTAssertNotEqual(ids.value[0], 0)
            XCTAssertNotEqual(ids.value[1], 0)
            XCTAssertNotEqual(ids.value[0], ids.value[1], "two model threads, two identities")
            XCTAssertFalse([ids.value[0], ids.value[1]].contains(carrierID), "a model thread is not the carrier")
            XCTAssertFalse(bSaw.value.held, "B does not own A's lock")
            XCTAssertTrue(aSaw.value.held, "A still owns it after the switches")
            XCTAssertTrue(aSaw.value.sameID, "A's identity survives its switches")
            if Lockdep.enabled {
                XCTAssertEqual(bSaw.value.classes, 0, "B's lockdep stack is its own: empty")
                XCTAssertEqual(aSaw.value.classes, 1, "A's holds L")
            }
        }
        XCTAssertEqual(currentThreadID(), carrierID, "the test's thread is itself again")
        XCTAssertTrue(Lockdep.heldClasses.isEmpty)
    }

    /// Swift's exclusivity accesses follow the context: thread A's modification of a property,
    /// begun before a switch and ended after it, is not seen by thread B, which reads the
    /// property meanwhile (on one OS thread without the swap, the runtime would trap on
    /// "simultaneous accesses"). Both see the values in their order.
    func testAnAccessLastingAcrossASwitchBelongsToItsThreadOnly() throws {
        let counter = CheckedCounter()
        let started = Shared(false), read = Shared(false)
        let seen = Shared(-1)
        let e = Explorer.run(strategy: .roundRobin, seed: 0) {
            let a = ModelThread.spawn(name: "a") {
                increment(&counter.n) {
                    started.value = true
                    while !read.value { Sync.yieldPoint() }
                }
            }
            let b = ModelThread.spawn(name: "b") {
                while !started.value { Sync.yieldPoint() }
                seen.value = counter.n
                read.value = true
            }
            a.join(); b.join()
        }
        XCTAssertNil(e.failure)
        XCTAssertEqual(seen.value, 0, "B read before A's increment ended")
        XCTAssertEqual(counter.n, 1)
    }

    /// Many executions, each with many threads, run on reused stacks: 200 executions of 20
    /// threads all finish, and the identities of one execution's live threads are distinct.
    func testContextsAreReusedAcrossExecutions() throws {
        let report = Explorer.explore(strategy: .random, seeds: 0..<200) {
            let ids = Shared(Set<UInt64>())
            let l = Lock("reuse")
            let ts = (0..<20).map { i in
                ModelThread.spawn(name: "t\(i)") {
                    l.lock()
                    ids.value.insert(currentThreadID())
                    l.unlock()
                    Sync.yieldPoint()
                }
            }
            ts.forEach { $0.join() }
            if ids.value.count != 20 { throw IdentityCount(distinct: ids.value.count) }
        }
        XCTAssertNil(report.failure?.failure)
        XCTAssertEqual(report.executions, 200)
    }
}

struct IdentityCount: Error { let distinct: Int }
