import XCTest
@testable import Explorer
import MMSync

/// Bounded depth-first search with sleep sets (issue 13, strategy `dfs:P`).
final class DepthFirstSearchTests: XCTestCase {
    struct Lost: Error, CustomStringConvertible { let got: Int; var description: String { "expected 2, got \(got)" } }

    /// Two threads read a counter, reach a point, and write it back plus one.
    static let lostUpdate: @Sendable () throws -> Void = {
        let n = Shared(0)
        let ts = (0..<2).map { i in
            ModelThread.spawn(name: "inc\(i)") { let v = n.value; Sync.yieldPoint(); n.value = v + 1 }
        }
        ts.forEach { $0.join() }
        if n.value != 2 { throw Lost(got: n.value) }
    }

    /// Without preemptions a thread runs until it blocks or exits, so the lost update cannot
    /// happen: the search exhausts its space clean. With one preemption (at the read's point)
    /// it is found, deterministically at the same execution, and its schedule replays.
    func testPreemptionBoundDecidesWhetherTheLostUpdateIsFound() throws {
        let clean = Explorer.explore(strategy: .dfs(preemptions: 0, reduction: true), seeds: 0..<10_000, Self.lostUpdate)
        XCTAssertNil(clean.failure, clean.failure?.failure?.description ?? "")
        XCTAssertTrue(clean.exhausted)
        XCTAssertGreaterThan(clean.executions, 1, "the free switches (a thread blocks or exits) have alternatives")

        let found = Explorer.explore(strategy: .dfs(preemptions: 1, reduction: true), seeds: 0..<10_000, Self.lostUpdate)
        let failed = try XCTUnwrap(found.failure)
        XCTAssertEqual(failed.failure?.message, "expected 2, got 1")
        XCTAssertFalse(found.exhausted)
        let again = Explorer.explore(strategy: .dfs(preemptions: 1, reduction: true), seeds: 0..<10_000, Self.lostUpdate)
        XCTAssertEqual(again.executions, found.executions)
        XCTAssertEqual(again.failure?.traceHash, failed.traceHash)

        let replay = Explorer.run(strategy: .replay(failed.schedule), seed: 0, Self.lostUpdate)
        XCTAssertEqual(replay.failure?.message, "expected 2, got 1")
        XCTAssertEqual(replay.traceHash, failed.traceHash)
    }

    /// Three threads each append their id to a shared list under one lock, with work under a
    /// lock of their own around it. Every order of the appends is a different outcome (3! = 6):
    /// the search finds all six with and without the reduction, and the sleep sets skip
    /// interleavings that only reorder the private work (974 executions without, 758 with, at
    /// one preemption; 22,576 and 13,258 at two).
    func testSleepSetsKeepEveryOutcomeWithFewerExecutions() {
        func campaign(reduction: Bool) -> (outcomes: Set<[Int]>, report: ExplorationReport) {
            let outcomes = Shared(Set<[Int]>())
            let report = Explorer.explore(strategy: .dfs(preemptions: 1, reduction: reduction), seeds: 0..<100_000) {
                let shared = Lock("shared")
                let list = Shared([Int]())
                let ts = (0..<3).map { i in
                    ModelThread.spawn(name: "t\(i)") {
                        let own = Lock("own")
                        own.lock(); own.unlock()
                        shared.lock(); list.value.append(i); shared.unlock()
                        own.lock(); own.unlock()
                    }
                }
                ts.forEach { $0.join() }
                outcomes.value.insert(list.value)
            }
            return (outcomes.value, report)
        }
        let full = campaign(reduction: false), reduced = campaign(reduction: true)
        XCTAssertNil(full.report.failure); XCTAssertNil(reduced.report.failure)
        XCTAssertTrue(full.report.exhausted); XCTAssertTrue(reduced.report.exhausted)
        XCTAssertEqual(full.outcomes.count, 6)
        XCTAssertEqual(reduced.outcomes, full.outcomes)
        XCTAssertEqual(full.report.distinctExecutions, full.report.executions, "the search never repeats a schedule")
        XCTAssertEqual(full.report.executions, 974)
        XCTAssertEqual(reduced.report.executions, 758, "sleep sets skip the reorderings of the private work")
    }

    /// A step's footprint: the lock taken at its first point, the lock released before its
    /// last, both for a blocked try; atomics, seqcounts, waits and thread start/exit touch
    /// everything (they order plain reads made without a point), so such steps never commute.
    func testFootprintsOfSteps() {
        let p = UnsafeRawPointer(bitPattern: 0x1000)!
        typealias D = DepthFirstSearch
        XCTAssertEqual(D.contribution(.lockAcquire, p, blocked: false, start: true), 0x1000)
        XCTAssertNil(D.contribution(.lockAcquire, p, blocked: false, start: false))
        XCTAssertEqual(D.contribution(.lockAcquire, p, blocked: true, start: false), 0x1000)
        XCTAssertEqual(D.contribution(.lockRelease, p, blocked: false, start: false), 0x1000)
        XCTAssertNil(D.contribution(.lockRelease, p, blocked: false, start: true))
        XCTAssertEqual(D.contribution(.rwsemRead, nil, blocked: false, start: true), 0)
        for kind in [SyncPointKind.atomic, .seqRead, .seqWrite, .wait, .wake, .threadStart, .threadExit, .yield, .spin] {
            XCTAssertEqual(D.contribution(kind, p, blocked: false, start: true), 0, "\(kind)")
            XCTAssertEqual(D.contribution(kind, p, blocked: false, start: false), 0, "\(kind)")
        }
        XCTAssertTrue(D.independent([1, 2], [3]))
        XCTAssertTrue(D.independent([], [1]))
        XCTAssertFalse(D.independent([], [0]), "a step without locks may read what an atomic step writes")
        XCTAssertFalse(D.independent([1, 2], [2]))
        XCTAssertFalse(D.independent([1], [0]))
    }

    func testStrategyParsing() {
        XCTAssertEqual(Strategy(parsing: "dfs"), .dfs(preemptions: 2, reduction: false))
        XCTAssertEqual(Strategy(parsing: "dfs:0"), .dfs(preemptions: 0, reduction: false))
        XCTAssertEqual(Strategy(parsing: "dfs:3:sleep"), .dfs(preemptions: 3, reduction: true))
        XCTAssertEqual(Strategy(parsing: "dfs:3:sleep")?.description, "dfs:3:sleep")
        XCTAssertEqual(Strategy(parsing: "dfs:3")?.description, "dfs:3")
        for bad in ["dfs:", "dfs:-1", "dfs:17", "dfs:2:all", "dfs:2:full", "dfs:2:sleep:x", "dfs2"] {
            XCTAssertNil(Strategy(parsing: bad), bad)
        }
    }
}
