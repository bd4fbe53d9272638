import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

final class ScenarioLanguageTests: XCTestCase {
    func testPassingScript() {
        let (r, _) = runScript("""
            let N = 4
            process p
            mmap N*4KiB prot=rw -> a
            fill a a.size IDX+7
            check a a.size IDX+7
            store a+8 u64 0x1234
            load a+8 expect 0x1234
            cmpxchg a+8 0x1234 5 expect 0x1234
            fetch_add a+8 2 expect 5
            load a+8 expect 7
            mprotect a 4KiB r
            store a u8 1 expect segv
            munmap a 1page
            load a u8 expect segv
            munmap a+1 4096 expect EINVAL
            fork p -> c
            check a+1page 3pages IDX+1031 proc=c
            exit c
            invariants
            """)
        XCTAssertEqual(r, .passed)
    }

    func testFailedExpectationNamesFileLineExpectedAndGot() {
        let (r, _) = runScript("process p\nmmap 1page -> a\nload a u32 expect 3\n", file: "x.hmm")
        XCTAssertEqual(r, .failed("x.hmm:3: expected 3, got 0"))
        XCTAssertEqual(r.exitCode, 1)
        let (r2, _) = runScript("process p\nmmap 4page -> a\nopen 0 -> d\nread d a 4 expect ret=0 faults=2\n", file: "y.hmm")
        XCTAssertEqual(r2, .failed("y.hmm:4: expected faults=2, got faults=1"))
        let (r3, _) = runScript("process p\nmunmap 0x1001 4096\n", file: "z.hmm")
        XCTAssertEqual(r3, .failed("z.hmm:2: expected success, got EINVAL"))
    }

    func testMalformedScriptsNameLineColumnAndWhatWasExpected() {
        let cases: [(String, String)] = [
            ("process p\nmmap 4Kb -> a\n", "m.hmm:2:7: expected a unit (B, KiB, MiB, GiB, TiB, page, pages)"),
            ("frobnicate 3\n", "m.hmm:1:1: expected a command, found unknown word 'frobnicate'"),
            ("repeat 3 {\n  print x\n", "m.hmm:3:1: expected '}' to close the block"),
            ("}\n", "m.hmm:1:1: unexpected '}' (no block is open)"),
            ("let = 3\n", "m.hmm:1:5: expected a variable name after 'let'"),
            ("process p\nmmap 99999999999999999999999 -> a\n", "m.hmm:2:6: number out of range or malformed"),
            ("process p\nmmap 1page prot=rwz -> a\n", "m.hmm:2:17: expected a protection (none, r, w, rw, rx, rwx or a number), found 'rwz'"),
            ("process p\nmmap X -> a\n", "m.hmm:2:6: unknown name 'X'"),
            ("print \"open\n", "m.hmm:1:7: expected a closing '\"'"),
            ("process p\nfill 0x1000 1page SOMETHING\n", "m.hmm:2:19: expected a pattern (IDX, IDX+c, NEG, ZERO, FF, INT(n), BYTE(n)), found 'SOMETHING'"),
            ("repeat 20000000 { }\n", "m.hmm:1:8: expected a repeat count of at most 16777216, got 20000000"),
            ("process p\nmmap 1page foo=1 -> a\n", "m.hmm:2:12: expected one of file, fixed, hint, hugetlb, offset, proc, prot for 'mmap', found 'foo='"),
            ("process p\nmmap 1page -> a\nfill a 4KiB IDX index=0xFFFFFFFFFFFFFFFF\n", "m.hmm:3:23: expected an index of at most 2^40"),
            ("process p\nopen 0 -> d\nbuffer b 1page\nsnapshot d 0x1000 0x4000000 buffer=b\n", "m.hmm:4:1: expected at most 1048576 pages for 'snapshot'"),
        ]
        for (src, want) in cases {
            let (r, _) = runScript(src, file: "m.hmm")
            XCTAssertEqual(r, .malformed(want), src)
            XCTAssertEqual(r.exitCode, 2)
        }
    }

    func testConcurrentThreadsAndTrace() {
        let (r, lines) = runScript("""
            process p
            mmap 8pages prot=rw -> a
            concurrent {
              thread { fill a 4pages IDX }
              thread { fill a+4pages 4pages IDX index=4096 }
            }
            check a 8pages IDX
            """, trace: true)
        XCTAssertEqual(r, .passed)
        // Evaluated arguments and the thread (t0: the script, t1… the thread blocks).
        XCTAssertTrue(lines.contains { $0.hasPrefix("test.hmm:7 t0: check 0x") && $0.hasSuffix(" 32768 IDX = ok") }, "\(lines)")
        XCTAssertEqual(Set(lines.filter { $0.contains(": fill 0x") }.map { String($0.split(separator: " ")[1]) }), ["t1:", "t2:"], "\(lines)")
        XCTAssertTrue(lines.contains("test.hmm:3 t0: concurrent (2 threads)"), "\(lines)")
        // The threads' page-table changes are credited to the block, once, after it.
        XCTAssertEqual(lines.filter { $0.contains("cpu pt p:") }, ["    cpu pt p: present 8 (+8), writable 8 (+8), non-present 0 (+0)"], "\(lines)")
    }

    func testReviewFoundInputsAreHandled() {
        // CRLF line endings.
        XCTAssertEqual(runScript("process p\r\nmmap 1page -> a\r\nload a expect 0\r\n").0, .passed)
        // A pattern offset of -2^63 does not overflow.
        XCTAssertEqual(runScript("process p\nmmap 1page -> a\nfill a 4KiB IDX-0x8000000000000000\ncheck a 4KiB IDX-0x8000000000000000\n").0, .passed)
        // mremap to a length that can never fit.
        XCTAssertEqual(runScript("process p\nmmap 1page -> a\nmremap a 1page 0xFFFFFFFFFFFFF000 expect ENOMEM\n").0, .passed)
        // Empty nested loops are bounded by the step budget.
        let (r, _) = runScript("repeat 16777216 {\n repeat 16777216 {\n }\n}\n", file: "n.hmm", maxSteps: 50_000)
        XCTAssertEqual(r, .failed("n.hmm:2: expected the script to finish within 50000 steps, got more"))
        // Too many threads in one block.
        let many = "concurrent {\n" + String(repeating: "thread { }\n", count: 65) + "}\n"
        XCTAssertEqual(runScript(many, file: "t.hmm").0, .malformed("t.hmm:66:1: expected at most 64 threads in one 'concurrent' block"))
        // A bad thread argument is caught before any thread starts.
        XCTAssertEqual(runScript("process p\nconcurrent {\n thread { print hi }\n thread proc=nosuch { }\n}\n", file: "c.hmm").0,
                       .malformed("c.hmm:4:14: expected a process created with 'process' or 'fork', got 'nosuch'"))
        // Two RELEASEs at once leave consistent memory; forking into a taken name is refused.
        let release = ["process p", "mmap 4pages -> a", "fill a 4pages IDX", "open 0 -> d", "migrate_to_dev d a 4 expect cpages=4",
                       "concurrent {", "  thread { release d }", "  thread { release d }", "}", "check a 4pages IDX", "invariants",
                       "fork p -> p"].joined(separator: "\n")
        XCTAssertEqual(runScript(release).0, .malformed("test.hmm:12:11: expected a new process name, 'p' is still running"))
        XCTAssertEqual(runScript("process p\nrepeat 3 {\n fork p -> c\n exit c\n}\n").0, .passed) // names are reusable after exit
    }

    /// Issue 10's defects: each input is reported as what it is, none crashes.
    func testIssue10InputsAreClassifiedAndNothingCrashes() throws {
        // `open` in an exited process: EINVAL, not a trap in Dmirror.deinit.
        XCTAssertEqual(runScript("process p\nexit p\nopen 0 -> fd expect EINVAL\n").0, .passed)
        XCTAssertEqual(runScript("process p\nexit p\nopen 0 -> fd\n", file: "o.hmm").0,
                       .failed("o.hmm:3: expected success, got EINVAL"))
        // A pread that fails while data was expected is a failed expectation, not a malformed script.
        let pread = "process p\nfile f size=4KiB\npread f 0xFFFFFFFFFFFFFFFF 16 expect ZERO\n"
        XCTAssertEqual(runScript(pread, file: "r.hmm").0, .failed("r.hmm:3: expected data matching ZERO, got EINVAL"))
        XCTAssertEqual(runScript("process p\nfile f size=4KiB\npread f 0xFFFFFFFFFFFFFFFF 16 expect EINVAL\n").0, .passed)
        XCTAssertEqual(runScript("process p\nfile f size=4KiB\npread f 0 16 expect EINVAL\n", file: "s.hmm").0,
                       .failed("s.hmm:3: expected EINVAL, got success"))
        XCTAssertEqual(runScript("process p\nfile f size=4KiB\npread f 0 16 expect ok\n").0, .passed)
        // A directory is not a script.
        let dir = NSTemporaryDirectory()
        guard case .malformed(let m) = ScenarioInterpreter().run(path: dir) else { return XCTFail("a directory ran") }
        XCTAssertTrue(m.hasSuffix("is a directory"), m)
    }

    func testSkipAndInclude() throws {
        let dir = NSTemporaryDirectoryPath()
        let inc = dir + "/inc-\(getpid()).hmm"
        FileManagerLite.write(inc, "let K = 3\nprocess p\n")
        defer { unlink(inc) }
        let (r, _) = runScript("include \"\(inc)\"\nmmap K*4KiB -> a\nload a+2pages u8 expect 0\nskip not modelled\nload 0 expect 1\n")
        XCTAssertEqual(r, .skipped("not modelled"))
    }
}
