import MMCore
import MMSync

/// A fatal device fault: the kernel that made it is cancelled (the others run on).
public struct SVMFatalFault: Error, Equatable, CustomStringConvertible {
    public let address: UInt64
    public let access: SVMAccess
    public let errno: Errno
    public var description: String { "fatal \(access) fault at 0x\(String(address, radix: 16)): \(errno)" }
}

/// A device kernel: the code each engine runs, given its engine (index, count, and the
/// access functions). Accesses are 8-byte words at 8-byte aligned user addresses.
public struct SVMKernel: Sendable {
    public let name: String
    public let body: @Sendable (SVMEngine) throws(SVMFatalFault) -> Void
    public init(name: String, body: @escaping @Sendable (SVMEngine) throws(SVMFatalFault) -> Void) {
        self.name = name; self.body = body
    }
}

/// One compute engine running one kernel. Its accesses go through the device page table;
/// a miss writes a fault into the device's buffer and stalls until the fault thread replays
/// it (or cancels the kernel).
public final class SVMEngine: @unchecked Sendable {
    public let index: Int
    public let count: Int
    public let space: SVMSpace
    let launch: SVMLaunch
    var device: SVMDevice { space.device }
    /// This engine's virtual time. Only its own thread writes it, except that a replay's
    /// resume time is taken in when it wakes.
    @exclusivity(unchecked) public private(set) var virtualNanoseconds: UInt64
    /// The last fault ticket this engine raised. Its thread only.
    @exclusivity(unchecked) private var ticket: UInt64 = 0
    /// The last ticket replayed, and the virtual time to resume at (set by the fault thread).
    private let replayed = AtomicCounter(0)
    private let resumeAt = AtomicCounter(0)
    /// Accesses that hit, in device memory and over the link. Its thread only.
    @exclusivity(unchecked) public private(set) var localAccesses = 0
    @exclusivity(unchecked) public private(set) var remoteAccesses = 0
    @exclusivity(unchecked) public private(set) var faultsRaised = 0
    /// The policy's access-counter threshold when the kernel was launched.
    private let counterThreshold: Int?

    /// The engine's TLB: `tlbSize` entries, direct-mapped by virtual page number, filled from
    /// the device page table on a miss (a walk, `SVMCosts.tlbMissNs`). Read and written by
    /// this engine's thread under the space's `lock`; flushed when the space's `tlbGeneration`
    /// moved on (an invalidation or a changed entry), before the next lookup.
    public static let tlbSize = 64
    private let tlbTags: UnsafeMutablePointer<UInt64>
    private let tlbData: UnsafeMutablePointer<SVMEntry>
    @exclusivity(unchecked) private var tlbGeneration: UInt64 = 0
    @exclusivity(unchecked) private var tlbFilled = false
    /// TLB lookups that hit, that missed (a table walk), and flushes that emptied it. Its thread only.
    @exclusivity(unchecked) public private(set) var tlbHits = 0
    @exclusivity(unchecked) public private(set) var tlbMisses = 0
    @exclusivity(unchecked) public private(set) var tlbFlushes = 0

    init(index: Int, count: Int, space: SVMSpace, launch: SVMLaunch, start: UInt64) {
        self.index = index; self.count = count; self.space = space; self.launch = launch
        virtualNanoseconds = start
        counterThreshold = space.device.policy.accessCounterThreshold
        tlbTags = .allocate(capacity: SVMEngine.tlbSize)
        tlbTags.initialize(repeating: UInt64.max, count: SVMEngine.tlbSize)
        tlbData = .allocate(capacity: SVMEngine.tlbSize)
        tlbData.initialize(repeating: SVMEntry(pfn: 0, write: false, atomic: false, local: false), count: SVMEngine.tlbSize)
    }

    deinit {
        tlbTags.deallocate()
        tlbData.deallocate()
    }

    /// The entry for `vpn` that allows `kind`: from the TLB, or from the table (filling the
    /// TLB); nil if the table has none that allows it (a fault). Sets `walked` on a miss.
    /// Locking: the space's `lock` held.
    @inline(__always) private func translate(_ vpn: UInt64, _ kind: SVMAccess, walked: inout Bool) -> SVMEntry? {
        space.lock.assertHeld()
        let generation = space.tlbGeneration
        if generation != tlbGeneration {
            tlbGeneration = generation
            if tlbFilled {
                tlbTags.update(repeating: UInt64.max, count: SVMEngine.tlbSize)
                tlbFilled = false
                tlbFlushes += 1
            }
        }
        let slot = Int(vpn & UInt64(SVMEngine.tlbSize - 1))
        if tlbTags[slot] == vpn, SVMEngine.permits(tlbData[slot], kind) { tlbHits += 1; return tlbData[slot] }
        tlbMisses += 1
        walked = true
        guard let e = space.table[vpn], SVMEngine.permits(e, kind) else { return nil }
        tlbTags[slot] = vpn
        tlbData[slot] = e
        tlbFilled = true
        return e
    }

    /// Called by the fault thread after the batch that held this engine's fault `ticket`.
    func replay(through ticket: UInt64, at time: UInt64) {
        if UInt64(resumeAt.load()) < time { resumeAt.store(Int(time)) }
        if UInt64(replayed.load()) < ticket { replayed.store(Int(ticket)) }
    }

    /// Whether a device entry allows an access: any for a read; a writable one for a write; for
    /// an atomic, a writable page in device memory or one held device-exclusive.
    @inline(__always) static func permits(_ e: SVMEntry, _ kind: SVMAccess) -> Bool {
        switch kind {
        case .read: true
        case .write: e.write
        case .atomic: e.write && (e.local || e.atomic)
        }
    }

    /// Loads the word at `address`.
    public func load(_ address: UInt64) throws(SVMFatalFault) -> UInt64 {
        try access(address, .read) { p in AtomicU64Ref(p).load(.relaxed) }
    }

    /// Stores `value` to the word at `address`.
    public func store(_ address: UInt64, _ value: UInt64) throws(SVMFatalFault) {
        _ = try access(address, .write) { p in AtomicU64Ref(p).store(value, .relaxed); return 0 }
    }

    /// Adds `delta` to the word at `address` atomically (device memory, or a system page held
    /// device-exclusive). Return: the old value.
    @discardableResult
    public func atomicAdd(_ address: UInt64, _ delta: UInt64) throws(SVMFatalFault) -> UInt64 {
        try access(address, .atomic) { p in AtomicU64Ref(p).fetchAdd(delta) }
    }

    /// The access loop: look the page up under the table lock and act on its bytes there (an
    /// invalidation waits for the lock, so the page cannot go while it is used); on a miss,
    /// raise a fault and wait for the replay.
    private func access(_ address: UInt64, _ kind: SVMAccess,
                        _ act: (UnsafeMutableRawPointer) -> UInt64) throws(SVMFatalFault) -> UInt64 {
        guard address & 7 == 0 else { throw SVMFatalFault(address: address, access: kind, errno: .EINVAL) }
        // Past the user address space no VMA can hold it (and page arithmetic would overflow).
        guard address < taskSize else { throw SVMFatalFault(address: address, access: kind, errno: .EFAULT) }
        let page = address & ~(pageSize - 1), offset = Int(address - page)
        let costs = device.costs
        while true {
            if let fatal = launch.fatal { throw fatal }
            var walked = false
            let result: (UInt64, Bool, Bool)? = space.lock.withLock {
                guard let e = translate(page >> pageShift, kind, walked: &walked) else { return nil }
                let p = e.local ? device.bytes(of: e.pfn) : device.memory.frame(e.pfn)
                let value = act(p + offset)
                // A remote access counts for its 64 KiB region; at the threshold the counter
                // fires (and starts again).
                var fired = false
                if !e.local, let threshold = counterThreshold {
                    let region = page >> SVMSpace.counterRegionShift
                    let n = space.remoteAccesses[region, default: 0] + 1
                    fired = n >= threshold
                    space.remoteAccesses[region] = fired ? 0 : n
                }
                return (value, e.local, fired)
            }
            if walked { virtualNanoseconds += costs.tlbMissNs }
            if let (value, local, fired) = result {
                if local { localAccesses += 1; virtualNanoseconds += costs.localAccessNs }
                else { remoteAccesses += 1; virtualNanoseconds += costs.remoteAccessNs }
                if fired {
                    device.faults.tryPush(SVMFault(space: space, address: page, access: .read,
                                                   engine: self, ticket: 0, time: virtualNanoseconds, counter: true))
                }
                return value
            }
            ticket += 1
            faultsRaised += 1
            let mine = ticket
            let f = SVMFault(space: space, address: page, access: kind, engine: self, ticket: mine, time: virtualNanoseconds)
            device.trace?.record(.fault(engine: index, address: page, access: kind), virtual: virtualNanoseconds)
            guard device.faults.push(f) else { throw SVMFatalFault(address: address, access: kind, errno: .ENODEV) }
            device.replayQueue.wait { UInt64(replayed.load()) >= mine || launch.fatal != nil }
            virtualNanoseconds = max(virtualNanoseconds, UInt64(resumeAt.load()))
            device.trace?.record(.replay(engine: index), virtual: virtualNanoseconds)
        }
    }
}

/// A kernel launched on some engines: wait for it, read its result.
public final class SVMLaunch: @unchecked Sendable {
    public let kernel: SVMKernel
    let device: SVMDevice
    private let lock = Lock("svm-launch")
    /// Locking: `lock` (read without it through `fatal`).
    private var fatalStorage: SVMFatalFault? = nil
    private let cancelled = AtomicCounter(0)
    @exclusivity(unchecked) private(set) var engines: [SVMEngine] = []
    /// Locking: `lock`.
    private var threads: [ModelThread] = []
    /// Engines still running; the last one out completes `done`.
    private let running: AtomicCounter
    private let done = Completion()
    let startVirtual: UInt64
    let startWall: UInt64
    /// Set by the last engine, before `done` completes.
    @exclusivity(unchecked) private var endWall: UInt64 = 0

    init(kernel: SVMKernel, space: SVMSpace, engines n: Int) {
        self.kernel = kernel
        device = space.device
        startVirtual = space.device.faultClock.now
        startWall = monotonicNanoseconds()
        running = AtomicCounter(n)
        engines = (0..<n).map { SVMEngine(index: $0, count: n, space: space, launch: self, start: startVirtual) }
        device.admit(self)
        let spawned = engines.map { e in
            ModelThread.spawn(name: "svm-engine-\(e.index)") { [kernel] in
                self.device.trace?.record(.kernelStart(engine: e.index, name: kernel.name), virtual: e.virtualNanoseconds)
                do throws(SVMFatalFault) { try kernel.body(e) } catch { self.cancel(error) }
                self.device.stats.count(.tlbHits, e.tlbHits)
                self.device.stats.count(.tlbMisses, e.tlbMisses)
                self.device.stats.count(.tlbFlushes, e.tlbFlushes)
                self.device.trace?.record(.kernelEnd(engine: e.index), virtual: e.virtualNanoseconds)
                // The device's clock is past every kernel it ran: the next launch starts there.
                self.device.faultClock.advance(to: e.virtualNanoseconds)
                if self.running.add(-1) == 0 {
                    self.endWall = monotonicNanoseconds()
                    self.device.retire(self)
                    self.done.complete()
                }
            }
        }
        lock.withLock { threads = spawned }
    }

    /// The fatal fault that cancelled this kernel, if one did.
    public var fatal: SVMFatalFault? {
        guard cancelled.load() != 0 else { return nil }
        return lock.withLock { fatalStorage }
    }

    /// Cancels the kernel with `fault` (the first fatal fault stands).
    func cancel(_ fault: SVMFatalFault) {
        let first: Bool = lock.withLock {
            guard fatalStorage == nil else { return false }
            fatalStorage = fault
            return true
        }
        cancelled.store(1)
        if first { device.stats.count(.fatalFaults) }
        device.replayQueue.wakeAll()
    }

    /// Waits for every engine. Throws the fatal fault that cancelled the kernel. With a
    /// timeout, a kernel still running then is cancelled (EBUSY) and waited for: a watchdog.
    /// Return: the run's virtual and wall time.
    @discardableResult
    public func wait(timeoutNanoseconds: UInt64? = nil) throws(SVMFatalFault) -> SVMRunTime {
        if let t = timeoutNanoseconds, !done.wait(timeoutNanoseconds: t) {
            cancel(SVMFatalFault(address: 0, access: .read, errno: .EBUSY))
        }
        joinEngines()
        if let f = fatal { throw f }
        return time
    }

    /// Waits until every engine has finished (any number of callers).
    func joinEngines() {
        done.wait()
        let ts = lock.withLock { () -> [ModelThread] in let t = threads; threads = []; return t }
        for t in ts { t.join() }
    }

    /// Virtual time: from launch to the last engine's end. Wall time: launch to the last
    /// engine's end. Read after `wait`.
    public var time: SVMRunTime {
        let end = engines.map(\.virtualNanoseconds).max() ?? startVirtual
        return SVMRunTime(virtualNanoseconds: end - startVirtual, wallNanoseconds: endWall &- startWall)
    }
    /// Accesses that hit, in device memory and over the link, and faults raised, all engines.
    public var localAccesses: Int { engines.reduce(0) { $0 + $1.localAccesses } }
    public var remoteAccesses: Int { engines.reduce(0) { $0 + $1.remoteAccesses } }
    public var faultsRaised: Int { engines.reduce(0) { $0 + $1.faultsRaised } }
    /// TLB hits, misses (walks) and flushes, all engines.
    public var tlbHits: Int { engines.reduce(0) { $0 + $1.tlbHits } }
    public var tlbMisses: Int { engines.reduce(0) { $0 + $1.tlbMisses } }
    public var tlbFlushes: Int { engines.reduce(0) { $0 + $1.tlbFlushes } }
}

public struct SVMRunTime: Sendable {
    public let virtualNanoseconds: UInt64
    public let wallNanoseconds: UInt64
}

extension SVMDevice {
    /// Runs `kernel` on `engines` engines over `space`. Return: the launch; `wait()` for it.
    /// Errors: EINVAL for no engines or a space of another device.
    public func launch(_ kernel: SVMKernel, on space: SVMSpace, engines: Int) throws(Errno) -> SVMLaunch {
        guard engines > 0, engines <= 64, space.device === self else { throw .EINVAL }
        return SVMLaunch(kernel: kernel, space: space, engines: engines)
    }
}
