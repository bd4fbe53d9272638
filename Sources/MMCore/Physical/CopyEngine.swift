#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MMArch
import MMSync

/// A copy engine (a device's DMA engine): page copies run on the engine's own thread while the
/// driver goes on with page-table work, as a GPU driver overlaps its copy engines with the
/// migration of the next batch. One engine serves the process, jobs in submission order.
///
/// A job is cut into chunks that the engine and a waiter both claim: a driver that reaches
/// `CopyFence.wait()` before the engine is done copies the remaining chunks itself instead of
/// idling. Under the explorer (`Sync.scheduler` set) every job runs inline on the submitting
/// thread, so the explorer sees no thread it does not control.
public final class CopyEngine: @unchecked Sendable {
    public static let shared = CopyEngine()

    /// Locking: `lock` guards `queue` and `started`.
    private let lock = Lock("copy-engine")
    private var queue: [CopyFence] = []   // a job leaves it before it runs
    private var started = false
    private let work = WaitQueue()

    /// Runs `chunk(0) … chunk(chunks - 1)` on the engine (and on whoever waits). Wait on the
    /// returned fence before the copied data becomes visible to anyone.
    @discardableResult
    public func submit(chunks: Int, _ chunk: @escaping (Int) -> Void) -> CopyFence {
        let fence = CopyFence(chunks: chunks, chunk)
        guard chunks > 0 else { return fence }
        if Sync.scheduler != nil {
            fence.help()
            return fence
        }
        lock.lock()
        queue.append(fence)
        let start = !started
        started = true
        lock.unlock()
        if start { _ = ModelThread.spawn(name: "copy-engine") { [self] in loop() } }
        work.wakeAll()
        return fence
    }

    private func next() -> CopyFence? {
        lock.lock(); defer { lock.unlock() }
        return queue.isEmpty ? nil : queue.removeFirst() // at most a few jobs are ever queued
    }

    private var hasWork: Bool { lock.withLock { !queue.isEmpty } }

    private func loop() {
        while true {
            // Under the explorer jobs run inline: stay out of its way (no sync point from an
            // uncontrolled thread).
            if Sync.scheduler != nil { usleep(1000); continue }
            guard let job = next() else {
                work.wait { hasWork }
                continue
            }
            job.help()
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

    /// A fence with nothing to wait for.
    public static func signalled() -> CopyFence { CopyFence(chunks: 0, { _ in }) }

    public var isDone: Bool { finished.load() == chunks }

    /// Copies unclaimed chunks until none is left.
    func help() {
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

    /// `copyFramesBulk(to:from:)` on the copy engine. The memory stays alive until the job ran.
    public func copyFramesAsync(to dst: [UInt64], from src: [UInt64]) -> CopyFence {
        precondition(dst.count == src.count && dst.allSatisfy { $0 < totalPfns } && src.allSatisfy { $0 < totalPfns })
        let n = dst.count, per = PhysicalMemory.copyChunkPages
        return CopyEngine.shared.submit(chunks: (n + per - 1) / per) { [self] c in
            let lo = c * per, count = min(per, n - lo)
            dst.withUnsafeBufferPointer { d in
                src.withUnsafeBufferPointer { s in mm_copy_frames_nocache(frameBase, d.baseAddress! + lo, s.baseAddress! + lo, count) }
            }
        }
    }

    /// `gatherFramesBulk(into:from:)` copied by the caller and the copy engine together.
    public func gatherFramesParallel(into buffer: UnsafeMutableRawBufferPointer, from src: [UInt64]) {
        precondition(buffer.count >= src.count << pageShift && src.allSatisfy { $0 < totalPfns })
        let n = src.count, per = PhysicalMemory.copyChunkPages
        guard n >= 2 * per else { gatherFramesBulk(into: buffer, from: src); return }
        let base = buffer.baseAddress!
        CopyEngine.shared.submit(chunks: (n + per - 1) / per) { [self] c in
            let lo = c * per, count = min(per, n - lo)
            src.withUnsafeBufferPointer { s in mm_gather_frames_nocache(base + (lo << pageShift), frameBase, s.baseAddress! + lo, count) }
        }.wait()
    }
}
