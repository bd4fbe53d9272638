import XCTest
@testable import MMCore
@testable import Devices
import HMM

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
