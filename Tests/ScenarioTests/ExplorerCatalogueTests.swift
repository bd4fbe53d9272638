import Foundation
import XCTest

/// The explorer's catalogue of re-introduced bugs (issue 13, docs/explorer.md), end to end
/// through `hmm explore`: with its mutation on, each scenario fails within its budget, the
/// printed replay command reproduces the failure in a new process; with the mutation off, the
/// same seeds run clean.
final class ExplorerCatalogueTests: XCTestCase {
    struct Entry {
        let name: String, strategy: String, seeds: String
        var lockdep = false
        /// What the failure report says.
        let finding: String
        var status: Int32 = 1
        var kind = "check"
        var extra: [String] = []
        /// More the report must say (each thread's state, the entries it changed).
        var details: [String] = []
        var file: String { "scenarios/explore/\(name).hmm" }
    }
    static let catalogue = [
        Entry(name: "mirror-without-read-retry", strategy: "random", seeds: "0..400", finding: "expected every invariant to hold, got: dmirror0 entry"),
        Entry(name: "mprotect-without-invalidate", strategy: "random", seeds: "0..50", finding: "WRITE but the CPU mapping is read-only"),
        Entry(name: "notifier-under-ptl", strategy: "random", seeds: "0..50", lockdep: true, finding: "lockdep: waitUnderSpinLock"),
        Entry(name: "driver-lock-in-migrate-to-ram", strategy: "random", seeds: "0..50", lockdep: true, finding: "lockdep: orderInversion"),
        Entry(name: "fork-exclusive-without-wrprotect", strategy: "random", seeds: "0..50", finding: "expected IDX"),
        Entry(name: "migrate-collect-without-tlb-flush", strategy: "random", seeds: "0..50", finding: "stale TLB entry"),
        Entry(name: "device-private-fault-reference-first", strategy: "random", seeds: "0..50", finding: "faulted 301 times (a retry loop past --retry-bound 300)",
              status: 3, kind: "livelock", extra: ["--retry-bound", "300"]),
        // The model crashes on these (as the kernel would oops): the report is the runtime's
        // message or the failed check before the crash, and a replay command with the seed.
        Entry(name: "migrate-without-anon-vma-reference", strategy: "pct:2", seeds: "0..50",
              finding: "Attempted to read an unowned reference but object", status: 4, kind: "crash"),
        Entry(name: "exclusive-restore-without-recheck", strategy: "random", seeds: "0..50",
              finding: "maps free frame", status: 4, kind: "crash"),
        Entry(name: "migrate-skips-device-exclusive", strategy: "random", seeds: "0..50",
              finding: "offlining retried the migration of pfn", status: 3, kind: "livelock"),
        // With the step invariants checked at every decision, the page freed while mapped is
        // a failed check at the step it happens, before the teardown crashes.
        Entry(name: "exclusive-restore-without-recheck", strategy: "random", seeds: "0..50",
              finding: "broken at a step: mm 1: 0x7efffffff000 maps free frame", extra: ["--check-every-step"],
              details: ["changed: mm 1 pte 0x7efffffff000 = pfn 20 rw D"]),
    ]

    var root: String { String(#filePath).components(separatedBy: "/Tests/").first! }

    func testEveryEntryIsFoundAndReplaysAndIsCleanWithoutItsMutation() throws {
        for e in Self.catalogue {
            let file = root + "/" + e.file
            let flags = ["--strategy", e.strategy, "--seeds", e.seeds, "--quiet"] + (e.lockdep ? ["--lockdep"] : []) + e.extra
            let found = HMMBinary.run(["explore", file, "--mutation", e.name] + flags)
            XCTAssertEqual(found.status, e.status, "\(e.name): \(found.output)")
            XCTAssertTrue(found.output.contains(e.finding), "\(e.name): \(found.output)")
            for d in e.details { XCTAssertTrue(found.output.contains(d), "\(e.name): \(d) in \(found.output)") }
            let crashed = e.kind == "crash"
            if !crashed { XCTAssertTrue(found.output.contains(": \(e.kind) at seed "), "\(e.name): \(found.output)") }
            let prefix = crashed ? "hmm explore: the model crashed; replay with: hmm " : "replay: hmm "
            let replayLine = try XCTUnwrap(found.output.split(separator: "\n").first { $0.hasPrefix(prefix + "explore ") }, found.output)
            let args = replayLine.dropFirst(prefix.count).split(separator: " ").map(String.init)
            XCTAssertEqual(Array(args.prefix(4)), ["explore", file, "--mutation", e.name], String(replayLine))
            let replay = HMMBinary.run(args + ["--quiet"])
            XCTAssertEqual(replay.status, e.status, "\(e.name) replay: \(replay.output)")
            if !crashed { XCTAssertTrue(replay.output.contains(": \(e.kind) on replay after "), "\(e.name) replay: \(replay.output)") }
            XCTAssertTrue(replay.output.contains(e.finding), "\(e.name) replay: \(replay.output)")
            for d in e.details { XCTAssertTrue(replay.output.contains(d), "\(e.name) replay: \(d) in \(replay.output)") }

            let clean = HMMBinary.run(["explore", file] + flags)
            XCTAssertEqual(clean.status, 0, "\(e.file) without its mutation: \(clean.output)")
            XCTAssertTrue(clean.output.contains("nothing found in"), clean.output)
        }
    }

    /// The selftest scripts with `concurrent` blocks run clean under the explorer (a small
    /// budget here; docs/explorer.md has the campaign of 500 random and 200 PCT executions).
    func testSelftestConcurrentScenariosRunCleanUnderTheExplorer() throws {
        for variant in ["hmm_device_private", "hmm_device_coherent"] {
            let file = root + "/scenarios/selftests/\(variant).anon_teardown.hmm"
            for (strategy, seeds) in [("random", "0..3"), ("pct:3", "0..2")] {
                let r = HMMBinary.run(["explore", file, "--strategy", strategy, "--seeds", seeds, "--quiet"], timeout: 300)
                XCTAssertEqual(r.status, 0, "\(variant) \(strategy): \(r.output)")
                XCTAssertTrue(r.output.contains("nothing found in \(seeds == "0..3" ? 3 : 2) executions"), r.output)
            }
        }
    }

    /// The depth-first search with one preemption finds the lost invalidation and, without the
    /// mutation, explores every schedule of the scenario within the bound (469 executions on
    /// this model) and finds nothing; its failure replays like any other.
    func testDepthFirstSearchFindsTheMirrorRaceAndExhaustsTheCleanScenario() throws {
        let file = root + "/scenarios/explore/mirror-without-read-retry.hmm"
        let flags = ["--strategy", "dfs:1", "--seeds", "0..100000", "--quiet"]
        let found = HMMBinary.run(["explore", file, "--mutation", "mirror-without-read-retry"] + flags)
        XCTAssertEqual(found.status, 1, found.output)
        XCTAssertTrue(found.output.contains(": check in execution "), found.output)
        XCTAssertTrue(found.output.contains("of the search (dfs:1)"), found.output)
        let replayLine = try XCTUnwrap(found.output.split(separator: "\n").first { $0.hasPrefix("replay: hmm explore ") }, found.output)
        let replay = HMMBinary.run(replayLine.dropFirst("replay: hmm ".count).split(separator: " ").map(String.init) + ["--quiet"])
        XCTAssertEqual(replay.status, 1, replay.output)
        XCTAssertTrue(replay.output.contains("dmirror0 entry"), replay.output)

        let clean = HMMBinary.run(["explore", file] + flags)
        XCTAssertEqual(clean.status, 0, clean.output)
        XCTAssertTrue(clean.output.contains("every schedule within the bound"), clean.output)
    }

    /// The same seed gives the same execution in two processes (the trace hash of the JSON
    /// report), and different seeds give different ones.
    func testTheSameSeedGivesTheSameTraceInTwoProcesses() throws {
        let file = root + "/scenarios/explore/device-private-fault-2threads.hmm"
        func hash(_ seed: String) throws -> String {
            let r = HMMBinary.run(["explore", file, "--seeds", seed, "--format", "json", "--quiet"])
            XCTAssertEqual(r.status, 0, r.output)
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], r.output)
            let f = try XCTUnwrap((o["files"] as? [[String: Any]])?.first)
            XCTAssertEqual(f["result"] as? String, "clean")
            return try XCTUnwrap(f["lastTraceHash"] as? String)
        }
        let a = try hash("7"), b = try hash("7"), c = try hash("8")
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
    }

    /// Bad options and malformed scripts get their own exit status, before anything runs.
    func testUsageErrorsAndMalformedScripts() throws {
        let file = root + "/scenarios/explore/mirror-without-read-retry.hmm"
        for bad in [["--strategy", "dfs:17"], ["--strategy", "dfs:1:all"], ["--seeds", "5..5"], ["--seeds", "18446744073709551615"], ["--seeds", "1....3"],
                    ["--mutation", "no-such-bug"], ["--replay", "0x"], ["--time", "-1s"], ["--retry-bound", "100000"]] {
            let r = HMMBinary.run(["explore", file] + bad)
            XCTAssertEqual(r.status, 64, "\(bad): \(r.output)")
        }
        let path = NSTemporaryDirectory() + "explore-malformed-\(getpid()).hmm"
        try "process main\nmmap 4pages prot=rw ->\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = HMMBinary.run(["explore", path, "--quiet"])
        XCTAssertEqual(r.status, 2, r.output)
        XCTAssertTrue(r.output.contains(":2:"), r.output)
    }
}
