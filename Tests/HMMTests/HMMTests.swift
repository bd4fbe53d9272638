import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// A process, the four dmirror devices, and helpers.
final class HMMEnv {
    let machine: Machine
    let module: DmirrorModule
    let process: MMCore.Process
    let cpu: CPU
    let used: Int
    var mm: AddressSpace { process.mm }
    var memory: PhysicalMemory { machine.memory }

    init(mib: UInt64 = 128) throws {
        machine = try Machine(memoryBytes: mib << 20, devicePfnSpaceBytes: 2 << 30)
        module = DmirrorModule(machine: machine)
        used = machine.usedFrames
        process = try MMCore.Process(machine: machine)
        cpu = process.makeCPU()
    }

    func anon(_ pages: Int, prot: Protection = .readWrite) throws -> UInt64 {
        try process.mmap(length: UInt64(pages) * pageSize, prot: prot, flags: [.private, .anonymous])
    }

    func problems() -> [String] { machine.checkInvariants() + module.checkInvariants() }

    /// `pages` anonymous pages holding their index, migrated to device 0 by a new mirror.
    func migratedRegion(_ pages: Int) throws -> (UInt64, Dmirror) {
        let a = try anon(pages)
        for i in 0..<pages { try cpu.store(a + UInt64(i) * pageSize, UInt64(i)) }
        let d0 = try module.open(minor: 0, mm: mm)
        var m = DmirrorCmd(addr: a, npages: UInt64(pages))
        try d0.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
        XCTAssertEqual(m.cpages, UInt64(pages))
        return (a, d0)
    }

    /// Stores into a new 64 MiB mapping until no system frame is free. Return: its address.
    func exhaustSystemMemory() throws -> UInt64 {
        let hog = try process.mmap(length: 64 << 20, prot: .readWrite, flags: [.private, .anonymous])
        var off: UInt64 = 0
        while memory.freeFrames > 0 && off < 64 << 20 {
            do { try cpu.store(hog + off, UInt8(1)) } catch { break }
            off += pageSize
        }
        XCTAssertEqual(memory.freeFrames, 0)
        return hog
    }

    func finish(_ mirrors: [Dmirror], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(problems(), [], file: file, line: line)
        mirrors.forEach { $0.close() }
        cpu.detach()
        process.exit()
        XCTAssertEqual(problems(), [], file: file, line: line)
        XCTAssertEqual(machine.usedFrames - used, 0, "frames leaked", file: file, line: line)
    }
}

final class RangeFaultTests: XCTestCase {
    func snapshotRange(_ env: HMMEnv, _ start: UInt64, _ pages: Int, flags: UInt64 = 0, owner: AnyObject? = nil) throws(Errno) -> [UInt64] {
        let sub = MMUIntervalNotifier(start: start, end: start + UInt64(pages) * pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        defer { env.mm.notifiers.remove(sub) }
        var range = HMMRange(notifier: sub, notifierSeq: 0, start: start, end: start + UInt64(pages) * pageSize,
                             defaultFlags: flags, devPrivateOwner: owner)
        // The canonical loop: a fault that migrates pages back invalidates the range, so the
        // first pass may end in EBUSY and start again from readBegin.
        var out: [UInt64] = []
        try HMMMirror.faultAndProgram(&range, driverLock: Lock("test")) { (r: HMMRange) throws(Errno) in out = r.hmmPfns }
        return out
    }

    func testSnapshotReportsEveryKindOfEntry() throws {
        let env = try HMMEnv()
        let a = try env.anon(4)
        try env.cpu.store(a, UInt8(1))                    // page 0: writable anon
        _ = try env.cpu.load(a + pageSize, as: UInt8.self) // page 1: zero page
        let ro = try env.anon(1, prot: .read)
        let none = try env.anon(1, prot: .none)
        let out = try snapshotRange(env, a, 4)
        let pfn0 = try XCTUnwrap(env.mm.pagemap(a, count: 1).first?.pfn)
        XCTAssertEqual(out, [pfn0 | HMMPfn.valid | HMMPfn.write, HMMPfn.valid, 0, 0])
        XCTAssertEqual(try snapshotRange(env, ro, 1), [0])
        XCTAssertEqual(try snapshotRange(env, none, 1), [HMMPfn.error])  // unreadable VMA
        XCTAssertEqual(try snapshotRange(env, 0x1000_0000, 2), [HMMPfn.error, HMMPfn.error]) // hole
        env.finish([])
    }

    func testFaultRequestsAndErrors() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        let out = try snapshotRange(env, a, 2, flags: HMMPfn.requestFault)
        XCTAssertEqual(out.map { $0 & HMMPfn.flags }, [HMMPfn.valid, HMMPfn.valid])
        XCTAssertEqual(HMMPfn.pfn(out[0]), 0) // read faults map the zero page
        let w = try snapshotRange(env, a, 2, flags: HMMPfn.requestFault | HMMPfn.requestWrite)
        XCTAssertTrue(w.allSatisfy { HMMPfn.isWrite($0) && HMMPfn.pfn($0) != 0 })
        let ro = try env.anon(1, prot: .read)
        XCTAssertThrowsError(try snapshotRange(env, ro, 1, flags: HMMPfn.requestFault | HMMPfn.requestWrite)) {
            XCTAssertEqual($0 as? Errno, .EPERM)
        }
        let none = try env.anon(1, prot: .none)
        XCTAssertThrowsError(try snapshotRange(env, none, 1, flags: HMMPfn.requestFault)) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        XCTAssertThrowsError(try snapshotRange(env, 0x1000_0000, 1, flags: HMMPfn.requestFault)) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        env.finish([])
    }

    func testStaleSequenceIsEBUSY() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        let sub = MMUIntervalNotifier(start: a, end: a + pageSize) { s, _, seq in s.setSeq(seq); return true }
        try env.mm.notifiers.insert(sub)
        var range = HMMRange(notifier: sub, notifierSeq: sub.readBegin(), start: a, end: a + pageSize, defaultFlags: HMMPfn.requestFault)
        try env.process.mprotect(a, length: pageSize, prot: .read) // an invalidation after readBegin
        env.mm.mmapLock.lockRead()
        XCTAssertThrowsError(try env.mm.hmmRangeFault(&range)) { XCTAssertEqual($0 as? Errno, .EBUSY) }
        range.notifierSeq = sub.readBegin()
        XCTAssertNoThrow(try env.mm.hmmRangeFault(&range))
        env.mm.mmapLock.unlockRead()
        env.mm.notifiers.remove(sub)
        env.finish([])
    }

    func testOwnDevicePrivatePagesAreReportedOthersFaulted() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(5)); try env.cpu.store(a + pageSize, UInt64(6))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var cmd = DmirrorCmd(addr: a, npages: 2)
        try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: 2 * Int(pageSize)))
        XCTAssertEqual(cmd.cpages, 2)
        let dev0 = env.module.devices[0]
        let own = try snapshotRange(env, a, 2, owner: dev0)
        XCTAssertTrue(own.allSatisfy { HMMPfn.isValid($0) && HMMPfn.isWrite($0) && env.memory.page(HMMPfn.pfn($0)).isDevicePrivate })
        XCTAssertEqual(try snapshotRange(env, a, 2, owner: env.module.devices[1]), [0, 0]) // not faulted
        let faulted = try snapshotRange(env, a, 2, flags: HMMPfn.requestFault, owner: env.module.devices[1])
        XCTAssertTrue(faulted.allSatisfy { !env.memory.page(HMMPfn.pfn($0)).isZoneDevice })
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 6)
        XCTAssertEqual(dev0.pagesInUse, 0)
        env.finish([d0])
    }
}

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

final class DeviceExclusiveTests: XCTestCase {
    func exclusive(_ d: Dmirror, _ a: UInt64, _ n: Int) throws {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        try d.ioctl(.exclusive, &cmd, buffer: DmirrorBuffer(size: n * Int(pageSize)))
    }
    func check(_ d: Dmirror, _ a: UInt64, _ n: Int) -> Errno? {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        do { try d.ioctl(.checkExclusive, &cmd); return nil } catch { return error }
    }

    func testExclusiveBreaksCOWAndZeroPageFirst() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        _ = try env.cpu.load(a, as: UInt8.self) // zero page at page 0, nothing at page 1
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 2)
        XCTAssertEqual(check(d0, a, 2), .EPERM)
        let e = try env.mm.pagemap(a, count: 2)
        XCTAssertTrue(e.allSatisfy { $0.isSwap })
        XCTAssertEqual(d0.entry(at: a)?.tag, Dmirror.tagAtomic)
        XCTAssertNotEqual(d0.entry(at: a)?.pfn, 0) // a real page, not the zero page
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt8.self), 0) // read revokes too
        XCTAssertEqual(check(d0, a + pageSize, 1), nil)
        XCTAssertEqual(check(d0, a, 1), .EPERM)
        env.finish([d0])
    }

    func testExclusiveAcrossForkIsCopyOnWriteInBoth() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(10))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 1)
        let child = try env.process.fork()
        XCTAssertEqual(env.problems(), [])
        XCTAssertNil(d0.entry(at: a), "fork's PROTECTION_PAGE invalidation dropped the atomic entry")
        let ccpu = child.makeCPU()
        try ccpu.store(a, UInt64(20))
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 10)
        try env.cpu.store(a, UInt64(30))
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 20)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 30)
        ccpu.detach(); child.exit()
        env.finish([d0])
    }

    func testExclusiveThenMprotectAndMunmapAndMigration() throws {
        let env = try HMMEnv()
        let a = try env.anon(3)
        for i in 0..<3 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i + 1)) }
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 3)
        try env.process.mprotect(a, length: pageSize, prot: .read)
        let pte = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pte) }).entry.load()
        XCTAssertEqual(pte.swapEntry.type, SwapEntry.deviceExclusive) // mprotect leaves it alone (7.2)
        try env.process.munmap(a + pageSize, length: pageSize)
        let pfn = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a + 2 * pageSize, level: .pte) }).entry.load().swapEntry.pfn
        let r = env.machine.migratePages([pfn])
        XCTAssertEqual(r.migrated.count, 1)
        XCTAssertEqual(try env.mm.pagemap(a + 2 * pageSize, count: 1)[0].isPresent, true)
        XCTAssertEqual(try env.cpu.load(a + 2 * pageSize, as: UInt64.self), 3)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 1)
        XCTAssertEqual(check(d0, a, 3), nil)
        env.finish([d0])
    }
}
