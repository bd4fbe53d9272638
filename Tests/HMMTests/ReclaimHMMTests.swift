import XCTest
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Issue 15's first acceptance point: a working set four times RAM, written and verified with
/// the IDX pattern, with device-private, device-coherent and device-exclusive pages in it and a
/// fork in the middle.
final class ReclaimHMMTests: XCTestCase {
    static let page = UInt64(MMCore.pageSize)
    static let intsPerPage = Int(page) / 4
    /// IDX over [base, base + bytes): int k holds k + plus, written a page at a time.
    private func fill(_ cpu: CPU, _ base: UInt64, bytes: UInt64, plus: Int32 = 0) throws {
        var ints = [Int32](repeating: 0, count: ReclaimHMMTests.intsPerPage)
        for page in stride(from: UInt64(0), to: bytes, by: Int(ReclaimHMMTests.page)) {
            let k0 = Int32(truncatingIfNeeded: page / 4)
            for i in ints.indices { ints[i] = k0 &+ Int32(i) &+ plus }
            try ints.withUnsafeBytes { try cpu.write(base + page, bytes: $0) }
        }
    }

    /// The pages of [base, base + bytes) whose ints do not hold IDX + plus (at most 8 listed).
    private func wrongPages(_ cpu: CPU, _ base: UInt64, bytes: UInt64, plus: Int32 = 0) throws -> [UInt64] {
        var bad: [UInt64] = []
        for page in stride(from: UInt64(0), to: bytes, by: Int(ReclaimHMMTests.page)) {
            let b = try cpu.read(base + page, count: ReclaimHMMTests.intsPerPage * 4)
            let first = Int32(truncatingIfNeeded: page / 4) &+ plus
            var ok = true
            b.withUnsafeBytes { raw in
                let ints = raw.bindMemory(to: Int32.self)
                for i in 0..<ints.count where ints[i] != first &+ Int32(i) { ok = false; break }
            }
            if !ok { bad.append(page / ReclaimHMMTests.page); if bad.count == 8 { break } }
        }
        return bad
    }

    /// The OOM reaper zaps without blocking (`zap_vma_for_reaping`): a device whose lock is
    /// held refuses the non-blockable CLEAR invalidation, so the VMA is left as it is (nothing
    /// cleared behind the device's back) and the reaper tries again 100 ms later (7.2's
    /// `oom_reap_task`, up to 10 tries); once the lock is free, the next try reaps it and the
    /// device's entries go with the pages.
    func testTheOOMReaperLeavesAVMAWhoseDeviceWouldBlockAndTriesAgain() throws {
        let env = try HMMEnv(mib: 64)
        let n = 64
        let a = try env.anon(n)
        for i in 0..<n { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i) + 1) }
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var r = DmirrorCmd(addr: a, npages: UInt64(n))
        try d0.ioctl(.read, &r, buffer: DmirrorBuffer(size: n * Int(pageSize)))
        XCTAssertEqual(r.cpages, UInt64(n))
        XCTAssertEqual(d0.entryCount, n)
        let used = env.machine.usedFrames
        // Another thread holds the device's lock for 500 ms (a device fault in progress).
        let held = AtomicWord(0)
        let holder = ModelThread.spawn(name: "device-fault") {
            d0.mutex.lock()
            held.store(1)
            syncSleep(nanoseconds: 500_000_000)
            d0.mutex.unlock()
        }
        while held.load() == 0 { syncSleep(nanoseconds: 1_000_000) }
        // One try while the lock is held: refused, nothing cleared.
        let vma = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.findVMA(a) })
        XCTAssertFalse(env.mm.mmapLock.withRead { env.mm.zapVMAForReaping(vma) })
        // (The device's entries cannot be counted now: that takes its lock.)
        XCTAssertTrue(try env.mm.pagemap(a, count: n).allSatisfy { $0.isPresent }, "refused: every page still mapped")
        XCTAssertEqual(env.machine.usedFrames, used)
        let tries = env.mm.oomReap()
        holder.join()
        XCTAssertGreaterThanOrEqual(tries, 2, "the first try was refused")
        XCTAssertLessThanOrEqual(tries, AddressSpace.maxOOMReapRetries)
        XCTAssertEqual(d0.entryCount, 0, "the device lost its entries before the pages went")
        XCTAssertEqual(env.machine.usedFrames, used - n, "every page reaped")
        XCTAssertTrue(try env.mm.pagemap(a, count: n).allSatisfy { !$0.isPresent })
        XCTAssertEqual(env.problems(), [])
        d0.close()
        env.cpu.detach()
        env.process.exit()
        XCTAssertEqual(env.problems(), [])
    }

    func testAWorkingSetFourTimesRAMWithDevicePagesAndAFork() throws {
        let env = try HMMEnv(mib: 16, swapPages: 30_000)   // 64 MiB, and the child's 32 MiB of copies
        let slots = env.memory.swap.freeSlots
        let bytes: UInt64 = 64 << 20, pages = bytes / pageSize
        let a = try env.anon(Int(pages))
        try fill(env.cpu, a, bytes: bytes)
        XCTAssertGreaterThan(env.machine.stats[.pswpout], Int(pages) / 2, "most of it went to swap")
        // Device pages inside it: 256 private (device 0; their backing is RAM), 256 coherent
        // (device 2), 64 exclusive to device 0. Swapped pages are passed over by migrate_vma
        // (ENOENT from dmirror's read-back), so each range is faulted in first.
        let priv = a + 1024 * pageSize, coh = a + 4096 * pageSize, excl = a + 8192 * pageSize
        let d0 = try env.module.open(minor: 0, mm: env.mm), d2 = try env.module.open(minor: 2, mm: env.mm)
        for (d, at, n, c) in [(d0, priv, 256, DmirrorCommand.migrateToDevice), (d2, coh, 256, .migrateToDevice), (d0, excl, 64, .exclusive)] {
            XCTAssertEqual(try wrongPages(env.cpu, at, bytes: UInt64(n) * pageSize, plus: Int32(truncatingIfNeeded: (at - a) / 4)), [])
            var cmd = DmirrorCmd(addr: at, npages: UInt64(n))
            try d.ioctl(c, &cmd, buffer: DmirrorBuffer(size: n * Int(pageSize)))
            XCTAssertEqual(cmd.cpages, UInt64(n), "\(c)")
        }
        XCTAssertEqual(env.problems(), [])
        // The fork in the middle: the child sees every byte (swap-ins, device pages faulted
        // back, exclusive entries restored), writes its second half and exits.
        let child = try env.process.fork()
        let childCPU = child.makeCPU()
        XCTAssertEqual(try wrongPages(childCPU, a, bytes: bytes), [])
        try fill(childCPU, a + bytes / 2, bytes: bytes / 2, plus: 77)
        XCTAssertEqual(try wrongPages(childCPU, a + bytes / 2, bytes: bytes / 2, plus: 77), [])
        childCPU.detach()
        child.exit()
        XCTAssertEqual(env.problems(), [])
        // The parent: the device reads its pages, then every byte through the CPU.
        let buf = DmirrorBuffer(size: 256 * Int(pageSize))
        var r = DmirrorCmd(addr: priv, npages: 256)
        try d0.ioctl(.read, &r, buffer: buf)
        XCTAssertEqual(r.cpages, 256)
        XCTAssertEqual(buf.bytes.load(fromByteOffset: 4 * Int(pageSize), as: Int32.self), Int32((priv - a) / 4) + 4 * Int32(pageSize) / 4)
        XCTAssertEqual(try wrongPages(env.cpu, a, bytes: bytes), [])
        XCTAssertGreaterThan(env.machine.stats[.pswpin], Int(pages), "read back from swap more than once over")
        XCTAssertGreaterThan(env.machine.stats[.pagesMigratedToDevice], 0)
        XCTAssertEqual(env.problems(), [])
        env.finish([d0, d2])
        XCTAssertEqual(env.memory.swap.freeSlots, slots, "every slot is free again")
    }
}
