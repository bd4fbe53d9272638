import MMSync

/// How an engine touched a page. The order is the service order within a page: an atomic
/// fault needs more than a write, a write more than a read.
public enum SVMAccess: Int, Comparable, Sendable, CustomStringConvertible {
    case read = 0, write, atomic
    public static func < (a: SVMAccess, b: SVMAccess) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["read", "write", "atomic"][rawValue] }
}

/// One entry of the replayable fault buffer: which engine missed on which page, how, and when
/// (the engine's virtual time).
struct SVMFault {
    let space: SVMSpace
    let address: UInt64
    let access: SVMAccess
    let engine: SVMEngine
    /// The engine's fault ticket: the engine waits until its replay reaches it.
    let ticket: UInt64
    let time: UInt64
    /// An access-counter notification (a remote region touched often), not a fault: nobody
    /// waits for it.
    var counter = false
}

/// The device's fault buffer: a bounded queue that the engines fill and the fault thread
/// drains in batches. A full buffer stalls the engine that would add to it (as a GPU's fault
/// buffer overflows into throttling).
final class SVMFaultBuffer: @unchecked Sendable {
    let capacity: Int
    /// Locking: `lock`.
    private var entries: [SVMFault] = []
    /// Locking: `lock`. Set once, when the device shuts down.
    private var stopping = false
    /// Whether the fault thread is servicing a batch it drained (until `serviced`).
    /// Locking: `lock`.
    private var inService = false
    let lock = Lock("svm-fault-buffer")
    /// Woken when entries arrive (the fault thread) and when room is made (the engines).
    private let queue = WaitQueue()

    init(capacity: Int) { self.capacity = capacity; entries.reserveCapacity(capacity) }

    /// Adds a fault, waiting while the buffer is full. Return: false if the device stopped.
    /// Locking: none held.
    func push(_ f: SVMFault) -> Bool {
        lock.assertNotHeld()
        while true {
            let added: Bool? = lock.withLock {
                if stopping { return nil }
                guard entries.count < capacity else { return false }
                entries.append(f)
                return true
            }
            guard let added else { return false }
            if added { queue.wakeAll(); return true }
            queue.wait { lock.withLock { stopping || entries.count < capacity } }
        }
    }

    /// Adds a notification if there is room (it is dropped otherwise, as a full access-counter
    /// buffer drops). Locking: none held.
    func tryPush(_ f: SVMFault) {
        lock.assertNotHeld()
        let added = lock.withLock { () -> Bool in
            guard !stopping, entries.count < capacity else { return false }
            entries.append(f)
            return true
        }
        if added { queue.wakeAll() }
    }

    /// Takes up to `max` faults, oldest first, waiting for at least one. Return: nil once the
    /// device is stopping. Locking: none held.
    func drain(max: Int) -> [SVMFault]? {
        lock.assertNotHeld()
        while true {
            let batch: [SVMFault]? = lock.withLock {
                if stopping { return nil }
                let n = min(max, entries.count)
                let b = Array(entries.prefix(n))
                entries.removeFirst(n)
                if n > 0 { inService = true }
                return b
            }
            guard let batch else { return nil }
            if !batch.isEmpty { queue.wakeAll(); return batch }
            queue.wait { lock.withLock { stopping || !entries.isEmpty } }
        }
    }

    /// The batch `drain` returned is serviced. Locking: none held.
    func serviced() {
        lock.assertNotHeld()
        lock.withLock { inService = false }
        queue.wakeAll()
    }

    /// Waits until nothing is queued or in service (or the device stopped).
    /// Locking: none held.
    func waitIdle() {
        lock.assertNotHeld()
        queue.wait { lock.withLock { stopping || (entries.isEmpty && !inService) } }
    }

    /// Wakes every waiter for good: pushes fail, drains return nil.
    func stop() {
        lock.withLock { stopping = true }
        queue.wakeAll()
    }
}
