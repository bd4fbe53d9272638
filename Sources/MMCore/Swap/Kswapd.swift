import MMSync

/// The machine's background reclaim thread (`kswapd`): an allocation that leaves fewer free
/// frames than the low watermark wakes it; it reclaims in batches (`shrinkNode`, counted as
/// `pgscan_kswapd`/`pgsteal_kswapd`) until the high watermark is free again or a batch frees
/// nothing, then sleeps. Off until `startKswapd` (tests that check invariants after each
/// operation need a machine nothing else changes). Free frames are counted the same way for
/// the wake-up and the balancing: the buddy allocator's and the per-CPU lists' together.
/// Sendable: the flags are atomics; `lock` guards the thread handle.
final class Kswapd: @unchecked Sendable {
    let lock = Lock("kswapd")
    /// Locking: lock.
    var thread: ModelThread? = nil
    /// 1 while the thread runs (allocations look at it without a lock).
    let running = AtomicWord(0)
    let wakeFlag = AtomicWord(0)
    let stopping = AtomicWord(0)
    let threadID = AtomicWord(0)
    let queue = WaitQueue()

    /// `wakeup_kswapd` from an allocation that saw the buddy allocator below the low
    /// watermark: wakes the thread if all free frames are (cheap when it is already awake).
    func wakeIfBelowLow(_ memory: PhysicalMemory) {
        guard wakeFlag.loadRelaxed() == 0, memory.freeFrames < memory.watermarks.low else { return }
        wake()
    }

    func wake() {
        guard wakeFlag.loadRelaxed() == 0 else { return }
        wakeFlag.store(1)
        queue.wakeAll()
    }
}

extension Machine {
    /// Starts kswapd (idempotent).
    public func startKswapd() {
        kswapd.lock.withLock {
            guard kswapd.thread == nil else { return }
            kswapd.stopping.store(0)
            let k = kswapd, me = Weak(self)
            kswapd.thread = ModelThread.spawn(name: "kswapd0") { Machine.kswapdLoop(k, me) }
            kswapd.running.store(1)
        }
    }

    /// Stops kswapd and waits for its thread (detached when called from it).
    /// Locking: sleeps, so no spin lock may be held.
    public func stopKswapd() {
        Lockdep.assertNoSpinLockHeld()
        let t = kswapd.lock.withLock { () -> ModelThread? in
            kswapd.running.store(0)
            kswapd.stopping.store(1)
            defer { kswapd.thread = nil }
            return kswapd.thread
        }
        kswapd.queue.wakeAll()
        guard let t else { return }
        if kswapd.threadID.load() != currentThreadID() { t.join() } else { t.detach() }
    }

    /// Whether kswapd runs.
    public var kswapdRunning: Bool { kswapd.lock.withLock { kswapd.thread != nil } }

    /// The thread holds its machine only while it balances (`machine` is weak), so the
    /// machine can go while kswapd sleeps.
    private static func kswapdLoop(_ k: Kswapd, _ machine: Weak<Machine>) {
        k.threadID.store(currentThreadID())
        defer { k.threadID.store(0) }
        while k.stopping.load() == 0 {
            k.queue.wait { k.wakeFlag.load() != 0 || k.stopping.load() != 0 }
            if k.stopping.load() != 0 { return }
            guard let m = machine.value else { return }
            // Cleared before balancing: a wake-up while it balances runs it once more.
            k.wakeFlag.store(0)
            m.balanceNode()
        }
    }

    /// `balance_pgdat`: reclaims until the high watermark is free or a batch frees nothing.
    /// Locking: caller holds no lock.
    func balanceNode() {
        Lockdep.assertNoLocksHeld()
        stats.count(.pageoutrun)
        while memory.freeFrames < memory.watermarks.high && kswapd.stopping.load() == 0 {
            if shrinkNode(nrToReclaim: Machine.swapClusterMax, reclaimer: .kswapd) == 0 { break }
        }
    }
}
