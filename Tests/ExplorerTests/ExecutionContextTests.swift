import XCTest
import Synchronization
import Explorer
@testable import MMSync

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
        let lockdepWasOn = Lockdep.enabled
        Lockdep.enable()
        defer { if lockdepWasOn { Lockdep.enable() } else { Lockdep.disable() } }
        let carrierID = currentThreadID()
        let ids = Shared([UInt64](repeating: 0, count: 2))
        let aLocked = Shared(false), bChecked = Shared(false)
        let bSaw = Shared<(held: Bool, classes: Int)>((true, -1))
        let aSaw = Shared<(held: Bool, classes: Int, sameID: Bool)>((false, -1, false))
        for strategy in [Strategy.roundRobin, .random, .pct(depth: 2)] {
            aLocked.value = false; bChecked.value = false
            ids.value = [0, 0]; bSaw.value = (true, -1); aSaw.value = (false, -1, false)
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
            XCTAssertEqual(bSaw.value.classes, 0, "B's lockdep stack is its own: empty")
            XCTAssertEqual(aSaw.value.classes, 1, "A's holds L")
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

    /// Many executions, each with many threads: 200 executions of 20 threads all finish, and
    /// the identities of one execution's threads are distinct.
    func testTwentyThreadsHaveTwentyIdentitiesInEveryExecution() throws {
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

    /// A finished thread's stack goes back to the pool; a thread a failed execution left
    /// waiting keeps its stack for good. Three threads (the body and two more) each time: a
    /// clean execution takes three stacks and gives three back, a deadlocked one (AB-BA, the
    /// body waiting in a join) gives none back.
    func testFinishedThreadsGiveTheirStacksBackAndWaitingOnesKeepThem() throws {
        let lockdepWasOn = Lockdep.enabled
        Lockdep.disable() // the explorer, not lockdep, must end the deadlocked execution
        defer { if lockdepWasOn { Lockdep.enable() } else { Lockdep.disable() } }
        func body(deadlock: Bool) -> () throws -> Void {
            return {
                let a = Lock("pool-A"), b = Lock("pool-B")
                let bothHeld = Shared(0)
                let t1 = ModelThread.spawn(name: "ab") {
                    a.lock()
                    bothHeld.value += 1
                    while deadlock && bothHeld.value < 2 { Sync.yieldPoint() }
                    b.lock(); b.unlock(); a.unlock()
                }
                let t2 = ModelThread.spawn(name: "ba") {
                    if deadlock { b.lock() } else { a.lock() }
                    bothHeld.value += 1
                    while deadlock && bothHeld.value < 2 { Sync.yieldPoint() }
                    if deadlock { a.lock(); a.unlock(); b.unlock() } else { a.unlock() }
                }
                t1.join(); t2.join()
            }
        }
        XCTAssertNil(Explorer.run(strategy: .roundRobin, seed: 0, body(deadlock: false)).failure)
        let kept = ExecutionContext.Pool.count
        XCTAssertGreaterThanOrEqual(kept, 3)
        XCTAssertNil(Explorer.run(strategy: .random, seed: 1, body(deadlock: false)).failure)
        XCTAssertEqual(ExecutionContext.Pool.count, kept, "three stacks taken, three given back")
        let failed = Explorer.run(strategy: .roundRobin, seed: 0, body(deadlock: true))
        XCTAssertEqual(failed.failure?.kind, .deadlock)
        XCTAssertEqual(ExecutionContext.Pool.count, kept - 3, "the three waiting threads keep theirs")
        XCTAssertNil(Explorer.run(strategy: .roundRobin, seed: 0, body(deadlock: false)).failure)
        // It takes three stacks from the pool (making new ones for what is missing) and gives
        // three back: the pool is where the deadlock left it, or three if that was empty.
        XCTAssertEqual(ExecutionContext.Pool.count, max(kept - 3, 3), "the next clean execution gives back what it took")
    }

    /// A thread left waiting in the middle of an access (a deadlock inside `increment`) takes
    /// the access with it: the test's own thread then reads and writes the property, and the
    /// next execution uses it, without a trap.
    func testAnAccessLeftOpenByAFailedExecutionStaysWithItsThread() throws {
        let lockdepWasOn = Lockdep.enabled
        Lockdep.disable()
        defer { if lockdepWasOn { Lockdep.enable() } else { Lockdep.disable() } }
        let counter = CheckedCounter()
        let failed = Explorer.run(strategy: .roundRobin, seed: 0) {
            let never = Completion()
            let t = ModelThread.spawn(name: "stuck") {
                increment(&counter.n) { never.wait() }
            }
            t.join()
        }
        XCTAssertEqual(failed.failure?.kind, .deadlock)
        XCTAssertEqual(counter.n, 0)
        counter.n = 5
        let again = Explorer.run(strategy: .roundRobin, seed: 0) {
            ModelThread.spawn(name: "next") { increment(&counter.n) {} }.join()
        }
        XCTAssertNil(again.failure)
        XCTAssertEqual(counter.n, 6)
    }

    /// An OS thread that is not the carrier keeps its own identity while an exploration runs.
    func testAnotherOSThreadKeepsItsIdentityDuringAnExploration() throws {
        let started = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        let stop = Atomic<Bool>(false)
        let outside = Shared(Set<UInt64>())
        let t = Thread {
            var seen = Set<UInt64>()
            started.signal()
            while !stop.load(ordering: .acquiring) { seen.insert(currentThreadID()) }
            outside.value = seen
            done.signal()
        }
        t.start()
        started.wait()
        let ids = Shared(Set<UInt64>())
        let e = Explorer.run(strategy: .random, seed: 2) {
            let ts = (0..<2).map { _ in ModelThread.spawn(name: "w") { for _ in 0..<2000 { ids.value.insert(currentThreadID()); Sync.yieldPoint() } } }
            ts.forEach { $0.join() }
        }
        stop.store(true, ordering: .releasing)
        done.wait()
        XCTAssertNil(e.failure)
        XCTAssertEqual(outside.value.count, 1, "one OS thread, one identity")
        XCTAssertTrue(ids.value.isDisjoint(with: outside.value))
        XCTAssertEqual(ids.value.count, 2)
    }

    /// The explorer's schedules are pinned: a fixed program and seed give this schedule and
    /// trace hash (a change to how threads are scheduled shows here first).
    func testAFixedProgramAndSeedGiveAFixedSchedule() throws {
        let e = Explorer.run(strategy: .random, seed: 11) {
            let l = Lock("golden")
            let ts = (0..<3).map { i in ModelThread.spawn(name: "g\(i)") { for _ in 0..<3 { l.lock(); l.unlock() } } }
            ts.forEach { $0.join() }
        }
        XCTAssertNil(e.failure)
        XCTAssertEqual(e.steps, 35)
        XCTAssertEqual(e.schedule.description, "1x3.0.2.1.0.2x3.0.2x3.1.2x2.3x3.1x2.0.3.1x2.0.3x4.0.3.0")
        XCTAssertEqual(String(e.traceHash, radix: 16), "6fa4e320fcbf852e")
    }
}

struct IdentityCount: Error { let distinct: Int }
