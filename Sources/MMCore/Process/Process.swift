import MMSync

/// A process of the model: an address space and the CPU threads running in it.
public final class Process: @unchecked Sendable {
    public let mm: AddressSpace
    public var pid: Int32 { mm.id }
    public var machine: Machine { mm.machine }
    let lock = Lock("process")
    var cpuCount = 0
    public private(set) var exited = false

    public init(machine: Machine) throws(Errno) {
        mm = try AddressSpace(machine: machine)
    }
    init(mm: AddressSpace) { self.mm = mm }

    /// A CPU context for the calling thread. Call `detach()` when the thread is done.
    public func makeCPU() -> CPU {
        let i = lock.withLock { () -> Int in cpuCount += 1; return cpuCount - 1 }
        return CPU(mm: mm, index: i)
    }

    /// Starts a CPU thread running `body` with its own CPU context.
    public func spawnThread(name: String = "cpu", _ body: @escaping (CPU) -> Void) -> ModelThread {
        let cpu = makeCPU()
        return ModelThread.spawn(name: name) {
            body(cpu)
            cpu.detach()
        }
    }

    /// `fork()`: a child process with a copy-on-write copy of this address space.
    public func fork() throws(Errno) -> Process { Process(mm: try mm.fork()) }

    /// Process exit: tears the address space down (`exit_mmap`).
    public func exit() {
        lock.withLock { exited = true }
        mm.exitMMap()
        let cpus = mm.cpusLock.withLock { mm.cpus }
        for c in cpus { c.detach() }
    }

    // Convenience wrappers (the system calls, as a process issues them).
    public func mmap(address: UInt64 = 0, length: UInt64, prot: Protection, flags: MapFlags,
                     file: ShmemFile? = nil, offset: UInt64 = 0) throws(Errno) -> UInt64 {
        try mm.mmap(address: address, length: length, prot: prot, flags: flags, file: file, offset: offset)
    }
    public func munmap(_ address: UInt64, length: UInt64) throws(Errno) { try mm.munmap(address, length: length) }
    public func mprotect(_ address: UInt64, length: UInt64, prot: Protection) throws(Errno) {
        try mm.mprotect(address, length: length, prot: prot)
    }
    public func madvise(_ address: UInt64, length: UInt64, advice: MadviseAdvice) throws(Errno) {
        try mm.madvise(address, length: length, advice: advice)
    }
    public func mremap(_ address: UInt64, oldLength: UInt64, newLength: UInt64, flags: MremapFlags,
                       newAddress: UInt64 = 0) throws(Errno) -> UInt64 {
        try mm.mremap(address, oldLength: oldLength, newLength: newLength, flags: flags, newAddress: newAddress)
    }
}
