/// A lock held in one bit of a 64-bit flags word in raw memory, with sleeping waiters
/// (the page lock, PG_locked). Waiters sleep on one of a fixed set of hashed wait queues,
/// as the kernel's folio wait table does.
public enum BitLock {
    static let buckets: [WaitQueue] = (0..<64).map { _ in WaitQueue() }
    /// The same queues, unretained: waking on every unlock must not cost a retain/release
    /// pair (the queues live as long as the process).
    /// Written once at initialisation, read-only after: safe to share.
    nonisolated(unsafe) static let bucketRefs: UnsafeMutablePointer<Unmanaged<WaitQueue>> = {
        let p = UnsafeMutablePointer<Unmanaged<WaitQueue>>.allocate(capacity: buckets.count)
        for (i, q) in buckets.enumerated() { (p + i).initialize(to: .passUnretained(q)) }
        return p
    }()

    @inlinable static func bucket(_ word: AtomicU64Ref) -> Int {
        Int(truncatingIfNeeded: (UInt(bitPattern: word.pointer) >> 6) & 63)
    }

    /// Lockdep: a bit lock is held by the thread that took it, under the class the caller
    /// names (every page lock is `bitlock PG_locked`), with the word as the instance.
    @inlinable public static func tryLock(_ word: AtomicU64Ref, bit: UInt64, class cls: Lockdep.LockClass? = nil,
                                          file: StaticString = #fileID, line: UInt = #line) -> Bool {
        guard word.fetchOr(bit) & bit == 0 else { return false }
        if Lockdep.enabled, let cls { Lockdep.acquire(cls, UnsafeRawPointer(word.pointer), Lockdep.Site(file, line), trylock: true) }
        return true
    }

    public static func lock(_ word: AtomicU64Ref, bit: UInt64, class cls: Lockdep.LockClass? = nil,
                            file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled, let cls { Lockdep.acquire(cls, UnsafeRawPointer(word.pointer), Lockdep.Site(file, line)) }
        Sync.point(.bitLockAcquire, UnsafeRawPointer(word.pointer))
        if word.fetchOr(bit) & bit == 0 { return }
        waitUntil(word) { word.fetchOr(bit) & bit == 0 }
    }

    public static func unlock(_ word: AtomicU64Ref, bit: UInt64, class cls: Lockdep.LockClass? = nil,
                              file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled, let cls { Lockdep.release(cls, UnsafeRawPointer(word.pointer), Lockdep.Site(file, line)) }
        let old = word.fetchAnd(~bit)
        precondition(old & bit != 0, "bit lock released while not held")
        Sync.point(.bitLockRelease, UnsafeRawPointer(word.pointer))
        bucketRefs[bucket(word)]._withUnsafeGuaranteedRef { $0.wakeAllAfterBarrier() } // fetchAnd was seq-cst
    }

    /// Sleeps until the bit is clear, without taking it (`folio_wait_locked`,
    /// migration_entry_wait). Returns false on timeout.
    @discardableResult
    public static func waitUnlocked(_ word: AtomicU64Ref, bit: UInt64, timeoutNanoseconds: UInt64? = nil) -> Bool {
        if word.load() & bit == 0 { return true }
        return buckets[bucket(word)].wait(timeoutNanoseconds: timeoutNanoseconds) { word.load() & bit == 0 }
    }

    static func waitUntil(_ word: AtomicU64Ref, _ condition: () -> Bool) {
        buckets[bucket(word)].wait(until: condition)
    }

    /// Wakes waiters on a word whose state changed other than by `unlock`.
    public static func wake(_ word: AtomicU64Ref) { buckets[bucket(word)].wakeAll() }
}
