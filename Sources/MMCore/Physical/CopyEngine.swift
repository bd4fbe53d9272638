import MMSync

/// A copy engine (a device's DMA engine): page copies run on the engine's own thread while the
/// driver goes on with page-table work, as a GPU driver overlaps its copy engines with the
/// migration of the next batch. One engine serves the process, jobs in submission order.
///
/// Under the explorer (`Sync.scheduler` set) every job runs inline on the submitting thread,
/// so the explorer sees no thread it does not control.
public final class CopyEngine: @unchecked Sendable {
    public static let shared = CopyEngine()

    private struct Job {
        let run: () -> Void
        let fence: CopyFence
    }

    /// Locking: `lock` guards `queue` and `started`.
    private let lock = Lock("copy-engine")
    private var queue: [Job] = []   // a job leaves it before it runs (it keeps its memory alive)
    private var started = false
    private let work = WaitQueue()

    /// Runs `copy` on the engine. Wait on the returned fence before the copied data becomes
    /// visible to anyone (before installing the destination, or releasing the source).
    public func submit(_ copy: @escaping () -> Void) -> CopyFence {
        let fence = CopyFence()
        if Sync.scheduler != nil {
            copy()
            fence.signal()
            return fence
        }
        lock.lock()
        queue.append(Job(run: copy, fence: fence))
        let start = !started
        started = true
        lock.unlock()
        if start { _ = ModelThread.spawn(name: "copy-engine") { [self] in loop() } }
        work.wakeAll()
        return fence
    }

    private func next() -> Job? {
        lock.lock(); defer { lock.unlock() }
        return queue.isEmpty ? nil : queue.removeFirst() // at most a few jobs are ever queued
    }

    private var hasWork: Bool { lock.withLock { !queue.isEmpty } }

    private func loop() {
        while true {
            guard let job = next() else {
                work.wait { hasWork }
                continue
            }
            job.run()
            job.fence.signal()
        }
    }
}

/// Completion of one copy-engine job.
public final class CopyFence: @unchecked Sendable {
    private let done = AtomicWord(0)
    private let queue = WaitQueue()

    /// A fence that is already signalled (for work done inline).
    public static func signalled() -> CopyFence { let f = CopyFence(); f.signal(); return f }

    func signal() { done.store(1); queue.wakeAll() }

    public var isDone: Bool { done.load() != 0 }

    /// Waits for the job: spins briefly (a batch copy takes about 100 µs; sleeping and being
    /// woken costs tens), then sleeps.
    public func wait() {
        if Sync.scheduler == nil {
            let deadline = monotonicNanoseconds() &+ 300_000
            var spins = 0
            while done.loadRelaxed() == 0 {
                spins += 1
                if spins & 255 == 0 && monotonicNanoseconds() >= deadline { break }
            }
        }
        queue.wait { done.load() != 0 }
    }
}

extension PhysicalMemory {
    /// `copyFramesBulk(to:from:)` on the copy engine. The memory stays alive until the job ran.
    public func copyFramesAsync(to dst: [UInt64], from src: [UInt64]) -> CopyFence {
        guard !dst.isEmpty else { return .signalled() }
        return CopyEngine.shared.submit { [self] in copyFramesBulk(to: dst, from: src) }
    }

    /// `gatherFramesBulk(into:from:)` with the copy engine taking the second half while the
    /// caller copies the first (two copy streams; worth it for a few hundred pages or more).
    public func gatherFramesParallel(into buffer: UnsafeMutableRawBufferPointer, from src: [UInt64]) {
        guard src.count >= 256, Sync.scheduler == nil else { gatherFramesBulk(into: buffer, from: src); return }
        let half = src.count / 2
        let second = Array(src[half...])
        let tail = UnsafeMutableRawBufferPointer(rebasing: buffer[(half << pageShift)...])
        let fence = CopyEngine.shared.submit { [self] in gatherFramesBulk(into: tail, from: second) }
        gatherFramesBulk(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<(half << pageShift)]), from: Array(src[..<half]))
        fence.wait()
    }
}
