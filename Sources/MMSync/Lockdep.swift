#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The kernel's lockdep for MMSync: lock classes, the order in which classes are taken on every
/// thread, and a report at the first rule broken.
///
/// - **Classes.** A class stands for every lock of one kind and name, as a kernel lock class
///   stands for every lock initialised at one place: every page lock is one class, every PTE
///   lock one, every `mmap_lock` one.
/// - **Order.** Taking class B while holding class A records the edge A → B with both
///   acquisition sites. Taking A while holding B once A → B is known (directly or through other
///   classes) is an inversion: the report names the two sites of this acquisition and the two
///   sites that recorded the other order.
/// - **Other rules.** Releasing a lock the thread does not hold; sleeping or waiting while
///   holding a spin lock; a CPU access (user mode) with kernel locks held; nesting deeper than
///   `maxDepth`.
///
/// Off by default, and then each hook is one load and a branch (the `lockdep` bench figure
/// measures it). `hmm --lockdep` and tests turn it on with `Lockdep.enable()`.
public enum Lockdep {
    /// Whether lockdep watches (set before threads start; read without synchronisation). On in
    /// debug builds (so every test runs under it), off in release unless `hmm --lockdep`.
    #if DEBUG
    @exclusivity(unchecked) nonisolated(unsafe) public static var enabled = true
    #else
    @exclusivity(unchecked) nonisolated(unsafe) public static var enabled = false
    #endif
    /// Deepest nesting of held locks accepted (the kernel's MAX_LOCK_DEPTH is 48).
    public static let maxDepth = 48

    public enum Kind: String, Sendable { case mutex, rwsem, spinlock, bitlock, seqcount }

    /// A lock class: kind and name. Each distinct class gets a small number when it is made
    /// (the kernel's lock_class index), so comparing and hashing classes on every acquisition
    /// never touches the name; make a class once per lock, not per acquisition.
    /// A class is only its kind and number (copied on every acquisition without touching a
    /// reference count); its name lives in lockdep's table, for reports.
    public struct LockClass: Hashable, Sendable, CustomStringConvertible {
        public let kind: Kind
        @usableFromInline let id: UInt32
        public init(_ kind: Kind, _ name: String) { self.kind = kind; id = Lockdep.classID(kind, name) }
        public var name: String { Lockdep.className(id) }
        public var description: String { "\(kind.rawValue) \(name)" }
    }

    /// Where a lock was taken or released. Kept as the static string the caller passed (no
    /// copy per acquisition); `file` makes the text.
    public struct Site: Hashable, Sendable, CustomStringConvertible {
        let fileID: StaticString
        public let line: UInt
        public init(_ file: StaticString, _ line: UInt) { fileID = file; self.line = line }
        public var file: String { "\(fileID)" }
        public var description: String { "\(file):\(line)" }
        public static func == (a: Site, b: Site) -> Bool { a.line == b.line && a.file == b.file }
        public func hash(into h: inout Hasher) { h.combine(file); h.combine(line) }
    }

    public enum ReportKind: String, Sendable {
        case orderInversion, foreignUnlock, waitUnderSpinLock, userAccessWithLocks, tooDeep
        /// A thread takes (without trying) a lock it already holds: it would wait for itself
        /// (an rwsem read taken twice too: a writer queued between them blocks the second).
        case recursiveLocking
    }

    /// One broken rule: what, the class(es), and every site involved.
    public struct Report: Sendable, CustomStringConvertible {
        public let kind: ReportKind
        public let message: String
        public let sites: [Site]
        public var description: String { "lockdep: \(kind.rawValue): \(message)" }
    }

    /// Called with each report (default: `printReport`). Tests install a collector.
    nonisolated(unsafe) public static var onReport: (Report) -> Void = printReport

    /// Prints a report and its sites to stderr. In debug builds the process then exits with
    /// status 1 when it ends, so a test run with any report fails (after finishing).
    public static func printReport(_ r: Report) {
        lockdepWriteStandardError("\(r)\n")
        for s in r.sites { lockdepWriteStandardError("  at \(s)\n") }
        #if DEBUG
        if !failAtExit {
            failAtExit = true
            atexit { lockdepWriteStandardError("lockdep: this run broke a locking rule (reports above): exit status 1\n"); _exit(1) }
        }
        #endif
    }


    nonisolated(unsafe) static var failAtExit = false

    struct Held { let cls: LockClass; var instance: UnsafeRawPointer?; let site: Site }
    struct Edge { let from: Site; let to: Site }

    // Global state. Locking: `graphMutex` (a raw pthread mutex: lockdep cannot use MMSync's locks).
    nonisolated(unsafe) static let graphMutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    nonisolated(unsafe) static var after: [LockClass: [LockClass: Edge]] = [:]
    nonisolated(unsafe) static var reported: Set<String> = []
    /// Class numbers by "kind name", and names by number − 1. Locking: `classMutex` (its own:
    /// reports name classes while holding `graphMutex`).
    nonisolated(unsafe) static let classMutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    nonisolated(unsafe) static var classIDs: [String: UInt32] = [:]
    nonisolated(unsafe) static var classNames: [String] = []
    /// Bumped when the graph is forgotten, so each thread drops its cache of known edges.
    static let graphGeneration = Atomic<Int>(0)

    static func classID(_ kind: Kind, _ name: String) -> UInt32 {
        pthread_mutex_lock(classMutex); defer { pthread_mutex_unlock(classMutex) }
        let key = "\(kind.rawValue) \(name)"
        if let id = classIDs[key] { return id }
        let id = UInt32(classIDs.count + 1)
        classIDs[key] = id
        classNames.append(name)
        return id
    }

    static func className(_ id: UInt32) -> String {
        pthread_mutex_lock(classMutex); defer { pthread_mutex_unlock(classMutex) }
        return id >= 1 && Int(id) <= classNames.count ? classNames[Int(id) - 1] : "?"
    }

    /// Turns lockdep on from now (before threads start) and forgets what it learnt before.
    public static func enable() {
        pthread_mutex_lock(graphMutex); after = [:]; reported = []; graphGeneration.add(1, ordering: .sequentiallyConsistent); pthread_mutex_unlock(graphMutex)
        enabled = true
    }
    public static func disable() { enabled = false }

    // MARK: per-thread held stacks

    /// One thread's stack, used by that thread only (and read by the explorer's reports while
    /// the thread is parked): its fields need no dynamic exclusivity checks, which cost a
    /// thread-local lookup on every lock operation.
    final class HeldStack {
        @exclusivity(unchecked) var items: [Held] = []
        /// Bit locks of a class already on the stack: a migration locks hundreds of pages at
        /// once, and they are one class, so they are one entry (its first instance and site)
        /// plus these further instances, not hundreds of entries.
        @exclusivity(unchecked) var moreBitLocks: [LockClass: Set<UnsafeRawPointer?>] = [:]
        /// Edges (from << 32 | to) this thread already put in the graph, valid for
        /// `generation`: the kernel's chain cache, so a known order costs no global lock. A
        /// direct-mapped table (0: empty; class ids start at 1): a miss only costs a visit to
        /// the graph, which keeps each edge once.
        @exclusivity(unchecked) var knownEdges = [UInt64](repeating: 0, count: HeldStack.edgeSlots)
        @exclusivity(unchecked) var generation = -1
        static let edgeSlots = 512

        @inline(__always) static func slot(_ key: UInt64) -> Int { Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 55) }
        @inline(__always) func knows(_ key: UInt64) -> Bool { knownEdges[HeldStack.slot(key)] == key }
        @inline(__always) func remember(_ key: UInt64) { knownEdges[HeldStack.slot(key)] = key }
        func forgetEdges() { for i in knownEdges.indices { knownEdges[i] = 0 } }
    }
    static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { p in
            #if canImport(Darwin)
            Unmanaged<HeldStack>.fromOpaque(p).release()
            #else
            if let p { Unmanaged<HeldStack>.fromOpaque(p).release() }
            #endif
        }
        return k
    }()

    /// Runs `body` with the calling thread's stack, without a reference-count round trip
    /// (the thread's key keeps it alive).
    @inline(__always)
    static func withStack<R>(_ body: (HeldStack) -> R) -> R {
        if let p = pthread_getspecific(key) { return Unmanaged<HeldStack>.fromOpaque(p)._withUnsafeGuaranteedRef(body) }
        return body(stack)
    }

    static var stack: HeldStack {
        if let p = pthread_getspecific(key) { return Unmanaged<HeldStack>.fromOpaque(p).takeUnretainedValue() }
        let s = HeldStack()
        pthread_setspecific(key, Unmanaged.passRetained(s).toOpaque())
        return s
    }

    /// Puts `stack` (a retained stack, or nil: a new one at the next use) in the calling
    /// thread's place and returns the one it had (retained, or nil): an execution context
    /// keeps its own while it is switched out.
    static func exchangeThreadStack(_ stack: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
        let old = pthread_getspecific(key)
        pthread_setspecific(key, stack)
        return old
    }

    /// Drops a stack `exchangeThreadStack` returned (its context ended).
    static func releaseThreadStack(_ stack: UnsafeMutableRawPointer) { Unmanaged<HeldStack>.fromOpaque(stack).release() }

    /// The classes the calling thread holds, innermost last (for tests and reports).
    public static var heldClasses: [LockClass] { stack.items.map(\.cls) }

    /// The calling thread's stack of held locks, as a handle another thread may read later
    /// (the explorer's failure reports, written while every other model thread is parked).
    public static var currentStackHandle: AnyObject { stack }

    /// The locks held on the stack `handle` names, outermost first: what (kind and class),
    /// where it was taken, and the instance. Read it only while the stack's thread is parked.
    public static func heldLocks(_ handle: AnyObject) -> [(description: String, instance: UnsafeRawPointer?)] {
        guard let s = handle as? HeldStack else { return [] }
        var out = s.items.map { ("\($0.cls) (taken at \($0.site))", $0.instance) }
        for (c, more) in s.moreBitLocks.sorted(by: { $0.key.id < $1.key.id }) {
            out += more.map { ("\(c) (another of its class)", $0) }
        }
        return out
    }

    /// Whether the calling thread holds the lock at `instance` (in any mode), including a page
    /// lock folded into its class's entry.
    public static func holds(_ instance: UnsafeRawPointer) -> Bool { heldEntry(stack, instance) != nil }

    /// The held entry that accounts for `instance` (of class `cls`, if given): its own, or for
    /// a further bit lock of a class already held, that class's entry. Two bit locks in one
    /// word are one instance of two classes, so a recursion check names the class.
    static func heldEntry(_ s: HeldStack, _ instance: UnsafeRawPointer?, of cls: LockClass? = nil) -> Held? {
        if let h = s.items.last(where: { $0.instance == instance && (cls == nil || $0.cls == cls) }) { return h }
        if s.moreBitLocks.isEmpty { return nil }
        for (c, more) in s.moreBitLocks where (cls == nil || c == cls) && more.contains(instance) {
            return s.items.last { $0.cls == c }
        }
        return nil
    }

    /// Whether the calling thread holds any lock of `kind`.
    public static func holdsAny(_ kind: Kind) -> Bool { stack.items.contains { $0.cls.kind == kind } }

    // MARK: contracts (debug builds; exact when lockdep is on)

    /// "No PTE lock held": the calling thread holds no spin lock.
    @inlinable public static func assertNoSpinLockHeld(file: StaticString = #fileID, line: UInt = #line) {
        assert(!enabled || !holdsAny(.spinlock), "a spin lock is held", file: file, line: line)
    }
    /// "PTE lock held" where the lock is not at hand: the calling thread holds some spin lock.
    @inlinable public static func assertSpinLockHeld(file: StaticString = #fileID, line: UInt = #line) {
        assert(!enabled || holdsAny(.spinlock), "no spin lock held", file: file, line: line)
    }
    /// "mmap lock (or an rmap lock) held" where the semaphore is not at hand: some rwsem is held.
    @inlinable public static func assertSomeRWSemHeld(file: StaticString = #fileID, line: UInt = #line) {
        assert(!enabled || holdsAny(.rwsem), "no rwsem held", file: file, line: line)
    }
    /// "Caller holds nothing": the calling thread holds no lock at all.
    @inlinable public static func assertNoLocksHeld(file: StaticString = #fileID, line: UInt = #line) {
        assert(!enabled || heldClasses.isEmpty, "locks held: \(heldClasses)", file: file, line: line)
    }

    // MARK: hooks (called by the primitives when `enabled`)

    /// `lock_acquire`: the calling thread takes `instance` of `cls` at `site`. A `trylock`
    /// is held like any other lock but adds no order from the locks already held (a trylock
    /// cannot wait, so it cannot close a deadlock: the kernel's lockdep does the same).
    public static func acquire(_ cls: LockClass, _ instance: UnsafeRawPointer?, _ site: Site, trylock: Bool = false) {
        withStack { acquire(cls, instance, site, trylock: trylock, on: $0) }
    }

    static func acquire(_ cls: LockClass, _ instance: UnsafeRawPointer?, _ site: Site, trylock: Bool, on s: HeldStack) {
        // (Class too: two bit locks in one word are one instance of two classes.)
        if !trylock, instance != nil, let h = heldEntry(s, instance, of: cls) {
            report(.recursiveLocking, "\(cls) taken at \(site) by a thread that already holds it (taken at \(h.site))",
                   [site, h.site], key: "recursive \(site) \(h.site)")
        }
        if s.items.count >= maxDepth {
            report(.tooDeep, "\(cls) taken at \(site) with \(s.items.count) locks held (at most \(maxDepth))", [site], key: "deep \(site)")
        }
        if !trylock && !s.items.isEmpty {
            let gen = generationNow()
            if s.generation != gen { s.forgetEdges(); s.generation = gen }
            for h in s.items where h.cls != cls {
                let key = UInt64(h.cls.id) << 32 | UInt64(cls.id)
                if s.knows(key) { continue }
                addEdge(h, to: cls, at: site)
                s.remember(key)
            }
        }
        if cls.kind == .bitlock, s.items.contains(where: { $0.cls == cls }) {
            s.moreBitLocks[cls, default: []].insert(instance)
            return
        }
        s.items.append(Held(cls: cls, instance: instance, site: site))
    }

    /// `lock_release`: the calling thread releases `instance` of `cls`.
    public static func release(_ cls: LockClass, _ instance: UnsafeRawPointer?, _ site: Site) {
        withStack { release(cls, instance, site, on: $0) }
    }

    static func release(_ cls: LockClass, _ instance: UnsafeRawPointer?, _ site: Site, on s: HeldStack) {
        // (A class's set of folded instances is changed in place, and dropped when it empties,
        // so a stack with nothing folded has an empty table: `heldEntry`'s shortcut.)
        if cls.kind == .bitlock, s.moreBitLocks[cls] != nil {
            if s.moreBitLocks[cls]!.remove(instance) != nil {
                if s.moreBitLocks[cls]!.isEmpty { s.moreBitLocks[cls] = nil }
                return
            }
            if let i = s.items.lastIndex(where: { $0.cls == cls && $0.instance == instance }) {
                s.items[i].instance = s.moreBitLocks[cls]!.removeFirst()   // another instance keeps the entry
                if s.moreBitLocks[cls]!.isEmpty { s.moreBitLocks[cls] = nil }
                return
            }
            // Neither: a foreign unlock, reported below.
        }
        if let i = s.items.lastIndex(where: { $0.cls == cls && $0.instance == instance }) {
            s.items.remove(at: i)
        } else {
            report(.foreignUnlock, "\(cls) released at \(site) by a thread that does not hold it", [site], key: "unlock \(site)")
        }
    }

    /// A wait or sleep at `site`: none may happen under a spin lock.
    public static func mayWait(_ site: Site) {
        if let h = stack.items.last(where: { $0.cls.kind == .spinlock }) {
            report(.waitUnderSpinLock, "wait at \(site) while holding \(h.cls) taken at \(h.site)", [site, h.site], key: "wait \(site) \(h.site)")
        }
    }

    /// A CPU access (return to user mode) at `site`: no kernel lock may be held.
    public static func userAccess(_ site: Site) {
        if let h = stack.items.last {
            report(.userAccessWithLocks, "user access at \(site) with \(h.cls) held, taken at \(h.site)", [site, h.site], key: "user \(site) \(h.site)")
        }
    }

    // MARK: the order graph

    /// The graph's generation (it changes only in `enable`).
    static func generationNow() -> Int { graphGeneration.load(ordering: .acquiring) }

    static func addEdge(_ held: Held, to cls: LockClass, at site: Site) {
        pthread_mutex_lock(graphMutex)
        defer { pthread_mutex_unlock(graphMutex) }
        if after[held.cls]?[cls] != nil { return }
        // A path cls ⇝ held.cls already known means this acquisition closes a cycle.
        if let path = pathLocked(from: cls, to: held.cls) {
            let first = path.first!
            let msg = "\(cls) taken at \(site) while holding \(held.cls) taken at \(held.site); "
                + "the other order was recorded: \(path.map { "\($0.0) → \($0.1) (taken at \($0.2.from), then at \($0.2.to))" }.joined(separator: ", "))"
            reportLocked(.orderInversion, msg, [held.site, site, first.2.from, first.2.to], key: "order \(held.cls) \(cls)")
        }
        after[held.cls, default: [:]][cls] = Edge(from: held.site, to: site)
    }

    /// The edges of a path from `a` to `b` in the order graph (breadth first), or nil.
    static func pathLocked(from a: LockClass, to b: LockClass) -> [(LockClass, LockClass, Edge)]? {
        var prev: [LockClass: (LockClass, Edge)] = [:]
        var queue = [a], seen: Set<LockClass> = [a]
        var i = 0
        while i < queue.count {
            let c = queue[i]; i += 1
            for (n, e) in after[c] ?? [:] where seen.insert(n).inserted {
                prev[n] = (c, e)
                if n == b {
                    var path: [(LockClass, LockClass, Edge)] = []
                    var x = b
                    while let (p, e) = prev[x] { path.insert((p, x, e), at: 0); x = p; if x == a { break } }
                    return path
                }
                queue.append(n)
            }
        }
        return nil
    }

    static func report(_ kind: ReportKind, _ message: String, _ sites: [Site], key: String) {
        pthread_mutex_lock(graphMutex)
        defer { pthread_mutex_unlock(graphMutex) }
        reportLocked(kind, message, sites, key: key)
    }

    /// Each distinct problem is reported once. Locking: `graphMutex`.
    static func reportLocked(_ kind: ReportKind, _ message: String, _ sites: [Site], key: String) {
        assert(pthread_mutex_trylock(graphMutex) != 0, "reportLocked: graphMutex must be held")
        guard reported.insert(key).inserted else { return }
        onReport(Report(kind: kind, message: message, sites: sites))
    }
}

/// Writes to file descriptor 2 (not through the C `stderr` global, which Swift 6 treats as
/// shared mutable state).
func lockdepWriteStandardError(_ text: String) {
    var t = text
    t.withUTF8 { b in _ = write(2, b.baseAddress, b.count) }
}
