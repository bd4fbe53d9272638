import XCTest
@testable import Scenario
@testable import Conformance
import MMSync

/// Issue 10: wall-clock and host-memory bounds, each an error at its line.
final class ScenarioBoundsTests: XCTestCase {
    func testTimeoutStopsALongScriptAtItsLine() {
        var o = ScenarioInterpreter.Options()
        o.timeoutSeconds = 0.5
        o.output = { _ in }
        let t0 = DispatchTimeLite.now()
        let r = ScenarioInterpreter(options: o).run(source: "process p\nrepeat 16777216 {\n  sleep 1000000\n}\n", file: "t.hmm")
        XCTAssertEqual(r, .failed("t.hmm:3: expected the script to finish within 0.5 s (--timeout), got more"))
        XCTAssertLessThan(DispatchTimeLite.now() - t0, 3_000_000_000)
        // Threads are bounded too.
        let r2 = ScenarioInterpreter(options: o).run(source: "process p\nmmap 1page -> a\nconcurrent {\n thread { repeat 16777216 { load a expect 0 } }\n}\n", file: "c.hmm")
        XCTAssertEqual(r2, .failed("c.hmm:4: expected the script to finish within 0.5 s (--timeout), got more"))
    }

    func testHostMemoryBudgetCoversBuffersAndTheMachine() {
        var o = ScenarioInterpreter.Options()
        o.memoryBudget = 1 << 30
        o.output = { _ in }
        let src = "process p\n" + (0..<3).map { "buffer b\($0) 256MiB" }.joined(separator: "\n") + "\n"
        XCTAssertEqual(ScenarioInterpreter(options: o).run(source: src, file: "m.hmm"),
                       .failed("m.hmm:4: expected at most 1073741824 bytes of host memory for the machine and buffers (--memory-budget), got 1342177280"))
        // Replacing a buffer frees the old one.
        XCTAssertEqual(ScenarioInterpreter(options: o).run(source: "repeat 8 { buffer b 256MiB }\n", file: "m.hmm"), .passed)
        XCTAssertEqual(ScenarioInterpreter(options: o).run(source: "machine memory=2GiB\n", file: "m.hmm"),
                       .failed("m.hmm:1: expected at most 1073741824 bytes of host memory for the machine and buffers (--memory-budget), got 2147483648"))
        // Sixteen 256 MiB buffers no longer take 4 GiB under the default budget.
        let sixteen = (0..<16).map { "buffer b\($0) 256MiB" }.joined(separator: "\n")
        guard case .failed(let m) = runScript(sixteen, file: "s.hmm").0 else { return XCTFail("sixteen buffers ran") }
        XCTAssertTrue(m.hasPrefix("s.hmm:15: expected at most 4294967296 bytes"), m)
    }
}
