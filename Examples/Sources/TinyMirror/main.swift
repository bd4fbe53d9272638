import HMM
import MMCore
import MMSync
#if canImport(Glibc)
import Glibc
#endif

/// A tiny device driver on swift-hmm's public API: it mirrors part of a process's address
/// space into its own page table, keeps that table right through an interval notifier (the
/// `mmu_interval_notifier` protocol: invalidate under the driver lock, `readBegin`/`readRetry`
/// around each fault), reads memory through its mirror, and migrates pages into its own
/// device-private memory (`migrate_vma_setup` / `pages` / `finalize`), from which a CPU touch
/// brings them back (`migrate_to_ram`).
/// Sendable: `lock` guards the table, the device memory's contents and its free list.
final class TinyMirrorDevice: DevicePagemapOps, @unchecked Sendable {
    /// The device's page table: virtual page → frame (pfn) and whether it may write.
    /// Locking: `lock` (the driver lock the notifier takes).
    private var table: [UInt64: (pfn: UInt64, write: Bool)] = [:]
    let lock = Lock("tiny-mirror")
    let memory: PhysicalMemory
    let notifier: MMUIntervalNotifier
    private(set) var invalidations = 0
    /// Device memory: one registration of device-private pfns. Their bytes live here, in the
    /// device (the CPU cannot address device-private memory). Locking: `lock`.
    private var pagemap: DevicePagemap? = nil
    private var freePfns: [UInt64] = []
    private var deviceBytes: [UInt64: [UInt8]] = [:]

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
        let pgmap: DevicePagemap
        do {
            pgmap = try memory.registerDeviceMemory(kind: .devicePrivate, pageCount: PhysicalMemory.deviceChunkPages,
                                                    owner: self, ops: self)
        } catch {
            mm.notifiers.remove(notifier)
            throw error
        }
        pagemap = pgmap
        freePfns = Array((pgmap.startPfn..<(pgmap.startPfn + pgmap.pageCount)).reversed())
    }

    /// Gives the device memory back; EBUSY while any of it still holds a page.
    func unregister() throws(Errno) {
        guard let pgmap = lock.withLock({ pagemap }) else { return }
        try memory.unregisterDeviceMemory(pgmap)
        lock.withLock { pagemap = nil }
    }

    // MARK: the device-memory callbacks (`dev_pagemap_ops`)

    /// `page_free`: the last reference to a device page went; it returns to the free list.
    func pageFree(_ page: Page) {
        lock.withLock {
            deviceBytes[page.pfn] = nil
            freePfns.append(page.pfn)
        }
    }

    /// `migrate_to_ram`: a CPU touched a page that lives on the device. Migrate that one page
    /// back: setup (the entry becomes a migration entry), a new system page with the device's
    /// bytes, pages, finalize.
    func migrateToRAM(_ fault: DevicePrivateFault) -> FaultResult {
        let m = MigrateVMA(vma: fault.vma, start: fault.address & ~(pageSize - 1), end: (fault.address & ~(pageSize - 1)) + pageSize,
                           pgmapOwner: self, flags: .devicePrivate, faultPage: fault.page)
        do { try m.setup() } catch { return .sigbus }
        for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            guard let from = MigratePfn.pfn(m.src[i]) else { continue }
            guard let page = memory.allocate() else {
                m.finalize() // nothing moved: the entry goes back to the device page
                return .oom
            }
            page.lock()
            let bytes = lock.withLock { deviceBytes[from] } ?? [UInt8](repeating: 0, count: Int(pageSize))
            bytes.withUnsafeBytes { memory.frame(page.pfn).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            m.dst[i] = MigratePfn.make(page.pfn) | (m.src[i] & MigratePfn.write)
        }
        m.pages()
        m.finalize()
        return .ok
    }

    // MARK: migration to the device

    /// Moves the anonymous pages of [start, end) into device memory (an empty page becomes a
    /// zeroed device page). Return: how many pages moved (a busy page stays where it was).
    /// Locking: takes the mmap lock for read.
    func migrateToDevice(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64) throws(Errno) -> Int {
        mm.mmapLock.assertNotHeld()
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        guard let vma = mm.vmaLookup(start), end <= vma.end else { throw .EINVAL }
        let m = MigrateVMA(vma: vma, start: start, end: end, pgmapOwner: self, flags: .system)
        try m.setup()
        for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            guard let pfn = lock.withLock({ freePfns.popLast() }) else { break } // device memory full
            let dpage = memory.page(pfn)
            memory.zoneDevicePageInit(dpage) // referenced and locked, as a destination must be
            var bytes = [UInt8](repeating: 0, count: Int(pageSize))
            if let from = MigratePfn.pfn(m.src[i]) {
                bytes.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: memory.frame(from), byteCount: Int(pageSize)) }
            }
            lock.withLock { deviceBytes[pfn] = bytes }
            m.dst[i] = MigratePfn.make(pfn) | (m.src[i] & MigratePfn.write)
        }
        m.pages()
        let moved = m.migratedCount
        m.finalize()
        return moved
    }

    /// Faults [start, end) in for the device (writable if `write`) and programs the table:
    /// hmm_range_fault under the mmap lock, then the table update under the driver lock, only
    /// if no invalidation ran in between (else again).
    func fault(_ start: UInt64, _ end: UInt64, write: Bool) throws(Errno) {
        // Pages in our own device memory are reported as they are (not migrated back).
        var range = HMMRange(notifier: notifier, notifierSeq: 0, start: start, end: end,
                             defaultFlags: HMMPfn.valid | (write ? HMMPfn.write : 0), devPrivateOwner: self)
        try HMMMirror.faultAndProgram(&range, driverLock: lock) { (r: HMMRange) throws(Errno) in
            for (i, e) in r.hmmPfns.enumerated() where e & HMMPfn.valid != 0 {
                table[r.start + UInt64(i) * pageSize] = (HMMPfn.pfn(e), e & HMMPfn.write != 0)
            }
        }
    }

    /// A device read of one 8-byte word through the mirror (faulting it in first if needed):
    /// from the device's own memory for a page that lives there, else from the system frame.
    /// The read happens under the driver lock: an invalidation of the page waits for it, so
    /// the frame cannot be freed and reused under the read.
    func read64(_ address: UInt64) throws(Errno) -> UInt64 {
        let page = address & ~(pageSize - 1)
        let offset = Int(address - page)
        while true {
            let value: UInt64? = lock.withLock {
                guard let entry = table[page] else { return nil }
                if let local = deviceBytes[entry.pfn] {
                    return local.withUnsafeBytes { $0.load(fromByteOffset: offset, as: UInt64.self) }
                }
                return memory.frame(entry.pfn).load(fromByteOffset: offset, as: UInt64.self)
            }
            if let value { return value }
            try fault(page, page + pageSize, write: false)
        }
    }

    var mirroredPages: Int { lock.withLock { table.count } }
    /// Device pages holding data.
    var devicePagesInUse: Int { lock.withLock { deviceBytes.count } }
}

func expect(_ ok: Bool, _ what: String) {
    print((ok ? "ok   " : "FAIL ") + what)
    if !ok { exitCode = 1 }
}
nonisolated(unsafe) var exitCode: Int32 = 0

do {
    let machine = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 256 << 20) // one chunk of device memory
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

    // Migration: pages 10–13 move into device memory. The CPU's entries become
    // device-private entries; the device mirrors its own pages and reads them there.
    let moved = try device.migrateToDevice(process.mm, a + 10 * pageSize, a + 14 * pageSize)
    expect(moved == 4, "4 pages migrated to the device (\(moved))")
    expect(device.devicePagesInUse == 4, "the device holds their data")
    try device.fault(a + 10 * pageSize, a + 14 * pageSize, write: false)
    expect(try device.read64(a + 11 * pageSize) == 1011, "the device reads a migrated page from its own memory")
    // A CPU load of a migrated page faults it back (migrate_to_ram), with its data.
    expect(try cpu.load(a + 12 * pageSize, as: UInt64.self) == 1012, "a CPU load brings the page back with its data")
    expect(device.devicePagesInUse == 3, "its device page was freed")
    // A CPU store to another: back in system memory and written.
    try cpu.store(a + 13 * pageSize, UInt64(7013))
    expect(try device.read64(a + 13 * pageSize) == 7013, "the device sees the CPU's store after the page came back")
    // Unmapping the rest frees the device pages.
    try process.munmap(a + 10 * pageSize, length: 4 * pageSize)
    expect(device.devicePagesInUse == 0, "unmapping frees every device page")

    process.mm.notifiers.remove(device.notifier)
    cpu.detach()
    process.exit()
    try device.unregister()
    expect(machine.checkInvariants().isEmpty, "the machine's invariants hold")
} catch {
    print("FAIL error \(error)")
    exitCode = 1
}
exit(exitCode)
