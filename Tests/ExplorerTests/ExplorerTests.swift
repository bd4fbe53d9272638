import XCTest
import Explorer
import MMSync

/// A box the model threads of one execution share (the explorer runs them one at a time, and
/// the tests' own data changes only at the steps they choose).
final class Shared<T>: @unchecked Sendable {
    var value: T
    init(_ v: T) { value = v }
}

/// The explorer core (issue 13): scheduling, strategies, replay, deadlock and bound checks.
final class ExplorerTests: XCTestCase {
    /// Step checks (`Sync.addStepCheck`) run at every scheduling decision when the run asks
    /// for them and never otherwise; the first problem one returns fails the execution at that
    /// decision, and a replay of its schedule fails at the same one.
    func testStepChecksRunAtEveryDecisionAndFailAtTheirStep() throws {
        let calls = Shared(0)
        func body(failAt: Int) -> () throws -> Void {
            return {
                calls.value = 0
                Sync.addStepCheck {
                    calls.value += 1
                    return calls.value == failAt ? ["problem at call \(calls.value)"] : []
                }
                let l = Lock("L")
                let ts = (0..<2).map { i in ModelThread.spawn(name: "t\(i)") { for _ in 0..<5 { l.lock(); l.unlock() } } }
                ts.forEach { $0.join() }
            }
        }
        let off = Explorer.run(strategy: .random, seed: 3, body(failAt: 1))
        XCTAssertNil(off.failure)
        XCTAssertEqual(calls.value, 0, "a run without checkEveryStep runs no step check")

        let on = Explorer.run(strategy: .random, seed: 3, checkEveryStep: true, body(failAt: .max))
        XCTAssertNil(on.failure)
        XCTAssertEqual(calls.value, on.schedule.count, "one check per decision")
        XCTAssertEqual(on.traceHash, off.traceHash, "checks that find nothing do not change the execution")

        let failing = Explorer.run(strategy: .random, seed: 3, checkEveryStep: true, body(failAt: 7))
        let failure = try XCTUnwrap(failing.failure)
        XCTAssertEqual(failure.kind, .check)
        XCTAssertTrue(failure.message.hasPrefix("after step \(failing.steps), broken at a step: problem at call 7\n"), failure.message)
        XCTAssertEqual(failing.schedule.count, 6, "the seventh decision failed before it chose")
        let replay = Explorer.run(strategy: .replay(failing.schedule), seed: 0, checkEveryStep: true, body(failAt: 7))
        XCTAssertEqual(replay.failure?.message.split(separator: "\n").first, failure.message.split(separator: "\n").first)
        XCTAssertEqual(replay.steps, failing.steps)
        XCTAssertEqual(replay.traceHash, failing.traceHash)
    }

    /// A schedule names a thread with a byte: the 257th thread of one execution fails it as
    /// unsupported (the tool reports it; the model does not crash), the campaign stops there,
    /// and the next execution runs clean (the failed one's threads are parked, so
    /// `Explorer.run` could uninstall its hooks).
    func testMoreThreadsThanAScheduleCanNameIsUnsupported() throws {
        let report = Explorer.explore(strategy: .random, seeds: 0..<2) {
            for round in 0..<300 {
                ModelThread.spawn(name: "r\(round)") { Sync.yieldPoint() }.join()
            }
        }
        let failure = try XCTUnwrap(report.failure?.failure)
        XCTAssertEqual(failure.kind, .unsupported)
        XCTAssertEqual(report.executions, 1)
        XCTAssertTrue(failure.message.hasPrefix("a 257th thread (r255): the explorer runs at most 256 threads in one execution"), failure.message)
        let next = Explorer.run(strategy: .random, seed: 0) { ModelThread.spawn(name: "after") { Sync.yieldPoint() }.join() }
        XCTAssertNil(next.failure, "the next execution runs clean")
    }

    /// Two threads take two locks in opposite orders. The random walk finds the deadlock; the
    /// report names both threads blocked acquiring a lock, and replaying its schedule gives the
    /// same failure with the same trace.
    func testABBADeadlockIsFoundAndReplays() throws {
        let body = {
            let a = Lock("A"), b = Lock("B")
            let t1 = ModelThread.spawn(name: "ab") { a.lock(); b.lock(); b.unlock(); a.unlock() }
            let t2 = ModelThread.spawn(name: "ba") { b.lock(); a.lock(); a.unlock(); b.unlock() }
            t1.join(); t2.join()
        }
        // Lockdep off: the explorer must find the deadlock itself.
        let lockdepWasOn = Lockdep.enabled
        Lockdep.disable()
        defer { if lockdepWasOn { Lockdep.enable() } else { Lockdep.disable() } }
        let report = Explorer.explore(strategy: .random, seeds: 0..<500, body)
        let failed = try XCTUnwrap(report.failure, "no deadlock in \(report.executions) executions")
        let failure = try XCTUnwrap(failed.failure)
        XCTAssertEqual(failure.kind, .deadlock)
        XCTAssertTrue(failure.message.contains("thread 1 ab: blocked on lockAcquire"), failure.message)
        XCTAssertTrue(failure.message.contains("thread 2 ba: blocked on lockAcquire"), failure.message)
        XCTAssertTrue(failure.message.contains("thread 0 main: blocked on wait"), failure.message)

        let replay = Explorer.run(strategy: .replay(failed.schedule), seed: 0, body)
        XCTAssertEqual(replay.failure?.kind, .deadlock)
        XCTAssertEqual(replay.traceHash, failed.traceHash)
        XCTAssertEqual(replay.steps, failed.steps)
        XCTAssertEqual(replay.schedule, failed.schedule)

        // Lockdep on: its report of the inversion fails the first execution that takes both
        // orders, deadlocked or not, naming both acquisition sites.
        Lockdep.enable()
        let withLockdep = Explorer.explore(strategy: .random, seeds: 0..<500, body)
        let found = try XCTUnwrap(withLockdep.failure?.failure)
        XCTAssertEqual(found.kind, .check)
        XCTAssertTrue(found.message.hasPrefix("lockdep: orderInversion: mutex"), found.message)
        XCTAssertLessThanOrEqual(withLockdep.executions, report.executions)
    }

    /// A deadlock report names the owner of the lock a thread waits for, and (lockdep on) the
    /// locks each thread holds with where it took them.
    func testDeadlockReportNamesLockOwners() throws {
        let lockdepWasOn = Lockdep.enabled
        Lockdep.enable()
        defer { if lockdepWasOn { Lockdep.enable() } else { Lockdep.disable() } }
        let body = {
            let a = Lock("A"), never = WaitQueue()
            let t1 = ModelThread.spawn(name: "waiter") { a.lock(); never.wait { false }; a.unlock() }
            let t2 = ModelThread.spawn(name: "taker") { a.lock(); a.unlock() }
            t1.join(); t2.join()
        }
        var found: ExplorationFailure?
        for seed: UInt64 in 0..<40 {
            let e = Explorer.run(strategy: .random, seed: seed, body)
            XCTAssertEqual(e.failure?.kind, .deadlock, "seed \(seed)")
            if let f = e.failure, f.message.contains("taker: blocked on lockAcquire") { found = f; break }
        }
        let f = try XCTUnwrap(found, "no schedule where the taker waits for the waiter's lock")
        XCTAssertTrue(f.message.contains("held by thread 1 waiter: mutex A (taken at ExplorerTests/ExplorerTests.swift:"), f.message)
        XCTAssertTrue(f.message.contains("    holds: mutex A (taken at ExplorerTests/ExplorerTests.swift:"), f.message)
        XCTAssertTrue(f.message.contains("thread 1 waiter: blocked on wait"), f.message)
        // The taker has the lock it waits for on lockdep's stack, but does not hold it.
        let lines = f.message.split(separator: "\n").map(String.init)
        let taker = try XCTUnwrap(lines.firstIndex { $0.contains("thread 2 taker:") })
        XCTAssertFalse(lines[taker + 1].contains("holds:"), f.message)
    }

    /// Taking the locks in one order never deadlocks: every schedule of 300 random and 100 PCT
    /// executions finishes, with both threads' critical sections counted.
    func testOrderedLocksRunCleanUnderEveryStrategy() {
        for strategy in [Strategy.random, .pct(depth: 2), .pct(depth: 3)] {
            let count = Shared(0)
            let report = Explorer.explore(strategy: strategy, seeds: 0..<(strategy == .random ? 300 : 100)) {
                let a = Lock("A"), b = Lock("B")
                let ts = (0..<3).map { i in
                    ModelThread.spawn(name: "t\(i)") { a.lock(); b.lock(); count.value += 1; b.unlock(); a.unlock() }
                }
                ts.forEach { $0.join() }
            }
            XCTAssertNil(report.failure, "\(strategy): \(report.failure?.failure?.description ?? "")")
            // (PCT measures its execution length with one round-robin execution first.)
            XCTAssertEqual(count.value, 3 * (report.executions + (report.pctSteps > 0 ? 1 : 0)), "\(strategy)")
            XCTAssertGreaterThan(report.distinctExecutions, 10, "\(strategy) explored too few interleavings")
        }
    }

    /// A lost update: two threads read a counter, reach a synchronization point, then write it
    /// back plus one. The explorer finds the interleaving where one update is lost, and the
    /// same seed gives the same execution every time.
    func testLostUpdateIsFoundAndSeedsAreDeterministic() throws {
        struct Lost: Error, CustomStringConvertible { let got: Int; var description: String { "expected 2, got \(got)" } }
        let body = {
            let n = Shared(0)
            let ts = (0..<2).map { i in
                ModelThread.spawn(name: "inc\(i)") { let v = n.value; Sync.yieldPoint(); n.value = v + 1 }
            }
            ts.forEach { $0.join() }
            if n.value != 2 { throw Lost(got: n.value) }
        }
        let report = Explorer.explore(strategy: .random, seeds: 0..<200, body)
        let failed = try XCTUnwrap(report.failure)
        XCTAssertEqual(failed.failure?.kind, .check)
        XCTAssertEqual(failed.failure?.message, "expected 2, got 1")

        for seed: UInt64 in [1, 7, 42] {
            let a = Explorer.run(strategy: .random, seed: seed, body)
            let b = Explorer.run(strategy: .random, seed: seed, body)
            XCTAssertEqual(a.traceHash, b.traceHash, "seed \(seed)")
            XCTAssertEqual(a.schedule, b.schedule, "seed \(seed)")
            XCTAssertEqual(a.failure?.message, b.failure?.message, "seed \(seed)")
        }
        let hashes = Set((0..<40).map { Explorer.run(strategy: .random, seed: UInt64($0), body).traceHash })
        XCTAssertGreaterThan(hashes.count, 2, "different seeds should give different executions")
    }

    /// Under PCT a seed's execution does not depend on the seeds run before it in the campaign
    /// (the change points are spread over a length measured once, by a round-robin run).
    func testPCTSeedGivesTheSameExecutionInAnyCampaign() {
        let body = {
            let a = Lock("A")
            let ts = (0..<3).map { i in ModelThread.spawn(name: "t\(i)") { for _ in 0..<3 { a.lock(); Sync.yieldPoint(); a.unlock() } } }
            ts.forEach { $0.join() }
        }
        var inRange: [UInt64: UInt64] = [:]
        var seed: UInt64 = 0
        let whole = Explorer.explore(strategy: .pct(depth: 3), seeds: 0..<12, progress: { r in
            if let e = r.last { inRange[seed] = e.traceHash }
            seed += 1
        }, body)
        XCTAssertNil(whole.failure)
        XCTAssertGreaterThan(whole.pctSteps, 10)
        for s: UInt64 in [0, 5, 11] {
            let alone = Explorer.explore(strategy: .pct(depth: 3), seeds: s..<(s + 1), body)
            XCTAssertEqual(alone.pctSteps, whole.pctSteps)
            XCTAssertEqual(alone.last?.traceHash, inRange[s], "seed \(s)")
        }
        XCTAssertGreaterThan(Set(inRange.values).count, 2)
    }

    /// After a failed execution nothing of it runs any more: the hooks are uninstalled and a
    /// new execution runs normally.
    func testAnExecutionAfterAFailureRunsNormally() {
        let bad = Explorer.run(strategy: .random, seed: 1, maxSteps: 500) {
            let flag = AtomicCounter(0)
            let t = ModelThread.spawn(name: "spinner") { while flag.load() == 0 { flag.store(0) } }
            t.join()
        }
        XCTAssertEqual(bad.failure?.kind, .livelock)
        XCTAssertNil(Sync.scheduler)
        let count = Shared(0)
        let good = Explorer.run(strategy: .random, seed: 2) {
            let a = Lock("A")
            let ts = (0..<2).map { i in ModelThread.spawn(name: "t\(i)") { a.lock(); count.value += 1; a.unlock() } }
            ts.forEach { $0.join() }
        }
        XCTAssertNil(good.failure)
        XCTAssertEqual(count.value, 2)
        XCTAssertEqual(good.threads, 3)
    }

    /// A thread that keeps taking steps without the program ending passes the step bound.
    func testStepBoundReportsALivelock() throws {
        let e = Explorer.run(strategy: .random, seed: 3, maxSteps: 2_000) {
            let flag = AtomicCounter(0)
            let t = ModelThread.spawn(name: "spinner") { while flag.load() == 0 { flag.store(0) } }
            t.join()
        }
        let f = try XCTUnwrap(e.failure)
        XCTAssertEqual(f.kind, .livelock)
        XCTAssertEqual(e.steps, 2_000)
        XCTAssertTrue(f.message.contains("thread 1 spinner: runnable"), f.message)
    }

    /// A body that returns while a thread it started is still running is reported.
    func testThreadsLeftRunningAreReported() throws {
        let e = Explorer.run(strategy: .random, seed: 0) {
            let never = Completion()
            _ = ModelThread.spawn(name: "waiter") { never.wait() }
        }
        let f = try XCTUnwrap(e.failure)
        XCTAssertEqual(f.kind, .threadsLeftRunning, f.message)
        XCTAssertTrue(f.message.contains("thread 1 waiter: blocked on wait"), f.message)
    }

    /// A timed wait times out only when nothing else can run, the same way in every replay.
    func testTimedWaitTimesOutWhenNothingElseCanRun() {
        let got = Shared<[Bool]>([])
        let e = Explorer.run(strategy: .random, seed: 5) {
            let c = Completion()
            got.value.append(c.wait(timeoutNanoseconds: 1_000_000_000))
            let t = ModelThread.spawn(name: "completer") { c.complete() }
            got.value.append(c.wait(timeoutNanoseconds: 1))
            t.join()
        }
        XCTAssertNil(e.failure)
        XCTAssertEqual(got.value, [false, true])
    }

    /// A replay whose schedule names a thread that cannot run says where it diverged.
    func testReplayDivergenceIsReported() throws {
        let e = Explorer.run(strategy: .replay(Schedule([0, 0, 5])), seed: 0) {
            let t = ModelThread.spawn(name: "t") { Sync.yieldPoint() }
            t.join()
        }
        let f = try XCTUnwrap(e.failure)
        XCTAssertEqual(f.kind, .diverged)
        XCTAssertTrue(f.message.contains("at choice 2 (after step 2): runnable threads [1]"), f.message)
    }

    /// The printed schedule reads back to the same schedule; malformed text is refused.
    func testScheduleRoundTrip() {
        let s = Schedule([0, 0, 0, 1, 2, 2, 0])
        XCTAssertEqual(s.description, "0x3.1.2x2.0")
        XCTAssertEqual(Schedule(parsing: s.description), s)
        XCTAssertEqual(Schedule(parsing: ""), Schedule())
        for bad in ["x", "0x", "0x0", "1.", "a", "0x-1", "300"] { XCTAssertNil(Schedule(parsing: bad), bad) }
        XCTAssertEqual(Strategy(parsing: "pct:2"), .pct(depth: 2))
        XCTAssertEqual(Strategy(parsing: "random"), .random)
        XCTAssertNil(Strategy(parsing: "pct:0"))
        XCTAssertNil(Strategy(parsing: "dfs:x"))
    }
}
