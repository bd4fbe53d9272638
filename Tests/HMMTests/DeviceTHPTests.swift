import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Device THP (`MIGRATE_VMA_SELECT_COMPOUND`): a THP migrates whole into an order-9 device
/// folio mapped by a device-private PMD, and the PMD goes through the mm's paths (fault-back,
/// fork, mprotect, partial munmap, mremap, RELEASE) as in Linux 7.2.
final class DeviceTHPTests: XCTestCase {
    /// A 2 MiB-aligned THP of `env`'s process holding its page indices (one UInt64 at the start
    /// of each page), and a mirror on device 0.
    static func deviceTHP(_ env: HMMEnv, migrate: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> (UInt64, Dmirror) {
        env.memory.thp.mode = .madvise
        let raw = try env.process.mmap(length: 2 * pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) & pmdMask
        try env.process.madvise(a, length: pmdSize, advice: .hugePage)
        for i in 0..<UInt64(512) { try env.cpu.store(a + i * pageSize, i) }
        XCTAssertTrue(try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pmd) }).entry.load().isHuge, "not a THP", file: file, line: line)
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        if migrate {
            var cmd = DmirrorCmd(addr: a, npages: 512)
            try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: Int(pmdSize)))
            XCTAssertEqual(cmd.cpages, 512, file: file, line: line)
        }
        return (a, d0)
    }

    func pmdEntry(_ mm: AddressSpace, _ a: UInt64) throws -> PTE {
        try XCTUnwrap(mm.mmapLock.withRead { mm.pageTable.lookup(a, level: .pmd) }).entry.load()
    }

    func entry(_ mm: AddressSpace, _ a: UInt64) throws -> (level: PageTableLevel, pte: PTE) {
        let f = try XCTUnwrap(mm.mmapLock.withRead { mm.pageTable.lookup(a, level: .pte) })
        return (f.level, f.entry.load())
    }

    func testTHPMovesWholeToTheDeviceAndBackOnACPUFault() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        let pmd = try pmdEntry(env.mm, a)
        XCTAssertTrue(PageTable.isTHPDevicePrivate(pmd))
        XCTAssertTrue(pmd.swapEntry.isWrite)
        let folio = env.memory.page(pmd.swapEntry.pfn)
        XCTAssertEqual(folio.order, 9)
        XCTAssertEqual(folio.entireMapcount, 1)
        XCTAssertEqual(folio.folioMapcount, 1, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 1)
        XCTAssertTrue(folio.test(.anonExclusive))
        XCTAssertEqual(d0.device.pagesInUse, 512)
        XCTAssertEqual(d0.device.calloc, 512)
        XCTAssertEqual(env.problems(), [])
        // Device reads see the data (the mirror maps the backing folio).
        var cmd = DmirrorCmd(addr: a, npages: 512)
        let buf = DmirrorBuffer(size: Int(pmdSize))
        try d0.ioctl(.read, &cmd, buffer: buf)
        for i in stride(from: 0, to: 512, by: 37) { XCTAssertEqual(buf.bytes.load(fromByteOffset: i * Int(pageSize), as: UInt64.self), UInt64(i)) }
        // A CPU read of a tail page brings the whole folio back as a THP.
        XCTAssertEqual(try env.cpu.load(a + 300 * pageSize, as: UInt64.self), 300)
        let back = try pmdEntry(env.mm, a)
        XCTAssertTrue(back.isPresent && back.isHuge)
        XCTAssertEqual(env.memory.page(back.pfn).order, 9)
        XCTAssertEqual(d0.device.pagesInUse, 0)
        XCTAssertEqual(d0.device.cfree, 512)
        XCTAssertTrue(d0.device.freeFolios.contains(folio.pfn))
        for i in stride(from: 0, to: 512, by: 41) { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        env.finish([d0])
    }

    func testSnapshotReportsTheDevicePMDAndMigrateToSystemCountsTheFolioOnce() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        var cmd = DmirrorCmd(addr: a, npages: 512)
        let buf = DmirrorBuffer(size: 512)
        try d0.ioctl(.snapshot, &cmd, buffer: buf)
        XCTAssertEqual((0..<512).filter { buf[byte: $0] != 0x26 }, [])
        // Another device sees a device-private PMD it does not own: HMM_PFN_ERROR.
        let d1 = try env.module.open(minor: 1, mm: env.mm)
        var cmd1 = DmirrorCmd(addr: a, npages: 512)
        let buf1 = DmirrorBuffer(size: 512)
        try d1.ioctl(.snapshot, &cmd1, buffer: buf1)
        XCTAssertEqual(buf1[byte: 0], DmirrorProt.error)
        XCTAssertEqual(buf1[byte: 511], DmirrorProt.error)
        var back = DmirrorCmd(addr: a, npages: 512)
        try d0.ioctl(.migrateToSystem, &back)
        XCTAssertEqual(back.cpages, 1) // dmirror_successful_migrated_pages: one entry per folio
        XCTAssertTrue(try pmdEntry(env.mm, a).isPresent)
        XCTAssertEqual(try env.cpu.load(a + 511 * pageSize, as: UInt64.self), 511)
        env.finish([d0, d1])
    }

    func testForkSharesTheDevicePMDReadOnlyAndAChildWriteCopies() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        let child = try env.process.fork()
        let folio = env.memory.page(try pmdEntry(env.mm, a).swapEntry.pfn)
        for mm in [env.mm, child.mm] {
            let e = try pmdEntry(mm, a)
            XCTAssertTrue(PageTable.isTHPDevicePrivate(e))
            XCTAssertFalse(e.swapEntry.isWrite)
        }
        XCTAssertEqual(folio.entireMapcount, 2)
        XCTAssertEqual(folio.folioMapcount, 2, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(folio.refcount, 2)
        XCTAssertFalse(folio.test(.anonExclusive))
        XCTAssertEqual(env.problems(), [])
        let ccpu = child.makeCPU()
        try ccpu.store(a + 5 * pageSize, UInt64(0xc0ffee)) // back to RAM in both, then COW in the child
        XCTAssertEqual(try env.cpu.load(a + 5 * pageSize, as: UInt64.self), 5)
        XCTAssertEqual(try ccpu.load(a + 5 * pageSize, as: UInt64.self), 0xc0ffee)
        XCTAssertEqual(try ccpu.load(a + 6 * pageSize, as: UInt64.self), 6)
        XCTAssertEqual(d0.device.pagesInUse, 0)
        XCTAssertEqual(env.problems(), [])
        ccpu.detach(); child.exit()
        env.finish([d0])
    }

    func testMprotectMakesTheDevicePMDReadOnlyAndAWriteFaultsItBack() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        try env.process.mprotect(a, length: pmdSize, prot: .read)
        let e = try pmdEntry(env.mm, a)
        XCTAssertTrue(PageTable.isTHPDevicePrivate(e))
        XCTAssertFalse(e.swapEntry.isWrite)
        XCTAssertEqual(env.problems(), [])
        try env.process.mprotect(a, length: pmdSize, prot: .readWrite)
        XCTAssertFalse(try pmdEntry(env.mm, a).swapEntry.isWrite) // never upgraded
        try env.cpu.store(a + 8, UInt64(7))
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0)
        XCTAssertEqual(try env.cpu.load(a + 8, as: UInt64.self), 7)
        XCTAssertEqual(try env.cpu.load(a + 100 * pageSize, as: UInt64.self), 100)
        env.finish([d0])
    }

    /// A partial munmap splits the device PMD into 512 device-private PTEs and zaps half; a CPU
    /// fault on a tail page then splits the device folio (the fault page's lock and reference
    /// move to its new folio) and brings that page alone back.
    func testPartialMunmapSplitsTheDevicePMDAndATailFaultSplitsTheFolio() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        let head = env.memory.page(try pmdEntry(env.mm, a).swapEntry.pfn)
        try env.process.munmap(a, length: pmdSize / 2)
        let (level, pte) = try entry(env.mm, a + 300 * pageSize)
        XCTAssertEqual(level, .pte)
        XCTAssertTrue(pte.isSwap && pte.swapEntry.isDevicePrivate && pte.swapEntry.pfn == head.pfn + 300)
        XCTAssertEqual(head.order, 9)
        XCTAssertEqual(head.entireMapcount, 0)
        XCTAssertEqual(head.folioMapcount, 256, "folio_mapcount: PMD plus PTE mappings, one word")
        XCTAssertEqual(head.refcount, 256)
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(a + 300 * pageSize, as: UInt64.self), 300)
        XCTAssertFalse(head.test(.head), "the device folio was split")
        XCTAssertTrue(try entry(env.mm, a + 300 * pageSize).pte.isPresent)
        XCTAssertTrue(try entry(env.mm, a + 301 * pageSize).pte.isSwap)
        XCTAssertEqual(d0.device.pagesInUse, 255)
        XCTAssertEqual(env.problems(), [])
        for i in stride(from: 256, to: 512, by: 17) { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        env.finish([d0])
    }

    func testAlignedMremapMovesTheDevicePMDWhole() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        let raw = try env.process.mmap(length: 2 * pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let to = (raw + pmdSize - 1) & pmdMask
        let moved = try env.process.mremap(a, oldLength: pmdSize, newLength: pmdSize, flags: [.mayMove, .fixed], newAddress: to)
        XCTAssertEqual(moved, to)
        XCTAssertTrue(PageTable.isTHPDevicePrivate(try pmdEntry(env.mm, to)))
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(to + 77 * pageSize, as: UInt64.self), 77)
        XCTAssertTrue(try pmdEntry(env.mm, to).isPresent)
        env.finish([d0])
    }

    func testReleaseEvictsTheDeviceFolioWhole() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        var cmd = DmirrorCmd(addr: a, npages: 1)
        try d0.ioctl(.release, &cmd)
        let e = try pmdEntry(env.mm, a)
        XCTAssertTrue(e.isPresent && e.isHuge)
        XCTAssertEqual(d0.device.chunkCount, 0)
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(a + 499 * pageSize, as: UInt64.self), 499)
        env.finish([d0])
    }

    /// T36's first half in detail: FAIL_ALLOC makes the THP go as 512 small device pages (the
    /// system folio split on the way); the device folio list stays untouched.
    func testFailAllocFallsBackToSmallDevicePages() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env, migrate: false)
        var f = DmirrorCmd(addr: a, npages: UInt64(DmirrorFlag.failAlloc))
        try d0.ioctl(.flags, &f)
        var cmd = DmirrorCmd(addr: a, npages: 512)
        try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: Int(pmdSize)))
        XCTAssertEqual(cmd.cpages, 512)
        let (level, pte) = try entry(env.mm, a + 9 * pageSize)
        XCTAssertEqual(level, .pte)
        XCTAssertTrue(pte.isSwap && pte.swapEntry.isDevicePrivate)
        XCTAssertFalse(env.memory.page(pte.swapEntry.pfn).isInLargeFolio)
        XCTAssertEqual(d0.device.pagesInUse, 512)
        XCTAssertEqual(env.machine.stats[.thpSplitPage], 1)
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(a + 9 * pageSize, as: UInt64.self), 9)
        env.finish([d0])
    }
}

extension DeviceTHPTests {
    /// Found by the THP differential (seed 125): the huge zero folio migrated (a read-only
    /// device PMD), split by a fixed mapping over part of it, shared by fork (the child gets
    /// PTEs of the large device folio, and had to learn from its parent that it may hold
    /// large folios: its collect skipped the split, the fault looped), then split again by a
    /// partial mprotect; loads in both processes complete.
    func testReadOnlyDevicePMDSharedByForkThenSplitByMprotect() throws {
        let env = try HMMEnv()
        env.memory.thp.mode = .always
        let raw = try env.process.mmap(length: 3 * pmdSize, prot: .read, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) & pmdMask
        XCTAssertEqual(try env.cpu.load(a + 8, as: UInt64.self), 0)
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        var cmd = DmirrorCmd(addr: a, npages: 512)
        try d0.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: Int(pmdSize)))
        XCTAssertTrue(PageTable.isTHPDevicePrivate(try pmdEntry(env.mm, a)))
        // A fixed mapping over three pages inside it: the device PMD is split, 3 pages zapped.
        _ = try env.process.mmap(address: a + 0x21000, length: 8623, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        let child = try env.process.fork()
        try env.process.mprotect(a, length: 32768, prot: .readWrite)
        XCTAssertEqual(env.problems(), [])
        // The child first: it mapped no THP itself, but its PTEs map the large device folio.
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a + 0x7ff8, as: UInt64.self), 0)
        XCTAssertEqual(try env.cpu.load(a + 0x7ff8, as: UInt64.self), 0)
        XCTAssertEqual(env.problems(), [])
        ccpu.detach(); child.exit()
        env.finish([d0])
    }
}

extension DeviceTHPTests {
    /// A CPU fault on a device PMD with FAIL_ALLOC: the folio comes back as 512 small pages,
    /// which the fault's own reference keeps it from being split into, so nothing moves, every
    /// entry is restored (as 512 device PTEs: its PMD migration entry was split), and the
    /// refault takes the PTE path, splitting the device folio and moving one page (7.2: the
    /// same, as `folio_split_unmapped` fails with the fault's reference).
    func testPMDFaultWithFailAllocRefaultsThroughThePTEPath() throws {
        let env = try HMMEnv()
        let (a, d0) = try DeviceTHPTests.deviceTHP(env)
        var f = DmirrorCmd(addr: a, npages: DmirrorFlag.failAlloc)
        try d0.ioctl(.flags, &f)
        XCTAssertEqual(try env.cpu.load(a + 10 * pageSize, as: UInt64.self), 10)
        XCTAssertTrue(try entry(env.mm, a + 10 * pageSize).pte.isPresent)
        let e = try entry(env.mm, a + 11 * pageSize)
        XCTAssertEqual(e.level, .pte)
        XCTAssertTrue(e.pte.isSwap && e.pte.swapEntry.isDevicePrivate)
        XCTAssertEqual(d0.device.pagesInUse, 511)
        XCTAssertEqual(env.problems(), [])
        for i in stride(from: 0, to: 512, by: 29) { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i)) }
        env.finish([d0])
    }
}
