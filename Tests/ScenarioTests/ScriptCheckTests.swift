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
            e.hmm:9:12: expected one of file, fixed, hint, offset, proc, prot for 'mmap', found 'foo='
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

/// Issue 10: what can now be said — alternatives, proc= on device commands, indexed names.
final class ScenarioExpressivenessTests: XCTestCase {
    func testAlternativesForSystemCallsAndAccesses() {
        let (r, _) = runScript("""
            process p
            mmap 2pages -> a
            munmap a 1page expect ok|EINVAL
            munmap a+1 1page expect ok|EINVAL
            load a expect 0|segv
            load a+1page expect 0|segv
            store a 1 expect ok|segv
            check a 1page ZERO expect ok|segv
            fill a+1page 1page IDX expect ok|segv
            load a+1page u32 expect 7|0
            """)
        XCTAssertEqual(r, .passed)
        let (f, _) = runScript("process p\nmmap 1page -> a\nmunmap a+1 1page expect ok|ENOMEM\n", file: "alt.hmm")
        XCTAssertEqual(f, .failed("alt.hmm:3: expected ok|ENOMEM, got EINVAL"))
        let (g, _) = runScript("process p\nmmap 1page -> a\nmunmap a 1page\nload a expect 0|bus\n", file: "alt.hmm")
        XCTAssertEqual(g, .failed("alt.hmm:4: expected 0|bus, got SIGSEGV at 0x\(String(0x7f0000000000 - 4096, radix: 16))"))
    }

    /// 200 children alive at once, each named from the loop index, each with its own data.
    func testNamesIndexedByALoopVariable() {
        let (r, _) = runScript("""
            process main
            mmap 1page -> buf
            repeat 200 as i {
              fork main -> child[i]
              store buf i*3 proc=child[i]
              mmap 1page hint=0x10000000 proc=child[i] -> own[i]
              store own[i] i+1 proc=child[i]
            }
            repeat 200 as i {
              load buf proc=child[i] expect i*3
              load own[i] proc=child[i] expect i+1
            }
            load buf expect 0
            vmas proc=child[199] expect count=2
            repeat 200 as i { exit child[i] }
            invariants
            """)
        XCTAssertEqual(r, .passed)
        let (f, _) = runScript("process main\nrepeat 2 as i { fork main -> c[i] }\nexit c[2]\n", file: "ix.hmm")
        XCTAssertEqual(f, .malformed("ix.hmm:3:1: expected a known process, got 'c[2]'"))
    }

    func testProcOptionOnDeviceCommands() {
        let (r, _) = runScript("""
            process a
            process b
            use a
            mmap 2pages -> x
            fill x 2pages IDX
            open 0 proc=a -> d
            read d x 2 proc=b expect cpages=2 mirror=IDX
            migrate_to_dev d x 2 proc=a expect cpages=2
            release d proc=b
            flags d 1 proc=a
            """)
        XCTAssertEqual(r, .passed)
        XCTAssertEqual(runScript("process a\nopen 0 -> d\nread d 0 1 proc=zz\n", file: "p.hmm").0,
                       .malformed("p.hmm:3:17: expected a process created with 'process' or 'fork', got 'zz'"))
        XCTAssertEqual(runScript("process a\nprocess b\nuse a\nopen 0 -> d\nmmap_device d 1page proc=b -> m\n", file: "p.hmm").0,
                       .malformed("p.hmm:5:26: expected the process that opened the device for 'mmap_device'"))
    }
}

/// Issue 10: the inspection commands, with exact values.
final class InspectionTests: XCTestCase {
    func testDevicePagesFreedByMunmapAreVisible() {
        let (r, lines) = runScript("""
            process p
            mmap 4pages -> a
            fill a 4pages IDX
            open 0 -> d
            migrate_to_dev d a 2 expect cpages=2
            device_pages d expect count=2 owned=2 mirrored=2
            meminfo expect device_pages=2 device_private=2 device_backing=2 anon=2
            ptes a 4 expect device_private|present
            ptes a 2 expect device_private
            vmas expect count=1
            munmap a 4pages
            device_pages d expect count=0 owned=0 mirrored=0
            meminfo expect device_pages=0 anon=0
            ptes a 4 expect none
            vmas expect count=0
            """, file: "i.hmm")
        XCTAssertEqual(r, .passed)
        XCTAssertEqual(lines.filter { $0.hasPrefix("device_pages") }, [
            "device_pages d (dmirror0, device private): 2 in use in 1 chunk, by owner: d 2; mirror entries 2",
            "device_pages d (dmirror0, device private): 0 in use in 1 chunk; mirror entries 0",
        ])
        let a = 0x7f0000000000 - 4 * 4096
        let ptes = lines.drop { !$0.hasPrefix("ptes p") }.prefix(5)
        XCTAssertEqual(ptes.first, "ptes p 0x\(String(a, radix: 16)) 4:")
        XCTAssertTrue(ptes.dropFirst().first!.contains("device_private write pfn "), "\(ptes)")
        XCTAssertTrue(ptes.dropFirst(3).first!.hasPrefix("  0x\(String(a + 2 * 4096, radix: 16)) present pfn "), "\(ptes)")
        XCTAssertTrue(ptes.dropFirst(3).first!.contains(" rw dirty young (anon, refcount 1, mapcount 1)"), "\(ptes)")
        XCTAssertTrue(lines.contains("  0x\(String(a, radix: 16))-0x7f0000000000 rw-p anon 4 pages"), "\(lines)")
        let (f, _) = runScript("process p\nmmap 1page -> a\nptes a 1 expect present\n", file: "pt.hmm")
        XCTAssertEqual(f, .failed("pt.hmm:3: expected page 0 (0x\(String(0x7f0000000000 - 4096, radix: 16))) present, got none"))
        let (m, _) = runScript("process p\nmeminfo expect anon=1\n", file: "mi.hmm")
        XCTAssertEqual(m, .failed("mi.hmm:2: expected anon=1, got anon=0"))
    }

    /// `free_pgtables` frees a table only when no VMA remains anywhere in its span (the
    /// kernel's floor/ceiling rule), even if the table is empty. Before, the walk stepped by the
    /// child's span, freed an empty PTE table whose span a neighbour still covered, and visited
    /// 131,072 PGD slots per exit (2 ms per process exit in release).
    func testMunmapFreesPageTablesOnlyWhereNoVMARemains() {
        let (r, _) = runScript("""
            process p
            mmap 1page fixed=0x200000000 -> a
            mmap 1page fixed=0x200002000 -> b
            fill a 1page IDX
            meminfo expect pagetables=4
            munmap a 1page
            meminfo expect pagetables=4
            munmap b 1page
            meminfo expect pagetables=1
            """, file: "pt.hmm")
        XCTAssertEqual(r, .passed)
    }

    func testExclusiveAndMigrationEntriesAreDecoded() {
        let (r, lines) = runScript("""
            process p
            mmap 2pages -> a
            fill a 2pages IDX
            open 2 -> d
            exclusive d a 1 expect ret=0
            ptes a 2 expect device_exclusive|present
            """)
        XCTAssertEqual(r, .passed)
        XCTAssertTrue(lines.contains { $0.contains(" device_exclusive pfn ") && $0.contains("(anon, refcount") }, "\(lines)")
    }

    func testInspectPrintsTheFinalState() {
        var o = ScenarioInterpreter.Options()
        var lines: [String] = []
        let lock = Lock("l")
        o.output = { l in lock.withLock { lines.append(l) } }
        o.inspect = true
        let r = ScenarioInterpreter(options: o).run(source: """
            process p
            mmap 8pages -> a
            fill a 4pages IDX
            open 0 -> d
            migrate_to_dev d a 2
            fork p -> c
            exit c
            """, file: "f.hmm")
        XCTAssertEqual(r, .passed)
        XCTAssertTrue(lines.contains("process p (pid 1): 1 VMA"), "\(lines)")
        XCTAssertTrue(lines.contains("process c (pid 2): exited"), "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasSuffix(" +2 pages: device_private (first: device_private read pfn 131072 (device-private page of dmirror0))") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains(" +2 pages: present (first: present pfn ") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains(" +4 pages: none (first: none)") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("device d (dmirror0): ") && $0.hasSuffix(" mirror entries, 2 device pages owned, 2 in use on the device") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("meminfo: total 131071, ") && $0.contains("device_pages 2") }, "\(lines)")
    }
}

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

/// `machine max_map_count=N`: the limit as Linux 7.2 applies it, from a script.
final class MaxMapCountScenarioTests: XCTestCase {
    func testMaxMapCountFromAScript() {
        let (r, _) = runScript("""
            machine max_map_count=10
            process p
            mmap 3pages -> big
            repeat 5 as i {
              mmap 1page prot=r -> x[i] expect ok|ENOMEM
              mmap 1page prot=rw -> y[i] expect ok|ENOMEM
            }
            vmas expect count=11
            mmap 1page prot=rx expect ENOMEM
            munmap big+1page 1page expect ENOMEM
            mprotect big 1page r expect ENOMEM
            munmap big 1page
            vmas expect count=11
            invariants
            """, file: "mc.hmm")
        XCTAssertEqual(r, .passed)
    }
}

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
