import MMCore
import MMSync

/// One RDMA operation posted to a queue pair (`struct ibv_send_wr`). Addresses are in the
/// regions' processes; `local` is the initiator's region, `remote` the target's.
public enum ODPWorkRequest: Sendable {
    /// RDMA WRITE: `length` bytes from `local` at `localAddress` to `remote` at `remoteAddress`.
    case write(local: ODPMemoryRegion, localAddress: UInt64, remote: ODPMemoryRegion, remoteAddress: UInt64, length: Int)
    /// RDMA READ: `length` bytes from `remote` at `remoteAddress` into `local` at `localAddress`.
    case read(local: ODPMemoryRegion, localAddress: UInt64, remote: ODPMemoryRegion, remoteAddress: UInt64, length: Int)
    /// Atomic fetch-and-add on the 8-byte word at `address` of `remote`: the old value.
    case fetchAdd(remote: ODPMemoryRegion, address: UInt64, add: UInt64)
    /// Atomic compare-and-swap on the 8-byte word at `address` of `remote`: the old value.
    case compareSwap(remote: ODPMemoryRegion, address: UInt64, compare: UInt64, swap: UInt64)
}

/// A posted work request: wait for its completion (`ibv_poll_cq`).
public final class ODPWork: @unchecked Sendable {
    public let request: ODPWorkRequest
    private let done = Completion()
    /// Set before `done` completes.
    @exclusivity(unchecked) private var outcome: Result<UInt64, Errno> = .failure(.EBUSY)
    init(_ r: ODPWorkRequest) { request = r }
    func complete(_ r: Result<UInt64, Errno>) { outcome = r; done.complete() }
    /// Waits for the completion. Return: an atomic's old value (0 for READ and WRITE).
    /// Errors: the work completion's error (EFAULT: a remote or local access error; EPERM: the
    /// region's access flags do not allow it; EINVAL: a deregistered region or a misaligned
    /// atomic; EBUSY: the queue pair was destroyed first, or a page's faults kept being
    /// overtaken by invalidations).
    @discardableResult
    public func wait() throws(Errno) -> UInt64 {
        done.wait()
        return try outcome.get()
    }
}

/// A queue pair: a NIC thread that carries out its work requests in order (RC semantics).
/// `destroy()` it when done (`ibv_destroy_qp`): its thread holds it until then.
public final class ODPQueuePair: @unchecked Sendable {
    public let device: ODPDevice
    private let lock = Lock("odp-qp")
    private let queue = WaitQueue()
    /// Locking: `lock`.
    @exclusivity(unchecked) private var pending: [ODPWork] = []
    @exclusivity(unchecked) private var stopping = false
    /// Locking: `lock` (taken once by `destroy`).
    @exclusivity(unchecked) private var thread: ModelThread?
    /// Bytes a READ or WRITE moves per step (through the NIC's buffer).
    static let stepBytes = 64 << 10

    public init(device: ODPDevice) {
        self.device = device
        let t = ModelThread.spawn(name: "odp-qp") { [self] in run() }
        lock.withLock { thread = t }
    }

    /// `ibv_post_send`. Return: the work, to wait for. A destroyed queue pair completes it
    /// with EBUSY.
    @discardableResult
    public func post(_ r: ODPWorkRequest) -> ODPWork {
        let w = ODPWork(r)
        let accepted: Bool = lock.withLock {
            guard !stopping else { return false }
            pending.append(w)
            return true
        }
        if accepted { queue.wakeAll() } else { w.complete(.failure(.EBUSY)) }
        return w
    }

    /// Stops the thread after the work already posted. Locking: none held.
    public func destroy() {
        lock.assertNotHeld()
        let t: ModelThread? = lock.withLock {
            stopping = true
            let t = thread
            thread = nil
            return t
        }
        queue.wakeAll()
        t?.join()
    }

    private func run() {
        while true {
            var next: ODPWork?
            var stop = false
            _ = queue.wait { () -> Bool in
                lock.withLock {
                    if !pending.isEmpty { next = pending.removeFirst() } else if stopping { stop = true }
                }
                return next != nil || stop
            }
            if stop { return }
            guard let w = next else { continue }
            let r: Result<UInt64, Errno>
            do { r = .success(try execute(w.request)) } catch { r = .failure(error) }
            device.stats.count(.operations)
            if case .failure = r { device.stats.count(.errors) }
            w.complete(r)
        }
    }

    private func execute(_ r: ODPWorkRequest) throws(Errno) -> UInt64 {
        switch r {
        case let .write(local, la, remote, ra, n):
            guard remote.access.contains(.remoteWrite) else { throw .EPERM }
            try copy(from: local, la, to: remote, ra, n)
            return 0
        case let .read(local, la, remote, ra, n):
            guard remote.access.contains(.remoteRead), local.access.contains(.localWrite) else { throw .EPERM }
            try copy(from: remote, ra, to: local, la, n)
            return 0
        case let .fetchAdd(remote, a, add):
            return try atomic(remote, a) { AtomicU64Ref($0).fetchAdd(add) }
        case let .compareSwap(remote, a, compare, swap):
            return try atomic(remote, a) { AtomicU64Ref($0).compareExchange(expected: compare, desired: swap).original }
        }
    }

    /// Moves `n` bytes through the NIC's buffer, a step at a time: read from one region (under
    /// its lock), then written to the other (under its lock; never both at once).
    private func copy(from src: ODPMemoryRegion, _ sa: UInt64, to dst: ODPMemoryRegion, _ da: UInt64, _ n: Int) throws(Errno) {
        guard n >= 0 else { throw .EINVAL }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: ODPQueuePair.stepBytes, alignment: 64)
        defer { buffer.deallocate() }
        var done = 0
        while done < n {
            let step = min(ODPQueuePair.stepBytes, n - done)
            try src.access(sa + UInt64(done), step, write: false) { p, at, k in buffer.advanced(by: at).copyMemory(from: p, byteCount: k) }
            try dst.access(da + UInt64(done), step, write: true) { p, at, k in p.copyMemory(from: buffer.advanced(by: at), byteCount: k) }
            done += step
        }
        device.stats.count(.bytes, n)
    }

    private func atomic(_ mr: ODPMemoryRegion, _ a: UInt64, _ op: (UnsafeMutableRawPointer) -> UInt64) throws(Errno) -> UInt64 {
        guard mr.access.contains(.remoteAtomic) else { throw .EPERM }
        guard a & 7 == 0 else { throw .EINVAL }
        var old: UInt64 = 0
        try mr.access(a, 8, write: true) { p, _, _ in old = op(p) }
        return old
    }
}
