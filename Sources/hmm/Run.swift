import ArgumentParser
import MMSync
import Scenario

/// Bounds shared by `hmm run` and `hmm inspect`.
struct ScenarioLimits: ParsableArguments {
    @Option(help: "Wall-clock budget of each script, in seconds (past it: a failed expectation at the running line).")
    var timeout: Double = 600

    @Option(help: "Host memory for each script's machine RAM and buffers together, e.g. 4GiB (past it: an error at the line).")
    var memoryBudget: String = "4GiB"

    func apply(_ o: inout ScenarioInterpreter.Options) throws {
        guard timeout > 0, timeout <= 86_400 else { throw ValidationError("expected --timeout between 0 and 86400 seconds") }
        guard let b = ScenarioInterpreter.parseSize(memoryBudget), b >= 8 << 20 else {
            throw ValidationError("expected --memory-budget as a size of at least 8MiB (e.g. 4GiB), found '\(memoryBudget)'")
        }
        o.timeoutSeconds = timeout
        o.memoryBudget = b
    }
}

/// `hmm run FILE…`: runs scenario scripts.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run scenario scripts (see docs/scenario-language.md).",
        discussion: """
            Each script is parsed and checked whole before it runs. Output is TAP version 14 \
            (one test point per script; a failure carries a YAML block with message, file, line, \
            column, expected and got; script output and the summary are '#' comments), or with \
            --format json one JSON document (schema in docs/scenario-language.md). \
            Exit status: 0 when every expectation of every script holds (skipped scripts count as \
            passing), 1 when an expectation fails, 2 when a script is malformed.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case tap, json }

    @Argument(help: "Scenario files (.hmm).")
    var files: [String]

    @Flag(help: "Print every operation with its evaluated arguments, thread and result.")
    var trace = false

    @Flag(help: "Report the machine's event counters after each script.")
    var stats = false

    @Flag(help: "Print only failures and the summary (not a complete TAP stream).")
    var quiet = false

    @Option(help: "Output format: tap or json.")
    var format: Format = .tap

    @Flag(help: "Check lock order and locking rules while running (lockdep); any report fails the run.")
    var lockdep = false

    @Option(help: "Step budget of each script (statements and loop iterations).")
    var maxSteps: Int = 20_000_000

    @OptionGroup var limits: ScenarioLimits

    @Flag(help: ArgumentHelp("Also run each script on Linux 7.2 (the kernel oracle's VM: tools/kernel-oracle/oracle.sh, prepared beforehand) and compare the two command by command.",
                             discussion: "Exit status 1 when a script differs, 2 when the oracle cannot run."))
    var oracle = false

    @Option(help: ArgumentHelp("Compare with the kernel's run kept in this file (--save-oracle-output) instead of booting the VM.", valueName: "file"))
    var oracleOutput: String?

    @Option(help: ArgumentHelp("With --oracle: save what the kernel's run printed to this file.", valueName: "file"))
    var saveOracleOutput: String?

    @Flag(help: "With --oracle: give test_hmm's coherent devices (2 and 3) their special-purpose memory in the VM, for scripts that open them.")
    var oracleCoherent = false

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("expected at least one scenario file") }
        if (saveOracleOutput != nil || oracleCoherent) && !oracle { throw ValidationError("--save-oracle-output and --oracle-coherent need --oracle") }
        if oracle && oracleOutput != nil { throw ValidationError("--oracle boots the kernel, --oracle-output reads a kept run: give one") }
        if (oracle || oracleOutput != nil) && (format == .json || trace || stats || lockdep) {
            throw ValidationError("--oracle prints its own comparison: without --format json, --trace, --stats or --lockdep")
        }
        var o = ScenarioInterpreter.Options()
        try limits.apply(&o)   // bad limits are reported before any output
    }

    func run() throws {
        if oracle || oracleOutput != nil { return try runWithOracle() }
        var worst: Int32 = 0
        var passed = 0, failed = 0, skipped = 0
        var reports: [JSON] = []
        let lockdepReports = LockdepSession(on: lockdep)
        if format == .tap && !quiet { out("TAP version 14"); out("1..\(files.count)") }
        for (i, file) in files.enumerated() {
            var options = ScenarioInterpreter.Options()
            try limits.apply(&options)
            options.trace = trace
            options.stats = stats
            options.statsAsText = false
            options.maxSteps = max(1, maxSteps)
            var lines: [String] = []
            options.output = { line in
                if format == .json { lines.append(line) } else if !quiet { out("# " + line) }
            }
            let interpreter = ScenarioInterpreter(options: options)
            let t0 = ContinuousClock.now
            let outcome = interpreter.run(path: file)
            let seconds = seconds(since: t0)
            let n = i + 1
            switch outcome {
            case .passed: passed += 1
            case .skipped: skipped += 1
            case .failed, .malformed: failed += 1
            }
            worst = max(worst, outcome.exitCode)
            switch format {
            case .tap:
                if stats && !quiet {
                    for (name, value) in interpreter.finalStats where value != 0 { out("# stats \(name): \(value)") }
                }
                switch outcome {
                case .passed: if !quiet { out("ok \(n) - \(tapDescription(file))") }
                case .skipped(let r): if !quiet { out("ok \(n) - \(tapDescription(file)) # SKIP \(r)") }
                case .failed(let m), .malformed(let m):
                    out("not ok \(n) - \(tapDescription(file))")
                    yamlBlock(outcome, m, interpreter.diagnostics, file: file)
                }
            case .json:
                reports.append(report(n, file, outcome, interpreter, lines, seconds))
            }
        }
        switch format {
        case .tap: out("# \(passed) passed, \(failed) failed, \(skipped) skipped")
        case .json:
            out(JSON.object([
                ("format", .string("hmm-run")), ("version", .int(1)),
                ("scripts", .array(reports)),
                ("summary", .object([("passed", .int(passed)), ("failed", .int(failed)), ("skipped", .int(skipped)), ("exit_code", .int(Int(worst)))])),
            ]).text())
        }
        if lockdepReports.finish() > 0 { worst = max(worst, 1) }
        if worst != 0 { throw ExitCode(worst) }
    }

    /// The TAP 14 YAML diagnostic block under a failing test point.
    func yamlBlock(_ outcome: ScenarioOutcome, _ message: String, _ diags: [ScenarioDiagnostic], file: String) {
        out("  ---")
        let severity = outcome.exitCode == 2 ? "malformed" : "fail"
        if let d = diags.first {
            out("  message: \(yamlString(d.message))")
            out("  severity: \(severity)")
            out("  at:")
            out("    file: \(yamlString(d.file))")
            out("    line: \(d.line)")
            if let c = d.column { out("    column: \(c)") }
            if let e = d.expected { out("  expected: \(yamlString(e))") }
            if let g = d.got { out("  got: \(yamlString(g))") }
            if diags.count > 1 {
                out("  errors:")
                for x in diags {
                    out("    - file: \(yamlString(x.file))")
                    out("      line: \(x.line)")
                    if let c = x.column { out("      column: \(c)") }
                    out("      message: \(yamlString(x.message))")
                }
            }
        } else {
            out("  message: \(yamlString(message))")
            out("  severity: \(severity)")
            out("  at:")
            out("    file: \(yamlString(file))")
        }
        out("  ...")
    }

    func report(_ n: Int, _ file: String, _ outcome: ScenarioOutcome, _ interp: ScenarioInterpreter, _ lines: [String], _ seconds: Double) -> JSON {
        let result: String
        var reason: JSON = .null
        switch outcome {
        case .passed: result = "pass"
        case .skipped(let r): result = "skip"; reason = .string(r)
        case .failed: result = "fail"
        case .malformed: result = "malformed"
        }
        var diags: [JSON] = interp.diagnostics.map { d in
            .object([("kind", .string(d.kind.rawValue)), ("file", .string(d.file)), ("line", .int(d.line)),
                     ("column", d.column.map { .int($0) } ?? .null), ("message", .string(d.message)),
                     ("expected", d.expected.map { .string($0) } ?? .null), ("got", d.got.map { .string($0) } ?? .null)])
        }
        if diags.isEmpty, case .malformed(let m) = outcome {
            diags = [.object([("kind", .string("malformed")), ("file", .string(file)), ("line", .null), ("column", .null), ("message", .string(m)),
                              ("expected", .null), ("got", .null)])]
        }
        var fields: [(String, JSON)] = [
            ("number", .int(n)), ("file", .string(file)), ("result", .string(result)), ("exit_code", .int(Int(outcome.exitCode))),
            ("seconds", .double((seconds * 1000).rounded() / 1000)), ("skip_reason", reason), ("diagnostics", .array(diags)),
            ("output", .array(lines.map { .string($0) })),
        ]
        if stats { fields.append(("stats", .object(interp.finalStats.map { ($0.name, .int(Int($0.value))) }))) }
        return .object(fields)
    }
}

/// `hmm check FILE…`: parses and checks scripts without running them.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check scenario scripts without running them: every error with file:line:column.",
        discussion: "Exit status 0 when every script is well formed, 2 otherwise.")

    @Argument(help: "Scenario files (.hmm).")
    var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("expected at least one scenario file") }
    }

    func run() throws {
        var bad = 0
        for file in files {
            let errors = ScenarioInterpreter().check(path: file)
            if errors.isEmpty { out("\(file): ok") } else { bad += 1 }
            for e in errors { out(e.description) }
        }
        out("\(files.count) checked, \(bad) with errors")
        if bad > 0 { throw ExitCode(2) }
    }
}

/// `hmm inspect FILE`: runs a script and shows its final state.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a scenario script, then print its final state: each process's VMAs and page-table entries, the open devices, meminfo.",
        discussion: "Exit status as for 'hmm run' (the state is shown after a failed expectation too).")

    @Argument(help: "A scenario file (.hmm).")
    var file: String

    @Flag(help: "Print every operation too.")
    var trace = false

    @OptionGroup var limits: ScenarioLimits

    func run() throws {
        var options = ScenarioInterpreter.Options()
        try limits.apply(&options)
        options.trace = trace
        options.inspect = true
        options.output = { out($0) }
        let outcome = ScenarioInterpreter(options: options).run(path: file)
        switch outcome {
        case .passed: out("\(file): passed")
        case .skipped(let r): out("\(file): skipped (\(r))")
        case .failed(let m), .malformed(let m): out(m)
        }
        if outcome.exitCode != 0 { throw ExitCode(outcome.exitCode) }
    }
}

/// One line to standard output, flushed (so lines keep their order when piped).
func out(_ line: String) {
    print(line)
    fflush(nil)   // all streams (stdout is a C global Swift 6 will not share)
}

func seconds(since t0: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - t0
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

#if canImport(Glibc)
import Glibc
#endif

/// `--lockdep`: turns lockdep on, prints each report as a `#` comment as it happens, and
/// counts them.
final class LockdepSession {
    let on: Bool
    var count = 0
    let lock = NSLockLite()
    init(on: Bool) {
        self.on = on
        guard on else { return }
        Lockdep.onReport = { [unowned self] r in
            self.lock.withLock { self.count += 1 }
            out("# \(r)")
            for s in r.sites { out("#   at \(s)") }
        }
        Lockdep.enable()
    }
    /// Turns lockdep off; the number of reports.
    func finish() -> Int {
        guard on else { return 0 }
        Lockdep.disable()
        out("# lockdep: \(count) report\(count == 1 ? "" : "s")")
        return count
    }
}

/// A plain mutex for the CLI's own bookkeeping (lockdep's handler must not use MMSync locks).
final class NSLockLite {
    private let m: UnsafeMutablePointer<pthread_mutex_t> = {
        let p = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(p, nil)
        return p
    }()
    func withLock<T>(_ body: () -> T) -> T { pthread_mutex_lock(m); defer { pthread_mutex_unlock(m) }; return body() }
}
