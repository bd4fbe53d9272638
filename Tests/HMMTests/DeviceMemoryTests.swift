import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

final class DeviceMemoryTests: XCTestCase {
    func migrate(_ env: HMMEnv, _ d: Dmirror, _ a: UInt64, _ n: Int) throws -> UInt64 {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        try d.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: n * Int(pageSize)))
        return cmd.cpages
    }

    func testForkMakesDevicePrivateEntriesReadOnlyInBoth() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(1))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        XCTAssertEqual(try migrate(env, d0, a, 2), 2)
        let child = try env.process.fork()
        for mm in [env.mm, child.mm] {
            let e = try mm.pagemap(a, count: 2)
            XCTAssertTrue(e.allSatisfy { $0.isSwap && !$0.isPresent })
            let pte = try XCTUnwrap(mm.mmapLock.withRead { mm.pageTable.lookup(a, level: .pte) }).entry.load()
            XCTAssertEqual(pte.swapEntry.type, SwapEntry.devicePrivateRead)
        }
        XCTAssertEqual(env.problems(), [])
        let ccpu = child.makeCPU()
        try ccpu.store(a, UInt64(2)) // faults back, then breaks COW in the child only
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 1)
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 2)
        ccpu.detach(); child.exit()
        env.finish([d0])
    }

    /// FAIL_ALLOC towards system memory, as Linux 7.2's dmirror_devmem_fault_alloc_and_copy:
    /// on a 4 KiB device page it is VM_FAULT_OOM, so MIGRATE_TO_SYS fails with ENOMEM, moves
    /// nothing and leaves the mirror's entries; the flag is consumed, so the next one moves all.
    func testFailAllocTowardsSystemMemoryOnASmallPageIsENOMEM() throws {
        let env = try HMMEnv()
        let (a, d0) = try env.migratedRegion(4)
        var f = DmirrorCmd(addr: a, npages: DmirrorFlag.failAlloc)
        try d0.ioctl(.flags, &f)
        var m = DmirrorCmd(addr: a, npages: 4)
        XCTAssertThrowsError(try d0.ioctl(.migrateToSystem, &m)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertEqual(d0.mutex.withLock { d0.flags }, 0, "the flag is consumed")
        XCTAssertEqual(try env.mm.pagemap(a, count: 4).filter(\.isPresent).count, 0, "still on the device")
        XCTAssertEqual(d0.mutex.withLock { (0..<4).filter { d0.pt[(a >> pageShift) + UInt64($0)] != nil }.count }, 4, "entries kept")
        var again = DmirrorCmd(addr: a, npages: 4)
        try d0.ioctl(.migrateToSystem, &again)
        XCTAssertEqual(again.cpages, 4)
        XCTAssertEqual(try env.mm.pagemap(a, count: 4).filter(\.isPresent).count, 4)
        env.finish([d0])
    }

    /// FAIL_ALLOC and a CPU fault on a 4 KiB device page: 7.2's dmirror_devmem_fault returns
    /// VM_FAULT_OOM, which x86's #PF handler retries (pagefault_out_of_memory); the flag is
    /// consumed, so the retried access succeeds and reads the page's data.
    func testFailAllocOnACPUFaultIsRetriedAndTheAccessSucceeds() throws {
        let env = try HMMEnv()
        let (a, d0) = try env.migratedRegion(4)
        var f = DmirrorCmd(addr: a, npages: DmirrorFlag.failAlloc)
        try d0.ioctl(.flags, &f)
        let before = env.machine.stats[.faultDevicePrivate]
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 1)
        XCTAssertEqual(env.machine.stats[.faultDevicePrivate] - before, 2, "the first fault failed and was retried")
        XCTAssertEqual(d0.mutex.withLock { d0.flags }, 0, "the flag is consumed")
        XCTAssertEqual(try env.mm.pagemap(a + pageSize, count: 1).first?.isPresent, true)
        env.finish([d0])
    }

    /// Two batches in flight must not need more memory than one at a time: with free RAM for
    /// one batch but not two, the whole range still migrates both ways.
    func testMigrationWithRoomForOneBatchOnly() throws {
        let env = try HMMEnv(mib: 8)
        let n = 1024
        let a = try env.anon(n)
        for i in 0..<n { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        XCTAssertTrue((512..<1024).contains(env.memory.freeFrames), "free \(env.memory.freeFrames): room for one batch, not two")
        XCTAssertEqual(try migrate(env, d0, a, n), UInt64(n))
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        try d0.ioctl(.migrateToSystem, &cmd)
        XCTAssertEqual(cmd.cpages, UInt64(n))
        for i in stride(from: 0, to: n, by: 31) { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        env.finish([d0])
    }

    /// One batch mixing a page mapped only here (its entry is restored where collect put it)
    /// and pages shared with a forked child (restored through the rmap): every mapping of every
    /// page ends on the device, and each process still reads its own data.
    func testMigrationRestoresLocalAndSharedMappings() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        for i in 0..<4 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(10 + i)) }
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        try ccpu.store(a, UInt64(20)) // the child copies page 0; pages 1-3 stay shared
        try env.cpu.store(a, UInt64(10)) // the parent's page 0 is its own again: reused, writable
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        XCTAssertEqual(try migrate(env, d0, a, 4), 4)
        func entries(_ mm: AddressSpace) -> [PTE] {
            mm.mmapLock.withRead { (0..<4).map { mm.pageTable.lookup(a + UInt64($0) * pageSize, level: .pte)!.entry.load() } }
        }
        let parent = entries(env.mm), shared = entries(child.mm)
        XCTAssertTrue(parent.allSatisfy { $0.isSwap && $0.swapEntry.isDevicePrivate })
        XCTAssertEqual(parent[0].swapEntry.type, SwapEntry.devicePrivateWrite, "page 0 was the parent's own and writable")
        XCTAssertTrue(shared[0].isPresent)
        for i in 1..<4 {
            XCTAssertTrue(shared[i].isSwap && shared[i].swapEntry.isDevicePrivate, "child page \(i)")
            XCTAssertEqual(shared[i].swapEntry.pfn, parent[i].swapEntry.pfn, "child page \(i) names the parent's device page")
            XCTAssertEqual(shared[i].swapEntry.type, SwapEntry.devicePrivateRead)
        }
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try ccpu.load(a + pageSize, as: UInt64.self), 11) // faults the shared page back
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 20)
        for i in 0..<4 { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(10 + i)) }
        XCTAssertEqual(env.problems(), [])
        ccpu.detach(); child.exit()
        env.finish([d0])
    }

    func testMprotectDowngradesDevicePrivateEntries() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(3))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        XCTAssertEqual(try migrate(env, d0, a, 1), 1)
        try env.process.mprotect(a, length: pageSize, prot: .read)
        let pte = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pte) }).entry.load()
        XCTAssertEqual(pte.swapEntry.type, SwapEntry.devicePrivateRead)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 3)
        env.finish([d0])
    }

    func testMunmapFreesDevicePagesAndBacking() throws {
        let env = try HMMEnv()
        let a = try env.anon(8)
        for i in 0..<8 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        XCTAssertEqual(try migrate(env, d0, a, 8), 8)
        let dev = env.module.devices[0]
        XCTAssertEqual(dev.pagesInUse, 8)
        try env.process.munmap(a, length: 8 * pageSize)
        XCTAssertEqual(dev.pagesInUse, 0)
        XCTAssertEqual(d0.entryCount, 0)
        env.finish([d0])
    }

    func testGUPMigratesDevicePrivateBackAndLongtermPinMovesCoherent() throws {
        let env = try HMMEnv()
        let a = try env.anon(1), b = try env.anon(1)
        try env.cpu.store(a, UInt64(7)); try env.cpu.store(b, UInt64(8))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        let d2 = try env.module.open(minor: 2, mm: env.mm)
        XCTAssertEqual(try migrate(env, d0, a, 1), 1)
        XCTAssertEqual(try migrate(env, d2, b, 1), 1)
        let p = try env.mm.getUserPages(a, count: 1, flags: [])
        XCTAssertFalse(p[0].isZoneDevice)
        XCTAssertEqual(env.memory.frame(p[0].pfn).load(as: UInt64.self), 7)
        env.mm.putUserPages(p)
        let g = try env.mm.getUserPages(b, count: 1, flags: [])
        XCTAssertTrue(g[0].isDeviceCoherent) // ordinary GUP keeps coherent memory
        env.mm.putUserPages(g)
        let pin = try env.mm.getUserPages(b, count: 1, flags: [.pin, .longterm])
        XCTAssertFalse(pin[0].isZoneDevice)   // a long-term pin moves it out
        XCTAssertEqual(env.memory.frame(pin[0].pfn).load(as: UInt64.self), 8)
        env.mm.unpinUserPages(pin)
        env.finish([d0, d2])
    }

    func testReleaseEvictsEveryProcessesPages() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        for i in 0..<4 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(100 + i)) }
        let other = try MMCore.Process(machine: env.machine)
        let ocpu = other.makeCPU()
        let o = try other.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try ocpu.store(o, UInt64(55))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        let od0 = try env.module.open(minor: 0, mm: other.mm)
        XCTAssertEqual(try migrate(env, d0, a, 4), 4)
        XCTAssertEqual(try migrate(env, od0, o, 2), 2)
        let dev = env.module.devices[0]
        XCTAssertEqual(dev.pagesInUse, 6)
        var cmd = DmirrorCmd(addr: a, npages: 1)
        try d0.ioctl(.release, &cmd)
        XCTAssertEqual(dev.pagesInUse, 0)
        XCTAssertEqual(dev.chunkCount, 0)
        XCTAssertEqual(try env.mm.pagemap(a, count: 4).filter { $0.isPresent }.count, 4)
        for i in 0..<4 { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(100 + i)) }
        XCTAssertEqual(try ocpu.load(o, as: UInt64.self), 55)
        // Later allocations create fresh chunks.
        XCTAssertEqual(try migrate(env, d0, a, 4), 4)
        XCTAssertEqual(dev.chunkCount, 1)
        od0.close(); ocpu.detach(); other.exit()
        env.finish([d0])
    }

    func testFailAllocIsOneShotAndLeavesThePageInPlace() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        for i in 0..<4 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var flags = DmirrorCmd(addr: a, npages: DmirrorFlag.failAlloc)
        try d0.ioctl(.flags, &flags)
        var cmd = DmirrorCmd(addr: a, npages: 4)
        XCTAssertThrowsError(try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: 4 * Int(pageSize)))) {
            XCTAssertEqual($0 as? Errno, .ENOENT)
        }
        XCTAssertEqual(cmd.cpages, 0) // not copied back on error
        XCTAssertEqual(env.module.devices[0].pagesInUse, 3)
        XCTAssertEqual(try migrate(env, d0, a, 4), 4) // the flag was consumed
        env.finish([d0])
    }

    func testCommandValidation() throws {
        let env = try HMMEnv()
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var c = DmirrorCmd(addr: 0x1001, npages: 1)
        XCTAssertThrowsError(try d0.ioctl(.read, &c)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        c = DmirrorCmd(addr: 0x1000, npages: 0)
        XCTAssertThrowsError(try d0.ioctl(.flags, &c)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        c = DmirrorCmd(addr: 0xFFFF_FFFF_FFFF_F000, npages: 2)
        XCTAssertThrowsError(try d0.ioctl(.read, &c)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        c = DmirrorCmd(addr: 0x1000, npages: 1)
        XCTAssertThrowsError(try d0.ioctl(number: 0xC028_4809, &c)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertThrowsError(try d0.ioctl(.read, &c, buffer: DmirrorBuffer(size: 4096))) { XCTAssertEqual($0 as? Errno, .EFAULT) } // no VMA
        let a = try env.anon(2)
        c = DmirrorCmd(addr: a, npages: 2)
        XCTAssertThrowsError(try d0.ioctl(.read, &c, buffer: DmirrorBuffer(size: 4096))) { XCTAssertEqual($0 as? Errno, .EFAULT) } // short buffer
        XCTAssertThrowsError(try d0.ioctl(.migrateToDevice, &c, buffer: nil)) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        XCTAssertThrowsError(try env.module.open(minor: 4, mm: env.mm)) { XCTAssertEqual($0 as? Errno, .ENODEV) }
        d0.close()
        XCTAssertThrowsError(try d0.ioctl(.read, &c)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        env.finish([])
    }

    func testSnapshotEncodesLocalRemoteAndZero() throws {
        let env = try HMMEnv()
        let a = try env.anon(6)
        try env.cpu.store(a, UInt8(1))
        _ = try env.cpu.load(a + pageSize, as: UInt8.self)
        try env.cpu.store(a + 2 * pageSize, UInt8(1)); try env.cpu.store(a + 3 * pageSize, UInt8(1))
        try env.cpu.store(a + 4 * pageSize, UInt8(1)); try env.cpu.store(a + 5 * pageSize, UInt8(1))
        let d0 = try env.module.open(minor: 0, mm: env.mm), d1 = try env.module.open(minor: 1, mm: env.mm)
        let d2 = try env.module.open(minor: 2, mm: env.mm), d3 = try env.module.open(minor: 3, mm: env.mm)
        XCTAssertEqual(try migrate(env, d0, a + 2 * pageSize, 1), 1)
        XCTAssertEqual(try migrate(env, d2, a + 4 * pageSize, 1), 1)
        try env.process.mprotect(a + 5 * pageSize, length: pageSize, prot: .read)
        let buf = DmirrorBuffer(size: 6)
        var cmd = DmirrorCmd(addr: a, npages: 6)
        try d0.ioctl(.snapshot, &cmd, buffer: buf)
        XCTAssertEqual(cmd.cpages, 6)
        XCTAssertEqual((0..<6).map { buf[byte: $0] }, [0x02, 0x11, 0x22, 0x02, 0x52, 0x01])
        try d1.ioctl(.snapshot, &cmd, buffer: buf)
        XCTAssertEqual(buf[byte: 2], 0x00) // another device's private page: not valid
        try d2.ioctl(.snapshot, &cmd, buffer: buf)
        XCTAssertEqual(buf[byte: 4], 0x42)
        try d3.ioctl(.snapshot, &cmd, buffer: buf)
        XCTAssertEqual(buf[byte: 4], 0x52)
        env.finish([d0, d1, d2, d3])
    }
}
