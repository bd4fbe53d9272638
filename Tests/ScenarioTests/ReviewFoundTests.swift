import XCTest
@testable import Scenario
@testable import Conformance
import MMSync

/// What the review of this change found, each pinned.
final class ReviewFoundTests: XCTestCase {
    func testSelftestMessageSplitDoesNotTrap() {
        XCTAssertNil(splitExpectedGot("page 3: int 5 is 3, expected 7"))
        XCTAssertEqual(splitExpectedGot("expected 7, got 3").map { [$0.0, $0.1] }, ["7", "3"])
    }

    func testOutcomeExpectationsOnPagemapAndMigratePagesAreChecked() {
        XCTAssertEqual(runScript("process p\nmmap 1page -> a\npagemap a expect EINVAL\n", file: "p.hmm").0,
                       .failed("p.hmm:3: expected EINVAL, got success"))
        XCTAssertEqual(runScript("process p\nmmap 1page -> a\nmigrate_pages a expect EFAULT\n", file: "p.hmm").0,
                       .failed("p.hmm:3: expected EFAULT, got success"))
        XCTAssertEqual(runScript("process p\nmmap 1page -> a\npagemap a expect ok|EFAULT\npagemap a expect none\n").0, .passed)
    }

    func testAStrayBraceKeepsTheOtherErrors() {
        let (r, _) = runScript("process p\nfrob\n}\nload 0 expect 0 extra=\n", file: "b.hmm")
        XCTAssertEqual(r, .malformed("""
            b.hmm:2:1: expected a command, found unknown word 'frob'
            b.hmm:3:1: unexpected '}' (no block is open)
            b.hmm:4:23: expected a value after 'extra='
            """))
    }

    func testCheckerAndInterpreterAgree() {
        XCTAssertEqual(runScript("print size=4096 and more\nbuffer b 4096\nmachine memory=64MiB\nprocess p\n").0, .passed)
        XCTAssertEqual(runScript("repeat 2 {\n machine\n}\n", file: "m.hmm").0,
                       .malformed("m.hmm:2:2: expected 'machine' once, at the top level, before anything that uses the machine"))
        XCTAssertEqual(runScript("process p\nopen 0 -> d\nmigrate_to_sys d 0 1 -> b\n", file: "m.hmm").0,
                       .malformed("m.hmm:3:25: 'migrate_to_sys' binds no name, found '-> b'"))
        XCTAssertEqual(runScript("process p\ncheck 0 4096 expect segv\n", file: "m.hmm").0,
                       .malformed("m.hmm:2:1: expected a pattern to check against (check ADDR LEN PATTERN, or check ADDR LEN expect PATTERN)"))
        XCTAssertEqual(runScript("machine max_map_count=0\n", file: "m.hmm").0, .malformed("m.hmm:1:23: expected max_map_count between 1 and 16777216"))
        XCTAssertEqual(runScript("process p\nfill 0 300MiB IDX\n", file: "m.hmm").0, .malformed("m.hmm:2:1: expected a length of at most 256MiB"))
        XCTAssertEqual(runScript("process p\nmmap 1page -> a\nptes a 0\n").0, .passed)   // no pages: nothing to walk
    }

    func testTheMachineAndTemporariesCountAgainstTheBudget() {
        var o = ScenarioInterpreter.Options()
        o.memoryBudget = 64 << 20
        o.output = { _ in }
        XCTAssertEqual(ScenarioInterpreter(options: o).run(source: "process p\n", file: "b.hmm"),
                       .failed("b.hmm:1: expected at most 67108864 bytes of host memory for the machine and buffers (--memory-budget), got 536870912"))
        o.memoryBudget = 600 << 20
        XCTAssertEqual(ScenarioInterpreter(options: o).run(source: "process p\nmmap 128MiB -> a\nfill a 100MiB IDX\n", file: "b.hmm"),
                       .failed("b.hmm:3: expected at most 629145600 bytes of host memory for the machine and buffers (--memory-budget), got 641728512"))
        XCTAssertEqual(ScenarioInterpreter(options: o).run(source: "process p\nmmap 128MiB -> a\nrepeat 3 { fill a 64MiB IDX }\n", file: "b.hmm"), .passed)
    }
}
