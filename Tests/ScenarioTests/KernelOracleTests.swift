import Foundation
import XCTest
import KernelOracle

/// The kernel oracle's comparison logic, on output recorded from a real run of Linux 7.2's
/// hmm-tests under QEMU (`tools/kernel-oracle/fixtures/`), and on hand-made cases for every
/// verdict. The VM itself runs only when HMM_ORACLE=1 (`.ci/run`).
final class KernelOracleTests: XCTestCase {
    /// Both variants, the coherent one with special-purpose memory carved out of the VM's RAM
    /// (`hmm selftest --oracle --oracle-coherent --save-oracle-output`): the run behind the
    /// table in docs/kernel-oracle.md.
    static let fixture = "\(packageRoot)/tools/kernel-oracle/fixtures/hmm-tests-7.2.12+deb13.txt"

    func testTheRecordedKernelRunParsesToItsExactResults() throws {
        let text = try String(contentsOfFile: Self.fixture, encoding: .utf8)
        let run = try KernelSelftestRun.parse(text)
        XCTAssertEqual(run.kernelRelease, "7.2.12+deb13-amd64")
        XCTAssertEqual(run.notes, [])
        XCTAssertEqual(run.cases.count, 76)
        // Every case passes but two coherent ones, hmm_gup_test too (the oracle builds
        // mm/gup_test.c as a module).
        XCTAssertEqual(run.cases.filter { $0.outcome == .fail }.map(\.name),
                       ["hmm.hmm_device_coherent.migrate_anon_huge_err", "hmm.hmm_device_coherent.benchmark_thp_migration"])
        XCTAssertEqual(run.cases.filter { $0.outcome == .pass }.count, 74)
        XCTAssertTrue(run.outcome(of: "hmm.hmm_device_coherent.migrate_anon_huge_err")?.detail?.hasPrefix("hmm-tests.c:2664:") == true)
        XCTAssertEqual(run.outcome(of: "hmm.hmm_device_private.hmm_gup_test")?.outcome, .pass)
        XCTAssertEqual(run.cases.first?.name, "hmm.hmm_device_private.open_close")
        XCTAssertEqual(run.outcome(of: "hmm.hmm_device_private.benchmark_thp_migration")?.seconds, 73.83)
        XCTAssertEqual(Set(run.cases.filter { $0.name.hasPrefix("hmm2.") }.map(\.name)),
                       Set(["migrate_mixed", "snapshot", "double_map"].flatMap { ["hmm2.hmm2_device_private.\($0)", "hmm2.hmm2_device_coherent.\($0)"] }))
        // The same text with CRLF line ends parses to the same run.
        XCTAssertEqual(try KernelSelftestRun.parse(text.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")), run)
    }

    func testEveryVerdict() throws {
        let text = """
            ok 1 hmm.v.a
            @@CASE hmm.v.a 0 1.00 1.25
            # hmm-tests.c:99:b:Expected 0 (0) == ret (-14)
            # b: Test failed
            #          FAIL  hmm.v.b
            not ok 1 hmm.v.b
            @@CASE hmm.v.b 1 2.00 2.50
            ok 1 hmm.v.c # SKIP no driver
            @@CASE hmm.v.c 0 3.00 3.00
            Segmentation fault
            @@CASE hmm.v.d 139 4.00 4.10
            ok 1 hmm.v.e
            @@CASE hmm.v.e 0 5.00 5.01
            ok 1 hmm.v.k
            @@CASE hmm.v.k 0 6.00 6.01
            @@KERNEL 7.2.12-test
            """
        let kernel = try KernelSelftestRun.parse(text)
        XCTAssertEqual(kernel.cases.map(\.outcome), [.pass, .fail, .skip, .error, .pass, .pass])
        XCTAssertEqual(kernel.outcome(of: "hmm.v.b")?.detail, "hmm-tests.c:99:b:Expected 0 (0) == ret (-14); b: Test failed")
        XCTAssertEqual(kernel.outcome(of: "hmm.v.d")?.detail, "no result line (exit status 139): Segmentation fault")
        XCTAssertEqual(kernel.outcome(of: "hmm.v.b")?.seconds, 0.5)
        let model: [SelftestComparison.ModelCase] = [
            .init(name: "hmm.v.a", outcome: "pass", seconds: 0.01, message: nil),
            .init(name: "hmm.v.b", outcome: "pass", seconds: 0.01, message: nil),
            .init(name: "hmm.v.c", outcome: "pass", seconds: 0.01, message: nil),
            .init(name: "hmm.v.d", outcome: "pass", seconds: 0.01, message: nil),
            .init(name: "hmm.v.e", outcome: "fail", seconds: 0.01, message: "x.swift:1: cpages: got 1, expected 2"),
            .init(name: "hmm.w.f", outcome: "pass", seconds: 0.01, message: nil),
            .init(name: "hmm.w.g", outcome: "fail", seconds: 0.01, message: "boom"),
            .init(name: "hmm.v.lost", outcome: "pass", seconds: 0.01, message: nil),
        ]
        let c = SelftestComparison(kernel: kernel, model: model) { _ in "not run here" }
        XCTAssertEqual(c.rows.map(\.name), ["hmm.v.a", "hmm.v.b", "hmm.v.c", "hmm.v.d", "hmm.v.e", "hmm.w.f", "hmm.w.g", "hmm.v.lost", "hmm.v.k"])
        XCTAssertEqual(c.rows.map(\.verdict), [.same, .different, .notCompared, .different, .different, .notCompared, .different, .different, .notCompared])
        XCTAssertEqual(c.rows[7].note, "no result in the kernel's run of hmm.v (a case lost, or one the kernel's suite lacks)")
        XCTAssertEqual(c.rows[1].note, "the kernel fails (hmm-tests.c:99:b:Expected 0 (0) == ret (-14); b: Test failed); swift-hmm passes")
        XCTAssertEqual(c.rows[2].note, "the kernel skipped it: no driver")
        XCTAssertEqual(c.rows[4].note, "the kernel passes; swift-hmm fails (x.swift:1: cpages: got 1, expected 2)")
        XCTAssertEqual(c.rows[5].note, "kernel: not run here")
        XCTAssertEqual(c.rows[8].note, "swift-hmm did not run it (filtered out, or not in its suite)")
        XCTAssertEqual([c.count(.same), c.count(.different), c.count(.notCompared)], [1, 5, 3])
        XCTAssertEqual(c.text().last, "# 1 same, 5 different, 0 documented divergences, 3 not compared; kernel 0.870 s, swift-hmm 0.080 s")
    }

    func testADocumentedDivergenceIsNotADifference() throws {
        let kernel = try KernelSelftestRun.parse("not ok 1 hmm.v.a\n@@CASE hmm.v.a 1 1 2\nok 1 hmm.v.b\n@@CASE hmm.v.b 0 1 2\n@@KERNEL k\n")
        let d19 = SelftestComparison.Divergence(id: "D19", kernel: .fail, model: "pass")
        let c = SelftestComparison(kernel: kernel, model: [
            .init(name: "hmm.v.a", outcome: "pass", seconds: 0, message: nil, divergence: d19),
            .init(name: "hmm.v.b", outcome: "fail", seconds: 0, message: "m", divergence: d19),
        ]) { _ in "" }
        // It explains the kernel failing where the model passes, and nothing else.
        XCTAssertEqual(c.rows.map(\.verdict), [.documented, .different])
        XCTAssertEqual(c.rows[0].note, "D19 in docs/linux-divergences.md: the kernel fails (not ok); swift-hmm passes")
        // Nor a broken kernel run.
        let broken = try KernelSelftestRun.parse("@@CASE hmm.v.a 139 1 2\n@@KERNEL k\n")
        XCTAssertEqual(SelftestComparison(kernel: broken, model: [.init(name: "hmm.v.a", outcome: "pass", seconds: 0, message: nil, divergence: d19)]) { _ in "" }.rows[0].verdict, .different)
    }

    func testAnExpectedFailureMustFailWhereTheKernelFails() throws {
        let kernel = try KernelSelftestRun.parse("""
            # hmm-tests.c:2664:t:Expected ret (-12) == 0 (0)
            not ok 1 hmm.v.a
            @@CASE hmm.v.a 1 1 2
            # hmm-tests.c:100:t:Expected ret (-12) == 0 (0)
            not ok 1 hmm.v.b
            @@CASE hmm.v.b 1 1 2
            @@KERNEL k
            """)
        let c = SelftestComparison(kernel: kernel, model: ["hmm.v.a", "hmm.v.b"].map {
            .init(name: $0, outcome: "xfail", seconds: 0, message: "m", kernelFailure: "hmm-tests.c:2664")
        }) { _ in "" }
        XCTAssertEqual(c.rows.map(\.verdict), [.same, .different])
        XCTAssertEqual(c.rows[1].note, "both fail, but the kernel not at hmm-tests.c:2664: hmm-tests.c:100:t:Expected ret (-12) == 0 (0)")
    }

    func testMalformedOracleOutputIsAnErrorWithItsLine() throws {
        XCTAssertThrowsError(try KernelSelftestRun.parse("ok 1 x\n@@CASE hmm.v.a zero 1 2\n")) { e in
            XCTAssertEqual((e as? KernelSelftestRun.ParseError)?.line, 2)
        }
        XCTAssertThrowsError(try KernelSelftestRun.parse("@@CASE a 0 1 2\n")) { e in
            XCTAssertEqual((e as? KernelSelftestRun.ParseError)?.message, "expected a FIXTURE.VARIANT.TEST name, got 'a'")
        }
        XCTAssertThrowsError(try KernelSelftestRun.parse("@@CASE hmm.v.a 0 1 2\n@@CASE hmm.v.a 0 2 3\n")) { e in
            XCTAssertEqual((e as? KernelSelftestRun.ParseError)?.message, "case hmm.v.a reported twice")
        }
        XCTAssertThrowsError(try KernelSelftestRun.parse("@@CASE hmm.v.a 0 5 2\n@@KERNEL k\n"))
        XCTAssertThrowsError(try KernelSelftestRun.parse("@@CASE hmm.v.a 0 1 inf\n@@KERNEL k\n"))
        XCTAssertThrowsError(try KernelSelftestRun.parse("@@CASE hmm.v.a 0 nan 1\n@@KERNEL k\n"))
        XCTAssertThrowsError(try KernelSelftestRun.parse("")) { e in
            XCTAssertEqual((e as? KernelSelftestRun.ParseError)?.message, "no '@@CASE' line: the kernel ran no case")
        }
        XCTAssertThrowsError(try KernelSelftestRun.parse("ok 1 hmm.v.a\n@@CASE hmm.v.a 0 1 2\n")) { e in
            XCTAssertEqual((e as? KernelSelftestRun.ParseError)?.message, "no '@@KERNEL' line at the end: the run was cut off")
        }
        let noted = try KernelSelftestRun.parse("@@ORACLE-NOTE insmod gup_test_oracle.ko failed\nok 1 hmm.v.a # XFAIL known\n@@CASE hmm.v.a 0 1 2\n@@KERNEL k\n")
        XCTAssertEqual(noted.notes, ["insmod gup_test_oracle.ko failed"])
        XCTAssertEqual(noted.cases.first?.outcome, .skip)
    }

    /// `hmm selftest --oracle-output FIXTURE…`: the whole command on the recorded kernel runs of
    /// both variants: every case agrees but two, each explained: the coherent
    /// migrate_anon_huge_err fails on both at the same assertion, and the coherent
    /// benchmark_thp_migration fails on the kernel only (D19).
    func testTheSelftestCommandComparesWithTheRecordedKernelRun() throws {
        let r = HMMBinary.run(["selftest", "--oracle-output", Self.fixture, "--benchmark-max-mib", "1"], timeout: 600)
        XCTAssertEqual(r.status, 0, r.output)
        let lines = r.output.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.last?.hasPrefix("# 75 same, 0 different, 1 documented divergences, 0 not compared;") == true, lines.last ?? "")
        XCTAssertTrue(lines.contains("kernel: Linux 7.2.12+deb13-amd64 under QEMU; swift-hmm: this build"), r.output)
        for name in ["hmm2.hmm2_device_private.snapshot", "hmm2.hmm2_device_coherent.snapshot", "hmm.hmm_device_private.hmm_gup_test",
                     "hmm.hmm_device_coherent.hmm_gup_test", "hmm.hmm_device_private.exclusive_cow"] {
            let row = lines.first { $0.hasPrefix(name + " ") } ?? ""
            XCTAssertTrue(row.contains(" pass ") && row.hasSuffix(" same"), row)
        }
        let xfail = lines.first { $0.hasPrefix("hmm.hmm_device_coherent.migrate_anon_huge_err ") } ?? ""
        XCTAssertTrue(xfail.contains(" fail ") && xfail.contains(" xfail ") && xfail.contains("same: both fail, as expected"), xfail)
        let d19 = lines.first { $0.hasPrefix("hmm.hmm_device_coherent.benchmark_thp_migration ") } ?? ""
        XCTAssertTrue(d19.contains("documented divergence: D19 in docs/linux-divergences.md: the kernel fails"), d19)
        let bad = HMMBinary.run(["selftest", "--oracle-output", "/nonexistent/oracle.txt"])
        XCTAssertEqual(bad.status, 64, bad.output)
        XCTAssertTrue(bad.output.contains("--oracle-output: cannot read /nonexistent/oracle.txt"), bad.output)
        let garbage = "/tmp/hmm-oracle-garbage-\(getpid()).txt"
        defer { unlink(garbage) }
        XCTAssertTrue(FileManager.default.createFile(atPath: garbage, contents: Data("@@CASE hmm.x.y 0 2 1\n".utf8)))
        let g = HMMBinary.run(["selftest", "--filter", "open_close", "--oracle-output", garbage])
        XCTAssertEqual(g.status, 2, g.output)
        XCTAssertTrue(g.output.contains("kernel oracle output, line 1: expected '@@CASE NAME STATUS T0 T1'"), g.output)
    }
}

/// `hmm run --oracle`: scenario scripts on the model and on a kernel through
/// `tools/kernel-oracle/runner` (hmm-oracle-runner), compared command by command.
final class ScenarioOracleTests: XCTestCase {
    func testTraceLinesAreComparedWithoutAddressesAndPids() {
        let m = ScenarioComparison.traceLine("scenarios/selftests/../lib/selftest-common.hmm:6 t0: process main = pid 1")
        let k = ScenarioComparison.traceLine("# selftest-common.hmm:6 t0: process = pid 57")
        XCTAssertEqual(m, k)
        XCTAssertEqual(m?.location, "selftest-common.hmm:6")
        XCTAssertEqual(ScenarioComparison.traceLine("a.hmm:17 t0: store 0x7effffff2000 u32 5 expect segv = SIGSEGV at 0x7effffff2000")?.result, "SIGSEGV at ADDR")
        XCTAssertEqual(ScenarioComparison.traceLine("a.hmm:9 t0: exclusive fd 0x7eff0000 16 = ret 0 cpages 16 faults 0")?.result, "ret 0 cpages 16 faults 0")
        XCTAssertEqual(ScenarioComparison.traceLine("a.hmm:3 t0: load 0x10000 = 65536")?.result, "65536", "a decimal value is kept")
        XCTAssertNil(ScenarioComparison.traceLine("    cpu pt main: present 1 (+1), writable 0 (+0), non-present 0 (+0)"))
    }

    func testVerdicts() {
        let l = { (loc: String, r: String) in ScenarioComparison.TraceLine(location: loc, result: r) }
        let model = [l("a:1", "0"), l("a:2", "ret 0 cpages 4 faults 0"), l("a:3", "PPPP")]
        func k(_ lines: [ScenarioComparison.TraceLine], _ end: ScenarioComparison.End) -> ScenarioComparison.KernelScript {
            var s = ScenarioComparison.KernelScript(); s.lines = lines; s.end = end; return s
        }
        let same = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k(model, .done))
        XCTAssertEqual(same.verdict, .same); XCTAssertEqual(same.compared, 3)
        let diff = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k([model[0], l("a:2", "ret 0 cpages 3 faults 0")], .done))
        XCTAssertEqual(diff.verdict, .different)
        XCTAssertEqual(diff.note, "at a:2: swift-hmm ret 0 cpages 4 faults 0, kernel ret 0 cpages 3 faults 0")
        let part = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k([model[0]], .unsupported("a:2: fork")))
        XCTAssertEqual(part.verdict, .partial); XCTAssertEqual(part.note, "then not run on the kernel: a:2: fork")
        XCTAssertEqual(ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k(model, .expectationFailed("a:3: expected present"))).verdict, .different)
        XCTAssertEqual(ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k(Array(model.prefix(2)), .done)).note,
                       "swift-hmm ran 1 more commands, from a:3")
        XCTAssertEqual(ScenarioComparison.compare(file: "a", model: model, modelFailure: "x", kernel: k(model, .done)).verdict, .different)
        XCTAssertEqual(ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: nil).verdict, .different)
        let parsed = ScenarioComparison.parseRunner("@@SCRIPT s/a.hmm\n# a.hmm:1 t0: mmap = 0x7f0000000000\n@@UNSUPPORTED s/a.hmm:2: fork\n@@SCRIPT s/b.hmm\n@@ERROR boom\n")
        XCTAssertEqual(parsed["s/a.hmm"]?.lines, [l("a.hmm:1", "ADDR")])
        XCTAssertEqual(parsed["s/a.hmm"]?.end, .unsupported("s/a.hmm:2: fork"))
        XCTAssertEqual(parsed["s/b.hmm"]?.end, .broken("boom"))
        // The first error is the cause: a process's own, then the runner's "it ended".
        XCTAssertEqual(ScenarioComparison.parseRunner("@@SCRIPT c\n@@ERROR cannot read x\n@@ERROR c:4: the script's process 9 ended\n")["c"]?.end, .broken("cannot read x"))
        // A thread's failed expectation stands over another thread's unsupported command after it.
        XCTAssertEqual(ScenarioComparison.parseRunner("@@SCRIPT d\n@@EXPECT d:5: expected 1, got 2\n@@UNSUPPORTED d:6: gup\n")["d"]?.end, .expectationFailed("d:5: expected 1, got 2"))
        XCTAssertEqual(ScenarioComparison.parseRunner("@@SCRIPT e\n@@UNSUPPORTED e:6: gup\n@@EXPECT e:5: expected 1, got 2\n")["e"]?.end, .expectationFailed("e:5: expected 1, got 2"))
    }

    /// The threads of a `concurrent` block run in any order and return what the interleaving
    /// gives: their lines are compared as one set of locations; the lines around it in order.
    func testConcurrentThreadsAreComparedAsOneSetOfLocations() {
        let t = { (loc: String, r: String, n: Int) in ScenarioComparison.TraceLine(location: loc, result: r, thread: n) }
        XCTAssertEqual(ScenarioComparison.traceLine("a.hmm:8 t3: check 0x7f0000 8192 IDX = ok")?.thread, 3)
        let model = [t("a:1", "0", 0), t("a:3", "ret 0 cpages 4 faults 0", 1), t("a:4", "ok", 2), t("a:4", "ok", 3), t("a:6", "PPPP", 0)]
        func k(_ lines: [ScenarioComparison.TraceLine], _ end: ScenarioComparison.End = .done) -> ScenarioComparison.KernelScript {
            ScenarioComparison.KernelScript(lines: lines, end: end)
        }
        // Another order, another result inside the block: the same.
        let reordered = [t("a:1", "0", 0), t("a:4", "ok", 5), t("a:3", "ret -ENOENT cpages 0 faults 0", 4), t("a:4", "ok", 6), t("a:6", "PPPP", 0)]
        let same = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k(reordered))
        XCTAssertEqual(same.verdict, .same); XCTAssertEqual(same.compared, 5)
        // A thread that ran another command (or one command fewer) differs; so does a line after the block.
        let missing = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k([reordered[0], reordered[1], reordered[2], reordered[4]]))
        XCTAssertEqual(missing.verdict, .different)
        XCTAssertEqual(missing.note, "at the threads at a:3: swift-hmm threads ran a:3, a:4, a:4, kernel threads ran a:3, a:4")
        let after = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k(Array(reordered.prefix(4)) + [t("a:6", "PPP-", 0)]))
        XCTAssertEqual(after.note, "at a:6: swift-hmm PPPP, kernel PPP-")
        // A kernel run that stopped inside the block (a command it cannot run) ran part of it.
        let part = ScenarioComparison.compare(file: "a", model: model, modelFailure: nil, kernel: k([reordered[0], reordered[1]], .unsupported("a:5: gup")))
        XCTAssertEqual(part.verdict, .partial); XCTAssertEqual(part.compared, 2)
    }

    /// The runner built for this machine and run on its kernel, on a script without devices:
    /// mappings, faults, protections, pagemap. Its trace must be the model's, command by
    /// command (this checks the runner and the comparison end to end; the VM adds dmirror).
    func testTheRunnerOnThisMachinesKernelAgreesWithTheModel() throws {
        let script = """
            process main
            mmap 16pages prot=rw -> buf
            fill buf 8pages IDX
            check buf 8pages IDX
            load buf+4pages u32 expect 4096
            pagemap buf 8 expect present
            mprotect buf+8pages 8pages r
            load buf+9pages expect 0
            store buf+9pages 1 expect segv
            mprotect buf 1page none
            load buf expect segv
            munmap buf+2pages 2pages
            load buf+2pages u32 expect segv
            repeat 3 as i {
              store buf+4pages+i*4 u32 i+7
              load buf+4pages+i*4 u32 expect i+7
            }
            madvise buf+4pages 1page dontneed
            load buf+4pages u32 expect 0
            munmap buf 16pages
            mprotect buf 1page rw expect ENOMEM
            """
        _ = try assertTheModelAgreesWithThisMachinesKernel(script, name: "host.hmm", commands: 23)
    }

    /// The runner's processes and threads on this machine's kernel: fork (also from a forked
    /// process), commands in another process (`proc=`, `use`), a host buffer every process
    /// sees, `concurrent` threads in three processes at once, exit; the trace is the model's.
    func testTheRunnersProcessesAndThreadsOnThisMachinesKernel() throws {
        let script = """
            process main
            mmap 16pages prot=rw -> buf
            fill buf 16pages IDX
            buffer m 4pages fill=NEG
            fork main -> child
            check buf 16pages IDX proc=child
            store buf u32 100 proc=child
            load buf u32 expect 0
            load buf u32 proc=child expect 100
            mmap 2pages proc=child -> cbuf
            fill cbuf 2pages IDX+3 proc=child
            fork child -> grand
            check cbuf 2pages IDX+3 proc=grand
            pagemap buf 16 proc=grand expect present
            repeat 3 as i {
              concurrent {
                thread { fill buf 8pages IDX+i }
                thread { check buf+8pages 8pages IDX index=8192 }
                thread proc=child { check buf+1page 15pages IDX index=1024 }
                thread proc=grand { load cbuf u32 expect 3 }
              }
              check buf 8pages IDX+i
            }
            use child
            load buf u32 expect 100
            exit grand
            use main
            exit child
            load buf u32 expect 2
            check_buffer m 0 4pages NEG
            concurrent {
              thread { repeat 4 as i { load buf+(i+8)*4096 u32 expect (i+8)*1024 } }
              thread { repeat 4 as i { load buf+(i+12)*4096 u32 expect (i+12)*1024 } }
            }
            fork main -> a
            exit a
            fork main -> b
            fork main -> a
            load buf+8pages u32 proc=a expect 8192
            exit b
            exit a
            """
        let output = try assertTheModelAgreesWithThisMachinesKernel(script, name: "procs.hmm", commands: 51)
        XCTAssertEqual(output.components(separatedBy: "concurrent (4 threads)").count, 4, output)
        // No process of the script outlives the runner.
        let pids = output.split(separator: "\n").filter { $0.contains(": fork = pid ") }.compactMap { Int32($0.split(separator: " ").last!) }
        XCTAssertEqual(pids.count, 5)
        for p in pids { XCTAssertEqual(kill(p, 0), -1, "process \(p) is gone") }
    }

    /// Indexed names (`child[i]`, `own[i].size`, `b[2]`) name processes, regions and buffers
    /// on the kernel as in the model: ten children, each with its own mapping.
    func testIndexedNamesOnThisMachinesKernel() throws {
        let script = """
            process main
            repeat 10 as i {
              fork main -> child[i]
              mmap 1page hint=0x10000000 proc=child[i] -> own[i]
              store own[i] i+1 proc=child[i]
            }
            repeat 10 as i { load own[i] proc=child[i] expect i+1 }
            buffer b[2] 1page fill=IDX
            check_buffer b[2] 0 1page IDX
            munmap own[3] own[3].size proc=child[3]
            load own[3] proc=child[3] expect segv
            repeat 10 as i { exit child[i] }
            """
        _ = try assertTheModelAgreesWithThisMachinesKernel(script, name: "indexed.hmm", commands: 55)
    }

    /// A script that runs too long ends with an error after HMM_ORACLE_SCRIPT_TIMEOUT seconds,
    /// its forked processes killed.
    func testTheRunnerStopsAScriptThatRunsTooLong() throws {
        let (output, dir) = try runTheRunnerOnThisMachine("process main\nfork main -> child\nrepeat 100 { sleep 1000000000 }\n",
                                                          name: "hang.hmm", environment: ["HMM_ORACLE_SCRIPT_TIMEOUT": "2"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertTrue(output.contains("@@ERROR the script ran longer than 2 s (a livelock or a hang?)"), output)
        XCTAssertEqual(ScenarioComparison.parseRunner("@@SCRIPT hang.hmm\n" + output)["hang.hmm"]?.end, .broken("the script ran longer than 2 s (a livelock or a hang?)"))
        let child = output.split(separator: "\n").first { $0.contains(": fork = pid ") }.flatMap { Int32($0.split(separator: " ").last!) }
        XCTAssertNotNil(child)
        usleep(200_000)
        if let child { XCTAssertEqual(kill(child, 0), -1, "the script's process is gone") }
    }

    /// Runs `script` with the runner on this machine's kernel to its end, then `hmm run
    /// --oracle-output` with that run: every one of `commands` commands is the model's.
    /// Return: the runner's output.
    func assertTheModelAgreesWithThisMachinesKernel(_ script: String, name: String, commands: Int,
                                                    file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let (output, dir) = try runTheRunnerOnThisMachine(script, name: name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertTrue(output.hasSuffix("@@DONE\n"), output, file: file, line: line)
        let r = HMMBinary.run(["run", "--oracle-output", "\(dir)/kernel.txt", "\(dir)/\(name)"])
        XCTAssertEqual(r.status, 0, r.output, file: file, line: line)
        XCTAssertTrue(r.output.contains("\(name): same (\(commands) commands compared)"), r.output, file: file, line: line)
        return output
    }

    /// Builds the runner for this machine, runs `script` with it, keeps its output as a kept
    /// kernel run (`kernel.txt`) next to the script. Return: the output and the directory.
    func runTheRunnerOnThisMachine(_ script: String, name: String, environment: [String: String] = [:]) throws -> (String, String) {
        let dir = "/tmp/hmm-runner-test-\(getpid())-\(name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let runner = "\(dir)/hmm-oracle-runner"
        let cc = Foundation.Process()
        cc.executableURL = URL(fileURLWithPath: "/usr/bin/cc")
        cc.arguments = ["-O2", "-Wall", "-Werror", "-o", runner, "\(packageRoot)/tools/kernel-oracle/runner/runner.c"]
        try cc.run(); cc.waitUntilExit()
        XCTAssertEqual(cc.terminationStatus, 0, "the runner builds without warnings")
        try script.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8)
        let run = Foundation.Process()
        run.executableURL = URL(fileURLWithPath: runner)
        run.arguments = ["\(dir)/\(name)"]
        run.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        run.standardOutput = pipe
        try run.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        run.waitUntilExit()
        try ("@@SCRIPT \(name)\n" + output).write(toFile: "\(dir)/kernel.txt", atomically: true, encoding: .utf8)
        return (output, dir)
    }

    /// The selftest scenarios (device-private) and the oracle scenarios, compared with the
    /// recorded run of hmm-oracle-runner on Linux 7.2.12 (`hmm run --oracle
    /// --save-oracle-output`): every command the kernel ran agrees.
    func testScenariosAgreeWithTheRecordedKernelRun() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(packageRoot)/scenarios/selftests")
            .filter { $0.hasPrefix("hmm_device_private.") }.sorted().map { "\(packageRoot)/scenarios/selftests/\($0)" }
            + ["exclusive-fork-mprotect", "fault-back-during-migration", "migrate-shared-by-fork"].map { "\(packageRoot)/scenarios/oracle/\($0).hmm" }
        let r = HMMBinary.run(["run", "--oracle-output", "\(packageRoot)/tools/kernel-oracle/fixtures/scenarios-7.2.12+deb13.txt"] + files, timeout: 900)
        XCTAssertEqual(r.status, 0, r.output)
        let summary = r.output.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertTrue(summary.hasPrefix("# 41 same, 0 different, 0 compared in part, 0 skipped;"), summary)
        for forking in ["hmm_device_private.anon_write_child.hmm", "hmm_device_private.exclusive_cow.hmm", "oracle/exclusive-fork-mprotect.hmm",
                        "oracle/fault-back-during-migration.hmm", "oracle/migrate-shared-by-fork.hmm", "hmm_device_private.hmm_gup_test.hmm"] {
            XCTAssertTrue(r.output.contains("\(forking): same"), "\(forking) runs to its end on both: \(r.output)")
        }
        XCTAssertTrue(r.output.contains("hmm_device_private.migrate_mixed.hmm: same"), r.output)
        // The coherent variant (`--oracle-coherent`): the same, and its migrate_anon_huge_err
        // scenario, which states the kernel's ENOMEM, agrees to the end.
        let coherent = try FileManager.default.contentsOfDirectory(atPath: "\(packageRoot)/scenarios/selftests")
            .filter { $0.hasPrefix("hmm_device_coherent.") }.sorted().map { "\(packageRoot)/scenarios/selftests/\($0)" }
        let c = HMMBinary.run(["run", "--oracle-output", "\(packageRoot)/tools/kernel-oracle/fixtures/scenarios-coherent-7.2.12+deb13.txt"] + coherent, timeout: 900)
        XCTAssertEqual(c.status, 0, c.output)
        XCTAssertTrue(c.output.split(separator: "\n").last?.hasPrefix("# 38 same, 0 different, 0 compared in part, 0 skipped;") == true, c.output)
        XCTAssertTrue(c.output.contains("hmm_device_coherent.migrate_anon_huge_err.hmm: same"), c.output)
    }
}
