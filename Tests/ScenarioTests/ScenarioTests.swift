import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

/// The package root, found from this file's path.
let packageRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // Tests/ScenarioTests/ScenarioTests.swift
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
            ("process p\nmmap 1page foo=1 -> a\n", "m.hmm:2:12: expected one of file, fixed, hint, offset, proc, prot for 'mmap', found 'foo='"),
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

/// Every kernel selftest exists as a scenario, and the scenario and the Swift suite agree.
final class SelftestScenarioTests: XCTestCase {
    func testScenariosAgreeWithTheSwiftSuite() throws {
        var agreed = 0
        for variant in Variant.allCases {
            for t in SelftestSuite.all {
                let path = "\(packageRoot)/scenarios/selftests/\(variant.rawValue).\(t.name).hmm"
                let scenario = ScenarioInterpreter().run(path: path)
                let swift: ScenarioOutcome = t.needs != nil ? .skipped("needs huge pages (\(t.needs!))") : (t.run(variant).map { .failed($0.description) } ?? .passed)
                XCTAssertEqual(scenario, swift, "\(variant.rawValue).\(t.name)")
                if scenario == swift { agreed += 1 }
            }
        }
        XCTAssertEqual(agreed, 2 * SelftestSuite.all.count)
    }
}

/// Mutated scripts never trap or hang: each run ends with exit status 0, 1 or 2.
final class ScenarioFuzzTests: XCTestCase {
    static let seeds = [
        "process p\nmmap 4pages prot=rw -> a\nfill a 4pages IDX\nopen 0 -> d\nread d a 4 expect ret=0 cpages=4 faults=1 mirror=IDX\nmigrate_to_dev d a 4\ncheck a 2pages IDX\nsnapshot d a 4 expect bytes=0x02*2,0x22*2\n",
        "process p\nmmap 2pages prot=rw shared -> s\nfork p -> c\nstore s 5 proc=c\nload s expect 5\nexit c\nmremap s 2pages 4pages maymove -> t\nload t+3pages expect bus\n",
        "let N = 3\nprocess p\nfile f size=N*4KiB\npwrite f 0 N*4KiB NEG\nmmap N*4KiB prot=r shared file=f -> m\ncheck m N*4KiB NEG\nrepeat N as i {\n  load m+i*4KiB+4 u32 expect 4294967295-1024*i\n}\nconcurrent {\n  thread { check m 4KiB NEG }\n}\n",
        "process p\nmmap 4pages prot=rw -> a\nopen 2 -> d\nexclusive d a 4 expect ret=0\ncheck_exclusive d a 4 expect ret=-EPERM\nstore a u32 1\ngup a 2 write pin longterm -> g\nunpin g\nmadvise a 4pages dontneed\npagemap a 4 expect none\nrelease d\n",
    ]

    static func mutate(_ s: String, _ rng: inout SplitMix) -> String {
        var b = Array(s.utf8)
        let words = ["repeat 99999999 {", "}", "{", "0xFFFFFFFFFFFFFFFF", "18446744073709551616", "-1", "4TiB", "expect", "->", "=", "\"", "#", "IDX+", "concurrent {", "thread {", "\u{0}", "\u{FF}", "fill", "mmap", "munmap", "1page", "*", "/0", "("]
        for _ in 0..<Int(rng.next() % 2 + 1) {
            guard !b.isEmpty else { break }
            let i = Int(rng.next() % UInt64(b.count))
            switch rng.next() % 6 {
            case 0: b.remove(at: i)                                                // delete a byte
            case 1: b[i] = UInt8(truncatingIfNeeded: rng.next())                   // random byte (binary)
            case 2: b = Array(b[..<i])                                             // truncate
            case 3: b.insert(contentsOf: Array(words[Int(rng.next() % UInt64(words.count))].utf8) + [0x20], at: i)
            case 4: let j = Int(rng.next() % UInt64(b.count)); b.swapAt(i, j)      // swap two bytes
            default: b.insert(contentsOf: b[i..<min(b.count, i + 40)], at: i)     // duplicate a run
            }
        }
        return String(decoding: b, as: UTF8.self)
    }

    func testMutatedScriptsNeverTrapOrHang() {
        var rng = SplitMix(seed: 2024)
        var outcomes = [0, 0, 0]
        for n in 0..<600 {
            let seed = ScenarioFuzzTests.seeds[n % ScenarioFuzzTests.seeds.count]
            let src = ScenarioFuzzTests.mutate(seed, &rng)
            let t0 = DispatchTimeLite.now()
            let (r, _) = runScript(src, file: "fuzz\(n).hmm", maxSteps: 50_000)
            outcomes[Int(r.exitCode)] += 1
            XCTAssertLessThan(DispatchTimeLite.now() - t0, 30_000_000_000, "mutant \(n) ran for over 30 s:\n\(src)")
        }
        print("fuzz outcomes: \(outcomes[0]) passed, \(outcomes[1]) failed expectations, \(outcomes[2]) malformed")
        XCTAssertGreaterThan(outcomes[2], 100)
        XCTAssertGreaterThan(outcomes[1] + outcomes[0], 20) // some mutants still run to the end
    }
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

/// The race scenarios (`scenarios/races/`): several CPU threads on the same device-private
/// pages. Each must pass; before the device-private fault took the page lock before its
/// reference (issue 9.0), the 4- and 8-thread ones livelocked and the process died.
final class RaceScenarioTests: XCTestCase {
    func testRaceScenariosPass() throws {
        let dir = "\(packageRoot)/scenarios/races"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".hmm") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 4)
        for f in files {
            XCTAssertEqual(ScenarioInterpreter().run(path: "\(dir)/\(f)"), .passed, f)
        }
    }
}
