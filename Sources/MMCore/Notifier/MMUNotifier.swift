import MMSync

/// Why a range is being invalidated (`enum mmu_notifier_event`).
public enum MMUNotifyEvent: Int, Sendable, CaseIterable, CustomStringConvertible {
    case unmap, clear, protectionVMA, protectionPage, softDirty, release, migrate, exclusive
    public var description: String {
        ["UNMAP", "CLEAR", "PROTECTION_VMA", "PROTECTION_PAGE", "SOFT_DIRTY", "RELEASE", "MIGRATE", "EXCLUSIVE"][rawValue]
    }
}

/// One invalidation (`struct mmu_notifier_range`).
public struct MMUNotifierRange: Sendable {
    public let start: UInt64
    public let end: UInt64
    public let event: MMUNotifyEvent
    /// For MIGRATE and EXCLUSIVE: the device that caused it (`owner`), so it can skip itself.
    public let owner: ObjectIdentifier?
    /// False when the invalidation comes from a context that cannot sleep (the OOM reaper).
    public let blockable: Bool
    public init(start: UInt64, end: UInt64, event: MMUNotifyEvent, owner: AnyObject? = nil, blockable: Bool = true) {
        self.start = start; self.end = end; self.event = event
        self.owner = owner.map { ObjectIdentifier($0) }; self.blockable = blockable
    }
    public func isOwned(by candidate: AnyObject) -> Bool { owner == ObjectIdentifier(candidate) }
}

/// A whole-address-space subscriber (`struct mmu_notifier`).
public protocol MMUNotifier: AnyObject {
    /// Before the page tables of the range change. Return false only if `!range.blockable` and
    /// the subscriber would have to sleep.
    func invalidateRangeStart(_ range: MMUNotifierRange) -> Bool
    func invalidateRangeEnd(_ range: MMUNotifierRange)
    /// The address space is going away (exit_mmap).
    func release(_ mm: AddressSpace)
}

/// The callback of an interval notifier (`mmu_interval_notifier_ops.invalidate`).
/// It must call `setSeq(currentSeq)` under the same driver lock its readers use for
/// `readRetry`, and return false only for a non-blockable range it cannot handle.
public typealias IntervalInvalidate = (_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ currentSeq: UInt64) -> Bool

/// What the first pass of a two-pass interval notifier did (`invalidate_start`'s return and
/// its `finish` pointer, Linux 7.2).
public enum IntervalInvalidationStart {
    /// The invalidation is complete (as a one-pass `invalidate` that returned true).
    case done
    /// Started (the device's entries are gone, its TLB shootdown issued): `finish` waits for
    /// it, and is called after every overlapping notifier has started (`invalidate_finish`).
    case finish(() -> Void)
    /// A non-blockable range that would have to sleep (`invalidate_start` returned false).
    case wouldBlock
}

/// The first pass of a two-pass interval notifier (`mmu_interval_notifier_ops.invalidate_start`):
/// the same duties as `IntervalInvalidate` (`setSeq` under the driver lock, no device access to
/// the range after it returns), except that waiting for the device may be left to the
/// returned finish, so several devices' shootdowns overlap.
public typealias IntervalInvalidateStart = (_ sub: MMUIntervalNotifier, _ range: MMUNotifierRange, _ currentSeq: UInt64) -> IntervalInvalidationStart

/// An interval notifier (`struct mmu_interval_notifier`): invalidations overlapping
/// [start, end) call `invalidate` (one pass), or `invalidateStart` and then, once every
/// overlapping notifier has started, the finish it returned (two passes, Linux 7.2's
/// `invalidate_start`/`invalidate_finish`); readers use `readBegin`/`readRetry` to detect them.
public final class MMUIntervalNotifier: @unchecked Sendable {
    public let start: UInt64
    public let end: UInt64
    let invalidate: IntervalInvalidate?
    let invalidateStart: IntervalInvalidateStart?
    /// Locking: written with `setSeq` under the driver's lock; read by `readRetry` under it.
    let invalidateSeq = AtomicWord(0)
    weak var subscriptions: MMUNotifierSubscriptions?
    public internal(set) weak var mm: AddressSpace?

    public init(start: UInt64, end: UInt64, invalidate: @escaping IntervalInvalidate) {
        self.start = start; self.end = end; self.invalidate = invalidate; invalidateStart = nil
    }

    /// A two-pass notifier.
    public init(start: UInt64, end: UInt64, invalidateStart: @escaping IntervalInvalidateStart) {
        self.start = start; self.end = end; invalidate = nil; self.invalidateStart = invalidateStart
    }

    /// Calls this notifier's first (or only) pass. Return: false if it would block; a
    /// finish to call after every overlapping notifier has started.
    @inline(__always) func callStart(_ range: MMUNotifierRange, _ seq: UInt64) -> (Bool, (() -> Void)?) {
        if let invalidate { return (invalidate(self, range, seq), nil) }
        switch invalidateStart!(self, range, seq) {
        case .done: return (true, nil)
        case .finish(let f): return (true, f)
        case .wouldBlock: return (false, nil)
        }
    }

    /// `mmu_interval_read_begin`: waits out an invalidation in progress on this interval and
    /// returns a sequence to pass to `readRetry`. Locking: no driver lock held (it may sleep).
    public func readBegin() -> UInt64 {
        Lockdep.assertNoSpinLockHeld()
        MMUNotifierSubscriptions.lockdepWaitForInvalidations()
        guard let subs = subscriptions else { return invalidateSeq.load() }
        subs.lock.lock()
        let seq = invalidateSeq.load()
        let invalidating = seq == subs.invalidateSeq
        subs.lock.unlock()
        if invalidating {
            subs.waitQueue.wait { subs.currentSeq != seq }
        }
        return seq
    }

    /// `mmu_interval_read_retry`: true if an invalidation started since `readBegin` returned
    /// `seq`. Locking: caller holds the driver lock that `invalidate` takes around `setSeq`.
    public func readRetry(_ seq: UInt64) -> Bool {
        assert(!Lockdep.enabled || Lockdep.holdsAny(.mutex), "readRetry: the driver lock must be held")
        return invalidateSeq.load() != seq
    }

    /// `mmu_interval_check_retry`: the same test without the lock (a hint only).
    public func checkRetry(_ seq: UInt64) -> Bool { invalidateSeq.load() != seq }

    /// `mmu_interval_set_seq`: called from `invalidate` under the driver lock.
    public func setSeq(_ seq: UInt64) { invalidateSeq.store(seq) }

    func overlaps(_ s: UInt64, _ e: UInt64) -> Bool { start < e && s < end }
}

/// Per-address-space notifier state (`struct mmu_notifier_subscriptions`), following Linux
/// 7.2's mm/mmu_notifier.c.
///
/// The sequence protocol: `invalidateSeq` starts at 2 and is odd while at least one
/// invalidation that overlaps some interval notifier is in progress (an invalidation that hits
/// no interval counts in `activeInvalidateRanges` but leaves the sequence even). Each
/// overlapping interval's callback sets that interval's sequence to the odd value; `readBegin`
/// on an interval whose sequence equals the current odd value waits until the last
/// invalidation ends. While the sequence is odd the set of intervals may not change: inserts
/// and removals are deferred to the end of the last invalidation (`deferred`), a removal
/// waiting for it. An interval inserted while any invalidation runs — even one that hit no
/// interval — starts with the current odd sequence (making it odd if it was even), so its
/// first `readBegin` waits for those invalidations to end.
/// Sendable: `lock` guards the intervals, subscribers and sequence.
public final class MMUNotifierSubscriptions: @unchecked Sendable {
    let lock = Lock("mmu_notifier")
    let waitQueue = WaitQueue()
    /// Locking: lock. Even = the interval set may change, odd = invalidating intervals.
    @exclusivity(unchecked) var invalidateSeq: UInt64 = 2
    /// Locking: lock. Invalidations started and not yet ended.
    @exclusivity(unchecked) var activeInvalidateRanges = 0
    /// Locking: lock. The intervals invalidations see, ordered by start as the kernel's
    /// interval tree visits them.
    @exclusivity(unchecked) var intervals: [MMUIntervalNotifier] = []
    /// Locking: lock. Inserts (`insert == true`) and removals waiting for the sequence to become
    /// even (`deferred_list`).
    var deferred: [(sub: MMUIntervalNotifier, insert: Bool)] = []
    /// Locking: lock. Whole-address-space subscribers (the kernel's hlist).
    @exclusivity(unchecked) var subscribers: [MMUNotifier] = []
    weak var mm: AddressSpace?
    /// The machine's counters, held strongly (set with `mm`): an invalidation counts in them
    /// without a weak load of `mm` each time.
    var machineStats: MMStats? { didSet { machineStatsRef = machineStats.map { .passUnretained($0) } } }
    /// `machineStats` uncounted (this object holds it): every invalidation counts without a
    /// retain and release of the one counter object all address spaces share.
    private var machineStatsRef: Unmanaged<MMStats>?
    let stats = AtomicCounter(0)
    /// Test hook: runs inside `invalidateRangeStart` after the range is counted as active and
    /// before any callback, with no lock held (forces the insert-during-invalidation window).
    package var afterRangeActivated: ((MMUNotifierRange) -> Void)?

    var currentSeq: UInt64 { lock.withLock { invalidateSeq } }

    /// `mmu_notifier_register`.
    public func register(_ n: MMUNotifier) { lock.withLock { subscribers.append(n) } }
    public func unregister(_ n: MMUNotifier) { lock.withLock { subscribers.removeAll { $0 === n } } }

    /// `mmu_interval_notifier_insert`. EOVERFLOW for an empty or wrapped range (the kernel's
    /// zero length), EINVAL once the address space has exited.
    public func insert(_ sub: MMUIntervalNotifier) throws(Errno) {
        guard sub.start < sub.end else { throw .EOVERFLOW }
        lock.lock()
        if let mm, mm.isDead { lock.unlock(); throw .EINVAL }
        sub.subscriptions = self
        sub.mm = mm
        if activeInvalidateRanges > 0 {
            if invalidateSeq & 1 == 1 {
                deferred.append((sub, true))     // the tree is being walked: insert at the end
            } else {
                invalidateSeq |= 1               // invalidations run that hit no interval yet
                addInterval(sub)
            }
            sub.invalidateSeq.store(invalidateSeq)
        } else {
            sub.invalidateSeq.store(invalidateSeq &- 1)
            addInterval(sub)
        }
        lock.unlock()
    }

    /// Locking: lock held.
    private func addInterval(_ sub: MMUIntervalNotifier) {
        lock.assertHeld()
        intervals.insert(sub, at: intervals.firstIndex { $0.start > sub.start } ?? intervals.count)
    }

    /// `mmu_interval_notifier_remove`: after it returns, `invalidate` is not running and will
    /// not be called again for `sub`. During an invalidation epoch (odd sequence) the removal is
    /// deferred and waited for; a still-pending insert is simply dropped.
    /// With `wait: false` (a notifier whose owner is going away, possibly inside an
    /// invalidation) a deferred removal is not waited for: `invalidate` may still be called
    /// until the invalidation epoch ends.
    /// Locking: must not be called from an invalidate callback (it may wait for it), unless
    /// `wait` is false.
    public func remove(_ sub: MMUIntervalNotifier, wait: Bool = true) {
        Lockdep.assertNoSpinLockHeld(); lock.assertNotHeld()
        lock.lock()
        var waitFor: UInt64?
        if invalidateSeq & 1 == 1 {
            if let i = deferred.firstIndex(where: { $0.sub === sub && $0.insert }) {
                deferred.remove(at: i)
            } else if intervals.contains(where: { $0 === sub }) {
                deferred.append((sub, false))
                waitFor = invalidateSeq
            }
        } else {
            intervals.removeAll { $0 === sub }
        }
        lock.unlock()
        guard wait else { return } // `subscriptions` stays set until the deferred removal
        if let seq = waitFor { waitQueue.wait { self.currentSeq != seq } }
        sub.subscriptions = nil
    }

    /// Starts an invalidation (`__mmu_notifier_invalidate_range_start`): every overlapping
    /// interval's callback, then every subscriber's start. Returns false only for a
    /// non-blockable range: at the first interval that would block (later intervals and the
    /// subscribers are not called), or when a subscriber would block (every subscriber is
    /// called, then every subscriber's end, as the kernel backs out). Either way the core has
    /// already ended what it started: the caller must not call `invalidateRangeEnd`.
    /// Locking: must not be called with a page-table lock held (callbacks may sleep).
    /// `__mmu_notifier_invalidate_range_start_map` (a lockdep map, not a lock).
    public static let invalidateMapClass = Lockdep.LockClass(.seqcount, "mmu_notifier_invalidate_range_start")

    /// A wait for invalidations to end: the map acquired and released at once.
    static func lockdepWaitForInvalidations(file: StaticString = #fileID, line: UInt = #line) {
        guard Lockdep.enabled else { return }
        let site = Lockdep.Site(file, line)
        Lockdep.mayWait(site)
        Lockdep.acquire(invalidateMapClass, nil, site)
        Lockdep.release(invalidateMapClass, nil, site)
    }

    @discardableResult
    public func invalidateRangeStart(_ range: MMUNotifierRange) -> Bool {
        // The kernel's might_sleep() here: a blockable invalidation's callbacks may sleep, so
        // none may run under a spin lock (lockdep reports it).
        let site = Lockdep.Site(#fileID, #line)
        if Lockdep.enabled && range.blockable { Lockdep.mayWait(site) }
        // The kernel's __mmu_notifier_invalidate_range_start_map: the callbacks run "inside"
        // it, and a reader waiting in readBegin acquires it too, so a lock held around
        // readBegin that a callback takes is reported as the deadlock it can be.
        if Lockdep.enabled { Lockdep.acquire(MMUNotifierSubscriptions.invalidateMapClass, nil, site) }
        defer { if Lockdep.enabled { Lockdep.release(MMUNotifierSubscriptions.invalidateMapClass, nil, site) } }
        lock.lock()
        activeInvalidateRanges += 1
        if let ref = machineStatsRef {
            ref._withUnsafeGuaranteedRef { stats in
                stats.count(.notifierInvalidations)
                stats.count(MMStats.invalidationCounter(range.event))
            }
        }
        stats.increment()
        if intervals.isEmpty && subscribers.isEmpty && afterRangeActivated == nil { lock.unlock(); return true } // nobody listens
        let hits = intervals.filter { $0.overlaps(range.start, range.end) }
        if !hits.isEmpty { invalidateSeq |= 1 }  // mn_itree_inv_start_range
        let seq = invalidateSeq
        let hook = afterRangeActivated
        lock.unlock()
        hook?(range)
        // mn_itree_invalidate: every first pass, then the finish passes in the order the
        // notifiers started (also when a non-blockable range stops at a notifier that would
        // block: those that started are finished).
        var finishes: [() -> Void] = []
        for sub in hits {
            let (ok, finish) = sub.callStart(range, seq)
            if let finish, ok { finishes.append(finish) }
            if ok || range.blockable { continue } // a blockable one: the kernel WARNs and goes on
            for f in finishes { f() }
            itreeInvalidateEnd()
            return false
        }
        for f in finishes { f() }
        let subs = lock.withLock { subscribers }
        var failed = false
        for s in subs where !s.invalidateRangeStart(range) { failed = true }
        if failed {
            precondition(!range.blockable, "a subscriber failed a blockable invalidation")
            for s in subs { s.invalidateRangeEnd(range) }
            // Linux 7.2 returns here with the interval side still active, so the sequence
            // would stay odd for good; swift-hmm ends it (docs/linux-divergences.md).
            itreeInvalidateEnd()
            return false
        }
        return true
    }

    /// Ends an invalidation whose `invalidateRangeStart` returned true.
    public func invalidateRangeEnd(_ range: MMUNotifierRange) {
        let subs = itreeInvalidateEnd()
        for s in subs { s.invalidateRangeEnd(range) }
    }

    /// `mn_itree_inv_end`: the last invalidation to end makes the sequence even, applies the
    /// deferred inserts and removals and wakes `readBegin` and `remove` waiters.
    /// Return: the whole-address-space subscribers, read under the same hold of the lock (for
    /// `invalidateRangeEnd`, which calls their ends next).
    @discardableResult
    private func itreeInvalidateEnd() -> [MMUNotifier] {
        lock.lock()
        activeInvalidateRanges -= 1
        precondition(activeInvalidateRanges >= 0, "unbalanced invalidateRangeEnd")
        let subs = subscribers
        guard activeInvalidateRanges == 0, invalidateSeq & 1 == 1 else { lock.unlock(); return subs }
        invalidateSeq += 1
        for (sub, insert) in deferred {
            if insert { addInterval(sub) } else { intervals.removeAll { $0 === sub } }
        }
        deferred.removeAll()
        lock.unlock()
        waitQueue.wakeAll()
        return subs
    }

    /// Runs `body` between start and end of an invalidation of `range`.
    @discardableResult
    /// A non-blockable range whose start failed has been ended by the core already: `body`
    /// still runs (the caller decides what a failed start means), but no second end follows.
    public func invalidating<T>(_ range: MMUNotifierRange, _ body: () throws -> T) rethrows -> T {
        let started = invalidateRangeStart(range)
        defer { if started { invalidateRangeEnd(range) } }
        return try body()
    }

    /// `mmu_notifier_release` at the start of exit_mmap: every interval sees one RELEASE
    /// invalidation of the whole space (intervals stay registered, so the exit's UNMAP reaches
    /// them too); every whole-mm subscriber gets `release` and is then unlinked, so it sees no
    /// invalidation of the exit's unmap.
    func release(_ mm: AddressSpace) {
        let range = MMUNotifierRange(start: 0, end: UInt64.max, event: .release)
        lock.lock()
        let subs = subscribers
        let hasIntervals = !intervals.isEmpty
        lock.unlock()
        if hasIntervals {
            lock.lock()
            activeInvalidateRanges += 1
            mm.machine.stats.count(.notifierInvalidations)
            mm.machine.stats.count(MMStats.invalidationCounter(range.event))
            stats.increment()
            let hits = intervals
            invalidateSeq |= 1
            let seq = invalidateSeq
            lock.unlock()
            var finishes: [() -> Void] = []
            for sub in hits { if case (_, let f?) = sub.callStart(range, seq) { finishes.append(f) } }
            for f in finishes { f() }
            itreeInvalidateEnd()
        }
        for s in subs { s.release(mm) }
        lock.withLock { subscribers.removeAll() }
    }

    /// Number of invalidations started (for statistics).
    public var invalidationCount: Int { stats.load() }
    public var intervalCount: Int { lock.withLock { intervals.count } }
}
