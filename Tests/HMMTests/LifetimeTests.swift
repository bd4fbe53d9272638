import XCTest
@testable import MMCore
@testable import Devices
import HMM

final class LifetimeTests: XCTestCase {
    /// Physical memory keeps every device registration; a registration must not keep its driver
    /// (which keeps the machine), or no machine that used a device would ever be freed.
    func testMachineFreedAfterDeviceUse() throws {
        weak var wm: Machine?
        weak var wdev: DmirrorDevice?
        weak var wmir: Dmirror?
        weak var wmm: AddressSpace?
        do {
            let m = try Machine(memoryBytes: 64 << 20)
            wm = m
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            let a = try p.mmap(length: 1 << 20, prot: .readWrite, flags: [.private, .anonymous])
            try cpu.run { cpu in try cpu.store(a, UInt64(1)) }
            let mod = DmirrorModule(machine: m)
            let d = try mod.open(minor: 0, mm: p.mm)
            wdev = mod.devices[0]; wmir = d; wmm = p.mm
            var c = DmirrorCmd(addr: a, npages: 16)
            try d.ioctl(.migrateToDevice, &c, buffer: DmirrorBuffer(size: 16 << 12))
            c = DmirrorCmd(addr: a, npages: 16)
            try d.ioctl(.migrateToSystem, &c)
            c = DmirrorCmd(addr: a, npages: 16)
            try d.ioctl(.read, &c, buffer: DmirrorBuffer(size: 16 << 12))
            d.close()
            cpu.detach(); p.exit()
        }
        XCTAssertNil(wmir, "mirror")
        XCTAssertNil(wmm, "mm")
        XCTAssertNil(wdev, "device")
        XCTAssertNil(wm, "machine")
    }
}
