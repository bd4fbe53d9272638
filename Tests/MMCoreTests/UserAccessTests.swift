import XCTest
@testable import MMCore

final class UserAccessTests: XCTestCase {
    func testTightLoopAPIFaultsAndFollowsShootdowns() throws {
        let env = try Env()
        let a = try env.anon(4)
        let sum = try env.cpu.withUserAccess { u -> UInt64 in
            for i in 0..<UInt64(512) { try u.store(a + i * 8, i) }
            var s: UInt64 = 0
            for i in 0..<UInt64(512) { s += try u.load(a + i * 8, as: UInt64.self) }
            return s
        }
        XCTAssertEqual(sum, 511 * 512 / 2)
        try env.process.mprotect(a, length: 4096, prot: .read)
        XCTAssertThrowsError(try env.cpu.withUserAccess { u in try u.store(a, UInt64(1)) }) {
            XCTAssertEqual($0 as? AccessFault, .segv(address: a))
        }
        XCTAssertEqual(try env.cpu.withUserAccess { u in try u.load(a + 8, as: UInt64.self) }, 1)
        env.teardown()
    }
}
