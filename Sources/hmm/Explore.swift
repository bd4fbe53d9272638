import ArgumentParser
import Explorer
import MMSync
import Scenario

#if canImport(Glibc)
import Glibc
#endif

/// `hmm explore FILE…`: runs scenario scripts under the explorer, one schedule per seed.
struct Explore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Explore thread interleavings of scenario scripts (see docs/explorer.md).",
        discussion: """
            Every model thread of the script (the script itself and each thread of its \
            'concurrent' blocks, and the threads the model starts) runs one at a time; at each \
            synchronization point the strategy picks who runs next. Each seed is one execution; \
            the same seed gives the same execution. The first failure stops the campaign and \
            prints its seed, schedule and a replay command. \
            Exit status: 0 when nothing was found, 1 when a check of the script failed (or a \
            replay diverged), 2 for a malformed script or one the explorer cannot run \
            (more than 256 threads in one execution), 3 for a liveness failure (deadlock, \
            livelock, threads left waiting), 4 when the model crashed (a replay command is \
            printed after the crash's own message), 64 for bad options.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    @Argument(help: "Scenario files (.hmm).")
    var files: [String]

    @Option(help: "random, pct:D (probabilistic concurrency testing with depth D), dfs:P (depth-first search of every schedule with at most P preemptions; dfs:P:sleep with the sleep-set reduction, not exhaustive).")
    var strategy: String = "random"

    @Option(help: "Seeds to run, as A..B (B excluded) or one seed N (dfs: at most B-A executions).")
    var seeds: String = "0..1000"

    @Option(help: "Step bound of one execution (past it: a livelock).")
    var maxSteps: Int = 2_000_000

    @Option(help: "Rounds of one retry loop (a fault retried) past which it is a livelock.")
    var retryBound: Int = 1_000

    @Option(help: "Time budget of each file's campaign, e.g. 60s, 5m (stops early, not a failure).")
    var time: String?

    @Option(help: "Replay one recorded schedule (as printed in a failure report) instead of seeds.")
    var replay: String?

    @Option(help: "Output format: text or json.")
    var format: Format = .text

    @Flag(help: "No progress line on standard error.")
    var quiet = false

    @Option(help: "Turn on a re-introduced bug from the catalogue (docs/explorer.md); repeatable.")
    var mutation: [String] = []

    @Flag(help: "Check lock order and locking rules (lockdep); a report fails the execution.")
    var lockdep = false

    @Flag(help: "Check the machine's step invariants (no page-table or usable TLB entry maps a free frame, …) at every scheduling decision, besides the script's own checks: slower, for small scripts.")
    var checkEveryStep = false

    @Option(help: "Run shard K of N (K from 0): every N-th seed of --seeds from the K-th, for a campaign split over processes or machines. With --format json the results merge with --merge.")
    var shard: String?

    @Flag(help: "The files are JSON results of the shards of campaigns (--shard K/N --format json): print each campaign merged.")
    var merge = false

    func parsedSeeds() throws -> Range<UInt64> {
        if let n = UInt64(seeds) {
            guard n < UInt64.max else { throw ValidationError("expected a seed below \(UInt64.max), found '\(seeds)'") }
            return n..<(n + 1)
        }
        let parts = seeds.components(separatedBy: "..")
        guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a < b else {
            throw ValidationError("expected --seeds as A..B with A < B, or one seed N; found '\(seeds)'")
        }
        return a..<b
    }

    func parsedTime() throws -> Double? {
        guard let time else { return nil }
        var t = Substring(time), scale = 1.0
        if t.hasSuffix("ms") { t = t.dropLast(2); scale = 0.001 } else if t.hasSuffix("s") { t = t.dropLast() }
        else if t.hasSuffix("m") { t = t.dropLast(); scale = 60 } else if t.hasSuffix("h") { t = t.dropLast(); scale = 3600 }
        guard let v = Double(t), v > 0, v * scale <= 86_400 * 7 else {
            throw ValidationError("expected --time as a duration such as 60s or 5m, found '\(time)'")
        }
        return v * scale
    }

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError(merge ? "expected the JSON results of shards to merge" : "expected at least one scenario file") }
        if merge { return }
        if let shard {
            guard Shard(parsing: shard) != nil else { throw ValidationError("expected --shard as K/N with 0 <= K < N, found '\(shard)'") }
            guard replay == nil else { throw ValidationError("--shard splits a campaign's seeds; a --replay runs one schedule") }
            if case .dfs? = Strategy(parsing: strategy) { throw ValidationError("--shard splits seeds; a dfs search runs its executions in order and does not shard") }
        }
        guard Strategy(parsing: strategy) != nil else { throw ValidationError("expected --strategy random, pct:D (D from 1 to 64) or dfs:P[:sleep] (P from 0 to 16), found '\(strategy)'") }
        guard maxSteps >= 1 else { throw ValidationError("expected --max-steps of at least 1") }
        guard retryBound >= 1, retryBound < 100_000 else {
            throw ValidationError("expected --retry-bound from 1 to 99999 (a CPU's fault loop stops the process at 100000)")
        }
        _ = try parsedSeeds()
        _ = try parsedTime()
        for m in mutation where Mutation(name: m) == nil {
            throw ValidationError("expected --mutation to name one of \(Mutation.allCases.map(\.description).joined(separator: ", ")); found '\(m)'")
        }
        if let replay, Schedule(parsing: replay) == nil {
            throw ValidationError("expected --replay as a printed schedule (runs such as 0x12.1x3.0), found '\(replay)'")
        }
    }

    func run() throws {
        if merge { try mergeResults(); return }
        ensureDeterministicHashing()
        if lockdep { Lockdep.enable() }
        Mutation.active = Mutation.mask(mutation.compactMap { Mutation(name: $0) })
        let strategy = Strategy(parsing: self.strategy)!
        let seeds = try parsedSeeds(), limit = try parsedTime()
        let shard = self.shard.flatMap { Shard(parsing: $0) } ?? .whole
        var worst: Int32 = 0
        var results: [JSON] = []
        for file in files {
            // Malformed scripts are reported before any exploration.
            let problems = ScenarioInterpreter().check(path: file)
            if let first = problems.first {
                if format == .text { out(problems.map(\.description).joined(separator: "\n")) }
                results.append(.object([("file", .string(file)), ("result", .string("malformed")), ("message", .string(first.description))]))
                worst = max(worst, 2)
                continue
            }
            // One execution: the script from scratch on a machine of its own.
            let body = { try exploredScript(path: file) }
            let report: ExplorationReport
            let replayed = replay != nil
            if let replay, let schedule = Schedule(parsing: replay) {
                CrashReport.arm(command(file, "--replay " + replayArgument(replay)))
                report = ExplorationReport(Explorer.run(strategy: .replay(schedule), seed: 0, maxSteps: maxSteps, retryBound: retryBound,
                                                        checkEveryStep: checkEveryStep, body))
                CrashReport.disarm()
            } else {
                // The replay command of the execution about to run (the shard's n-th).
                func armCrash(_ n: Int) {
                    let next = shard.seed(ofExecution: n, in: seeds)
                    // A search's execution is reached by running the search up to it.
                    if case .dfs = strategy { CrashReport.arm(command(file, "--strategy \(self.strategy) --seeds \(seeds.lowerBound)..\(next &+ 1)")) }
                    else { CrashReport.arm(command(file, "--strategy \(self.strategy) --seeds \(next)")) }
                }
                armCrash(0)
                var lastShown = monotonicNanoseconds()
                report = Explorer.explore(strategy: strategy, seeds: seeds, shard: shard, maxSteps: maxSteps, retryBound: retryBound,
                                          seconds: limit, checkEveryStep: checkEveryStep, progress: { r in
                    let now = monotonicNanoseconds()
                    if !quiet && now - lastShown > 1_000_000_000 {
                        lastShown = now
                        progressLine(file, r)
                    }
                    armCrash(r.executions)
                }, body)
                CrashReport.disarm()
            }
            if !quiet && !replayed { progressLine(file, report); errLine("") }
            if !quiet, report.executions == 1, let e = report.last {
                errLine("steps by kind: " + e.stepsByKind.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            }
            let code = exitCode(report.failure?.failure?.kind)
            worst = max(worst, code)
            results.append(json(file, report, replayed: replayed))
            if format == .text { printText(file, report, strategy: strategy, replayed: replayed) }
        }
        if format == .json {
            out(JSON.object([("files", .array(results))]).text())
        }
        if worst != 0 { throw ExitCode(worst) }
    }

    func exitCode(_ kind: FailureKind?) -> Int32 {
        switch kind {
        case nil: return 0
        case .check?, .diverged?: return 1
        case .unsupported?: return 2
        case .deadlock?, .livelock?, .threadsLeftRunning?: return 3
        }
    }

    /// `hmm explore FILE` with this run's options and `how` (a replay or a seed).
    func command(_ file: String, _ how: String) -> String {
        "hmm explore \(file)" + mutation.map { " --mutation \($0)" }.joined() + (lockdep ? " --lockdep" : "")
            + (checkEveryStep ? " --check-every-step" : "") + " \(how) --max-steps \(maxSteps) --retry-bound \(retryBound)"
    }

    func replayCommand(_ file: String, _ e: Execution) -> String { command(file, "--replay " + replayArgument(e.schedule.description)) }

    /// A schedule as a shell argument: a failure before the first choice has an empty one, ''.
    func replayArgument(_ schedule: String) -> String { schedule.isEmpty ? "''" : schedule }

    func progressLine(_ file: String, _ r: ExplorationReport) {
        let s = max(r.seconds, 1e-9)
        errLine("\r\(file): \(r.executions) schedules (\(Int(Double(r.executions) / s))/s), \(Int(Double(r.steps) / s)) steps/s, \(r.distinctExecutions) distinct", newline: false)
    }

    func printText(_ file: String, _ r: ExplorationReport, strategy: Strategy, replayed: Bool) {
        guard let e = r.failure, let f = e.failure else {
            let space: String
            if case .dfs(_, true) = strategy, r.exhausted { space = ", the search ended (sleep sets: not every schedule within the bound)" }
            else { space = r.exhausted ? ", every schedule within the bound" : (r.stoppedByTime ? ", stopped at the time budget" : "") }
            out("\(file): \(replayed ? "replay ran clean" : "nothing found") in \(r.executions) execution\(r.executions == 1 ? "" : "s") (\(strategy), \(r.steps) steps, \(r.distinctExecutions) distinct\(space), \(fmt(r.seconds)) s)")
            return
        }
        let pct = r.pctSteps > 0 ? ", k = \(r.pctSteps)" : ""
        let at: String
        if replayed { at = "on replay" } else if case .dfs = strategy { at = "in execution \(r.executions) of the search (\(strategy))" }
        else { at = "at seed \(e.seed) (\(strategy)\(pct), execution \(r.executions))" }
        out("\(file): \(f.kind.rawValue) \(at) after \(e.steps) steps")
        out(f.message)
        out("schedule: \(e.schedule)")
        out("replay: \(replayCommand(file, e))")
    }

    func json(_ file: String, _ r: ExplorationReport, replayed: Bool) -> JSON {
        var o: [(String, JSON)] = [
            ("file", .string(file)), ("strategy", .string(replayed ? "replay" : strategy)),
            ("executions", .int(r.executions)), ("steps", .int(r.steps)), ("seconds", .double(r.seconds)),
            ("distinct", .int(r.distinctExecutions)), ("exhausted", .bool(r.exhausted)), ("stoppedByTime", .bool(r.stoppedByTime)),
            ("result", .string(r.failure?.failure?.kind.rawValue ?? "clean")),
            ("lastTraceHash", r.last.map { .string(hex16($0.traceHash)) } ?? .null),
        ]
        if let shard, !replayed {
            // What the merge needs: the campaign (the same for every shard) and the traces seen.
            o.append(("campaign", .string(command(file, "--strategy \(strategy) --seeds \(seeds)"))))
            o.append(("shard", .string(shard)))
            o.append(("traceHashes", .array(r.traceHashes.sorted().map { .string(hex16($0)) })))
        }
        if let e = r.failure, let f = e.failure {
            o.append(("failure", .object([
                ("kind", .string(f.kind.rawValue)),
                ("seed", e.seed <= UInt64(Int.max) ? .int(Int(e.seed)) : .string(String(e.seed))), ("steps", .int(e.steps)),
                ("message", .string(f.message)), ("schedule", .string(e.schedule.description)),
                ("traceHash", .string(hex16(e.traceHash))), ("replay", .string(replayCommand(file, e))),
            ])))
        }
        return .object(o)
    }
}


/// Standard error, unbuffered.
func errLine(_ s: String, newline: Bool = true) {
    let t = newline ? s + "\n" : s
    var u = t
    u.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Swift randomizes `Set` and `Dictionary` order per process unless
/// `SWIFT_DETERMINISTIC_HASHING` is set at start: the explorer re-runs itself with it, so a
/// schedule replays in another process as it ran in this one.
func ensureDeterministicHashing() {
    guard getenv("SWIFT_DETERMINISTIC_HASHING") == nil else { return }
    setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1)
    var args = CommandLine.arguments.map { strdup($0) }
    args.append(nil)
    execv("/proc/self/exe", &args)
    // exec failed: carry on (replays in this process are still exact)
}

/// Prints a replay command if the model crashes (a failed precondition in model code ends the
/// process with the runtime's own message; this line follows it), then exits with status 4.
enum CrashReport {
    nonisolated(unsafe) static let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: 4096)
    static let signals = [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE]

    /// From now until `disarm`, a crash prints `command`.
    static func arm(_ command: String) {
        failure[0] = 0
        store("hmm explore: the model crashed; replay with: \(command)\n", in: buffer)
        for sig in signals {
            signal(sig) { s in
                let f = CrashReport.failure
                _ = write(2, f, strlen(f))
                let p = CrashReport.buffer
                _ = write(2, p, strlen(p))
                signal(s, SIG_DFL)
                _exit(4)
            }
        }
    }
    static func disarm() {
        for sig in signals { signal(sig, SIG_DFL) }
        buffer[0] = 0
        failure[0] = 0
    }

    /// The script's failed check of the execution now running (printed if the model then
    /// crashes, in the teardown the failure left inconsistent).
    nonisolated(unsafe) static let failure: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: 4096)
        p[0] = 0
        return p
    }()
    static func noteFailure(_ message: String) {
        store("hmm explore: before the crash, the script failed: \(message)\n", in: failure)
    }
    /// `line` into one of the 4096-byte buffers the signal handler writes (cut if longer).
    private static func store(_ line: String, in p: UnsafeMutablePointer<CChar>) {
        _ = line.withCString { strncpy(p, $0, 4095) }
        p[4095] = 0
    }
}

/// One execution of a scenario script for the explorer: the script from scratch on a machine
/// of its own, quiet, with no clock deadline (the step bound ends a run) and no progress line.
/// Throws the script's failure.
func exploredScript(path: String? = nil, source: String? = nil, name: String = "script") throws {
    struct ScriptFailed: Error, CustomStringConvertible { let description: String }
    var o = ScenarioInterpreter.Options()
    o.output = { _ in }
    o.timeoutSeconds = 86_400
    o.progress = false
    o.onFailure = { CrashReport.noteFailure($0) }
    let interpreter = ScenarioInterpreter(options: o)
    let outcome = path.map { interpreter.run(path: $0) } ?? interpreter.run(source: source ?? "", file: name)
    switch outcome {
    case .passed, .skipped: return
    case .failed(let m), .malformed(let m): throw ScriptFailed(description: m)
    }
}

/// A trace hash as 16 hex digits (so text order is numeric order).
func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}
