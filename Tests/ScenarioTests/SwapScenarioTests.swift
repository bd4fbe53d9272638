import XCTest
@testable import MMCore
@testable import Scenario
import MMSync

/// The swap scenarios (`scenarios/swap/`): MADV_PAGEOUT, swap-in by the CPU and by a device,
/// fork sharing slots, and threads racing swap-out against swap-in on the same pages. Each
/// must pass, and the scenario language's swap words must reach the model.
final class SwapScenarioTests: XCTestCase {
    func testSwapScenariosPass() throws { try runEveryScenario(in: "swap", atLeast: 2) }

    /// Runs every `.hmm` file of `scenarios/NAME` (at least `atLeast` of them): each must pass.
    private func runEveryScenario(in name: String, atLeast: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = "\(packageRoot)/scenarios/\(name)"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".hmm") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, atLeast, file: file, line: line)
        for f in files {
            XCTAssertEqual(ScenarioInterpreter().run(path: "\(dir)/\(f)"), .passed, f, file: file, line: line)
        }
    }

    /// The swap-file scenarios (`scenarios/swapfile/`, outside the kernel oracle's set: its VM
    /// has no disk to put a swap file on) pass.
    func testSwapFileScenariosPass() throws { try runEveryScenario(in: "swapfile", atLeast: 2) }

    /// `machine swap_file=0|1` and `page_cluster=0…31` are checked before the run (`hmm
    /// check`) and when evaluated; `swap_file=1` makes a non-synchronous area and
    /// `page_cluster` sets `vm.page-cluster`: with 0, the same reads take a major fault each.
    func testSwapFileAndPageClusterKeys() throws {
        for (line, message) in [("machine swap=1MiB swap_file=2", "m.hmm:1:29: expected swap_file=0 or 1"),
                                ("machine swap=1MiB page_cluster=32", "m.hmm:1:32: expected page_cluster between 0 and 31")] {
            XCTAssertEqual(ScenarioInterpreter().run(source: line + "\nprocess main\n", file: "m.hmm"), .malformed(message), line)
        }
        let script = """
            machine memory=16MiB swap=1MiB swap_file=1 page_cluster=0
            process main
            mmap 8pages -> buf
            fill buf buf.size IDX
            madvise buf buf.size pageout
            check buf buf.size IDX
            vmstat expect pswpin=8 pgmajfault=8 swap_ra=0
            meminfo expect swap_free=247 swap_cached=8
            munmap buf buf.size
            meminfo expect swap_free=255 swap_cached=0

            """
        XCTAssertEqual(ScenarioInterpreter().run(source: script, file: "s.hmm"), .passed)
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
