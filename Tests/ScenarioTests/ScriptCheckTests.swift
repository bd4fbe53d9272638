import XCTest
@testable import Scenario
@testable import Conformance
import MMSync

/// Issue 10: the whole script is checked before anything runs, every error at once.
final class ScriptCheckTests: XCTestCase {
    func testEveryErrorIsReportedAtOnceWithLineAndColumn() {
        let src = """
            process p
            mmap 4pages -> a
            frob 3
            fill a 4pages IDXX
            repeat 0 {
              load a+unknown expect 0
              close nodev
            }
            mmap 1page foo=1 -> b
            load b shared
            exit c
            munmap a 1page expect ok|EINVAL|BOGUS
            read a a 1 expect cpages=1
            sleep 2000000000
            repeat 20000000 { }
            store a 1 expect 5
            """
        let (r, lines) = runScript(src, file: "e.hmm")
        XCTAssertEqual(r, .malformed("""
            e.hmm:3:1: expected a command, found unknown word 'frob'
            e.hmm:4:15: expected a pattern (IDX, IDX+c, NEG, ZERO, FF, INT(n), BYTE(n)), found 'IDXX'
            e.hmm:6:10: unknown name 'unknown'
            e.hmm:7:9: expected a device opened with 'open', got 'nodev'
            e.hmm:9:12: expected one of file, fixed, hint, hugetlb, offset, proc, prot for 'mmap', found 'foo='
            e.hmm:10:8: unexpected flag 'shared' for 'load'
            e.hmm:11:6: expected a process created with 'process' or 'fork', got 'c'
            e.hmm:12:23: expected 'ok' or an errno name (alternatives separated by '|'), found 'ok|EINVAL|BOGUS'
            e.hmm:13:6: expected a device opened with 'open', got 'a'
            e.hmm:14:1: expected a sleep of at most 1 s (1000000000 ns)
            e.hmm:15:8: expected a repeat count of at most 16777216, got 20000000
            e.hmm:16:18: expected ok, segv, bus or oom (alternatives separated by '|'), found '5'
            """))
        XCTAssertEqual(lines, [], "nothing ran")
    }

    /// A syntax error in line 200 is found before the 199 lines before it run.
    func testLateErrorStopsTheScriptBeforeItStarts() {
        let src = "process p\nprint started\n" + String(repeating: "mmap 1page -> a\n", count: 197) + "mmap 1page prot=rwz -> a\n"
        let (r, lines) = runScript(src, file: "late.hmm")
        XCTAssertEqual(r, .malformed("late.hmm:200:17: expected a protection (none, r, w, rw, rx, rwx or a number), found 'rwz'"))
        XCTAssertEqual(lines, [])
    }

    func testLexicalAndBlockErrorsAreAllFound() {
        let src = "process p\nprint \"open\nlet x = 1\nload 0 u8 expect \u{00E9}\nrepeat 2 {\n  frob\n}\nfrob2\n"
        let (r, _) = runScript(src, file: "l.hmm")
        XCTAssertEqual(r, .malformed("""
            l.hmm:2:7: expected a closing '"'
            l.hmm:4:18: expected printable ASCII, found U+E9
            l.hmm:6:3: expected a command, found unknown word 'frob'
            l.hmm:8:1: expected a command, found unknown word 'frob2'
            """))
    }

    func testIncludedFilesAreCheckedToo() throws {
        let inc = "/tmp/inc-check-\(getpid()).hmm"
        FileManagerLite.write(inc, "process q\nfrob\n")
        defer { unlink(inc) }
        let (r, _) = runScript("include \"\(inc)\"\nload 0 expect 0\nbad_cmd\n", file: "i.hmm")
        XCTAssertEqual(r, .malformed("\(inc):2:1: expected a command, found unknown word 'frob'\ni.hmm:3:1: expected a command, found unknown word 'bad_cmd'"))
    }

    func testCheckAPIReportsWithoutRunning() {
        let path = "/tmp/check-api-\(getpid()).hmm"
        FileManagerLite.write(path, "process p\nmmap 1page -> a\nload a expect ZERO\nmunmap a\n")
        defer { unlink(path) }
        let errors = ScenarioInterpreter().check(path: path)
        XCTAssertEqual(errors.map(\.description), [
            "\(path):3:15: unknown name 'ZERO'",
            "\(path):4:8: expected a length as argument 2 of 'munmap'",
        ])
        FileManagerLite.write(path, "process p\nmmap 1page -> a\nload a expect 0\n")
        XCTAssertEqual(ScenarioInterpreter().check(path: path).count, 0)
    }

    /// Names are declared in the order of the text; a process must exist before commands act in one.
    func testNamesAndProcessesMustBeDeclaredFirst() {
        XCTAssertEqual(runScript("mmap 1page -> a\n", file: "n.hmm").0,
                       .malformed("n.hmm:1:1: expected a process: create one with 'process NAME' first"))
        XCTAssertEqual(runScript("process p\nload a expect 0\nmmap 1page -> a\n", file: "n.hmm").0,
                       .malformed("n.hmm:2:6: unknown name 'a'"))
        XCTAssertEqual(runScript("process p\nput g\n", file: "n.hmm").0,
                       .malformed("n.hmm:2:5: expected pages bound by 'gup', got 'g'"))
        XCTAssertEqual(runScript("process p\nopen 0\n", file: "n.hmm").0,
                       .malformed("n.hmm:2:1: expected '-> NAME' after 'open'"))
        XCTAssertEqual(runScript("process p\nmunmap 0 1page -> x\n", file: "n.hmm").0,
                       .malformed("n.hmm:2:19: 'munmap' binds no name, found '-> x'"))
        XCTAssertEqual(runScript("process p\ninvariants expect ok\n", file: "n.hmm").0,
                       .malformed("n.hmm:2:19: 'invariants' takes no expectation, found 'expect ok'"))
    }

    /// Every command the interpreter dispatches is in the table the checker reads, and back.
    func testCommandTableCoversTheInterpreter() {
        let documented = try! String(contentsOfFile: "\(packageRoot)/docs/scenario-language.md", encoding: .utf8)
        for name in CommandSpec.table.keys.sorted() {
            XCTAssertTrue(documented.contains("`\(name)"), "\(name) is not in docs/scenario-language.md")
            // Each runs (or fails at run time for its own reasons), never 'unknown word'.
            let (r, _) = runScript("process p\n\(name)\n", file: "c.hmm")
            if case .malformed(let m) = r { XCTAssertFalse(m.contains("unknown word"), m) }
        }
    }
}
