#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MMSync
import Synchronization

/// One model thread as the scheduler sees it.
final class ExplorerThread: @unchecked Sendable {
    enum State: Equatable { case runnable, blocked, finished }
    let id: Int
    let name: String
    @exclusivity(unchecked) var state = State.runnable
    /// What it waits for while blocked: the kind of wait and the object (a lock, a wait queue).
    @exclusivity(unchecked) var blockedKind = SyncPointKind.wait
    @exclusivity(unchecked) var blockedObject: UnsafeRawPointer?
    @exclusivity(unchecked) var timed = false
    @exclusivity(unchecked) var timedOut = false
    /// Its lockdep stack of held locks (when lockdep is on), for failure reports.
    @exclusivity(unchecked) var lockdepStack: AnyObject?
    /// Its last steps, newest last (for failure reports): step, kind, object, blocked.
    @exclusivity(unchecked) var recent: [(step: Int, kind: SyncPointKind, object: UInt, blocked: Bool)] = []
    /// The execution context it runs on (the carrier's OS thread switches to it when it is
    /// this thread's turn); nil only when no stack could be had.
    @exclusivity(unchecked) var context: ExecutionContext?
    /// What it runs, until it starts (the model thread's body, ending with its join's completion).
    @exclusivity(unchecked) var body: (() -> Void)?
    /// The execution it belongs to (alive while any of its threads runs: the caller of
    /// `Explorer.run` holds it until the execution is over).
    unowned(unsafe) let scheduler: ExplorerScheduler

    init(id: Int, name: String, scheduler: ExplorerScheduler) {
        self.id = id; self.name = name; self.scheduler = scheduler
    }

    /// The objects of its last atomic steps (stores and read-modify-writes, including failed
    /// compare-exchanges: loads are no points), distinct, newest last, kept only while a
    /// describer is registered: what it changed, for failure reports. A step is recorded at
    /// its point, before the operation: a parked thread's newest one is about to happen.
    @exclusivity(unchecked) var changed: [UInt] = []

    func note(_ step: Int, _ kind: SyncPointKind, _ object: UnsafeRawPointer?, _ blocked: Bool, changes: Bool) {
        if recent.count == ExplorerThread.recentLimit { recent.removeFirst() }
        let o = UInt(bitPattern: object)
        recent.append((step, kind, o, blocked))
        if changes && kind == .atomic && o != 0 {
            if let i = changed.lastIndex(of: o) { changed.remove(at: i) }
            else if changed.count == ExplorerThread.changedLimit { changed.removeFirst() }
            changed.append(o)
        }
    }
    static let recentLimit = 8
    static let changedLimit = 32
}

/// Why an execution failed.
public enum FailureKind: String, Sendable, Codable {
    /// Every live thread waits for another (who waits on what is in the message).
    case deadlock
    /// The execution passed its step bound: a livelock, or a run too long for the bound.
    case livelock
    /// A check failed: the body threw, or an invariant or expectation did not hold.
    case check
    /// The body returned while threads it started wait forever.
    case threadsLeftRunning = "threads-left-running"
    /// A replay could not follow its schedule.
    case diverged
    /// The body did something the explorer cannot run (more threads than a schedule can name).
    case unsupported
}

/// The entry of every model thread's context.
private let explorerThreadEntry: @convention(c) (UnsafeMutableRawPointer?) -> Void = { raw in
    ExecutionContext.switchForGood(ExplorerScheduler.runThread(raw!))
}

/// The scheduler of one execution: model threads run one at a time, and at every
/// synchronization point (`Sync.point`, `Sync.spinWait`, waits) the picker chooses who runs
/// next. A thread that reports itself blocked is not picked again until another thread acts
/// on the object it waits for (or, when every thread is blocked, once more to re-check); when
/// all are blocked after that, it is a deadlock.
///
/// Every model thread is an execution context on one OS thread, the carrier (the caller of
/// `Explorer.run`): a hand-off saves the running context and resumes the chosen one, and a
/// context switches back to the carrier only once the execution is over.
///
/// Locking: `mutex` guards every field (of the threads too); it is released across every
/// switch. A thread runs model code only while `turn` holds its id. The fields skip Swift's
/// dynamic exclusivity checks: the mutex and the one running context already order every
/// access, and a hand-off touches most of them.
final class ExplorerScheduler: SyncScheduler, @unchecked Sendable {
    let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @exclusivity(unchecked) var threads: [ExplorerThread] = []
    /// The id of the thread whose turn it is (-1 once the execution is over).
    @exclusivity(unchecked) var turn = 0
    /// The carrier's own context: what a thread switches to when the execution is over.
    let carrier: ExecutionContext
    @exclusivity(unchecked) var step = 0
    let maxSteps: Int
    @exclusivity(unchecked) var picker: any Picker
    @exclusivity(unchecked) var schedule = Schedule()
    @exclusivity(unchecked) var hash = TraceHash()
    @exclusivity(unchecked) var failure: (kind: FailureKind, message: String)?
    /// Steps per `SyncPointKind` (raw value), blocked ones at +64.
    @exclusivity(unchecked) var kindCounts = [Int](repeating: 0, count: 128)
    /// Set when the execution is over (all threads finished, or a failure): the carrier
    /// resumes.
    @exclusivity(unchecked) var over = false
    /// The model thread holding `mutex` (0: none), for the locking assertions.
    @exclusivity(unchecked) var holder: UInt64 = 0

    /// The thread a hand-off chose, to be switched to once the giver has released the mutex.
    @exclusivity(unchecked) var pendingWake: ExplorerThread?

    func lock() { pthread_mutex_lock(mutex); holder = currentThreadID() }
    func unlock() {
        holder = 0
        pthread_mutex_unlock(mutex)
    }
    /// Switches to the thread a hand-off chose (or, with none, to the carrier: the execution
    /// is over) and returns when `t` is switched to again. Locking: caller holds `mutex`;
    /// holds it again on return.
    func sleep(_ t: ExplorerThread) {
        assertHeld()
        let next = pendingWake
        pendingWake = nil
        unlock()
        t.context!.switchTo(contextAfter(next))
        lock()
    }
    func assertHeld() { assert(holder == currentThreadID(), "explorer: scheduler mutex not held") }
    func assertNotHeld() { assert(holder != currentThreadID(), "explorer: scheduler mutex already held") }
    /// Steps at which a thread ran that could change what a blocked thread waits for.
    @exclusivity(unchecked) var progressSinceAllBlocked = true
    /// Threads registered and not finished. While it is 1 there is no choice to make and a
    /// point costs almost nothing (a machine's set-up, before its threads start). Written only
    /// by the running thread (start, exit), so that thread may read it without the mutex;
    /// only threads of this execution read it (`me()` comes first).
    @exclusivity(unchecked) var live = 0

    /// Rounds of one retry loop past which it is a livelock.
    let retryBound: Int

    /// Threads one execution may start: a schedule records each step's thread as a byte.
    static let maxThreads = 256

    /// Whether the step checks the execution registers run (`Sync.addStepCheck`).
    let checkEveryStep: Bool
    /// The registered step checks, run at every scheduling decision. Guarded by `mutex`.
    @exclusivity(unchecked) var stepChecks: [() -> [String]] = []
    /// The registered object describers, for failure reports. Guarded by `mutex`.
    @exclusivity(unchecked) var describers: [(UnsafeRawPointer) -> String?] = []
    /// `runnableIDs`' buffer. Guarded by `mutex`.
    @exclusivity(unchecked) var enabledBuffer: [Int] = []

    init(picker: any Picker, maxSteps: Int, retryBound: Int, checkEveryStep: Bool = false) {
        self.picker = picker
        self.maxSteps = maxSteps
        self.retryBound = retryBound
        self.checkEveryStep = checkEveryStep
        mutex = .allocate(capacity: 1); pthread_mutex_init(mutex, nil)
        carrier = ExecutionContext.beginCarrier()
    }
    deinit {
        pthread_mutex_destroy(mutex); mutex.deallocate()
    }

    /// The calling model thread in this execution, or nil for a thread no execution runs (an
    /// OS thread other than the carrier, or the carrier's own context).
    func me() -> ExplorerThread? {
        guard let p = ExecutionContext.runningOwner else { return nil }
        let t = Unmanaged<ExplorerThread>.fromOpaque(p).takeUnretainedValue()
        precondition(t.scheduler === self, "explorer: a thread of another execution is running")
        return t
    }

    /// Starts a model thread (on the spawning thread, during its step: ids follow program
    /// order): it gets an execution context that runs `body` from its first turn.
    /// Locking: takes `mutex`.
    func start(name: String, _ body: @escaping () -> Void) {
        assertNotHeld()
        lock(); defer { unlock() }
        let t = ExplorerThread(id: threads.count, name: name, scheduler: self)
        threads.append(t)
        live += 1
        guard t.id < Self.maxThreads else {
            // Never scheduled: the execution is over.
            if !over { fail(.unsupported, "a \(Self.maxThreads + 1)th thread (\(name)): the explorer runs at most \(Self.maxThreads) threads in one execution (a schedule names each with a byte); explore fewer rounds of a repeated concurrent block") }
            return
        }
        guard let c = ExecutionContext.make(entry: explorerThreadEntry, owner: Unmanaged.passUnretained(t).toOpaque()) else {
            if !over { fail(.unsupported, "no memory for the stack of thread \(t.id) \(name)") }
            return
        }
        t.context = c
        t.body = body
        picker.threadCreated(t.id)
    }

    /// What a thread's context runs: its first turn, its body, its exit. Returns the switch
    /// that leaves the context for good (to the next thread, or to the carrier when the
    /// execution is over). Nothing of it stays retained in the context's frames.
    @inline(never)
    static func runThread(_ raw: UnsafeMutableRawPointer) -> (OpaquePointer, OpaquePointer) {
        let t = Unmanaged<ExplorerThread>.fromOpaque(raw).takeUnretainedValue()
        let sched = t.scheduler
        sched.waitForTurn(t)
        runBody(t) // its captures go while the thread is still scheduled
        sched.exit(t)
        return sched.leave(t)
    }

    @inline(never)
    static func runBody(_ t: ExplorerThread) {
        let body = t.body
        t.body = nil
        body?()
    }

    /// The switch out of an exited thread's context. Locking: takes `mutex`.
    func leave(_ t: ExplorerThread) -> (OpaquePointer, OpaquePointer) {
        assertNotHeld()
        lock()
        let next = pendingWake
        pendingWake = nil
        unlock()
        return t.context!.prepareSwitch(to: contextAfter(next))
    }

    /// The context a switch goes to: the chosen thread's, or with none (the execution is
    /// over) the carrier's. Read after the mutex was released: only the running context
    /// changes these fields.
    private func contextAfter(_ next: ExplorerThread?) -> ExecutionContext {
        guard let next else {
            precondition(over, "explorer: a switch with no thread chosen while the execution runs")
            return carrier
        }
        return next.context!
    }

    /// Runs the execution on the calling thread, the carrier: switches to thread 0 and returns
    /// when the execution is over. Then gives the contexts of finished (and never started)
    /// threads back to the pool; a thread left waiting by a failed execution keeps its stack
    /// for good (its frames hold what it held). Locking: takes `mutex`.
    func runToEnd() {
        assertNotHeld()
        if let first = threads.first?.context { carrier.switchTo(first) }
        lock()
        precondition(over, "explorer: the carrier resumed before the execution was over")
        for t in threads {
            guard let c = t.context else { continue }
            if t.state == .finished || !c.started { c.recycle() }
            t.context = nil
        }
        unlock()
        carrier.endCarrier()
    }

    /// Parks the caller until it is scheduled (or forever, once the execution failed: its
    /// thread is abandoned). Locking: caller holds `mutex`.
    func park(_ t: ExplorerThread) {
        assertHeld()
        while turn != t.id || over { sleep(t) }
    }

    /// Waits for a newly started thread's first turn. Locking: takes `mutex`.
    func waitForTurn(_ t: ExplorerThread) {
        assertNotHeld()
        lock()
        if Lockdep.enabled { t.lockdepStack = Lockdep.currentStackHandle }
        park(t)
        unlock()
    }

    // MARK: SyncScheduler

    var controlsCurrentThread: Bool { ExecutionContext.runningOwner != nil }

    func schedulingPoint(_ kind: SyncPointKind, object: UnsafeRawPointer?) {
        guard let t = me() else { return }
        // One live thread (the caller: `live` is written only by the running thread): nothing
        // to choose and no one to re-enable.
        if live == 1 && !over { return }
        lock(); defer { unlock() }
        guard !over else { park(t); return }
        record(t, kind, object, blocked: false)
        // Whoever waits on this object (or on nothing in particular) may re-check now.
        for b in threads where b.state == .blocked && b !== t && (b.blockedObject == nil || b.blockedObject == object) {
            b.state = .runnable
        }
        progressSinceAllBlocked = true
        next(after: t)
    }

    func retrying(_ rounds: Int, _ what: @autoclosure () -> String) {
        guard let t = me() else { return }
        lock(); defer { unlock() }
        guard !over else { park(t); return }
        picker.yielded(t.id)
        guard rounds > retryBound else { return }
        failAndPark(t, .livelock, "\(what()) \(rounds) times (a retry loop past --retry-bound \(retryBound)) in thread \(t.id) \(t.name)\n" + describeThreads())
    }

    func blocked(_ kind: SyncPointKind, object: UnsafeRawPointer?) {
        _ = block(kind, object, timed: false)
    }

    /// Locking: takes `mutex`.
    func addObjectDescriber(_ describe: @escaping (UnsafeRawPointer) -> String?) {
        assertNotHeld()
        guard me() != nil else { return } // a thread this exploration does not run
        lock(); defer { unlock() }
        describers.append(describe)
    }

    /// Locking: takes `mutex`.
    func addStepCheck(_ check: @escaping () -> [String]) {
        assertNotHeld()
        guard checkEveryStep, me() != nil else { return }
        lock(); defer { unlock() }
        stepChecks.append(check)
    }

    func blockedTimed(_ kind: SyncPointKind, object: UnsafeRawPointer?) -> Bool {
        block(kind, object, timed: true)
    }

    private func block(_ kind: SyncPointKind, _ object: UnsafeRawPointer?, timed: Bool) -> Bool {
        guard let t = me() else { return false }
        lock(); defer { unlock() }
        guard !over else { park(t); return false }
        record(t, kind, object, blocked: true)
        t.state = .blocked
        t.blockedKind = kind; t.blockedObject = object; t.timed = timed; t.timedOut = false
        next(after: t)
        let out = t.timedOut
        t.timedOut = false
        return out
    }

    /// The thread's body returned: it leaves the schedule. Locking: takes `mutex`.
    func exit(_ t: ExplorerThread) {
        assertNotHeld()
        lock(); defer { unlock() }
        guard !over else {
            t.state = .finished
            return
        }
        record(t, .threadExit, nil, blocked: false)
        t.state = .finished
        live -= 1
        for b in threads where b.state == .blocked { b.state = .runnable }
        progressSinceAllBlocked = true
        if threads.allSatisfy({ $0.state == .finished }) {
            finish()
            return
        }
        next(after: t, leaving: true)
    }

    /// Ends the execution with a failure (the first one wins). Locking: caller holds `mutex`.
    func fail(_ kind: FailureKind, _ message: String) {
        assertHeld()
        if failure == nil { failure = (kind, message) }
        finish()
    }

    /// The running thread goes on to its next point, where it parks (or exits) and switches
    /// to the carrier.
    private func finish() {
        over = true
        turn = -1
        pendingWake = nil
    }

    /// Fails the execution and parks the caller (unless it is leaving). Locking: caller holds
    /// `mutex`.
    private func failAndPark(_ t: ExplorerThread, _ kind: FailureKind, _ message: String, leaving: Bool = false) {
        assertHeld()
        fail(kind, message)
        if !leaving { park(t) }
    }

    // MARK: stepping

    private func record(_ t: ExplorerThread, _ kind: SyncPointKind, _ object: UnsafeRawPointer?, blocked: Bool) {
        step += 1
        kindCounts[Int(kind.rawValue) + (blocked ? 64 : 0)] += 1
        hash.add(thread: t.id, kind: kind.rawValue &+ (blocked ? 128 : 0))
        t.note(step, kind, object, blocked, changes: !describers.isEmpty)
        picker.observed(thread: t.id, kind: kind, object: object, blocked: blocked)
    }

    /// Picks who runs after `t`'s step and hands over; returns when `t` runs again (or at once
    /// if it is picked). `leaving`: `t` exited and never runs again.
    /// Locking: caller holds `mutex`.
    private func next(after t: ExplorerThread, leaving: Bool = false) {
        assertHeld()
        if step >= maxSteps {
            failAndPark(t, .livelock, "no end within \(maxSteps) steps: a livelock, or a run longer than --max-steps\n" + describeThreads(), leaving: leaving)
            return
        }
        // Every other thread is stopped at a point: the step checks see no half-done change
        // of a Swift structure, only the model's own intermediate states.
        for check in stepChecks {
            let problems = check()
            guard problems.isEmpty else {
                failAndPark(t, .check, "after step \(step), broken at a step: " + problems.prefix(5).joined(separator: "; ") + "\n" + describeThreads(), leaving: leaving)
                return
            }
        }
        var enabled = runnableIDs()
        if enabled.isEmpty {
            // Every live thread is blocked. Let each re-check once (a wake-up the scheduler
            // could not attribute to its object); if none made progress since, time out a timed
            // wait; otherwise nobody can ever run: a deadlock.
            if progressSinceAllBlocked {
                progressSinceAllBlocked = false
                for b in threads where b.state == .blocked { b.state = .runnable }
            } else if let w = threads.first(where: { $0.state == .blocked && $0.timed }) {
                w.state = .runnable; w.timedOut = true
                progressSinceAllBlocked = true
            } else if threads[0].state == .finished {
                failAndPark(t, .threadsLeftRunning, "the body returned, and threads it started wait forever:\n" + describeThreads(), leaving: leaving)
                return
            } else {
                failAndPark(t, .deadlock, "every live thread waits:\n" + describeThreads(), leaving: leaving)
                return
            }
            enabled = runnableIDs()
        }
        guard let chosen = picker.pick(step: step, current: t.id, enabled: enabled) else {
            failAndPark(t, .diverged, "the schedule does not continue at choice \(step) (after step \(step)): runnable threads \(enabled)\n"
                        + describeThreads(), leaving: leaving)
            return
        }
        schedule.append(chosen)
        if chosen == t.id && !leaving { return }
        turn = chosen
        pendingWake = threads[chosen]
        if !leaving { park(t) }
    }

    /// The runnable threads' ids, in a buffer kept from step to step: a step allocates nothing
    /// (the hand-off's cost is the figure `hmm bench` compares with `swapcontext`) unless the
    /// picker kept the previous list, which then is copied.
    /// Locking: caller holds `mutex`.
    private func runnableIDs() -> [Int] {
        assertHeld()
        var ids = enabledBuffer
        enabledBuffer = []
        ids.removeAll(keepingCapacity: true)
        for t in threads where t.state == .runnable { ids.append(t.id) }
        enabledBuffer = ids
        return ids
    }

    /// Every thread's state: what it waits on (and who holds that lock, when lockdep knows),
    /// the locks it holds (lockdep on), its last steps, and the objects it changed that a
    /// registered describer names (the scenario's machine names page-table entries).
    func describeThreads() -> String {
        var lines: [String] = []
        // Lockdep records a lock when its acquisition starts: a thread blocked acquiring a lock
        // has it on its stack without holding it.
        let held = threads.map { t in
            let all = t.state == .finished ? [] : t.lockdepStack.map(Lockdep.heldLocks) ?? []
            guard t.state == .blocked, let o = t.blockedObject, all.last?.instance == o else { return all }
            return Array(all.dropLast())
        }
        for t in threads {
            let state: String
            switch t.state {
            case .finished: state = "finished"
            case .runnable: state = "runnable"
            case .blocked:
                var owner = ""
                if let o = t.blockedObject, let (u, lock) = threads.lazy.compactMap({ u in
                    u === t ? nil : held[u.id].first { $0.instance == o }.map { (u, $0) }
                }).first {
                    owner = " held by thread \(u.id) \(u.name): \(lock.description)"
                }
                state = "blocked on \(t.blockedKind)\(t.blockedObject.map { " @\($0)" } ?? "")\(owner)\(t.timed ? " (timed)" : "")"
            }
            lines.append("  thread \(t.id) \(t.name): \(state)")
            if !held[t.id].isEmpty { lines.append("    holds: " + held[t.id].map(\.description).joined(separator: "; ")) }
            for r in t.recent {
                lines.append("    step \(r.step): \(r.blocked ? "blocked on " : "")\(r.kind)\(r.object == 0 ? "" : " @0x" + String(r.object, radix: 16))")
            }
            // What its atomic steps changed (the newest perhaps about to) that a describer can
            // name: page-table entries, with their values now, newest last.
            let named = t.changed.compactMap { o -> String? in
                guard let p = UnsafeRawPointer(bitPattern: o) else { return nil }
                return describers.lazy.compactMap { $0(p) }.first
            }
            if !named.isEmpty { lines.append("    changed: " + named.suffix(8).joined(separator: "; ")) }
        }
        return lines.joined(separator: "\n")
    }
}
