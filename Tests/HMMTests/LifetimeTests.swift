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

/// Issue 10: open/close pairs leave nothing behind on the device.
final class MirrorBookkeepingTests: XCTestCase {
    func testOpenCloseLoopsKeepTheDeviceTablesFlat() throws {
        let env = try HMMEnv()
        let dev = env.module.devices[0]
        for _ in 0..<10_000 {
            let m = try env.module.open(minor: 0, mm: env.mm)
            m.close()
        }
        XCTAssertEqual(dev.lock.withLock { dev.mirrors.count }, 0)
        let kept = try env.module.open(minor: 0, mm: env.mm)
        XCTAssertEqual(dev.lock.withLock { dev.mirrors.count }, 1)
        XCTAssertEqual(kept.mirrorID, 10_001)                    // ids are never reused
        // An open that fails (an exited mm) frees cleanly.
        let p = try MMCore.Process(machine: env.machine)
        p.exit()
        XCTAssertThrowsError(try env.module.open(minor: 0, mm: p.mm)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        XCTAssertEqual(dev.lock.withLock { dev.mirrors.count }, 1)
        env.finish([kept])
    }
}
