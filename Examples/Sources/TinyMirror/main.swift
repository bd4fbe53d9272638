import HMM
import MMCore
import MMSync
#if canImport(Glibc)
import Glibc
#endif

/// A tiny device driver on swift-hmm's public API: it mirrors part of a process's address
/// space into its own page table, keeps that table right through an interval notifier (the
/// `mmu_interval_notifier` protocol: invalidate under the driver lock, `readBegin`/`readRetry`
/// around each fault), and reads memory through its mirror.
final class TinyMirrorDevice: @unchecked Sendable {
    /// The device's page table: virtual page → frame (pfn) and whether it may write.
    /// Locking: `lock` (the driver lock the notifier takes).
    private var table: [UInt64: (pfn: UInt64, write: Bool)] = [:]
    let lock = Lock("tiny-mirror")
    let memory: PhysicalMemory
    let notifier: MMUIntervalNotifier
    private(set) var invalidations = 0

    init(mm: AddressSpace, start: UInt64, end: UInt64) throws(Errno) {
        memory = mm.memory
        var weakSelf: (() -> TinyMirrorDevice?)? = nil
        notifier = MMUIntervalNotifier(start: start, end: end) { sub, range, seq in
            // The invalidate callback: drop what the range covers, under the driver lock, and
            // publish the new sequence so a fault racing with us retries.
            guard let dev = weakSelf?() else { sub.setSeq(seq); return true }
            // A non-blockable invalidation (an OOM reaper's) must not wait for our lock.
            if range.blockable { dev.lock.lock() } else if !dev.lock.tryLock() { return false }
            sub.setSeq(seq)
            dev.table = dev.table.filter { $0.key < range.start || $0.key >= range.end }
            dev.invalidations += 1
            dev.lock.unlock()
            return true
        }
        weakSelf = { [weak self] in self }
        try mm.notifiers.insert(notifier)
    }

    /// Faults [start, end) in for the device (writable if `write`) and programs the table:
    /// hmm_range_fault under the mmap lock, then the table update under the driver lock, only
    /// if no invalidation ran in between (else again).
    func fault(_ start: UInt64, _ end: UInt64, write: Bool) throws(Errno) {
        var range = HMMRange(notifier: notifier, notifierSeq: 0, start: start, end: end,
                             defaultFlags: HMMPfn.valid | (write ? HMMPfn.write : 0))
        try HMMMirror.faultAndProgram(&range, driverLock: lock) { (r: HMMRange) throws(Errno) in
            for (i, e) in r.hmmPfns.enumerated() where e & HMMPfn.valid != 0 {
                table[r.start + UInt64(i) * pageSize] = (HMMPfn.pfn(e), e & HMMPfn.write != 0)
            }
        }
    }

    /// A device read of one 8-byte word through the mirror (faulting it in first if needed).
    /// The read happens under the driver lock: an invalidation of the page waits for it, so
    /// the frame cannot be freed and reused under the read.
    func read64(_ address: UInt64) throws(Errno) -> UInt64 {
        let page = address & ~(pageSize - 1)
        while true {
            let value: UInt64? = lock.withLock {
                guard let entry = table[page] else { return nil }
                return memory.frame(entry.pfn).load(fromByteOffset: Int(address - page), as: UInt64.self)
            }
            if let value { return value }
            try fault(page, page + pageSize, write: false)
        }
    }

    var mirroredPages: Int { lock.withLock { table.count } }
}

func expect(_ ok: Bool, _ what: String) {
    print((ok ? "ok   " : "FAIL ") + what)
    if !ok { exitCode = 1 }
}
nonisolated(unsafe) var exitCode: Int32 = 0

do {
    let machine = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
    let process = try MMCore.Process(machine: machine)
    let cpu = process.makeCPU()
    let pages: UInt64 = 16
    let a = try process.mmap(length: pages * pageSize, prot: .readWrite, flags: [.private, .anonymous])
    for i in 0..<pages { try cpu.store(a + i * pageSize, 1000 + i) }

    let device = try TinyMirrorDevice(mm: process.mm, start: a, end: a + pages * pageSize)
    try device.fault(a, a + pages * pageSize, write: true)
    expect(device.mirroredPages == Int(pages), "the device mirrors all \(pages) pages")
    expect(try device.read64(a + 5 * pageSize) == 1005, "the device reads what the CPU wrote")

    // The CPU unmaps four pages: the notifier invalidates them, the device drops them.
    try process.munmap(a + 4 * pageSize, length: 4 * pageSize)
    expect(device.mirroredPages == Int(pages) - 4, "an unmap removes the unmapped pages from the mirror")

    // mprotect of the first four pages to read-only: their mirror entries are invalidated.
    try process.mprotect(a, length: 4 * pageSize, prot: .read)
    expect(device.mirroredPages == Int(pages) - 8, "a protection change invalidates the mirror")
    expect(try device.read64(a + 2 * pageSize) == 1002, "a read faults the page back in for the device")
    expect(device.invalidations >= 2, "the driver saw \(device.invalidations) invalidations")

    // Copy-on-write: after a fork, the CPU's write gives the parent a new page; the device,
    // which mirrored the old one, is told and faults the new one in.
    let child = try process.fork()
    try cpu.store(a + 9 * pageSize, 4242)
    expect(try device.read64(a + 9 * pageSize) == 4242, "after COW the device reads the new page")
    child.exit()

    process.mm.notifiers.remove(device.notifier)
    cpu.detach()
    process.exit()
    expect(machine.checkInvariants().isEmpty, "the machine's invariants hold")
} catch {
    print("FAIL error \(error)")
    exitCode = 1
}
exit(exitCode)
