import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

/// The package root, found from this file's path.
let packageRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // Tests/ScenarioTests/ScenarioTestSupport.swift
    return parts.joined(separator: "/")
}()

func runScript(_ source: String, file: String = "test.hmm", maxSteps: Int = 20_000_000, trace: Bool = false) -> (ScenarioOutcome, [String]) {
    var lines: [String] = []
    let lock = Lock("lines")
    var o = ScenarioInterpreter.Options()
    o.maxSteps = maxSteps
    o.trace = trace
    o.output = { l in lock.withLock { lines.append(l) } }
    return (ScenarioInterpreter(options: o).run(source: source, file: file), lines)
}

enum DispatchTimeLite {
    static func now() -> UInt64 {
        var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

enum FileManagerLite {
    static func write(_ path: String, _ text: String) {
        let f = fopen(path, "wb")!
        fputs(text, f)
        fclose(f)
    }
}

func NSTemporaryDirectoryPath() -> String { "/tmp" }
