import XCTest
@testable import Scenario
import Conformance
import MMSync

/// Mutated and generated scripts run under `hmm run` as a subprocess: every one ends with exit
/// status 0, 1 or 2 within its time bound. HMM_FUZZ_SCRIPTS sets how many (default 3000).
final class CLIFuzzTests: XCTestCase {
    /// A random script from the command table: each command with values of the kinds its spec
    /// asks for (in and out of range), permissive expectations so most scripts run to the end,
    /// and now and then a corrupted token.
    func generate(_ rng: inout SeededRNG) -> String {
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
                case .svm: return "s"
                case .nic: return "n"
                case .mr: return pick(["m", "mr2"])
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
            case .keyed(let key): return pick(["", "expect \(key)=0", "expect EINVAL"])
            case .ptes: return pick(["expect none|present|swap|migration|device_private|device_exclusive", "expect present", ""])
            case .counters(let keys): return pick(["", "expect \(keys.sorted().first!)=0"])
            }
        }
        var lines = ["process p", "mmap 4pages -> a", "mmap 2pages prot=r -> r", "file f size=4pages", "open 0 -> d", "open 2 -> e",
                     "buffer b 4pages", "gup a 1 -> g", "fork p -> c", "repeat 2 as i { fork p -> k[i] }", "svm_open memory=2MiB -> s",
                     "odp_open -> n", "odp_reg n a 4pages -> m", "odp_reg n r 2pages read_only -> mr2", "odp_reg_implicit n -> mi"]
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
        var rng = SeededRNG(seed: 0x10F022)
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
