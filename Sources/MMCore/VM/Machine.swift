import MMSync

/// A whole simulated machine: physical memory, the processes on it, and event counters.
/// Sendable: `pidLock` guards the pid counter and the live address spaces; the rest is
/// immutable or set before threads start (`onOperation`, `maxMapCount`).
public final class Machine: @unchecked Sendable {
    public let memory: PhysicalMemory
    public let stats = MMStats()
    var kswapd: Kswapd { memory.kswapd }
    let pidLock = Lock("pid")
    var nextPid: Int32 = 1
    /// Address spaces alive (for invariant checks and device eviction).
    var liveMMs: [ObjectIdentifier: Weak<AddressSpace>] = [:]

    /// Creates a machine with `memoryBytes` of RAM (page multiple, ≥ 8 MiB) and room for
    /// `devicePfnSpaceBytes` of device memory registrations, and a swap area of `swapBytes`
    /// (none when 0; more with `memory.swap.swapOn`) on `swapBacking` (host memory unless a file
    /// is named). With `populateRAM` the host backs the swap area and all of RAM before this
    /// returns (see `PhysicalMemory.init`).
    public init(memoryBytes: UInt64 = 256 << 20, devicePfnSpaceBytes: UInt64 = 16 << 30, swapBytes: UInt64 = 0,
                swapBacking: SwapBacking = .memory, populateRAM: Bool = false) throws(Errno) {
        memory = try PhysicalMemory(systemBytes: memoryBytes, devicePfnSpaceBytes: devicePfnSpaceBytes, populateRAM: populateRAM)
        if swapBytes > 0 { try memory.swap.swapOn(bytes: swapBytes, populate: populateRAM, backing: swapBacking) }
        memory.directReclaimHook = { [weak self] in self?.directReclaim() ?? 0 }
        memory.oomHook = { [weak self] in self?.outOfMemory() ?? false }
    }

    /// Whether an allocation that reclaim cannot satisfy invokes the OOM killer (off by
    /// default: the allocation then fails, and the fault with it). Set before threads start.
    @exclusivity(unchecked) nonisolated(unsafe) public var oomKillerEnabled = false
    /// Serializes the OOM killer's selection (`oom_lock`).
    let oomLock = Lock("oom_lock")
    /// Where allocations wait for the OOM reaper.
    let oomWait = WaitQueue()

    deinit { stopKswapd() }

    /// Called at the end of every public operation (system calls, faults, GUP, migration), with
    /// no lock held. Tests install a checker here to run the invariant checks after each one.
    @exclusivity(unchecked) nonisolated(unsafe) public var onOperation: ((StaticString) -> Void)? = nil

    /// `vm.max_map_count`: the most VMAs an address space may have (65,530 as in Linux).
    /// `mmap` fails with ENOMEM once an address space has more; a split (munmap or mprotect of
    /// part of a VMA, madvise that changes flags) once it has this many.
    @exclusivity(unchecked) nonisolated(unsafe) public var maxMapCount = 65_530

    @inline(__always) func operationDone(_ name: StaticString) {
        if let hook = onOperation { hook(name) }
    }

    func allocatePid() -> Int32 { pidLock.withLock { defer { nextPid += 1 }; return nextPid } }

    /// Shmem files alive, weakly: reclaim finds a page's file through here (a weak load gives
    /// nil for a file being torn down, never a dangling one), invariants find unmapped files.
    /// Locking: shmemLock.
    var liveShmem: [UInt: Weak<ShmemFile>] = [:]
    let shmemLock = Lock("shmem files")
    private static func key(_ file: ShmemFile) -> UInt { UInt(bitPattern: Unmanaged.passUnretained(file).toOpaque()) }
    func register(_ file: ShmemFile) { shmemLock.withLock { liveShmem[Machine.key(file)] = Weak(file) } }
    func unregister(_ file: ShmemFile) { shmemLock.withLock { liveShmem[Machine.key(file)] = nil } }
    /// Every shmem file alive.
    var liveShmemFiles: [ShmemFile] { shmemLock.withLock { liveShmem.values.compactMap { $0.value } } }
    /// The file that owns `page` as one of its cached pages, with a strong reference, or nil
    /// (not a shmem page, or its file is going away).
    func shmemFile(owning page: Page) -> ShmemFile? {
        let bits = page.ownerBits
        guard bits != 0, bits & Page.ownerTagMask == 0 else { return nil }
        return shmemLock.withLock { liveShmem[UInt(bits)]?.value }
    }
    func register(_ mm: AddressSpace) { pidLock.withLock { liveMMs[ObjectIdentifier(mm)] = Weak(mm) } }
    func unregister(_ mm: AddressSpace) { pidLock.withLock { liveMMs[ObjectIdentifier(mm)] = nil } }
    /// Address spaces that have not exited, in creation order.
    public var addressSpaces: [AddressSpace] {
        pidLock.withLock { addressSpacesUnlocked }
    }
    /// The live address spaces by id, read without `pidLock`: for the caller that holds it, or
    /// for the explorer's step checks, which run while every other model thread is stopped at a
    /// scheduling point (taking the lock would be a point of its own).
    var addressSpacesUnlocked: [AddressSpace] { liveMMs.values.compactMap { $0.value }.sorted { $0.id < $1.id } }
}

final class Weak<T: AnyObject> { weak var value: T?; init(_ v: T) { value = v } }
