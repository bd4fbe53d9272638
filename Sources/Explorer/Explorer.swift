#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MMSync

/// A failed execution: what went wrong, with the threads' states and last steps.
public struct ExplorationFailure: Error, Sendable, CustomStringConvertible {
    public let kind: FailureKind
    public let message: String
    public var description: String { "\(kind.rawValue): \(message)" }
}

/// One execution of a program under the explorer.
public struct Execution: Sendable {
    public let strategy: Strategy
    public let seed: UInt64
    /// Scheduling steps taken (synchronization points reached by all threads together).
    public let steps: Int
    /// The thread run after each step; `Strategy.replay(schedule)` runs the same execution.
    public let schedule: Schedule
    /// A hash of the steps taken: equal for equal executions.
    public let traceHash: UInt64
    public let threads: Int
    public let failure: ExplorationFailure?
    /// Steps by kind of point ("lockAcquire", "blocked wait", …), for profiling a program's
    /// schedule space.
    public let stepsByKind: [String: Int]

    /// The same execution, judged failed after the fact (a search that could not follow it).
    func failing(_ f: ExplorationFailure) -> Execution {
        Execution(strategy: strategy, seed: seed, steps: steps, schedule: schedule, traceHash: traceHash,
                  threads: threads, failure: f, stepsByKind: stepsByKind)
    }
}

/// One part of a campaign's seeds: every `count`-th seed from the `index`-th.
public struct Shard: Equatable, Sendable {
    public let index: Int, count: Int
    public static let whole = Shard(0, 1)
    /// nil unless 0 ≤ index < count.
    public init?(index: Int, count: Int) {
        guard count >= 1, index >= 0, index < count else { return nil }
        self.index = index; self.count = count
    }
    private init(_ i: Int, _ n: Int) { index = i; count = n }
    /// Parses `K/N`.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let k = Int(parts[0]), let n = Int(parts[1]), n <= 1_000_000 else { return nil }
        self.init(index: k, count: n)
    }
    public var description: String { "\(index)/\(count)" }
    /// The seeds of `range` this shard runs, in order.
    public func seeds(in range: Range<UInt64>) -> StrideTo<UInt64> {
        let first = range.lowerBound.addingReportingOverflow(UInt64(index))
        if first.overflow || first.partialValue >= range.upperBound { return stride(from: range.upperBound, to: range.upperBound, by: 1) }
        return stride(from: first.partialValue, to: range.upperBound, by: UInt64.Stride(count))
    }
    /// The seed of this shard's `n`-th execution (from 0) in `range`.
    public func seed(ofExecution n: Int, in range: Range<UInt64>) -> UInt64 {
        range.lowerBound &+ UInt64(index) &+ UInt64(n) &* UInt64(count)
    }
}

/// A campaign: many executions of one program.
public struct ExplorationReport: Sendable {
    public var executions = 0
    public var steps = 0
    public var seconds = 0.0
    /// The trace hashes seen (shards of a campaign merge their sets).
    public var traceHashes = Set<UInt64>()
    /// Distinct trace hashes seen: how many different executions the campaign covered.
    public var distinctExecutions: Int { traceHashes.count }
    /// The first failed execution, if any.
    public var failure: Execution?
    /// PCT's expected execution length (its change points fall in 1…k): the length of one
    /// round-robin execution, measured first, so a seed's execution does not depend on which
    /// seeds ran before it.
    public var pctSteps = 0
    /// The last execution run.
    public var last: Execution?
    public var longest = 0
    /// A depth-first search ran out of schedules (every one within its preemption bound,
    /// unless its sleep sets skipped some).
    public var exhausted = false
    /// The campaign stopped at its time budget before its last seed.
    public var stoppedByTime = false
    /// Depth-first executions whose end repeated an explored interleaving in another order
    /// (every enabled thread asleep at some step).
    public var redundant = 0
    public init() {}
    /// The report of one execution (a replay).
    public init(_ e: Execution) {
        executions = 1; steps = e.steps; traceHashes = [e.traceHash]; longest = e.steps; last = e
        failure = e.failure == nil ? nil : e
    }
}

/// Deterministic exploration of thread interleavings of the real code.
///
/// Every model thread of a run (the body itself, and every `ModelThread` it starts, directly
/// or through the model: CPU threads, device threads) runs one at a time. At each
/// synchronization point that MMSync reports — locks, rwsems, bit and page locks, seqcounts,
/// atomics, waits and wake-ups, thread start and exit, sleeps — the strategy picks the next
/// thread. The production code is unchanged: the same functions run here and in normal runs.
///
/// The model threads run as execution contexts on the thread that calls `run` (see
/// `ExecutionContext`). One exploration runs at a time in a process. When an execution fails
/// (a deadlock, a bound passed, a failed check), its waiting threads' contexts are left
/// suspended for good: their stacks, and what their frames hold, stay allocated.
public enum Explorer {
    /// Serializes explorations (the scheduler hook is process-wide).
    nonisolated(unsafe) static let gate: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    /// Runs `body` once under the explorer. `expectedSteps` sizes PCT's change points (the
    /// length of a typical execution). The body runs on a model thread of its own (thread 0);
    /// it must join the threads it starts.
    /// `checkEveryStep`: run the checks the body registers (`Sync.addStepCheck`) at every
    /// scheduling decision.
    public static func run(strategy: Strategy, seed: UInt64, maxSteps: Int = 1_000_000, retryBound: Int = 1_000,
                           expectedSteps: Int = 1_000, checkEveryStep: Bool = false, _ body: @escaping () throws -> Void) -> Execution {
        run(strategy: strategy, seed: seed, maxSteps: maxSteps, retryBound: retryBound, expectedSteps: expectedSteps,
            checkEveryStep: checkEveryStep, search: nil, body)
    }

    /// `run`, with the depth-first search a `.dfs` campaign carries from one execution to the
    /// next (nil: a fresh one, whose first execution runs).
    static func run(strategy: Strategy, seed: UInt64, maxSteps: Int, retryBound: Int, expectedSteps: Int,
                    checkEveryStep: Bool, search: DepthFirstSearch?, _ body: @escaping () throws -> Void) -> Execution {
        precondition(!ExecutionContext.onCarrier, "Explorer.run called from a model thread of a running exploration")
        pthread_mutex_lock(gate); defer { pthread_mutex_unlock(gate) }
        precondition(Sync.scheduler == nil, "Explorer.run: an explorer scheduler is already installed")
        let picker: any Picker
        switch strategy {
        case .random: picker = RandomPicker(seed: seed)
        case .pct(let d): picker = PCTPicker(seed: seed, depth: d, steps: expectedSteps)
        case .replay(let s): picker = ReplayPicker(schedule: s)
        case .roundRobin: picker = RoundRobinPicker()
        case .dfs(let p, let r): picker = DFSPicker(search: search ?? DepthFirstSearch(bound: p, reduction: r))
        }
        let sched = ExplorerScheduler(picker: picker, maxSteps: maxSteps, retryBound: retryBound, checkEveryStep: checkEveryStep)
        ModelThread.startInExplorer = { name, body in sched.start(name: name, body) }
        // Lockdep's reports (when it is on) are failed checks of the execution. Each execution
        // starts with an empty graph, so a report is this execution's and replays alone.
        let savedReport = Lockdep.onReport
        if Lockdep.enabled {
            Lockdep.enable()
            Lockdep.onReport = { r in
                sched.lock()
                if !sched.over { sched.fail(.check, "\(r)\n" + r.sites.map { "  at \($0)" }.joined(separator: "\n") + "\n" + sched.describeThreads()) }
                sched.unlock()
            }
        }
        defer { Lockdep.onReport = savedReport }
        Sync.scheduler = sched
        // The body is thread 0: the first thread started (like any model thread). Its captures
        // go while it is still scheduled.
        var pending: (() throws -> Void)? = body
        ModelThread.spawn(name: "main") {
            var thrown: Error?
            do { try pending?() } catch { thrown = error }
            pending = nil
            if let thrown { sched.lock(); sched.fail(.check, "\(thrown)"); sched.unlock() }
        }.detach()

        // This thread is the carrier: it runs the execution's threads as its contexts, and
        // resumes once the execution is over and nothing of it runs any more (a thread that
        // failed a lockdep check runs on to its next point first).
        sched.runToEnd()
        sched.lock()
        let execution = Execution(strategy: strategy, seed: seed, steps: sched.step, schedule: sched.schedule,
                                  traceHash: sched.hash.value, threads: sched.threads.count,
                                  failure: sched.failure.map { ExplorationFailure(kind: $0.kind, message: $0.message) },
                                  stepsByKind: Dictionary(uniqueKeysWithValues: sched.kindCounts.enumerated().compactMap { i, n in
                                      guard n > 0, let k = SyncPointKind(rawValue: UInt8(i & 63)) else { return nil }
                                      return ((i >= 64 ? "blocked " : "") + "\(k)", n)
                                  }))
        sched.unlock()
        Sync.scheduler = nil
        ModelThread.startInExplorer = nil
        return execution
    }

    /// Runs `body` once per seed in `seeds`, stopping at the first failure (or after `seconds`).
    /// `progress` is called after each execution with the report so far. Under `.dfs` the
    /// executions follow the search (at most one per seed, the seed naming it by index) and the
    /// campaign also stops when the search space is exhausted (`report.exhausted`).
    /// `shard` runs one part of the seeds (every `count`-th from the `index`-th): the shards of
    /// a campaign together run its seeds, each seed's execution the same as in the whole.
    public static func explore(strategy: Strategy, seeds: Range<UInt64>, shard: Shard = .whole, maxSteps: Int = 1_000_000,
                               retryBound: Int = 1_000, seconds limit: Double? = nil, checkEveryStep: Bool = false,
                               progress: ((ExplorationReport) -> Void)? = nil,
                               _ body: @escaping () throws -> Void) -> ExplorationReport {
        var report = ExplorationReport()
        let t0 = monotonicNanoseconds()
        if case .pct = strategy {
            report.pctSteps = max(1, run(strategy: .roundRobin, seed: 0, maxSteps: maxSteps, retryBound: retryBound, body).steps)
        }
        var search: DepthFirstSearch?
        if case .dfs(let p, let r) = strategy {
            precondition(shard == .whole, "Explorer.explore: a depth-first search runs its executions in order and does not shard")
            search = DepthFirstSearch(bound: p, reduction: r)
        }
        for seed in shard.seeds(in: seeds) {
            let e = run(strategy: strategy, seed: seed, maxSteps: maxSteps, retryBound: retryBound,
                        expectedSteps: report.pctSteps, checkEveryStep: checkEveryStep, search: search, body)
            report.executions += 1
            report.last = e
            report.steps += e.steps
            report.longest = max(report.longest, e.steps)
            report.traceHashes.insert(e.traceHash)
            report.seconds = Double(monotonicNanoseconds() - t0) / 1e9
            progress?(report)
            if e.failure != nil { report.failure = e; break }
            if let search {
                let more = search.advance()
                report.redundant = search.redundant
                if let (reached, expected) = search.ended {
                    // The program did not repeat the prefix it was given: not a search result.
                    report.failure = e.failing(ExplorationFailure(kind: .diverged, message:
                        "the execution ended after \(reached) choices, before the \(expected) the search replays: the program does not repeat itself"))
                    break
                }
                if !more { report.exhausted = true; break }
            }
            if let limit, report.seconds >= limit { report.stoppedByTime = true; break }
        }
        return report
    }
}
