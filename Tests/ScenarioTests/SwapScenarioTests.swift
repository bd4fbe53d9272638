import XCTest
@testable import MMCore
@testable import Scenario
import MMSync

/// The swap scenarios (`scenarios/swap/`): MADV_PAGEOUT, swap-in by the CPU and by a device,
/// fork sharing slots, and threads racing swap-out against swap-in on the same pages. Each
/// must pass, and the scenario language's swap words must reach the model.
final class SwapScenarioTests: XCTestCase {
    func testSwapScenariosPass() throws {
        let dir = "\(packageRoot)/scenarios/swap"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".hmm") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 2)
        for f in files {
            XCTAssertEqual(ScenarioInterpreter().run(path: "\(dir)/\(f)"), .passed, f)
        }
    }

    /// A wrong expectation about swap fails at its line with what was expected and got.
    func testSwapExpectationsFailWithTheirLine() throws {
        let script = """
            machine memory=16MiB swap=64KiB
            process main
            mmap 2pages -> buf
            fill buf 2pages IDX
            madvise buf 2pages pageout
            meminfo expect swap_total=15 swap_free=13 swap_cached=0
            vmstat expect pswpout=3

            """
        XCTAssertEqual(ScenarioInterpreter().run(source: script, file: "s.hmm"), .failed("s.hmm:7: expected pswpout=3, got pswpout=2"))
    }

    /// `kswapd start|stop` runs and stops the machine's background reclaim thread.
    func testKswapdStartsAndStops() throws {
        let interp = ScenarioInterpreter()
        XCTAssertEqual(interp.run(source: "machine memory=8MiB swap=1MiB\nkswapd start\nprocess main\nkswapd stop\nkswapd\n", file: "k.hmm"), .passed)
        XCTAssertEqual(ScenarioInterpreter().run(source: "machine memory=8MiB\nkswapd start stop\n", file: "k.hmm"),
                       .malformed("k.hmm:2:1: expected start or stop, not both"))
    }

    /// `machine swap=` takes 0 or at least two pages (a header and a slot), a page multiple.
    func testSwapSizeIsChecked() throws {
        for (bad, col) in [("4KiB", 14), ("6KiB", 14), ("32GiB", 14)] {
            XCTAssertEqual(ScenarioInterpreter().run(source: "machine swap=\(bad)\nprocess main\n", file: "m.hmm"),
                           .malformed("m.hmm:1:\(col): expected swap of 0 or between 8KiB and 16GiB, a page multiple"), bad)
        }
        XCTAssertEqual(ScenarioInterpreter().run(source: "machine swap=0\nprocess main\n", file: "m.hmm"), .passed)
    }
}
