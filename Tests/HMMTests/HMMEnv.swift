import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// The first int of page `page` in `buf` (pages of `pageInts` ints) that differs from `want`,
/// as (index in the page, value), or nil: a device READ that saw a torn page.
func firstWrongInt(_ buf: DmirrorBuffer, page: Int, pageInts: Int, want: Int32) -> (k: Int, got: Int32)? {
    for k in 0..<pageInts where buf[int: page * pageInts + k] != want { return (k, buf[int: page * pageInts + k]) }
    return nil
}

/// A process, the four dmirror devices, and helpers.
final class HMMEnv {
    let machine: Machine
    let module: DmirrorModule
    let process: MMCore.Process
    let cpu: CPU
    let used: Int
    var mm: AddressSpace { process.mm }
    var memory: PhysicalMemory { machine.memory }

    init(mib: UInt64 = 128, swapPages: UInt64 = 0) throws {
        machine = try Machine(memoryBytes: mib << 20, devicePfnSpaceBytes: 2 << 30,
                              swapBytes: swapPages == 0 ? 0 : (swapPages + 1) * pageSize)
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
