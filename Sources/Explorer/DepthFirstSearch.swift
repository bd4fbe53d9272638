import MMSync

/// Bounded depth-first search over schedules (CHESS's iterative preemption bounding with
/// Godefroid's sleep sets), stateless: every execution runs the program from the start,
/// replays the choices of the previous one up to the deepest step with an alternative left,
/// takes that alternative, and goes on with the default choice (the running thread keeps
/// running: no preemption).
///
/// **Preemptions.** Switching away from a thread that could go on is a preemption; switching
/// when it blocks, exits or yields (a retry round) is free. Schedules with more than `bound`
/// preemptions are not explored (most concurrency bugs need at most two: Musuvathi & Qadeer,
/// PLDI 2007).
///
/// **Sleep sets.** A step of a thread is the code from its synchronization point to its next
/// one; it touches the lock taken at the first, the lock released before the second (a point
/// without an object, an atomic, a seqcount section, a wait or a thread's start or exit
/// touches everything: `contribution`). Two steps that touch disjoint objects
/// commute when every other shared access is protected by those objects (the program is data-race
/// free at the granularity of its points). After a thread's step has been
/// explored at a state, the sibling branches put it to sleep until a dependent step runs: the
/// same interleaving in another order is not explored again. A step's objects are known once
/// it ran (in the branch that explored it first), so the sleep set carries them.
///
/// Sleep sets are sound for an unbounded search, not under a preemption bound (Coons, Musuvathi
/// & McKinley, OOPSLA 2013): the interleaving a sleeping thread stands for may cost more
/// preemptions than the one it skips, and then no schedule of that class within the bound
/// runs. So `reduction` is opt-in (`dfs:P:sleep`), and only without it does an exhausted search
/// mean every schedule within the bound ran.
///
/// Locking: used by one exploration at a time; its picker is called under the scheduler's mutex.
final class DepthFirstSearch: @unchecked Sendable {
    let bound: Int
    let reduction: Bool

    /// Objects touched by one step, by identity (0 stands for "everything"). An object's
    /// identity is its rank in the order objects were first reached in the execution, the same
    /// in every execution that shares the prefix (addresses are not: each execution allocates
    /// its objects anew).
    typealias Footprint = [UInt]

    struct Frame {
        /// Threads that could run at this step, ascending.
        var enabled: [Int]
        /// The thread that took the previous step.
        var current: Int
        /// Whether switching away from `current` here is a preemption (it is enabled and did
        /// not just yield).
        var currentCanContinue: Bool
        var preemptionsBefore: Int
        /// Objects identified before this step: a footprint that names a later one (first
        /// reached during the step, in one branch) is not comparable across branches.
        var knownObjects: UInt
        /// Threads explored at this step, in order (the last one is this execution's choice),
        /// with their step's footprint once seen.
        var done: [(thread: Int, footprint: Footprint?)]
        /// Threads asleep here: their steps were explored in an earlier branch and commute
        /// with everything run since.
        var sleep: [(thread: Int, footprint: Footprint)]
        var chosen: Int { done[done.count - 1].thread }

        func preemptions(choosing t: Int) -> Int { preemptionsBefore + (currentCanContinue && t != current ? 1 : 0) }
    }

    var frames: [Frame] = []
    /// During an execution: the frame of the next choice.
    var position = 0
    /// Executions that ended with every enabled thread asleep at some step: their suffix
    /// repeats an explored interleaving (they still run to the end, and their checks count).
    var redundant = 0
    var sawRedundant = false
    /// Set when an execution ended before it reached the step its choices were replayed to: the
    /// program did not repeat itself (the search reports it as diverged).
    var ended: (reached: Int, expected: Int)?

    init(bound: Int, reduction: Bool) {
        self.bound = bound
        self.reduction = reduction
    }

    /// Prepares the next execution: the deepest frame with an unexplored, awake thread within
    /// the preemption bound takes it; frames below go. False when the space is exhausted.
    func advance() -> Bool {
        if sawRedundant { redundant += 1 }
        sawRedundant = false
        if position < frames.count {
            ended = (position, frames.count)
            return false
        }
        frames.removeSubrange(position...)
        position = 0
        var i = frames.count - 1
        while i >= 0 {
            let f = frames[i]
            if let t = f.enabled.first(where: { t in
                !f.done.contains { $0.thread == t } && !f.sleep.contains { $0.thread == t } && f.preemptions(choosing: t) <= bound
            }) {
                frames[i].done.append((t, nil))
                frames.removeSubrange((i + 1)...)
                return true
            }
            i -= 1
        }
        frames.removeAll()
        return false
    }

    /// What a point contributes to the footprint of the step that starts at it (`start`) or
    /// ends at it. An acquisition happens after its point (the step that starts there takes
    /// the lock), a release before it (the step that ends there dropped it); a blocked thread
    /// tried before its point and tries again after it. An atomic (a page-table entry, a
    /// counter), a seqcount section, a wait or wake-up (the waiter's condition reads plain
    /// state), a thread's start or exit and a point without an object order the plain reads
    /// others make without a point (a CPU's page-table walk, a seqcount reader's data), so they
    /// touch everything (0).
    static func contribution(_ kind: SyncPointKind, _ object: UnsafeRawPointer?, blocked: Bool, start: Bool) -> UInt? {
        let o = UInt(bitPattern: object)
        switch kind {
        case .lockAcquire, .rwsemRead, .rwsemWrite, .bitLockAcquire:
            return o == 0 ? 0 : (start || blocked ? o : nil)
        case .lockRelease, .rwsemRelease, .bitLockRelease:
            return o == 0 ? 0 : (!start || blocked ? o : nil)
        case .atomic, .seqWrite, .seqRead, .spin, .threadStart, .threadExit, .yield, .wait, .wake:
            return 0
        }
    }

    static func independent(_ a: Footprint, _ b: Footprint) -> Bool {
        if a.contains(0) || b.contains(0) { return false }
        return !a.contains { b.contains($0) }
    }
}

/// One execution's picker over a `DepthFirstSearch`.
struct DFSPicker: Picker {
    let search: DepthFirstSearch
    /// What each thread's last point contributes to its next step's footprint (nothing before
    /// its first point: what its first step reads was written before the thread was created,
    /// or under a lock its end point names).
    var pendingIdentity: [UInt?] = []
    /// The frame whose chosen step is running (its footprint completes at the next point).
    var running: Int?
    var yieldedThread = -1
    /// The thread whose last point blocked it: switching away from it is free even when the
    /// scheduler's re-check round made it runnable again.
    var blockedThread = -1
    /// Set when every enabled thread slept at a step: the rest of the execution repeats an
    /// explored interleaving, and its steps get no alternatives.
    var redundantTail = false
    /// Set when objects were numbered differently than in the execution that recorded the
    /// replayed frames (an address reused differently): footprints no longer compare, so no
    /// thread sleeps from then on.
    var identitiesDiverged = false
    /// Each object's identity in this execution (address → rank of first reach, from 1).
    var identities: [UInt: UInt] = [:]

    mutating func identity(_ address: UInt?) -> UInt? {
        guard let address else { return nil }
        if address == 0 { return 0 }
        if let id = identities[address] { return id }
        let id = UInt(identities.count + 1)
        identities[address] = id
        return id
    }

    init(search: DepthFirstSearch) { self.search = search }

    mutating func threadCreated(_ id: Int) { pendingIdentity.append(nil) }

    mutating func yielded(_ thread: Int) { yieldedThread = thread }

    mutating func observed(thread: Int, kind: SyncPointKind, object: UnsafeRawPointer?, blocked: Bool) {
        if let r = running, search.frames[r].chosen == thread {
            var footprint: DepthFirstSearch.Footprint = []
            if let s = pendingIdentity[thread] { footprint.append(s) }
            if let e = identity(DepthFirstSearch.contribution(kind, object, blocked: blocked, start: false)), !footprint.contains(e) {
                footprint.append(e)
            }
            search.frames[r].done[search.frames[r].done.count - 1].footprint = footprint
            running = nil
        }
        pendingIdentity[thread] = identity(DepthFirstSearch.contribution(kind, object, blocked: blocked, start: true))
        blockedThread = blocked ? thread : (blockedThread == thread ? -1 : blockedThread)
    }

    mutating func pick(step: Int, current: Int, enabled: [Int]) -> Int? {
        let yielded = yieldedThread == current || blockedThread == current
        yieldedThread = -1
        let s = search
        if s.position < s.frames.count {
            // Replaying the prefix (and the branch point's new choice).
            let f = s.frames[s.position]
            guard f.enabled == enabled, f.current == current else { return nil }
            if UInt(identities.count) != f.knownObjects { identitiesDiverged = true }
            running = s.position
            s.position += 1
            return f.chosen
        }
        // A new step: its sleep set follows from the previous one.
        var sleep: [(thread: Int, footprint: DepthFirstSearch.Footprint)] = []
        var preemptions = 0
        if let p = s.frames.last {
            preemptions = p.preemptions(choosing: p.chosen)
            if s.reduction, !identitiesDiverged, !redundantTail, let ran = p.done.last?.footprint {
                for e in p.sleep where DepthFirstSearch.independent(e.footprint, ran) { sleep.append(e) }
                for d in p.done.dropLast() {
                    if let fp = d.footprint, !fp.contains(where: { $0 > p.knownObjects }), DepthFirstSearch.independent(fp, ran),
                       !sleep.contains(where: { $0.thread == d.thread }) {
                        sleep.append((d.thread, fp))
                    }
                }
            }
        }
        let awake = enabled.filter { t in !sleep.contains { $0.thread == t } }
        let canContinue = enabled.contains(current) && !yielded
        let chosen: Int
        if awake.isEmpty {
            // Every enabled thread sleeps: this interleaving was explored in another order.
            // Finish the execution without adding choices.
            s.sawRedundant = true
            redundantTail = true
            chosen = canContinue ? current : (enabled.first { $0 > current } ?? enabled[0])
            sleep = []
        } else if canContinue && awake.contains(current) {
            chosen = current
        } else {
            chosen = awake.first { $0 > current } ?? awake[0]
        }
        var f = DepthFirstSearch.Frame(enabled: enabled, current: current, currentCanContinue: canContinue,
                                       preemptionsBefore: preemptions, knownObjects: UInt(identities.count),
                                       done: [(chosen, nil)], sleep: sleep)
        if redundantTail || f.preemptions(choosing: chosen) > s.bound {
            // No alternatives from here (a redundant tail, or a forced preemption past the bound: only
            // when the current thread sleeps): mark every thread explored.
            f.done = enabled.filter { $0 != chosen }.map { ($0, nil) } + [(chosen, nil)]
        }
        s.frames.append(f)
        running = s.position
        s.position += 1
        return chosen
    }
}
