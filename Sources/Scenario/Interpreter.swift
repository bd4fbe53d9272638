import Devices
import HMM
import MMCore
import MMSync

/// An expectation that did not hold (exit status 1).
public struct ScenarioFailure: Error, CustomStringConvertible {
    public let location: SourceLocation
    public let message: String
    /// `file:line: expected …, got …`
    public var description: String { "\(location.file):\(location.line): \(message)" }
}

/// One problem found in a script, for structured reports (TAP YAML, JSON).
public struct ScenarioDiagnostic: Sendable, Equatable {
    public enum Kind: String, Sendable { case failure, malformed }
    public let kind: Kind
    public let file: String
    public let line: Int
    public let column: Int?
    public let message: String
    /// For failures "expected X, got Y": the two halves.
    public var expected: String? { split?.0 }
    public var got: String? { split?.1 }
    private var split: (String, String)? {
        guard message.hasPrefix("expected ") else { return nil }
        let chars = Array(message)
        let needle = Array(", got ")
        guard chars.count >= needle.count + 9 else { return nil }
        for i in stride(from: chars.count - needle.count, through: 9, by: -1) where Array(chars[i..<(i + needle.count)]) == needle {
            return (String(chars[9..<i]), String(chars[(i + needle.count)...]))
        }
        return nil
    }
    public static func == (a: Self, b: Self) -> Bool {
        a.kind == b.kind && a.file == b.file && a.line == b.line && a.column == b.column && a.message == b.message
    }
}

/// Every error of a script that failed checking (the first is the one thrown by `load`).
struct ScriptErrors: Error {
    let first: ScenarioSyntaxError
    let text: String
}

/// The outcome of one script.
public enum ScenarioOutcome: Equatable {
    case passed
    case skipped(String)
    case failed(String)      // exit 1
    case malformed(String)   // exit 2
    public var exitCode: Int32 {
        switch self { case .passed, .skipped: return 0; case .failed: return 1; case .malformed: return 2 }
    }
}

/// Interprets scenario scripts (see docs/scenario-language.md).
public final class ScenarioInterpreter {
    public struct Options {
        public var trace = false
        public var output: (String) -> Void = { print($0) }
        public var stats = false
        /// Print the counters as text lines after the script (off when a caller reports them).
        public var statsAsText = true
        /// Step budget of one script (lower it to bound fuzzing).
        public var maxSteps = 20_000_000
        /// Wall-clock budget of one script, in seconds (`--timeout`).
        public var timeoutSeconds: Double = 600
        /// Host memory for the machine's RAM and all buffers together (`--memory-budget`).
        public var memoryBudget: UInt64 = 4 << 30
        /// Print the final state (processes, VMAs, entries, devices, meminfo) before teardown.
        public var inspect = false
        /// A progress line on a terminal every two seconds (off under the explorer: its lock
        /// would add steps only when standard error is a terminal).
        public var progress = true
        /// Called with a failed check's message as soon as it fails, before the teardown (a
        /// model the failure left inconsistent may crash there: the explorer reports the
        /// failure with the crash).
        public var onFailure: ((String) -> Void)?
        public init() {}
    }

    /// The problems of the last run or check, in order.
    public private(set) var diagnostics: [ScenarioDiagnostic] = []
    /// The machine's counters at the end of the last run (when `options.stats`).
    public private(set) var finalStats: [(name: String, value: UInt64)] = []
    /// Host memory charged to the machine and buffers. Locking: `state`.
    var hostMemory: UInt64 = 0
    var deadline: UInt64 = 0

    let options: Options
    /// Bounds that keep any input from hanging the interpreter.
    static let maxRepeat: UInt64 = 1 << 24
    static let maxAccessBytes: UInt64 = 256 << 20
    static let maxIncludeDepth = 16
    static let maxParsedBytes = 16 << 20
    var parsedBytes = 0

    // Shared state. Locking: `state` guards every dictionary below.
    let state = Lock("scenario")
    var machine: Machine?
    var module: DmirrorModule?
    var variables: [String: UInt64] = [:]
    var processes: [String: MMCore.Process] = [:]
    var processOrder: [String] = []
    var currentProcess: String?
    var cpus: [ObjectIdentifier: CPU] = [:]
    var devices: [String: Dmirror] = [:]
    /// SVM devices by name, each bound to one address space. Locking: `state`.
    var svms: [String: SVMSpace] = [:]
    /// ODP NICs (each with its queue pair) and memory regions by name. Locking: `state`.
    var nics: [String: (nic: ODPDevice, qp: ODPQueuePair)] = [:]
    var mrs: [String: ODPMemoryRegion] = [:]
    var files: [String: ShmemFile] = [:]
    var buffers: [String: DmirrorBuffer] = [:]
    var gups: [String: (mm: AddressSpace, pages: [Page], pin: Bool)] = [:]
    let steps = AtomicCounter(0)
    let threadCounter = AtomicCounter(0)
    let outputLock = Lock("scenario-output")
    var lastProgress: UInt64 = 0
    var includeDepth = 0
    var skipReason: String?
    var machineMemory: UInt64 = 512 << 20
    /// Bytes of the machine's swap area (`machine swap=`; none by default).
    var machineSwap: UInt64 = 0
    var maxMapCount = 65_530
    /// Whether the machine gets the OOM killer (`machine oom_killer=1`).
    var machineOOMKiller = false
    /// `machine swap_file=1`: the swap area is a host file (a swap file: readahead, the swap
    /// cache kept) instead of host memory.
    var machineSwapFile = false
    /// `machine page_cluster=N` (`vm.page-cluster`), nil for the machine's default.
    var machinePageCluster: Int? = nil
    /// Processes whose OOM kill was reported.
    var oomReported: Set<String> = []

    public init(options: Options = Options()) { self.options = options }

    /// Runs one script file.
    public func run(path: String) -> ScenarioOutcome {
        do {
            let source = try readFile(path, at: nil)
            return run(source: source, file: path)
        } catch let e as ScenarioSyntaxError {
            return .malformed(e.description)
        } catch {
            return .malformed("\(path): \(error)")
        }
    }

    /// Runs a script given as text (`file` names it in messages). The whole script and its
    /// includes are parsed and checked first; nothing runs if any error is found.
    public func run(source: String, file: String) -> ScenarioOutcome {
        diagnostics = []
        finalStats = []
        let program: [Statement]
        do {
            program = try load(source, file: file)
        } catch let e as ScriptErrors {
            return .malformed(e.text)
        } catch let e as ScenarioSyntaxError {
            record([e])
            return .malformed(e.description)
        } catch {
            return .malformed("\(file): \(error)")
        }
        deadline = monotonicNanoseconds() &+ UInt64(max(0, min(options.timeoutSeconds, 1e9)) * 1e9)
        hostMemory = machineMemory
        defer { teardown() }
        do {
            try execute(program, Context(cpu: nil, locals: [:]))
            if let reason = skipReason { return .skipped(reason) }
            if options.inspect { inspectFinalState() }
            return .passed
        } catch let e as ScenarioSyntaxError {
            diagnostics = [ScenarioDiagnostic(kind: .malformed, file: e.location.file, line: e.location.line, column: e.location.column, message: e.message)]
            return .malformed(e.description)
        } catch let e as ScenarioFailure {
            diagnostics = [ScenarioDiagnostic(kind: .failure, file: e.location.file, line: e.location.line, column: e.location.column, message: e.message)]
            options.onFailure?(e.description)
            if options.inspect { inspectFinalState() }
            return .failed(e.description)
        } catch let e as SkipScenario {
            return .skipped(e.reason)
        } catch {
            return .malformed("\(file): \(error)")
        }
    }

    /// Checks a script file without running it (`hmm check`): every error, in order.
    public func check(path: String) -> [ScenarioSyntaxError] {
        diagnostics = []
        do {
            let source = try readFile(path, at: nil)
            _ = try load(source, file: path)
        } catch let e as ScenarioSyntaxError {
            if diagnostics.isEmpty { record([e]) }
        } catch {}
        return diagnostics.map { ScenarioSyntaxError(location: SourceLocation(file: $0.file, line: $0.line, column: $0.column ?? 1), message: $0.message) }
    }

    /// Most errors reported for one script (the rest are counted).
    static let maxErrorsShown = 50

    /// Parses and checks the whole script; throws one error that lists every problem found.
    func load(_ source: String, file: String) throws -> [Statement] {
        parseErrors = []
        let program = try parse(source, file: file)
        var checker = ScriptChecker()
        checker.check(program)
        // In the order of the text: files as first met, then line and column.
        var fileOrder: [String: Int] = [:]
        for e in parseErrors + checker.errors where fileOrder[e.location.file] == nil { fileOrder[e.location.file] = fileOrder.count }
        let all = (parseErrors + checker.errors).enumerated().sorted { a, b in
            let x = a.element.location, y = b.element.location
            return (fileOrder[x.file]!, x.line, x.column, a.offset) < (fileOrder[y.file]!, y.line, y.column, b.offset)
        }.map(\.element)
        guard all.isEmpty else {
            record(all)
            var lines = all.prefix(ScenarioInterpreter.maxErrorsShown).map(\.description)
            if all.count > ScenarioInterpreter.maxErrorsShown { lines.append("… and \(all.count - ScenarioInterpreter.maxErrorsShown) more errors") }
            throw ScriptErrors(first: all[0], text: lines.joined(separator: "\n"))
        }
        return program
    }

    func record(_ errors: [ScenarioSyntaxError]) {
        diagnostics = errors.map { ScenarioDiagnostic(kind: .malformed, file: $0.location.file, line: $0.location.line, column: $0.location.column, message: $0.message) }
    }

    /// Errors collected while parsing (every file of the script).
    var parseErrors: [ScenarioSyntaxError] = []

    func parse(_ source: String, file: String, depth: Int = 0) throws -> [Statement] {
        // One budget for the script and everything it includes, so fan-out cannot explode.
        parsedBytes += source.utf8.count
        guard parsedBytes <= ScenarioInterpreter.maxParsedBytes else {
            throw ScenarioSyntaxError(location: SourceLocation(file: file, line: 1, column: 1),
                                      message: "expected at most \(ScenarioInterpreter.maxParsedBytes) bytes of script including includes")
        }
        let tokens = try Lexer.tokenize(source, file: file, errors: &parseErrors)
        var parser = Parser(tokens: tokens, depth: depth) { [unowned self] path, loc, blockDepth in
            guard self.includeDepth < ScenarioInterpreter.maxIncludeDepth else {
                throw ScenarioSyntaxError(location: loc, message: "includes nested deeper than \(ScenarioInterpreter.maxIncludeDepth)")
            }
            self.includeDepth += 1
            defer { self.includeDepth -= 1 }
            let resolved = self.resolve(path, relativeTo: file)
            return try self.parse(try self.readFile(resolved, at: loc), file: resolved, depth: blockDepth)
        }
        let program = try parser.parseStatements(inBlock: false)
        parseErrors += parser.errors
        return program
    }

    func resolve(_ path: String, relativeTo file: String) -> String {
        if path.hasPrefix("/") { return path }
        if let slash = file.lastIndex(of: "/") { return String(file[...slash]) + path }
        return path
    }

    func readFile(_ path: String, at loc: SourceLocation?) throws -> String {
        guard let f = fopen(path, "rb") else {
            throw ScenarioSyntaxError(location: loc ?? SourceLocation(file: path, line: 1, column: 1), message: "cannot open '\(path)'")
        }
        defer { fclose(f) }
        var st = stat()
        if fstat(fileno(f), &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
            throw ScenarioSyntaxError(location: loc ?? SourceLocation(file: path, line: 1, column: 1), message: "expected a script file, '\(path)' is a directory")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes += chunk[0..<n]
            if bytes.count > Lexer.maxBytes { break }
        }
        if ferror(f) != 0 {
            throw ScenarioSyntaxError(location: loc ?? SourceLocation(file: path, line: 1, column: 1), message: "cannot read '\(path)'")
        }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw ScenarioSyntaxError(location: loc ?? SourceLocation(file: path, line: 1, column: 1), message: "expected UTF-8 text in '\(path)'")
        }
        return s
    }

    func teardown() {
        if options.stats, let m = state.withLock({ machine }) {
            finalStats = m.stats.snapshot().map { (name: $0.0, value: UInt64($0.1)) }
            if options.statsAsText {
                emit("stats:")
                for (name, value) in finalStats where value != 0 { emit("  \(name): \(value)") }
            }
        }
        let (devs, procs, gs) = state.withLock { (Array(devices.values), processOrder.compactMap { processes[$0] }, Array(gups.values)) }
        for g in gs { if g.pin { g.mm.unpinUserPages(g.pages) } else { g.mm.putUserPages(g.pages) } }
        for d in devs { d.close() }
        for s in state.withLock({ Array(svms.values) }) { try? s.device.shutdown() }
        for n in state.withLock({ Array(nics.values) }) { n.qp.destroy() }
        for r in state.withLock({ Array(mrs.values) }) { r.deregister() }
        for c in state.withLock({ Array(cpus.values) }) { c.detach() }
        for p in procs { p.exit() }
        state.withLock {
            devices.removeAll(); svms.removeAll(); nics.removeAll(); mrs.removeAll(); processes.removeAll(); processOrder.removeAll(); cpus.removeAll(); gups.removeAll()
            files.removeAll(); buffers.removeAll(); variables.removeAll()
            module = nil; machine = nil
        }
    }

    /// Per-thread execution context: the CPU of a `thread` block and loop variables.
    struct Context {
        var cpu: CPU?
        var locals: [String: UInt64]
        var process: String?
        /// The thread running the statement: 0 for the script, 1… for `thread` blocks.
        var thread = 0
        /// Inside a `concurrent` block (its page-table changes are credited to the block).
        var concurrent = false
    }

    struct SkipScenario: Error { let reason: String }

    // MARK: statements

    func execute(_ program: [Statement], _ ctx: Context) throws {
        var ctx = ctx
        for stmt in program { try execute(stmt, &ctx) }
    }

    func execute(_ stmt: Statement, _ ctx: inout Context) throws {
        let step = steps.add(1)
        if step & 0xFFFF == 0 { showProgress(step) }
        guard step <= options.maxSteps else {
            throw ScenarioFailure(location: location(of: stmt), message: "expected the script to finish within \(options.maxSteps) steps, got more")
        }
        if step & 0xFF == 0 || ctx.concurrent { try checkDeadline(at: location(of: stmt)) }
        switch stmt {
        case .letBinding(let name, let value):
            let v = try eval(value, ctx)
            ctx.locals[name.text] = v
            state.withLock { variables[name.text] = v }
        case .repeatBlock(_, let countTok, let variable, let body):
            let count = try eval(countTok, ctx)
            guard count <= ScenarioInterpreter.maxRepeat else {
                throw ScenarioSyntaxError(location: countTok.location, message: "expected a repeat count of at most \(ScenarioInterpreter.maxRepeat), got \(count)")
            }
            for i in 0..<count {
                // Every iteration costs a step, so empty nested loops are bounded too.
                let n = steps.add(1)
                guard n <= options.maxSteps else {
                    throw ScenarioFailure(location: location(of: stmt), message: "expected the script to finish within \(options.maxSteps) steps, got more")
                }
                if n & 0xFF == 0 { try checkDeadline(at: location(of: stmt)) }
                var inner = ctx
                if let v = variable { inner.locals[v.text] = i }
                for s in body { try execute(s, &inner) }
            }
        case .concurrent(let keyword, let threads):
            // Threads change the page tables at the same time: the changes are credited to the
            // block, not to whichever command happened to finish around them.
            if options.trace && !ctx.concurrent {
                let before = pageTableCensus()
                emit("\(keyword.location.file):\(keyword.location.line) t\(ctx.thread): concurrent (\(threads.count) threads)")
                defer { traceChanges(before, pageTableCensus()) }
                try runConcurrent(threads, ctx)
            } else {
                try runConcurrent(threads, ctx)
            }
        case .command(let name, let args, let bind, let expects):
            let cmd = Command(name: name, args: args, bind: bind, expects: expects)
            defer { reportOOMKills() }
            if options.trace && !ctx.concurrent {
                let before = pageTableCensus()
                defer { traceChanges(before, pageTableCensus()) }
                try dispatch(cmd, &ctx)
            } else {
                try dispatch(cmd, &ctx)
            }
        }
    }

    func location(of stmt: Statement) -> SourceLocation {
        switch stmt {
        case .command(let n, _, _, _): return n.location
        case .letBinding(let n, _): return n.location
        case .repeatBlock(let k, _, _, _): return k.location
        case .concurrent(let k, _): return k.location
        }
    }

    private func runConcurrent(_ threads: [ThreadBlock], _ ctx: Context) throws {
        var errors: [Error?] = Array(repeating: nil, count: threads.count)
        let errLock = Lock("scenario-errors")
        // Check every thread before starting any, so an error never leaves threads running.
        var prepared: [(Context, MMCore.Process)] = []
        for t in threads {
            var inner = ctx
            inner.concurrent = true
            for a in t.args {
                guard a.key?.text == "proc" else { throw ScenarioSyntaxError(location: a.location, message: "expected 'proc=NAME' after 'thread'") }
                inner.process = try resolveName(a.value, ctx)
            }
            prepared.append((inner, try process(named: inner.process, at: t.keyword.location)))
        }
        var workers: [ModelThread] = []
        defer { workers.forEach { $0.join() } }
        for (i, t) in threads.enumerated() {
            var (inner, proc) = prepared[i]
            let cpu = proc.makeCPU()
            inner.cpu = cpu
            inner.thread = threadCounter.add(1)
            let body = t.body
            workers.append(ModelThread.spawn(name: "scenario-thread\(i)") { [self] in
                do { try self.execute(body, inner) } catch { errLock.withLock { errors[i] = error } }
                cpu.detach()
            })
        }
        workers.forEach { $0.join() }
        workers.removeAll()
        for e in errors { if let e { throw e } }
    }

    // MARK: values

    func lookup(_ ctx: Context) -> (String) -> UInt64? {
        let locals = ctx.locals
        return { [unowned self] name in locals[name] ?? self.state.withLock { self.variables[name] } }
    }

    func eval(_ t: Token, _ ctx: Context) throws -> UInt64 { try Expression.evaluate(t, lookup(ctx)) }

    /// The process a command names with `proc=`, or the context's.
    /// What `t` names in `table`, one namespace's dictionary; a script error saying how such a
    /// name is made if it names nothing. Locking: takes `state`.
    func named<T>(_ t: Token, _ ctx: Context, _ ns: CommandSpec.Namespace,
                  _ table: KeyPath<ScenarioInterpreter, [String: T]>) throws -> T {
        state.assertNotHeld()
        let n = try resolveName(t, ctx)
        return try state.withLock {
            guard let v = self[keyPath: table][n] else {
                throw ScenarioSyntaxError(location: t.location, message: "expected \(ns.created), got '\(n)'")
            }
            return v
        }
    }

    func process(for cmd: Command, _ ctx: Context) throws -> MMCore.Process {
        try process(named: try cmd.option("proc").map { try resolveName($0, ctx) } ?? ctx.process, at: cmd.name.location)
    }

    func process(named name: String?, at loc: SourceLocation) throws -> MMCore.Process {
        try state.withLock {
            let n = name ?? currentProcess
            guard let n else { throw ScenarioSyntaxError(location: loc, message: "expected a process: create one with 'process NAME' first") }
            guard let p = processes[n] else { throw ScenarioSyntaxError(location: loc, message: "expected a known process, got '\(n)'") }
            return p
        }
    }

    /// The machine, created on first use with the configured memory.
    func theMachine(at loc: SourceLocation) throws -> Machine {
        try state.withLock {
            if let m = machine { return m }
            guard hostMemory <= options.memoryBudget else {
                throw ScenarioFailure(location: loc, message: "expected at most \(options.memoryBudget) bytes of host memory for the machine and buffers (--memory-budget), got \(hostMemory)")
            }
            do {
                let m = try Machine(memoryBytes: machineMemory, devicePfnSpaceBytes: 4 << 30, swapBytes: machineSwap,
                                    swapBacking: machineSwapFile ? .temporaryFile() : .memory)
                if let c = machinePageCluster { try m.memory.swap.setPageCluster(c) }
                m.maxMapCount = maxMapCount
                m.oomKillerEnabled = machineOOMKiller
                machine = m
                module = DmirrorModule(machine: m)
                // Under `hmm explore --check-every-step`: the machine's step invariants at
                // every scheduling decision.
                Sync.addStepCheck { [weak m] in m?.checkStepInvariants() ?? [] }
                // Failure reports name the page-table entries each thread changed.
                Sync.addObjectDescriber { [weak m] p in m?.describePageTableEntry(at: p) }
                return m
            } catch {
                throw ScenarioFailure(location: loc, message: "expected a machine of \(machineMemory) bytes, got \(error)")
            }
        }
    }

    /// The CPU a command runs on: the thread block's, or the process's main CPU.
    func cpu(for proc: MMCore.Process, _ ctx: Context) -> CPU {
        if let c = ctx.cpu, c.mm === proc.mm { return c }
        return state.withLock {
            if let c = cpus[ObjectIdentifier(proc)] { return c }
            let c = proc.makeCPU()
            cpus[ObjectIdentifier(proc)] = c
            return c
        }
    }

    /// `file:line tN: command-with-values = result` (N: 0 for the script, 1… for threads).
    func trace(_ cmd: Command, _ ctx: Context, _ result: String) {
        guard options.trace else { return }
        emit("\(cmd.name.location.file):\(cmd.name.location.line) t\(ctx.thread): \(evaluatedText(cmd, ctx)) = \(result)")
    }

    /// Fails the script once its wall-clock budget (`--timeout`) is spent.
    func checkDeadline(at loc: SourceLocation) throws {
        if monotonicNanoseconds() > deadline {
            throw ScenarioFailure(location: loc, message: "expected the script to finish within \(formatSeconds(options.timeoutSeconds)) s (--timeout), got more")
        }
    }

    /// A sleep that would end past the deadline fails now.
    func checkDeadline(_ cmd: Command, sleeping ns: UInt64) throws {
        if monotonicNanoseconds() &+ ns > deadline {
            throw ScenarioFailure(location: cmd.name.location, message: "expected the script to finish within \(formatSeconds(options.timeoutSeconds)) s (--timeout), got more")
        }
    }

    func formatSeconds(_ s: Double) -> String { s == s.rounded() ? String(Int(s)) : String(s) }

    /// Gives back host memory charged by `reserveHostMemory`.
    func releaseHostMemory(_ bytes: UInt64) {
        guard bytes > 0 else { return }
        state.withLock { hostMemory -= min(hostMemory, bytes) }
    }

    /// Charges `bytes` of host memory for the duration of `body` (a command's temporary data).
    func withHostMemory<T>(_ bytes: UInt64, at cmd: Command, _ body: () throws -> T) throws -> T {
        try reserveHostMemory(bytes, at: cmd)
        defer { releaseHostMemory(bytes) }
        return try body()
    }

    /// Charges `bytes` of host memory (a buffer, the machine's RAM), freeing `releasing`; an
    /// error at the command when the total would pass `--memory-budget`.
    func reserveHostMemory(_ bytes: UInt64, at cmd: Command, releasing: UInt64 = 0) throws {
        try state.withLock {
            let total = hostMemory - min(hostMemory, releasing) + bytes
            guard total <= options.memoryBudget else {
                throw ScenarioFailure(location: cmd.name.location,
                                      message: "expected at most \(options.memoryBudget) bytes of host memory for the machine and buffers (--memory-budget), got \(total)")
            }
            hostMemory = total
        }
    }

    /// On a terminal, long scripts show how far they got (every 2 s, on stderr).
    func showProgress(_ step: Int) {
        guard options.progress, isatty(2) != 0 else { return }
        let now = monotonicNanoseconds()
        let due = outputLock.withLock { () -> Bool in
            if lastProgress == 0 { lastProgress = now; return false }
            guard now - lastProgress >= 2_000_000_000 else { return false }
            lastProgress = now
            return true
        }
        if due {
            var text = "\u{1B}[2K\r… \(step) steps\r"
            text.withUTF8 { b in _ = write(2, b.baseAddress, b.count) }   // not the C `stderr` global (Swift 6)
        }
    }

    /// Output from any thread, one line at a time.
    func emit(_ line: String) { outputLock.withLock { options.output(line) } }

    /// Prints, once each, the processes the OOM killer killed (as the kernel log's "Out of
    /// memory: Killed process …").
    func reportOOMKills() {
        let killed: [(String, MMCore.Process)] = state.withLock {
            guard let m = machine, m.oomKillerEnabled else { return [] }
            let new = processOrder.compactMap { n in processes[n].flatMap { $0.mm.isOOMKilled && !oomReported.contains(n) ? (n, $0) : nil } }
            for (n, _) in new { oomReported.insert(n) }
            return new
        }
        for (n, p) in killed { emit("oom-kill: killed process \(n) (pid \(p.pid)), badness \(p.mm.oomBadnessWhenKilled) pages") }
    }
}

#if canImport(Glibc)
import Glibc
#endif
