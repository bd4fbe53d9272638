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

/// An interval notifier (`struct mmu_interval_notifier`): invalidations overlapping
/// [start, end) call `invalidate`; readers use `readBegin`/`readRetry` to detect them.
public final class MMUIntervalNotifier: @unchecked Sendable {
    public let start: UInt64
    public let end: UInt64
    let invalidate: IntervalInvalidate
    /// Locking: written with `setSeq` under the driver's lock; read by `readRetry` under it.
    let invalidateSeq = AtomicWord(0)
    weak var subscriptions: MMUNotifierSubscriptions?
    public internal(set) weak var mm: AddressSpace?

    public init(start: UInt64, end: UInt64, invalidate: @escaping IntervalInvalidate) {
        self.start = start; self.end = end; self.invalidate = invalidate
    }

    /// `mmu_interval_read_begin`: waits out an invalidation in progress on this interval and
    /// returns a sequence to pass to `readRetry`. Locking: no driver lock held (it may sleep).
    public func readBegin() -> UInt64 {
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
    public func readRetry(_ seq: UInt64) -> Bool { invalidateSeq.load() != seq }

    /// `mmu_interval_check_retry`: the same test without the lock (a hint only).
    public func checkRetry(_ seq: UInt64) -> Bool { invalidateSeq.load() != seq }

    /// `mmu_interval_set_seq`: called from `invalidate` under the driver lock.
    public func setSeq(_ seq: UInt64) { invalidateSeq.store(seq) }

    func overlaps(_ s: UInt64, _ e: UInt64) -> Bool { start < e && s < end }
}

/// Per-address-space notifier state (`struct mmu_notifier_subscriptions`).
///
/// The sequence protocol (as mmu_notifier.c): `invalidateSeq` is odd while at least one
/// invalidation overlapping some interval notifier is in progress. Each overlapping interval's
/// callback sets that interval's sequence to the odd value; `readBegin` on an interval whose
/// sequence equals the current odd value waits until every invalidation ends.
public final class MMUNotifierSubscriptions: @unchecked Sendable {
    let lock = Lock("mmu_notifier")
    let waitQueue = WaitQueue()
    /// Locking: lock. Even = idle, odd = invalidating.
    var invalidateSeq: UInt64 = 2
    var activeInvalidateRanges = 0
    var intervals: [MMUIntervalNotifier] = []
    var subscribers: [MMUNotifier] = []
    weak var mm: AddressSpace?
    let stats = AtomicCounter(0)

    var currentSeq: UInt64 { lock.withLock { invalidateSeq } }

    /// `mmu_notifier_register`.
    public func register(_ n: MMUNotifier) { lock.withLock { subscribers.append(n) } }
    public func unregister(_ n: MMUNotifier) { lock.withLock { subscribers.removeAll { $0 === n } } }

    /// `mmu_interval_notifier_insert`. EINVAL for an empty or wrapped range.
    public func insert(_ sub: MMUIntervalNotifier) throws(Errno) {
        guard sub.start < sub.end else { throw .EINVAL }
        lock.lock()
        sub.subscriptions = self
        sub.mm = mm
        // An interval inserted during an invalidation starts "invalidating", so its first
        // readBegin waits for the invalidation to end (it missed the callback).
        sub.invalidateSeq.store(activeInvalidateRanges > 0 && invalidateSeq & 1 == 1 ? invalidateSeq : invalidateSeq &- 1)
        intervals.append(sub)
        lock.unlock()
    }

    /// `mmu_interval_notifier_remove`: after it returns, `invalidate` is not running and will
    /// not be called again for `sub`.
    public func remove(_ sub: MMUIntervalNotifier) {
        lock.lock()
        intervals.removeAll { $0 === sub }
        let seq = invalidateSeq
        let busy = activeInvalidateRanges > 0 && seq & 1 == 1
        lock.unlock()
        if busy { waitQueue.wait { self.currentSeq != seq } }
        sub.subscriptions = nil
    }

    /// Starts an invalidation: calls every overlapping interval's callback and every
    /// subscriber's start. Returns false (with nothing to undo beyond `invalidateRangeEnd`) if a
    /// non-blockable range met a subscriber that would sleep.
    /// Locking: must not be called with a page-table lock held (callbacks may sleep).
    @discardableResult
    public func invalidateRangeStart(_ range: MMUNotifierRange) -> Bool {
        lock.lock()
        activeInvalidateRanges += 1
        if let stats = mm?.machine.stats {
            stats.count(.notifierInvalidations)
            stats.count(MMStats.invalidationCounter(range.event))
        }
        stats.increment()
        if intervals.isEmpty && subscribers.isEmpty { lock.unlock(); return true } // nobody listens
        let hits = intervals.filter { $0.overlaps(range.start, range.end) }
        if !hits.isEmpty && invalidateSeq & 1 == 0 { invalidateSeq += 1 }
        let seq = invalidateSeq
        let subs = subscribers
        lock.unlock()
        var ok = true
        for sub in hits where !sub.invalidate(sub, range, seq) { ok = false }
        for s in subs where !s.invalidateRangeStart(range) { ok = false }
        return ok
    }

    /// Ends an invalidation started by `invalidateRangeStart`.
    public func invalidateRangeEnd(_ range: MMUNotifierRange) {
        lock.lock()
        if !subscribers.isEmpty {
            let subs = subscribers
            lock.unlock()
            for s in subs { s.invalidateRangeEnd(range) }
            lock.lock()
        }
        activeInvalidateRanges -= 1
        precondition(activeInvalidateRanges >= 0, "unbalanced invalidateRangeEnd")
        var wake = false
        if activeInvalidateRanges == 0 && invalidateSeq & 1 == 1 { invalidateSeq += 1; wake = true }
        lock.unlock()
        if wake { waitQueue.wakeAll() }
    }

    /// Runs `body` between start and end of an invalidation of `range`.
    @discardableResult
    public func invalidating<T>(_ range: MMUNotifierRange, _ body: () throws -> T) rethrows -> T {
        invalidateRangeStart(range)
        defer { invalidateRangeEnd(range) }
        return try body()
    }

    /// exit_mmap: tells every subscriber, and invalidates every interval for the whole space.
    func release(_ mm: AddressSpace) {
        let range = MMUNotifierRange(start: 0, end: taskSize, event: .release)
        invalidateRangeStart(range)
        invalidateRangeEnd(range)
        let subs = lock.withLock { subscribers }
        for s in subs { s.release(mm) }
    }

    /// Number of invalidations started (for statistics).
    public var invalidationCount: Int { stats.load() }
    public var intervalCount: Int { lock.withLock { intervals.count } }
}
