import MMSync

/// A CPU's private counters (see `CPU.local`).
@frozen public struct CPULocal {
    @usableFromInline var userDepth = 0
    @usableFromInline var seenGeneration: UInt64 = 0
    @usableFromInline init() {}
}

/// Why a CPU access could not complete: the signal the process would get.
public enum AccessFault: Error, Equatable, Sendable, CustomStringConvertible {
    /// No VMA, or the VMA does not allow the access (SIGSEGV).
    case segv(address: UInt64)
    /// The fault could not be satisfied (SIGBUS: hwpoison, beyond the end of a file, a failed
    /// device migration).
    case bus(address: UInt64)
    /// Out of memory while handling the fault.
    case oom(address: UInt64)
    public var description: String {
        switch self {
        case .segv(let a): return "SIGSEGV at 0x\(String(a, radix: 16))"
        case .bus(let a): return "SIGBUS at 0x\(String(a, radix: 16))"
        case .oom(let a): return "OOM at 0x\(String(a, radix: 16))"
        }
    }
}

/// One CPU thread's execution context: the software MMU through which it loads and stores.
///
/// A CPU is used by one OS thread at a time. Accesses translate through a private TLB; a miss
/// walks the page table without locks (as hardware does, setting accessed/dirty bits with
/// compare-and-swap); a missing or insufficient entry raises a page fault handled by the core
/// mm with the mmap lock, after which the access retries.
///
/// TLB shootdown protocol: while inside an access the CPU is "in user mode" (`inUser` = 1). At
/// every access boundary it reads the address space's flush generation (a relaxed load) and, if
/// it moved, flushes its TLB and acknowledges. A shooter bumps the generation and waits until
/// every CPU has acknowledged or is outside user mode. Entering user mode is a sequentially
/// consistent store followed by a sequentially consistent load of the generation, so a shooter
/// and an entering CPU never miss each other.
/// Sendable: used by one OS thread at a time; other threads touch only its atomics
/// (`inUser`, `ackGeneration`, the VMA cache's `active`/`dead`).
public final class CPU: @unchecked Sendable {
    public let mm: AddressSpace
    public let index: Int
    @usableFromInline let tlb = TLB()
    /// The address space's flush generation word (read on every access boundary).
    @usableFromInline let flushGeneration: AtomicU64Ref
    @usableFromInline let inUser = AtomicWord(0)
    @usableFromInline let ackGeneration = AtomicWord(0)
    /// Thread-private state in raw memory: the hot path reads and writes it without the
    /// dynamic exclusivity checks a class `var` would cost on every access.
    @usableFromInline let local: UnsafeMutablePointer<CPULocal>
    @usableFromInline var seenGeneration: UInt64 {
        @inline(__always) get { local.pointee.seenGeneration }
        @inline(__always) set { local.pointee.seenGeneration = newValue }
    }
    @usableFromInline var userDepth: Int {
        @inline(__always) get { local.pointee.userDepth }
        @inline(__always) set { local.pointee.userDepth = newValue }
    }
    /// The address space's memory and page table as `let`s of this CPU: the walk uses them
    /// borrowed, without touching their reference counts (lines every CPU would share).
    @usableFromInline let memory: PhysicalMemory
    @usableFromInline let pageTable: PageTable
    /// Bound on fault-and-retry rounds for one access (a livelock guard).
    public static let maxFaultRetries = 100_000
    @exclusivity(unchecked) public internal(set) var faultCount = 0
    /// The VMAs this CPU last faulted in: the lookup of its per-VMA-lock faults.
    let vmaCache = VMACache()

    init(mm: AddressSpace, index: Int) {
        self.mm = mm; self.index = index; memory = mm.memory; pageTable = mm.pageTable
        flushGeneration = mm.flushGeneration
        local = .allocate(capacity: 1)
        local.initialize(to: CPULocal())
        mm.attach(self)
    }
    deinit { tlb.deallocate(); local.deallocate() }

    /// Detaches from the address space (thread exit).
    public func detach() { mm.detach(self) }

    // MARK: user mode

    @inlinable @inline(__always) func enterUser() {
        userDepth &+= 1
        if userDepth == 1 {
            // Returning to user mode with kernel locks held is a bug (lockdep checks it).
            if Lockdep.enabled { Lockdep.userAccess(Lockdep.Site(#fileID, #line)) }
            inUser.store(1)
            let g = flushGeneration.load(.seqcst)
            if g != seenGeneration { flushLocal(g) }
        }
    }
    @inlinable @inline(__always) func exitUser() {
        userDepth &-= 1
        if userDepth == 0 { inUser.storeRelease(0) }
    }

    /// The access boundary check: acknowledge a pending shootdown.
    @inlinable @inline(__always) func boundary() {
        let g = flushGeneration.load(.relaxed)
        if _slowPath(g != seenGeneration) { flushLocal(g) }
    }

    @usableFromInline @inline(never) func flushLocal(_ gen: UInt64) {
        tlb.flushAll()
        seenGeneration = gen
        ackGeneration.store(gen)
        mm.machine.stats.count(.tlbFlushLocal)
    }

    /// Runs `body` with this CPU in user mode, so that accesses inside skip the per-access
    /// mode switch. `body` must consist of accesses (and brief computation): a shooter waits
    /// for the next access boundary of a CPU in user mode.
    @inlinable public func run<T>(_ body: (CPU) throws -> T) rethrows -> T {
        enterUser(); defer { exitUser() }
        return try body(self)
    }

    // MARK: translation

    /// Translates `address` for an access, faulting as needed. Locking: called in user mode;
    /// leaves user mode around the fault handler.
    @inlinable @inline(__always)
    func translate(_ address: UInt64, write: Bool) throws(AccessFault) -> UnsafeMutableRawPointer {
        assert(userDepth > 0, "translate outside user mode")
        boundary()
        if let f = tlb.lookup(address, write: write) { return f + Int(address & 0xFFF) }
        return try translateSlow(address, write: write)
    }

    @usableFromInline @inline(never)
    func translateSlow(_ address: UInt64, write: Bool) throws(AccessFault) -> UnsafeMutableRawPointer {
        var rounds = 0
        while true {
            if let f = walkAndFill(address, write: write) { return f + Int(address & 0xFFF) }
            rounds += 1
            // A second fault for one access is a retry (the explorer's livelock bound).
            if rounds > 1 { Sync.retryLoop(rounds, "the access at 0x\(String(address, radix: 16)) faulted") }
            precondition(rounds < CPU.maxFaultRetries, "livelock: access at 0x\(String(address, radix: 16)) faulted \(rounds) times")
            faultCount += 1
            // Leave user mode: the fault handler takes locks and may wait for shootdowns.
            let depth = userDepth
            userDepth = 0
            inUser.storeRelease(0)
            let result = mm.handleUserFault(address, write: write, cache: .passUnretained(vmaCache))
            userDepth = depth
            if Lockdep.enabled { Lockdep.userAccess(Lockdep.Site(#fileID, #line)) }
            inUser.store(1)
            let g = flushGeneration.load(.seqcst)
            if g != seenGeneration { flushLocal(g) }
            switch result {
            case .ok, .retry: continue
            case .sigsegv: throw .segv(address: address)
            case .sigbus: throw .bus(address: address)
            case .oom: throw .oom(address: address)
            }
        }
    }

    /// Hardware page walk: no locks; sets accessed (and dirty on write) with compare-and-swap.
    @usableFromInline
    func walkAndFill(_ address: UInt64, write: Bool) -> UnsafeMutableRawPointer? {
        guard address < taskSize, mm.deadFlag.load() == 0 else { return nil }
        let pt = pageTable
        var tablePfn = pt.pgd.pfn
        var level = PageTableLevel.pgd
        while true {
            let e = pt.entry(inTable: tablePfn, index: level.index(address))
            let v = e.load()
            guard v.isPresent else { return nil }
            if level == .pte || v.isHuge {
                guard v.isUser, !write || v.isWrite else { return nil }
                var want = v.raw | PTE.accessed
                if write { want |= PTE.dirty | PTE.softDirty }
                if want != v.raw && !e.compareExchange(v, PTE(raw: want)) { continue }
                let leafPfn = v.pfn + (level == .pte ? 0 : (address & (level.size - 1)) >> pageShift)
                let frame = memory.frame(leafPfn)
                tlb.insert(address, frame: frame, writable: v.isWrite && (write || v.isDirty))
                return frame
            }
            tablePfn = v.pfn
            level = PageTableLevel(rawValue: level.rawValue - 1)!
        }
    }
}
