import Foundation
import XCTest

/// Campaigns split over processes (issue 13): `hmm explore --shard K/N` runs every N-th seed,
/// and `hmm explore --merge` of the shards' JSON equals one unsharded run.
final class ExplorerShardTests: XCTestCase {
    var root: String { String(#filePath).components(separatedBy: "/Tests/").first! }

    func json(_ r: HMMBinary.Result) throws -> [String: Any] {
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], r.output)
        return try XCTUnwrap((o["files"] as? [[String: Any]])?.first, r.output)
    }

    /// Runs the campaign whole (one shard of one) and as `n` shards in parallel processes,
    /// writes each shard's JSON to a file and merges them.
    func campaign(_ args: [String], shards n: Int, status: Int32) throws -> (whole: [String: Any], merged: [String: Any]) {
        let whole = HMMBinary.run(args + ["--shard", "0/1", "--format", "json", "--quiet"], timeout: 300)
        XCTAssertEqual(whole.status, status, whole.output)
        final class Results: @unchecked Sendable { // written under `lock`
            var value: [HMMBinary.Result?]
            let lock = NSLock()
            init(_ n: Int) { value = Array(repeating: nil, count: n) }
        }
        let results = Results(n)
        DispatchQueue.concurrentPerform(iterations: n) { k in
            let r = HMMBinary.run(args + ["--shard", "\(k)/\(n)", "--format", "json", "--quiet"], timeout: 300)
            results.lock.lock(); results.value[k] = r; results.lock.unlock()
        }
        var paths: [String] = []
        for (k, r) in results.value.enumerated() {
            let r = try XCTUnwrap(r)
            let path = NSTemporaryDirectory() + "explore-shard-\(getpid())-\(k).json"
            try r.output.write(toFile: path, atomically: true, encoding: .utf8)
            paths.append(path)
        }
        defer { paths.forEach { try? FileManager.default.removeItem(atPath: $0) } }
        let merged = HMMBinary.run(["explore", "--merge"] + paths + ["--format", "json"])
        XCTAssertEqual(merged.status, status, merged.output)
        // Text form, and a missing shard is an error naming it.
        let text = HMMBinary.run(["explore", "--merge"] + paths)
        XCTAssertEqual(text.status, status, text.output)
        XCTAssertTrue(text.output.contains("merged from \(n) shards"), text.output)
        let partial = HMMBinary.run(["explore", "--merge"] + paths.dropLast())
        XCTAssertEqual(partial.status, 2, partial.output)
        XCTAssertTrue(partial.output.contains("missing \(n - 1)/\(n)"), partial.output)
        return (try json(whole), try json(merged))
    }

    func testMergedShardsEqualOneUnshardedRun() throws {
        let file = root + "/scenarios/explore/mprotect-without-invalidate.hmm"
        for strategy in ["random", "pct:3"] {
            let (whole, merged) = try campaign(["explore", file, "--strategy", strategy, "--seeds", "0..40"], shards: 3, status: 0)
            for key in ["executions", "steps", "distinct"] {
                XCTAssertEqual(whole[key] as? Int, merged[key] as? Int, "\(strategy) \(key)")
            }
            XCTAssertEqual(whole["executions"] as? Int, 40)
            XCTAssertEqual(whole["result"] as? String, "clean")
            XCTAssertEqual(merged["result"] as? String, "clean")
            XCTAssertEqual(whole["traceHashes"] as? [String], merged["traceHashes"] as? [String], strategy)
            XCTAssertEqual(whole["campaign"] as? String, merged["campaign"] as? String)
        }
    }

    /// A failing campaign: each shard stops at its own first failure; the merge reports the
    /// lowest failing seed, which is the one the unsharded run stops at, with the same schedule.
    func testMergedFailureIsTheUnshardedRunsFirst() throws {
        let file = root + "/scenarios/explore/mirror-without-read-retry.hmm"
        let (whole, merged) = try campaign(["explore", file, "--mutation", "mirror-without-read-retry", "--seeds", "0..100"],
                                           shards: 4, status: 1)
        let w = try XCTUnwrap(whole["failure"] as? [String: Any]), m = try XCTUnwrap(merged["failure"] as? [String: Any])
        XCTAssertEqual(w["seed"] as? Int, m["seed"] as? Int)
        XCTAssertEqual(w["schedule"] as? String, m["schedule"] as? String)
        XCTAssertEqual(w["traceHash"] as? String, m["traceHash"] as? String)
        XCTAssertEqual(merged["result"] as? String, "check")
    }
}
