import MMArch
import MMSync

/// A copy engine (a device's DMA engine): page copies run on the engine's own thread while the
/// driver goes on with page-table work, as a GPU driver overlaps its copy engines with the
/// migration of the next batch. A device owns its engines; jobs run in submission order.
///
/// A job is cut into chunks that the engine and a waiter both claim: a driver that reaches
/// `CopyFence.wait()` before the engine is done copies the remaining chunks itself instead of
/// idling. Under the explorer (`Sync.scheduler` set) every job runs inline on the submitting
/// thread, so the explorer sees no thread it does not control.
///
/// The thread starts with the first job and ends in `stop()`, which its owner calls at
/// teardown (a dmirror device when it goes away). Under the explorer no engine thread may be
/// running: stop engines before installing a scheduler (jobs then run inline).
/// Sendable: `lock` guards the queue, the thread handle and `stopped`; the rest is atomics.
public final class CopyEngine: @unchecked Sendable {
    public let name: String
    /// Locking: guards `queue`, `thread` and `stopped`.
    private let lock: Lock
    private var queue: [CopyFence] = []   // a job leaves it before it runs
    private var thread: ModelThread? = nil
    private var stopped = false
    /// Jobs queued, and whether `stop` was called: read by the idle engine without `lock`
    /// (its sleep must not take a lock the explorer would see).
    private let pending = AtomicWord(0)
    private let stopping = AtomicWord(0)
    /// The engine thread's id while it runs (0 otherwise), so `stop` never joins itself.
    private let threadID = AtomicWord(0)
    private let work = WaitQueue()

    public init(name: String = "copy-engine") {
        self.name = name
        lock = Lock("copy-engine")
    }

    /// Runs `chunk(0) … chunk(chunks - 1)` on the engine (and on whoever waits). Wait on the
    /// returned fence before the copied data becomes visible to anyone. After `stop`, and
    /// under the explorer, the job runs on the calling thread before this returns.
    @discardableResult
    public func submit(chunks: Int, _ chunk: @escaping (Int) -> Void) -> CopyFence {
        guard chunks > 0 else { return .signalled() }
        let fence = CopyFence(chunks: chunks, chunk)
        if Sync.scheduler != nil {
            fence.help()
            return fence
        }
        lock.lock()
        guard !stopped else {
            lock.unlock()
            fence.help()
            return fence
        }
        queue.append(fence)
        pending.add(1)
        // Started under the lock (once per engine), so a concurrent `stop` sees the thread.
        if thread == nil { thread = ModelThread.spawn(name: name) { [self] in loop() } }
        lock.unlock()
        work.wakeAll()
        return fence
    }

    /// Ends the engine: jobs already queued still run, later ones run on their submitter,
    /// and the thread exits. With `wait` (the default) the caller sleeps until it has;
    /// without, the thread is detached and exits on its own — for a teardown that may run
    /// where sleeping is not allowed (a deinit reached under a spin lock).
    /// Locking: with `wait`, sleeps, so no spin lock may be held.
    public func stop(wait: Bool = true) {
        if wait { Lockdep.assertNoSpinLockHeld() }
        let t = lock.withLock { () -> ModelThread? in
            stopped = true
            stopping.store(1)
            defer { thread = nil }
            return thread
        }
        work.wakeAll()
        guard let t else { return }
        if wait && threadID.load() != currentThreadID() { t.join() } else { t.detach() }
    }

    /// Whether the engine's thread is running (for tests).
    public var isRunning: Bool { lock.withLock { thread != nil } }

    private func next() -> CopyFence? {
        lock.lock(); defer { lock.unlock() }
        guard !queue.isEmpty else { return nil }
        pending.add(~0) // -1
        return queue.removeFirst() // at most a few jobs are ever queued
    }

    private func loop() {
        threadID.store(currentThreadID())
        defer { threadID.store(0) }
        while true {
            if pending.load() == 0 {
                if stopping.load() != 0 { return }
                work.wait { pending.load() != 0 || stopping.load() != 0 }
                continue
            }
            next()?.help()
        }
    }
}

/// One copy-engine job and its completion.
/// Sendable: its state is atomics and a wait queue.
public final class CopyFence: @unchecked Sendable {
    private let chunks: UInt64
    /// Kept until the fence goes (the engine may still look at a job the waiter finished).
    private let chunk: (Int) -> Void
    private let claimed = AtomicWord(0)
    private let finished = AtomicWord(0)
    private let queue = WaitQueue()

    init(chunks: Int, _ chunk: @escaping (Int) -> Void) {
        self.chunks = UInt64(max(chunks, 0))
        self.chunk = chunk
    }

    /// A fence with nothing to wait for: one shared instance, never changed (a job of no
    /// chunks touches none of its atomics), so a copy made inline allocates no fence.
    public static func signalled() -> CopyFence { done }
    private static let done = CopyFence(chunks: 0, { _ in })

    public var isDone: Bool { finished.load() == chunks }

    /// Copies unclaimed chunks until none is left.
    func help() {
        guard chunks > 0 else { return }
        let run = chunk
        while true {
            let c = claimed.add(1) - 1
            guard c < chunks else { return }
            run(Int(c))
            if finished.add(1) == chunks { queue.wakeAll() }
        }
    }

    /// Waits for the job, copying what the engine has not claimed yet; then spins briefly for
    /// chunks in flight (a chunk takes microseconds; sleeping and being woken costs tens).
    public func wait() {
        guard chunks > 0 else { return }
        help()
        if Sync.scheduler == nil {
            let deadline = monotonicNanoseconds() &+ 200_000
            var spins = 0
            while finished.loadRelaxed() != chunks {
                spins += 1
                if spins & 255 == 0 && monotonicNanoseconds() >= deadline { break }
            }
        }
        queue.wait { finished.load() == chunks }
    }
}

extension PhysicalMemory {
    /// Pages per copy-engine chunk.
    static let copyChunkPages = 64

    /// `copyFramesBulk(to:from:)` on `engine`. The memory stays alive until the job ran.
    public func copyFramesAsync(on engine: CopyEngine, to dst: [UInt64], from src: [UInt64]) -> CopyFence {
        precondition(dst.count == src.count && dst.allSatisfy { $0 < totalPfns } && src.allSatisfy { $0 < totalPfns })
        let n = dst.count, per = PhysicalMemory.copyChunkPages
        return engine.submit(chunks: (n + per - 1) / per) { [self] c in
            let lo = c * per, count = min(per, n - lo)
            dst.withUnsafeBufferPointer { d in
                src.withUnsafeBufferPointer { s in mm_copy_frames_nocache(frameBase, d.baseAddress! + lo, s.baseAddress! + lo, count) }
            }
        }
    }

    /// `gatherFramesBulk(into:from:)` copied by the caller and `engine` together.
    public func gatherFramesParallel(on engine: CopyEngine, into buffer: UnsafeMutableRawBufferPointer, from src: [UInt64]) {
        precondition(buffer.count >= src.count << pageShift && src.allSatisfy { $0 < totalPfns })
        let n = src.count, per = PhysicalMemory.copyChunkPages
        guard n >= 2 * per else { gatherFramesBulk(into: buffer, from: src); return }
        let base = buffer.baseAddress!
        engine.submit(chunks: (n + per - 1) / per) { [self] c in
            let lo = c * per, count = min(per, n - lo)
            src.withUnsafeBufferPointer { s in mm_gather_frames_nocache(base + (lo << pageShift), frameBase, s.baseAddress! + lo, count) }
        }.wait()
    }
}
