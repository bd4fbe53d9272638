import XCTest
@testable import Scenario
import Conformance
import MMSync

/// Runs the `hmm` binary built beside this test bundle.
enum HMMBinary {
    static var path: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/hmm"
    }

    struct Result {
        let status: Int32        // exit status, or −signal when killed by a signal
        let output: String
        let seconds: Double
        let timedOut: Bool
    }

    /// Runs `hmm ARGS…` with stdout (and stderr) captured, killed after `timeout` seconds.
    static func run(_ args: [String], timeout: Double = 120) -> Result {
        let outPath = "/tmp/hmm-cli-\(getpid())-\(UInt64.random(in: 0..<UInt64.max)).out"
        defer { unlink(outPath) }
        let p = Foundation.Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        let fh = FileHandle(forWritingAtPath: outPath)!
        p.standardOutput = fh
        p.standardError = fh
        let t0 = DispatchTimeLite.now()
        do { try p.run() } catch { return Result(status: -1000, output: "cannot start \(path): \(error)", seconds: 0, timedOut: false) }
        var timedOut = false
        while p.isRunning {
            if Double(DispatchTimeLite.now() - t0) / 1e9 > timeout { timedOut = true; kill(p.processIdentifier, SIGKILL); break }
            usleep(2000)
        }
        p.waitUntilExit()
        try? fh.close()
        let seconds = Double(DispatchTimeLite.now() - t0) / 1e9
        let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let status = p.terminationReason == .uncaughtSignal ? -p.terminationStatus : p.terminationStatus
        return Result(status: status, output: output, seconds: seconds, timedOut: timedOut)
    }
}

/// A small TAP 14 parser: version line, one plan, numbered test points in order, YAML blocks
/// (`  ---` … `  ...`) right after a test point, comments; anything else is an error.
struct TAPDocument {
    struct Point { let ok: Bool; let number: Int; let description: String; let directive: String?; var yaml: [String: String] = [:] }
    var plan: Int?
    var points: [Point] = []
    var comments: [String] = []

    static func parse(_ text: String) throws -> TAPDocument {
        struct TAPError: Error, CustomStringConvertible { let description: String }
        var doc = TAPDocument()
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        guard lines.first == "TAP version 14" else { throw TAPError(description: "first line is not 'TAP version 14': \(lines.first ?? "")") }
        var i = 1
        var path: [String] = []   // YAML nesting keys
        while i < lines.count {
            let l = lines[i]
            if l.hasPrefix("1..") {
                guard doc.plan == nil, let n = Int(l.dropFirst(3)) else { throw TAPError(description: "bad or second plan at line \(i + 1): \(l)") }
                doc.plan = n
            } else if l.hasPrefix("ok ") || l.hasPrefix("not ok ") {
                let ok = l.hasPrefix("ok ")
                let rest = l.dropFirst(ok ? 3 : 7)
                let numText = rest.prefix { $0.isNumber }
                guard let n = Int(numText), n == doc.points.count + 1 else { throw TAPError(description: "test point out of order at line \(i + 1): \(l)") }
                var desc = String(rest.dropFirst(numText.count))
                if desc.hasPrefix(" - ") { desc = String(desc.dropFirst(3)) }
                var directive: String? = nil
                if let hash = desc.range(of: " # ") { directive = String(desc[hash.upperBound...]); desc = String(desc[..<hash.lowerBound]) }
                doc.points.append(Point(ok: ok, number: n, description: desc, directive: directive))
            } else if l == "  ---" {
                guard !doc.points.isEmpty, i > 0, lines[i - 1].hasPrefix("ok ") || lines[i - 1].hasPrefix("not ok ") else {
                    throw TAPError(description: "YAML block not under a test point at line \(i + 1)")
                }
                i += 1
                path = []
                while i < lines.count && lines[i] != "  ..." {
                    let y = lines[i]
                    guard y.hasPrefix("  ") else { throw TAPError(description: "YAML line not indented at line \(i + 1): \(y)") }
                    let body = y.dropFirst(2)
                    let depth = body.prefix { $0 == " " }.count / 2
                    let item = body.drop { $0 == " " }
                    if let colon = item.range(of: ":") {
                        let key = String(item[..<colon.lowerBound]).replacingOccurrences(of: "- ", with: "")
                        var value = String(item[colon.upperBound...]).trimmingCharacters(in: .whitespaces)
                        path = Array(path.prefix(depth)) + [key]
                        if value.hasPrefix("\"") {
                            guard let data = ("[" + value + "]").data(using: .utf8),
                                  let arr = try? JSONSerialization.jsonObject(with: data) as? [String], let s = arr.first else {
                                throw TAPError(description: "bad YAML string at line \(i + 1): \(value)")
                            }
                            value = s
                        }
                        if !value.isEmpty, doc.points[doc.points.count - 1].yaml[path.joined(separator: ".")] == nil {
                            doc.points[doc.points.count - 1].yaml[path.joined(separator: ".")] = value
                        }
                    }
                    i += 1
                }
                guard i < lines.count else { throw TAPError(description: "YAML block not closed") }
            } else if l.hasPrefix("#") {
                doc.comments.append(l)
            } else {
                throw TAPError(description: "not a TAP line at \(i + 1): \(l)")
            }
            i += 1
        }
        guard let plan = doc.plan, plan == doc.points.count else { throw TAPError(description: "plan \(doc.plan.map(String.init) ?? "missing") but \(doc.points.count) test points") }
        return doc
    }
}

final class CLIOutputTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = "/tmp/hmm-cli-\(getpid())"
        mkdir(dir, 0o755)
        FileManagerLite.write("\(dir)/pass.hmm", "process p\nmmap 1page -> a\nprint hello\nload a expect 0\n")
        FileManagerLite.write("\(dir)/fail.hmm", "process p\nmmap 1page -> a\nload a u32 expect 3\n")
        FileManagerLite.write("\(dir)/bad.hmm", "process p\nfrob\nmmap 1page prot=q -> a\n")
        FileManagerLite.write("\(dir)/skip.hmm", "skip needs \"huge pages\"\n")
    }
    override func tearDown() {
        for f in ["pass", "fail", "bad", "skip"] { unlink("\(dir)/\(f).hmm") }
        rmdir(dir)
    }

    func testRunPrintsValidTAP14WithYAMLDiagnostics() throws {
        let r = HMMBinary.run(["run", "\(dir)/pass.hmm", "\(dir)/fail.hmm", "\(dir)/bad.hmm", "\(dir)/skip.hmm"])
        XCTAssertEqual(r.status, 2, r.output)
        let doc = try TAPDocument.parse(r.output)
        XCTAssertEqual(doc.plan, 4)
        XCTAssertEqual(doc.points.map(\.ok), [true, false, false, true])
        XCTAssertEqual(doc.points.map(\.description), ["pass", "fail", "bad", "skip"].map { "\(dir)/\($0).hmm" })
        XCTAssertEqual(doc.points[3].directive, "SKIP needs huge pages")
        XCTAssertEqual(doc.points[1].yaml, ["message": "expected 3, got 0", "severity": "fail", "at.file": "\(dir)/fail.hmm",
                                            "at.line": "3", "at.column": "1", "expected": "3", "got": "0"])
        XCTAssertEqual(doc.points[2].yaml["severity"], "malformed")
        XCTAssertEqual(doc.points[2].yaml["at.line"], "2")
        XCTAssertEqual(doc.points[2].yaml["message"], "expected a command, found unknown word 'frob'")
        XCTAssertTrue(r.output.contains("      line: 3\n      column: 17\n      message: \"expected a protection"), r.output)
        XCTAssertTrue(doc.comments.contains("# hello"))
        XCTAssertEqual(doc.comments.last, "# 1 passed, 2 failed, 1 skipped")
    }

    func testSelftestPrintsValidTAP14() throws {
        let r = HMMBinary.run(["selftest", "--filter", "anon_read_multiple"])
        XCTAssertEqual(r.status, 0, r.output)
        let doc = try TAPDocument.parse(r.output)
        XCTAssertEqual(doc.points.map(\.description), ["hmm.hmm_device_private.anon_read_multiple", "hmm.hmm_device_coherent.anon_read_multiple"])
        XCTAssertTrue(doc.points.allSatisfy(\.ok))
        XCTAssertEqual(doc.comments.last, "# 2 passed, 0 failed, 0 skipped")
    }

    func testJSONIsOneDocument() throws {
        let r = HMMBinary.run(["run", "--format", "json", "--stats", "\(dir)/pass.hmm", "\(dir)/fail.hmm", "\(dir)/bad.hmm", "\(dir)/skip.hmm"])
        XCTAssertEqual(r.status, 2)
        let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], r.output)
        XCTAssertEqual(doc["format"] as? String, "hmm-run")
        XCTAssertEqual(doc["version"] as? Int, 1)
        let scripts = try XCTUnwrap(doc["scripts"] as? [[String: Any]])
        XCTAssertEqual(scripts.map { $0["result"] as? String }, ["pass", "fail", "malformed", "skip"])
        XCTAssertEqual(scripts.map { $0["exit_code"] as? Int }, [0, 1, 2, 0])
        XCTAssertEqual(scripts[0]["output"] as? [String], ["hello"])
        let stats = try XCTUnwrap(scripts[0]["stats"] as? [String: Int])
        XCTAssertGreaterThan(stats.values.reduce(0, +), 0, "\(stats)")
        let d = try XCTUnwrap((scripts[1]["diagnostics"] as? [[String: Any]])?.first)
        XCTAssertEqual(d["line"] as? Int, 3)
        XCTAssertEqual(d["expected"] as? String, "3")
        XCTAssertEqual(d["got"] as? String, "0")
        XCTAssertEqual((scripts[2]["diagnostics"] as? [[String: Any]])?.count, 2)
        XCTAssertEqual(scripts[3]["skip_reason"] as? String, "needs huge pages")
        let summary = try XCTUnwrap(doc["summary"] as? [String: Int])
        XCTAssertEqual(summary, ["passed": 1, "failed": 2, "skipped": 1, "exit_code": 2])

        let s = HMMBinary.run(["selftest", "--filter", "anon_read_multiple", "--format", "json"])
        XCTAssertEqual(s.status, 0)
        let sdoc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(s.output.utf8)) as? [String: Any], s.output)
        XCTAssertEqual((sdoc["tests"] as? [[String: Any]])?.map { $0["result"] as? String }, ["pass", "pass"])
        XCTAssertEqual(sdoc["summary"] as? [String: Int], ["passed": 2, "failed": 0, "skipped": 0])
    }

    func testCheckAndInspectCommands() {
        let c = HMMBinary.run(["check", "\(dir)/pass.hmm", "\(dir)/bad.hmm"])
        XCTAssertEqual(c.status, 2)
        XCTAssertEqual(c.output, """
            \(dir)/pass.hmm: ok
            \(dir)/bad.hmm:2:1: expected a command, found unknown word 'frob'
            \(dir)/bad.hmm:3:17: expected a protection (none, r, w, rw, rx, rwx or a number), found 'q'
            2 checked, 1 with errors

            """)
        let i = HMMBinary.run(["inspect", "\(dir)/pass.hmm"])
        XCTAssertEqual(i.status, 0, i.output)
        XCTAssertTrue(i.output.contains("process p (pid 1): 1 VMA\n  0x7efffffff000-0x7f0000000000 rw-p anon 1 pages\n    0x7efffffff000: present pfn 0 ro"), i.output)
        XCTAssertTrue(i.output.contains(" (zero page)\n"), i.output)
        XCTAssertTrue(i.output.hasSuffix("\(dir)/pass.hmm: passed\n"), i.output)
    }
}

/// Mutated and generated scripts run under `hmm run` as a subprocess: every one ends with exit
/// status 0, 1 or 2 within its time bound. HMM_FUZZ_SCRIPTS sets how many (default 3000).
final class CLIFuzzTests: XCTestCase {
    /// A random script from the command table: each command with values of the kinds its spec
    /// asks for (in and out of range), permissive expectations so most scripts run to the end,
    /// and now and then a corrupted token.
    func generate(_ rng: inout SplitMix) -> String {
        func pick(_ a: [String]) -> String { a[Int(rng.next() % UInt64(a.count))] }
        let exprs = ["a", "a+1page", "a+4096*3", "a+2", "0", "1", "3", "4096", "1page", "2pages", "4pages", "a.size", "a.pages", "r.size",
                     "0xFFFFFFFFFFFFF000", "0x7ffffffff000", "(a+1page)/2"]
        func value(_ kind: CommandSpec.Value, role: String = "") -> String {
            switch kind {
            case .expr:
                // Mostly values that fit the argument's role; now and then anything.
                if rng.next() % 8 == 0 { return pick(exprs) }
                if role.contains("length") || role.contains("size") { return pick(["1page", "4096", "2pages", "4pages", "0", "a.size", "1", "3"]) }
                if role.contains("count") || role.contains("flags") { return pick(["1", "2", "4", "0", "a.pages"]) }
                if role.contains("address") { return pick(["a", "a+1page", "r", "0", "0x7ffffffff000", "a+2", "a+8"]) }
                if role.contains("offset") { return pick(["0", "4096", "1page", "3"]) }
                if role.contains("device number") { return pick(["0", "1", "2", "3", "4"]) }
                return pick(["0", "1", "5", "a", "4096"])
            case .constant: return pick(["16MiB", "64MiB", "8MiB"])
            case .name(let ns), .newName(let ns):
                switch ns {
                case .process: return pick(["p", "c", "k[1]"])
                case .device: return pick(["d", "e"])
                case .file: return "f"
                case .buffer: return "b"
                case .gup: return "g"
                }
            case .pattern: return pick(["IDX", "NEG", "ZERO", "FF", "IDX+5", "INT(7)", "BYTE(3)"])
            case .prot: return pick(["rw", "r", "none", "rwx", "w"])
            case .advice: return pick(["dontneed", "free", "willneed", "dontfork", "dofork", "normal", "99"])
            case .words: return "hello"
            }
        }
        func expectation(_ e: CommandSpec.Expect) -> String {
            switch e {
            case .none: return ""
            case .outcome: return pick(["", "expect ok|EINVAL|ENOMEM|EFAULT|EBUSY|EPERM|ENOENT|EEXIST|EOVERFLOW|ENODEV", "expect EINVAL"])
            case .signal: return pick(["", "expect ok|segv|bus|oom", "expect segv"])
            case .value: return pick(["expect 0|1|5|segv|bus|oom", "", "expect segv"])
            case .check: return pick(["expect ok|segv|bus|oom", ""])
            case .pread: return pick(["expect ok|EINVAL|EFAULT", "expect ZERO", ""])
            case .device: return pick(["expect ret=0|-EINVAL|-EFAULT|-ENOMEM|-EBUSY|-EPERM|-ENOENT", "", "expect ret=0|-EINVAL|-EFAULT|-ENOMEM|-EBUSY|-EPERM cpages=0"])
            case .pagemap: return pick(["expect present", "expect none", "", "expect ok|EINVAL|EFAULT"])
            case .migrated: return pick(["", "expect migrated=0"])
            case .ptes: return pick(["expect none|present|swap|migration|device_private|device_exclusive", "expect present", ""])
            case .counters(let keys): return pick(["", "expect \(keys.sorted().first!)=0"])
            }
        }
        var lines = ["process p", "mmap 4pages -> a", "mmap 2pages prot=r -> r", "file f size=4pages", "open 0 -> d", "open 2 -> e",
                     "buffer b 4pages", "gup a 1 -> g", "fork p -> c", "repeat 2 as i { fork p -> k[i] }"]
        let names = CommandSpec.table.keys.sorted().filter { !["machine", "skip", "sleep", "process"].contains($0) }
        let corrupting = rng.next() % 3 == 0
        for _ in 0..<Int(rng.next() % 14 + 1) {
            let name = pick(names)
            let spec = CommandSpec.table[name]!
            var l = name
            let n = spec.required + Int(rng.next() % UInt64(spec.positionals.count - spec.required + 1))
            for (role, kind) in spec.positionals.prefix(n) { if case .words = kind { l += " hi" } else { l += " " + value(kind, role: role) } }
            if let (k, kind) = spec.keys.sorted(by: { $0.key < $1.key }).randomElement(using: &rng), rng.next() % 3 == 0 {
                l += " \(k)=" + (k == "proc" ? pick(["p", "c"]) : value(kind))
            }
            if let f = spec.flags.sorted().randomElement(using: &rng), rng.next() % 3 == 0 { l += " " + f }
            if case .none = spec.bind {} else if spec.bind == .required || rng.next() % 2 == 0 {
                l += " -> " + (spec.binds.map { value(.newName($0)) } ?? pick(["a", "r", "m"]))
            }
            let e = expectation(spec.expect)
            if !e.isEmpty { l += " " + e }
            if corrupting && rng.next() % 4 == 0 {  // corrupt one token
                var words = l.split(separator: " ").map(String.init)
                words[Int(rng.next() % UInt64(words.count))] = pick(["frob", "1/0", "(a", "x=", "-1", "IDXX", "18446744073709551616", "{"])
                l = words.joined(separator: " ")
            }
            if rng.next() % 8 == 0 { l = "repeat \(rng.next() % 3) as i {\n \(l.replacingOccurrences(of: " 1 ", with: " i "))\n}" }
            if rng.next() % 10 == 0 { l = "concurrent {\n thread {\n \(l)\n }\n thread proc=p {\n load a expect 0|1|5|segv\n }\n}" }
            lines.append(l)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    func testScriptsUnderHmmRunExitWith0Or1Or2() throws {
        let total = Int(ProcessInfo.processInfo.environment["HMM_FUZZ_SCRIPTS"] ?? "") ?? 3000
        let dir = "/tmp/hmm-fuzz-\(getpid())"
        mkdir(dir, 0o755)
        defer { rmdir(dir) }
        var rng = SplitMix(seed: 0x10F022)
        var outcomes = [0, 0, 0]
        var malformedGenerated: [String: Int] = [:]
        let batch = 100
        var n = 0
        while n < total {
            var files: [String] = []
            var sources: [String: String] = [:]
            for k in 0..<min(batch, total - n) {
                let idx = n + k
                let src = idx % 2 == 0 ? generate(&rng) : ScenarioFuzzTests.mutate(ScenarioFuzzTests.seeds[idx % ScenarioFuzzTests.seeds.count], &rng)
                let path = "\(dir)/s\(idx).hmm"
                FileManagerLite.write(path, src)
                files.append(path)
                sources[path] = src
            }
            defer { for f in files { unlink(f) } }
            let r = HMMBinary.run(["run", "--format", "json", "--max-steps", "50000", "--timeout", "10", "--memory-budget", "1GiB"] + files, timeout: 600)
            XCTAssertFalse(r.timedOut, "a batch ran for over 600 s")
            if ![0, 1, 2].contains(r.status) {
                // Find the script that killed the process, to report it.
                for f in files {
                    let one = HMMBinary.run(["run", "--max-steps", "50000", "--timeout", "10", "--memory-budget", "1GiB", f], timeout: 60)
                    if ![0, 1, 2].contains(one.status) {
                        XCTFail("hmm run ended with status \(one.status) on:\n\(sources[f]!)\n\(one.output.suffix(2000))")
                        break
                    }
                }
                n += files.count
                continue
            }
            let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], String(r.output.prefix(2000)))
            for s in doc["scripts"] as? [[String: Any]] ?? [] {
                let code = s["exit_code"] as? Int ?? -1
                if code == 2, let d = (s["diagnostics"] as? [[String: Any]])?.first, let m = d["message"] as? String,
                   let f = s["file"] as? String, let idx = Int(f.dropFirst(dir.count + 2).dropLast(4)), idx % 2 == 0 {
                    malformedGenerated[String(m.prefix(60)), default: 0] += 1
                }
                XCTAssertTrue([0, 1, 2].contains(code), "\(s)")
                if [0, 1, 2].contains(code) { outcomes[code] += 1 }
                XCTAssertLessThan(s["seconds"] as? Double ?? 99, 15, "\(s["file"] ?? ""): \(sources[s["file"] as? String ?? ""] ?? "")")
            }
            n += files.count
        }
        for (m, c) in malformedGenerated.sorted(by: { $0.value > $1.value }).prefix(12) { print("  malformed generated: \(c) × \(m)") }
        print("cli fuzz: \(total) scripts: \(outcomes[0]) passed, \(outcomes[1]) failed expectations, \(outcomes[2]) malformed")
        XCTAssertEqual(outcomes.reduce(0, +), total)
        // Half the scripts are generated mostly well formed: most of those run.
        XCTAssertGreaterThan(outcomes[0] + outcomes[1], total / 5, "most generated scripts must run")
    }
}

/// Host memory stays flat over long open/close, fork/exit and mmap/munmap loops.
final class LeakTests: XCTestCase {
    func residentBytes() -> Int {
        guard let f = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(f) }
        var size = 0, resident = 0
        withUnsafeMutablePointer(to: &size) { s in withUnsafeMutablePointer(to: &resident) { r in _ = withVaList([s, r]) { vfscanf(f, "%ld %ld", $0) } } }
        return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    func growth(_ body: (Int) -> String, warm: Int, more: Int) -> Int {
        func run(_ n: Int) { XCTAssertEqual(runScript(body(n), file: "leak.hmm").0, .passed) }
        run(warm)
        let r1 = residentBytes()
        run(more)
        return residentBytes() - r1
    }

    func testOpenCloseForkExitMmapMunmapLeaveRSSFlat() {
        // 86 bytes per open/close pair before the fix: 80,000 more pairs grew RSS by 6.9 MB.
        let oc = growth({ "process p\nrepeat \($0) {\n open 0 -> d\n close d\n}\n" }, warm: 20_000, more: 100_000)
        XCTAssertLessThan(oc, 1 << 20, "open/close grew RSS by \(oc) bytes")
        let fe = growth({ "process p\nmmap 4pages -> a\nfill a 4pages IDX\nrepeat \($0) {\n fork p -> c\n store a 1 proc=c\n exit c\n}\n" }, warm: 2_000, more: 10_000)
        XCTAssertLessThan(fe, 1 << 20, "fork/exit grew RSS by \(fe) bytes")
        let mm = growth({ "process p\nrepeat \($0) {\n mmap 4pages -> a\n fill a 4pages IDX\n munmap a 4pages\n}\n" }, warm: 5_000, more: 25_000)
        XCTAssertLessThan(mm, 1 << 20, "mmap/munmap grew RSS by \(mm) bytes")
        print("RSS growth: open/close \(oc) B over 100,000, fork/exit \(fe) B over 10,000, mmap/munmap \(mm) B over 25,000")
    }
}
