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
    var state = State.runnable
    /// What it waits for while blocked: the kind of wait and the object (a lock, a wait queue).
    var blockedKind = SyncPointKind.wait
    var blockedObject: UnsafeRawPointer?
    var timed = false
    var timedOut = false
    /// Parked for good after the execution ended (the caller waits for every thread to be
    /// finished or quiet before it uninstalls the scheduler).
    var quiet = false
    /// Its lockdep stack of held locks (when lockdep is on), for failure reports.
    var lockdepStack: AnyObject?
    /// Its last steps, newest last (for failure reports): step, kind, object, blocked.
    var recent: [(step: Int, kind: SyncPointKind, object: UInt, blocked: Bool)] = []
    /// Posted when it is this thread's turn (a hand-off wakes one thread, after the giver has
    /// released the scheduler's mutex, so the woken thread never blocks on it).
    let sem: UnsafeMutablePointer<sem_t>
    /// The execution it belongs to (kept alive by the thread's own wrapper while it runs).
    unowned(unsafe) let scheduler: ExplorerScheduler

    init(id: Int, name: String, scheduler: ExplorerScheduler) {
        self.id = id; self.name = name; self.scheduler = scheduler
        sem = .allocate(capacity: 1)
        sem_init(sem, 0, 0)
    }
    deinit { sem_destroy(sem); sem.deallocate() }

    /// The objects of its last atomic steps (stores and read-modify-writes, including failed
    /// compare-exchanges: loads are no points), distinct, newest last, kept only while a
    /// describer is registered: what it changed, for failure reports. A step is recorded at
    /// its point, before the operation: a parked thread's newest one is about to happen.
    var changed: [UInt] = []

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

/// The scheduler of one execution: model threads run one at a time, and at every
/// synchronization point (`Sync.point`, `Sync.spinWait`, waits) the picker chooses who runs
/// next. A thread that reports itself blocked is not picked again until another thread acts
/// on the object it waits for (or, when every thread is blocked, once more to re-check); when
/// all are blocked after that, it is a deadlock.
///
/// Locking: `mutex` guards every field (`turn` is also read without it, by spinners); a thread
/// runs model code only while `turn` holds its id, and parks on its own semaphore otherwise.
final class ExplorerScheduler: SyncScheduler, @unchecked Sendable {
    let mutex: UnsafeMutablePointer<pthread_mutex_t>
    var threads: [ExplorerThread] = []
    /// The id of the thread whose turn it is (-1 once the execution is over). Written under
    /// the mutex; a parked thread may spin on it without the mutex.
    let turn = Atomic<Int>(0)
    /// How long a parked thread spins on `turn` before it sleeps: a hand-off to a spinning
    /// thread costs a cache-line transfer instead of a futex wake-up and a context switch.
    /// Only while the live threads fit the host's CPUs (plus one, the body usually waiting in
    /// a join): with more, spinners would take the CPU from the thread whose turn it is.
    static let spinNanoseconds: UInt64 = 20_000
    static let hostCPUs = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    var step = 0
    let maxSteps: Int
    var picker: any Picker
    var schedule = Schedule()
    var hash = TraceHash()
    var failure: (kind: FailureKind, message: String)?
    /// Steps per `SyncPointKind` (raw value), blocked ones at +64.
    var kindCounts = [Int](repeating: 0, count: 128)
    /// Set when the execution is over (all threads finished, or a failure): the caller wakes.
    var over = false
    let overCond: UnsafeMutablePointer<pthread_cond_t>
    /// Every model thread's identity, for the OS thread that runs it (one key for all
    /// executions: a thread left over from a failed execution is recognised as such).
    static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()
    /// The OS thread holding `mutex` (0: none), for the locking assertions.
    var holder: UInt64 = 0

    /// The thread a hand-off chose, to be woken when the mutex is released.
    var pendingWake: ExplorerThread?

    func lock() { pthread_mutex_lock(mutex); holder = currentThreadID() }
    /// Releases the mutex, then wakes the thread a hand-off chose (if any).
    func unlock() {
        let wake = pendingWake
        pendingWake = nil
        holder = 0
        pthread_mutex_unlock(mutex)
        if let wake { sem_post(wake.sem) }
    }
    /// Sleeps until `t`'s semaphore is posted, without the mutex. Locking: caller holds
    /// `mutex`; holds it again on return.
    func sleep(_ t: ExplorerThread) {
        assertHeld()
        if over && !t.quiet {
            // Parked for good: the caller may now uninstall the scheduler.
            t.quiet = true
            pthread_cond_broadcast(overCond)
        }
        let spin = !over && live <= ExplorerScheduler.hostCPUs + 1
        unlock()
        var spins = 0, deadline: UInt64 = 0
        while spin && turn.load(ordering: .acquiring) != t.id {
            spins &+= 1
            guard spins & 127 == 0 else { continue }
            let now = monotonicNanoseconds()
            if deadline == 0 { deadline = now &+ ExplorerScheduler.spinNanoseconds } else if now >= deadline { break }
        }
        // A post that arrives after a successful spin stays counted: the next sleep returns
        // at once, and its caller re-checks whose turn it is.
        if !spin || turn.load(ordering: .acquiring) != t.id {
            while sem_wait(t.sem) != 0 {} // EINTR
            lock()
        } else {
            // The giver set `turn` under the mutex and is about to release it: spin for it
            // rather than sleep in the kernel (a futex wait and wake-up cost more than the
            // rest of the hand-off).
            var tries = 0
            while pthread_mutex_trylock(mutex) != 0 {
                tries &+= 1
                if tries == 4096 { pthread_mutex_lock(mutex); break }
            }
            holder = currentThreadID()
        }
    }
    /// Waits on `cond`, releasing `mutex` meanwhile. Locking: caller holds `mutex`.
    func wait(_ cond: UnsafeMutablePointer<pthread_cond_t>) {
        assertHeld()
        holder = 0
        pthread_cond_wait(cond, mutex)
        holder = currentThreadID()
    }
    func assertHeld() { assert(holder == currentThreadID(), "explorer: scheduler mutex not held") }
    func assertNotHeld() { assert(holder != currentThreadID(), "explorer: scheduler mutex already held") }
    /// Steps at which a thread ran that could change what a blocked thread waits for.
    var progressSinceAllBlocked = true
    /// Threads registered and not finished. While it is 1 there is no choice to make and a
    /// point costs almost nothing (a machine's set-up, before its threads start). Written only
    /// by the running thread (register, exit), so that thread may read it without the mutex;
    /// only threads of this execution read it (`me()` comes first).
    var live = 0

    /// Rounds of one retry loop past which it is a livelock.
    let retryBound: Int

    /// Threads one execution may start: a schedule records each step's thread as a byte.
    static let maxThreads = 256

    /// Whether the step checks the execution registers run (`Sync.addStepCheck`).
    let checkEveryStep: Bool
    /// The registered step checks, run at every scheduling decision. Guarded by `mutex`.
    var stepChecks: [() -> [String]] = []
    /// The registered object describers, for failure reports. Guarded by `mutex`.
    var describers: [(UnsafeRawPointer) -> String?] = []
    /// `runnableIDs`' buffer. Guarded by `mutex`.
    var enabledBuffer: [Int] = []

    init(picker: any Picker, maxSteps: Int, retryBound: Int, checkEveryStep: Bool = false) {
        self.picker = picker
        self.maxSteps = maxSteps
        self.retryBound = retryBound
        self.checkEveryStep = checkEveryStep
        mutex = .allocate(capacity: 1); pthread_mutex_init(mutex, nil)
        overCond = .allocate(capacity: 1); pthread_cond_init(overCond, nil)
    }
    deinit {
        pthread_cond_destroy(overCond); overCond.deallocate()
        pthread_mutex_destroy(mutex); mutex.deallocate()
    }

    /// The calling OS thread's model thread in this execution, or nil for a thread no
    /// execution runs. A thread of an earlier, failed execution that is still running (it
    /// took steps after the failure, before its next point) parks here for good.
    func me() -> ExplorerThread? {
        guard let p = pthread_getspecific(ExplorerScheduler.key) else { return nil }
        let t = Unmanaged<ExplorerThread>.fromOpaque(p).takeUnretainedValue()
        if t.scheduler !== self { t.scheduler.abandon(t) }
        return t
    }

    /// Parks a thread of this (ended) execution for good. Locking: takes `mutex`.
    func abandon(_ t: ExplorerThread) -> Never {
        assertNotHeld()
        lock()
        precondition(over, "explorer: a thread of a running execution reached another's scheduler")
        while true { sleep(t) }
    }

    func bind(_ t: ExplorerThread) { pthread_setspecific(ExplorerScheduler.key, Unmanaged.passUnretained(t).toOpaque()) }

    /// Registers a new thread (on the spawning thread, during its step: ids follow program order).
    /// Locking: takes `mutex`.
    func register(name: String) -> ExplorerThread {
        assertNotHeld()
        lock(); defer { unlock() }
        let t = ExplorerThread(id: threads.count, name: name, scheduler: self)
        threads.append(t)
        live += 1
        guard t.id < Self.maxThreads else {
            // Never scheduled: the execution is over, and the thread parks at its first turn.
            if !over { fail(.unsupported, "a \(Self.maxThreads + 1)th thread (\(name)): the explorer runs at most \(Self.maxThreads) threads in one execution (a schedule names each with a byte); explore fewer rounds of a repeated concurrent block") }
            return t
        }
        picker.threadCreated(t.id)
        return t
    }

    /// Parks the caller until it is scheduled (or forever, once the execution failed: its
    /// thread is abandoned). Locking: caller holds `mutex`.
    func park(_ t: ExplorerThread) {
        assertHeld()
        while turn.load(ordering: .relaxed) != t.id || over { sleep(t) }
    }

    /// Waits for a newly started thread's first turn. Locking: takes `mutex`.
    func waitForTurn(_ t: ExplorerThread) {
        assertNotHeld()
        bind(t)
        lock()
        if Lockdep.enabled { t.lockdepStack = Lockdep.currentStackHandle }
        park(t)
        unlock()
    }

    // MARK: SyncScheduler

    var controlsCurrentThread: Bool {
        guard let p = pthread_getspecific(ExplorerScheduler.key) else { return false }
        return Unmanaged<ExplorerThread>.fromOpaque(p).takeUnretainedValue().scheduler === self
    }

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
            pthread_cond_broadcast(overCond)
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

    private func finish() {
        over = true
        // Every thread but the running one is parked (or not started, and will park): quiet.
        // The running one becomes quiet when it parks or exits.
        let running = turn.load(ordering: .relaxed)
        for t in threads where t.id != running && t.state != .finished { t.quiet = true }
        turn.store(-1, ordering: .releasing) // no spinner takes a turn any more
        pthread_cond_broadcast(overCond)
    }

    /// Whether every thread has finished or is parked for good (after `over`): nothing of
    /// this execution runs any more. Locking: caller holds `mutex`.
    var quiescent: Bool {
        assertHeld()
        return threads.allSatisfy { $0.state == .finished || $0.quiet }
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
        turn.store(chosen, ordering: .releasing)
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
